// The host→device links (src/offload/link.ts): CopyLink hands back real copies and counts their
// bytes; EmulatedLink does the same, reports each move's time as latency + bytes / bandwidth,
// completes no earlier than that on performance.now(), runs one move at a time, and says it is
// emulated. Times are only ever checked from below (a loaded machine may always be slower).
import assert from 'node:assert/strict';

import { CopyLink, EmulatedLink, type Link } from '../src/offload/link.js';

const EPS_MS = 1e-6; // float slack on the performance.now() clock

function parts(...sizes: number[]): Uint8Array[] {
  return sizes.map((n, i) => Uint8Array.from({ length: n }, (_, j) => (i * 31 + j * 7) & 0xff));
}

/** Both links return copies: checked the same way for each. */
function copiesConformance(name: string, make: () => Link): void {
  it(`${name}: returns copies of every part, with the bytes counted`, async function () {
    const src = parts(100, 0, 37);
    const want = src.map((p) => Uint8Array.from(p));
    const r = await make().move(src);
    assert.equal(r.bytes, 137);
    assert.equal(r.device.length, 3);
    r.device.forEach((d, i) => {
      assert.deepEqual(d, want[i], `part ${i}`);
      assert.notEqual(d.buffer, src[i].buffer, `part ${i} shares the source's memory`);
    });
    for (const p of src) p.fill(0xee);
    r.device.forEach((d, i) => assert.deepEqual(d, want[i], `part ${i} changed with its source`));
    assert.ok(r.seconds >= 0);
  });
}

