// The decode stream (src/native/decode_stream.h): the values are the codec's own, a job does not
// start before its start time, jobs run in order of their start times rather than of arrival, a
// bad stream is refused when queued with an error naming it, and a pending job keeps the process
// alive until it settles. Times are only checked from below.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

import { CodecError, compressLadder, decodeOnStream, decompressRungs, splitRungs } from '../src/codec/index.js';
import { gaussian } from './codec/data.js';

const EPS_MS = 1e-3;

function ladder(n: number, seed: number) {
  return splitRungs(compressLadder(gaussian(n, 0.02, seed), { bounds: [4e-3, 2e-3, 1e-3, 5e-4], boundMode: 'abs' }));
}

describe('codec: the decode stream', function () {
  it('decodes each part bit for bit as decompressRungs does, at every rung', async function () {
    const a = ladder(40_000, 1);
    const b = ladder(777, 2);
    for (let k = 0; k < a.rungs.length; k++) {
      const r = await decodeOnStream([{ head: a.head, rungs: a.rungs.slice(0, k + 1) }, { head: b.head, rungs: b.rungs.slice(0, k + 1) }]);
      assert.equal(r.values.length, 2);
      assert.deepEqual(r.values[0], decompressRungs(a.head, a.rungs.slice(0, k + 1), { threads: 1 }), `rung ${k}`);
      assert.deepEqual(r.values[1], decompressRungs(b.head, b.rungs.slice(0, k + 1), { threads: 1 }), `rung ${k}, small part`);
      assert.ok(r.seconds > 0 && r.waitedSeconds >= 0);
    }
    const many = await decodeOnStream([{ head: a.head, rungs: a.rungs }], { threads: 2 });
    assert.deepEqual(many.values[0], decompressRungs(a.head, a.rungs));
  });

  it('decodes into the buffers it is given (a recycled expert\'s), and refuses one of the wrong size', async function () {
    const a = ladder(4096, 4);
    const into = new Float32Array(4096).fill(7);
    const r = await decodeOnStream([{ head: a.head, rungs: a.rungs }], { into: [into] });
    assert.equal(r.values[0], into, 'the values are the given array');
    assert.deepEqual(into, decompressRungs(a.head, a.rungs, { threads: 1 }));
    await assert.rejects(decodeOnStream([{ head: a.head, rungs: a.rungs }], { into: [new Float32Array(4095)] }), /Float32Array of 4096 values/);
    const fresh = await decodeOnStream([{ head: a.head, rungs: a.rungs }], { into: [undefined] });
    assert.notEqual(fresh.values[0], into);
  });

  it('starts no job before its start time, and takes jobs by start time, not by arrival', async function () {
    const a = ladder(5000, 3);
    const parts = [{ head: a.head, rungs: a.rungs }];
    const order: string[] = [];
    const t0 = performance.now();
    const late = decodeOnStream(parts, { startAt: t0 + 60 }).then(() => order.push('late'));
    const early = decodeOnStream(parts, { startAt: t0 + 20 }).then(() => order.push('early'));
    const at = await decodeOnStream(parts, { startAt: t0 + 40 }).then((r) => (order.push('middle'), { r, now: performance.now() }));
    assert.ok(at.now >= t0 + 40 - EPS_MS, `done after ${at.now - t0} ms`);
    await Promise.all([late, early]);
    assert.deepEqual(order, ['early', 'middle', 'late']);
    assert.ok(performance.now() >= t0 + 60 - EPS_MS);
    // A start time already past starts at once.
    const now = await decodeOnStream(parts, { startAt: performance.now() - 1000 });
    assert.deepEqual(now.values[0], decompressRungs(a.head, a.rungs, { threads: 1 }));
  });

  it('refuses a damaged head or missing rungs when queued, naming the problem', async function () {
    const a = ladder(3000, 4);
    const cut = a.head.subarray(0, 10);
    await assert.rejects(decodeOnStream([{ head: a.head, rungs: a.rungs }, { head: cut, rungs: a.rungs }]), (e: unknown) => e instanceof CodecError && /head|header|truncated|short/i.test(String((e as Error).message)));
    await assert.rejects(decodeOnStream([{ head: a.head, rungs: [] }]), (e: unknown) => e instanceof CodecError && e.code === 'BAD_RUNGS');
    await assert.rejects(decodeOnStream([{ head: a.head, rungs: [a.rungs[0].subarray(1)] }]), CodecError);
    // The stream is still usable after the refusals.
    const r = await decodeOnStream([{ head: a.head, rungs: a.rungs }]);
    assert.deepEqual(r.values[0], decompressRungs(a.head, a.rungs, { threads: 1 }));
  });

  it('keeps the process alive until a pending job settles', function () {
    const script = `
      import { compressLadder, decodeOnStream, splitRungs } from './src/codec/index.ts';
      const s = splitRungs(compressLadder(Float32Array.from({ length: 4096 }, (_, i) => Math.sin(i)), { bounds: [8e-3, 1e-3], boundMode: 'abs' }));
      const t0 = performance.now();
      decodeOnStream([{ head: s.head, rungs: s.rungs }], { startAt: t0 + 300 }).then((r) => console.log('decoded', r.values[0].length, Math.round(performance.now() - t0)));
    `;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    const m = /decoded 4096 (\d+)/.exec(out);
    assert.ok(m, `the job did not settle before exit: ${JSON.stringify(out)}`);
    assert.ok(Number(m[1]) >= 299, `settled after ${m[1]} ms`);
  });
});