describe('offload: links', function () {
  copiesConformance('CopyLink', () => new CopyLink());
  copiesConformance('EmulatedLink', () => new EmulatedLink({ bytesPerSecond: 1e7 }));

  describe('CopyLink', function () {
    it('says it is a plain copy', function () {
      const link = new CopyLink();
      assert.equal(link.name, 'copy');
      assert.equal(link.emulated, false);
      assert.ok(!link.describe().includes('EMULATED'));
    });

    it('moves nothing as zero bytes', async function () {
      const r = await new CopyLink().move([]);
      assert.deepEqual(r.device, []);
      assert.equal(r.bytes, 0);
    });
  });

  describe('EmulatedLink', function () {
    it('reports seconds = latency + bytes / bandwidth', async function () {
      const link = new EmulatedLink({ bytesPerSecond: 1e6, latencySeconds: 0.002 });
      const r = await link.move(parts(1500, 500)); // 2 ms on the link, 2 ms latency
      assert.equal(r.bytes, 2000);
      assert.ok(Math.abs(r.seconds - 0.004) < 1e-9, `${r.seconds} s`);
      const none = await new EmulatedLink({ bytesPerSecond: 1e6 }).move(parts(3000));
      assert.ok(Math.abs(none.seconds - 0.003) < 1e-9, `${none.seconds} s without latency`);
    });

    it('does not complete a move before latency + bytes / bandwidth has passed', async function () {
      const link = new EmulatedLink({ bytesPerSecond: 1e6, latencySeconds: 0.003 });
      for (const n of [0, 1, 4000, 12_000]) {
        const t0 = performance.now();
        await link.move(parts(n));
        const elapsed = performance.now() - t0;
        const want = 3 + n / 1000; // ms
        assert.ok(elapsed >= want - EPS_MS, `${n} bytes: done after ${elapsed} ms, before ${want} ms`);
      }
    });

    it('runs moves issued together one after another', async function () {
      const link = new EmulatedLink({ bytesPerSecond: 1e6, latencySeconds: 0.005 });
      const t0 = performance.now();
      const first = link.move(parts(20_000)).then((r) => ({ r, at: performance.now() - t0 })); // 20 ms on the link
      const second = link.move(parts(30_000)).then((r) => ({ r, at: performance.now() - t0 })); // 30 ms, after it
      const [a, b] = await Promise.all([first, second]);
      assert.ok(a.at >= 25 - EPS_MS, `first done after ${a.at} ms`);
      // In parallel the second would be done at 35 ms; queued behind the first, not before 55.
      assert.ok(b.at >= 20 + 30 + 5 - EPS_MS, `second done after ${b.at} ms`);
      // Each reports its own time on the link, its wait in the queue excluded.
      assert.ok(Math.abs(a.r.seconds - 0.025) < 1e-9, `first ${a.r.seconds} s`);
      assert.ok(Math.abs(b.r.seconds - 0.035) < 1e-9, `second ${b.r.seconds} s`);
    });

    it('says when a started move lands, and lands it then', async function () {
      const link = new EmulatedLink({ bytesPerSecond: 1e6, latencySeconds: 0.002 });
      const t0 = performance.now();
      const a = link.start(parts(3000)); // 3 ms on the link + 2 ms
      const b = link.start(parts(1000)); // queued behind it: lands 1 ms after a's link time ends
      assert.equal(a.bytes, 3000);
      assert.ok(a.landsAt >= t0 + 5 - EPS_MS && a.landsAt <= performance.now() + 5 + EPS_MS, `a lands at +${a.landsAt - t0} ms`);
      assert.ok(Math.abs(b.landsAt - a.landsAt - 1) < 1e-6, `b lands ${b.landsAt - a.landsAt} ms after a`);
      await a.landed;
      assert.ok(performance.now() >= a.landsAt - EPS_MS, 'landed before landsAt');
      await b.landed;
      assert.ok(performance.now() >= b.landsAt - EPS_MS);
      const copy = new CopyLink().start(parts(10));
      assert.ok(copy.landsAt <= performance.now());
      assert.equal(copy.device[0].length, 10);
    });

    it('applies a new bandwidth to the moves issued after it', async function () {
      const link = new EmulatedLink({ bytesPerSecond: 1e6 });
      const before = link.move(parts(4000)); // issued at 1 MB/s
      link.setBandwidth(4e6);
      assert.equal(link.bytesPerSecond, 4e6);
      const t0 = performance.now();
      const after = link.move(parts(4000)); // 1 ms at 4 MB/s
      const [a, b] = await Promise.all([before, after]);
      assert.ok(Math.abs(a.seconds - 0.004) < 1e-9, `before: ${a.seconds} s`);
      assert.ok(Math.abs(b.seconds - 0.001) < 1e-9, `after: ${b.seconds} s`);
      assert.ok(performance.now() - t0 >= 1 - EPS_MS);
      assert.ok(link.describe().includes('4.000 MB/s'), link.describe());
    });

    it('says it is emulated, with its parameters', function () {
      const link = new EmulatedLink({ bytesPerSecond: 2.5e9, latencySeconds: 10e-6 });
      assert.equal(link.name, 'emulated');
      assert.equal(link.emulated, true);
      assert.ok(link.describe().includes('EMULATED'), link.describe());
      assert.ok(link.describe().includes('2500.000 MB/s') && link.describe().includes('10 µs'), link.describe());
    });

    it('refuses a bandwidth that is not a positive finite number, and a negative or non-finite latency', function () {
      for (const bad of [0, -1, NaN, Infinity, -Infinity]) {
        assert.throws(() => new EmulatedLink({ bytesPerSecond: bad }), RangeError, `bandwidth ${bad}`);
      }
      for (const bad of [-1e-6, NaN, Infinity]) {
        assert.throws(() => new EmulatedLink({ bytesPerSecond: 1e6, latencySeconds: bad }), RangeError, `latency ${bad}`);
      }
      assert.doesNotThrow(() => new EmulatedLink({ bytesPerSecond: 1e6, latencySeconds: 0 }));
      const link = new EmulatedLink({ bytesPerSecond: 1e6 });
      for (const bad of [0, -5, NaN, Infinity]) assert.throws(() => link.setBandwidth(bad), RangeError, `setBandwidth ${bad}`);
      assert.equal(link.bytesPerSecond, 1e6, 'a refused bandwidth changes nothing');
    });
  });
});
