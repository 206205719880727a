// The device side of expert offload (cuda/eb_pipeline.h): pinned host rungs → copy stream →
// device rungs → decompress stream (the codec's decode kernels) → compute stream, ordered by
// events. There is no GPU here or in CI, so the pipeline runs on the addon's emulated device
// (src/native/emulated_pipeline.cc): streams are queues a seeded scheduler interleaves, every
// operation lands in a trace, times are modelled from bytes. The same driver runs on a GPU
// through cudaPipelineRun, checked at the end where a GPU exists.
import assert from 'node:assert/strict';

import { codecCall } from '../src/codec/errors.js';
import { CodecError, compressLadder, decompressRungs, ladderBounds, splitRungs } from '../src/codec/index.js';
import { native, type EmulatedPipelineResult, type PipelineFetch } from '../src/codec/native.js';
import { distribution, gaussian } from './codec/data.js';

interface Fetch extends PipelineFetch {
  head: Buffer;
  rungs: Buffer[];
  k: number;
}

function expert(x: Float32Array, rungs: number, k: number): Fetch {
  const { head, rungs: parts } = splitRungs(compressLadder(x, { bounds: ladderBounds(1.25e-4, rungs) }));
  return { head, rungs: parts, k };
}

// Real ladders of different sizes and shapes: Gaussian weights, escapes (NaN, ±Inf, huge values),
// an all-zero tensor (its finer rungs are empty, so nothing is copied for them), a single rung.
const FETCHES: Fetch[] = [
  expert(gaussian(40_000, 0.02, 3), 4, 3),
  expert(gaussian(25_001, 0.005, 4), 3, 1),
  expert(distribution('specials', 4099, 1.25e-4), 4, 2),
  expert(new Float32Array(65), 2, 1),
  expert(gaussian(30_000, 0.02, 5), 4, 0),
  expert(distribution('heavy-tailed', 10_000, 1.25e-4), 3, 2),
];
const MODEL = { linkBandwidth: 12e9, copyLatency: 4e-6, decodeBandwidth: 250e9 };
const SEEDS = [1, 2, 3, 4, 5, 6, 7, 8];

function run(fetches: PipelineFetch[], options: Record<string, number> = {}): EmulatedPipelineResult {
  return codecCall(() => native.emulatedPipelineRun!(fetches, { ...MODEL, ...options }));
}

function cpuValues(f: Fetch): Buffer {
  const v = decompressRungs(f.head, f.rungs, { rung: f.k });
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

function rungBytes(f: Fetch): number {
  return f.rungs.slice(0, f.k + 1).reduce((s, r) => s + r.byteLength, 0);
}

type Entry = EmulatedPipelineResult['trace'][number];
const seqs = (t: Entry[], fetch: number, stream: string, kind: string) =>
  t.filter((e) => e.fetch === fetch && e.stream === stream && e.kind === kind);
const maxSeq = (es: Entry[]) => Math.max(...es.map((e) => e.seq));
const minSeq = (es: Entry[]) => Math.min(...es.map((e) => e.seq));

// The orderings the events exist for, on one run's trace.
function checkOrdering(r: EmulatedPipelineResult, fetches: Fetch[], slots = fetches.length): void {
  for (let i = 0; i < fetches.length; i++) {
    const copies = seqs(r.trace, i, 'copy', 'copy_h2d');
    const decode = seqs(r.trace, i, 'decompress', 'decode');
    const compute = seqs(r.trace, i, 'compute', 'copy_d2h');
    assert.equal(decode.length, 1, `fetch ${i}: one decode`);
    assert.equal(compute.length, 1, `fetch ${i}: one compute op`);
    // Executed order: the decode reads the device rungs only after every copy into them.
    if (copies.length) assert.ok(maxSeq(copies) < minSeq(decode), `fetch ${i}: decode ran before its copies finished`);
    // Compute uses the weights only after the decode wrote them.
    assert.ok(maxSeq(decode) < minSeq(compute), `fetch ${i}: compute ran before its decode finished`);
    // The same in the model's time.
    for (const c of copies) assert.ok(c.end <= decode[0].start, `fetch ${i}: modelled decode starts before a copy ends`);
    assert.ok(decode[0].end <= compute[0].start, `fetch ${i}: modelled compute starts before its decode ends`);
    // A shared output slot: the decode must not overwrite weights the previous user still reads.
    if (i >= slots) {
      const prev = seqs(r.trace, i - slots, 'compute', 'copy_d2h');
      assert.ok(maxSeq(prev) < decode[0].seq, `fetch ${i}: decoded over slot ${i % slots} before fetch ${i - slots} was read`);
    }
  }
  // Streams are in order: the copy engine moves fetches in the order they were enqueued.
  const copyOrder = r.trace.filter((e) => e.stream === 'copy' && e.kind === 'copy_h2d').map((e) => e.fetch);
  assert.deepEqual(copyOrder, [...copyOrder].sort((a, b) => a - b));
}

// A copy of a later fetch executed before an earlier fetch's decode finished.
function overlaps(r: EmulatedPipelineResult, n: number): boolean {
  for (let i = 0; i < n; i++)
    for (let j = i + 1; j < n; j++) {
      const copies = seqs(r.trace, j, 'copy', 'copy_h2d');
      if (copies.length && minSeq(copies) < maxSeq(seqs(r.trace, i, 'decompress', 'decode'))) return true;
    }
  return false;
}

describe('offload pipeline on the emulated CUDA device', function () {
  before(function () {
    if (!native.emulatedPipelineRun) throw new Error('the addon has no emulatedPipelineRun: run `make`');
  });

  const expected = FETCHES.map(cpuValues);

  it('decodes every fetch bit for bit as the CPU codec does, under every scheduler seed', function () {
    for (const seed of SEEDS) {
      const r = run(FETCHES, { seed });
      assert.equal(r.outputs.length, FETCHES.length);
      r.outputs.forEach((out, i) => assert.ok(Buffer.from(out).equals(expected[i]), `seed ${seed}, fetch ${i}: values differ`));
    }
  });

  it('orders copy → decompress → compute for every fetch, under every seed', function () {
    for (const seed of SEEDS) checkOrdering(run(FETCHES, { seed }), FETCHES);
  });

  it('overlaps a later fetch\'s copy with an earlier fetch\'s decompress, and seeds give different interleavings', function () {
    const runs = SEEDS.map((seed) => run(FETCHES, { seed }));
    assert.ok(runs.some((r) => overlaps(r, FETCHES.length)), 'no seed overlapped a copy with an earlier decode');
    const orders = new Set(runs.map((r) => r.trace.map((e) => `${e.stream}:${e.kind}:${e.fetch}`).join(',')));
    assert.ok(orders.size > 1, 'every seed ran the streams in the same order');
    // The model's clocks do overlap the engines too: fetch 1's copies run while fetch 0 decodes.
    const t = runs[0].trace;
    const d0 = seqs(t, 0, 'decompress', 'decode')[0];
    const c1 = seqs(t, 1, 'copy', 'copy_h2d');
    assert.ok(c1.some((c) => c.start < d0.end && c.end > d0.start), 'modelled copy of fetch 1 does not overlap decode of fetch 0');
  });

  it('reports the bytes moved (rungs 0..k) and the modelled seconds of each move', function () {
    const reports = SEEDS.map((seed) => run(FETCHES, { seed }));
    const r = reports[0];
    FETCHES.forEach((f, i) => {
      const rep = r.fetches[i];
      assert.equal(rep.bytes, rungBytes(f), `fetch ${i} bytes`);
      assert.equal(rep.copies, f.rungs.slice(0, f.k + 1).filter((b) => b.byteLength > 0).length, `fetch ${i} copies`);
      const moved = seqs(r.trace, i, 'copy', 'copy_h2d').reduce((s, e) => s + e.bytes, 0);
      assert.equal(moved, rep.bytes, `fetch ${i}: the trace's copies move the reported bytes`);
      const transfer = rep.bytes / MODEL.linkBandwidth + rep.copies * MODEL.copyLatency;
      assert.ok(Math.abs(rep.transferSeconds - transfer) <= 1e-12 + 1e-9 * transfer, `fetch ${i}: ${rep.transferSeconds} s, model ${transfer}`);
      const decode = expected[i].byteLength / MODEL.decodeBandwidth;
      assert.ok(Math.abs(rep.decompressSeconds - decode) <= 1e-12 + 1e-9 * decode, `fetch ${i}: decode ${rep.decompressSeconds} s`);
    });
    assert.equal(r.fetches.find((f, i) => FETCHES[i].rungs[0].byteLength > 0 && f.transferSeconds <= 0), undefined);
    // Modelled time does not depend on how the host interleaved the streams.
    for (const other of reports.slice(1)) assert.deepEqual(other.fetches, r.fetches);
    assert.equal(r.model.emulated, true);
  });

  it('waits for the compute stream before decoding into a device buffer it still reads', function () {
    for (const slots of [1, 2]) {
      for (const seed of SEEDS.slice(0, 4)) {
        const r = run(FETCHES, { seed, outputSlots: slots });
        r.outputs.forEach((out, i) => assert.ok(Buffer.from(out).equals(expected[i]), `${slots} slots, seed ${seed}, fetch ${i}`));
        checkOrdering(r, FETCHES, slots);
      }
    }
  });

  it('reuses released fetches\' device rungs and events under a prefetch window', function () {
    assert.equal(run(FETCHES).rungBuffers, FETCHES.length, 'all in flight: one device rung buffer each');
    for (const inFlight of [1, 2, 3]) {
      for (const seed of SEEDS.slice(0, 4)) {
        const r = run(FETCHES, { seed, inFlight, outputSlots: 2 });
        r.outputs.forEach((out, i) => assert.ok(Buffer.from(out).equals(expected[i]), `window ${inFlight}, seed ${seed}, fetch ${i}`));
        checkOrdering(r, FETCHES, 2);
        FETCHES.forEach((f, i) => assert.equal(r.fetches[i].bytes, rungBytes(f)));
        assert.ok(r.rungBuffers < FETCHES.length, `window ${inFlight}: ${r.rungBuffers} buffers, none reused`);
      }
    }
  });

  it('decodes to bf16 and f16 like the CPU codec', function () {
    const fetches = FETCHES.slice(0, 3).map((f, i) => ({ ...f, outDtype: i === 1 ? 1 : 2 }));
    const r = run(fetches, { seed: 9 });
    fetches.forEach((f, i) => {
      const v = decompressRungs(f.head, f.rungs, { rung: f.k, outDtype: f.outDtype === 1 ? 'f16' : 'bf16' });
      assert.ok(Buffer.from(r.outputs[i]).equals(Buffer.from(v.buffer, v.byteOffset, v.byteLength)), `fetch ${i}`);
    });
  });

  it('takes k = -1 as the last rung given', function () {
    const f = FETCHES[0];
    const r = run([{ head: f.head, rungs: f.rungs.slice(0, 2), k: -1 }]);
    assert.ok(Buffer.from(r.outputs[0]).equals(cpuValues({ ...f, rungs: f.rungs.slice(0, 2), k: 1 })));
    assert.equal(r.fetches[0].bytes, f.rungs[0].byteLength + f.rungs[1].byteLength);
  });
});

describe('offload pipeline on bad requests', function () {
  const f = FETCHES[0];
  const isCode = (code: string) => (e: unknown) => e instanceof CodecError && e.code === code;

  it('refuses a level the fetch does not have with BAD_RUNGS', function () {
    assert.throws(() => run([{ ...f, k: f.rungs.length }]), isCode('BAD_RUNGS'));
    assert.throws(() => run([{ ...f, rungs: f.rungs.slice(0, 2), k: 2 }]), isCode('BAD_RUNGS'));
    assert.throws(() => run([{ ...f, k: -2 }]), isCode('BAD_RUNGS'));
  });

  it('refuses damaged and truncated rungs with the validator\'s codes', function () {
    const damaged = Buffer.from(f.rungs[1]);
    damaged[damaged.length >> 1] ^= 0x10;
    assert.throws(() => run([{ ...f, rungs: [f.rungs[0], damaged, ...f.rungs.slice(2)] }]), isCode('CHECKSUM'));
    assert.throws(() => run([{ ...f, rungs: [f.rungs[0].subarray(0, 100)] , k: 0 }]), isCode('TRUNCATED'));
    const head = Buffer.from(f.head);
    head[0] ^= 0xff;
    assert.throws(() => run([{ ...f, head }]), isCode('BAD_MAGIC'));
  });

  it('fails a bad fetch after good ones were enqueued without harm, and runs again after', function () {
    const list = [FETCHES[1], FETCHES[2], { ...FETCHES[4], k: 9 }, FETCHES[0]];
    for (const seed of [1, 2, 3]) assert.throws(() => run(list, { seed }), isCode('BAD_RUNGS'));
    const r = run(FETCHES.slice(0, 2));
    assert.ok(Buffer.from(r.outputs[1]).equals(cpuValues(FETCHES[1])));
  });

  it('rejects arguments that are not fetches, and unusable model figures', function () {
    assert.throws(() => native.emulatedPipelineRun!(42 as never), TypeError);
    assert.throws(() => native.emulatedPipelineRun!([{ head: f.head } as never]), TypeError);
    assert.throws(() => native.emulatedPipelineRun!([f], { linkBandwidth: 0 }), RangeError);
    assert.throws(() => native.emulatedPipelineRun!([f], { decodeBandwidth: NaN }), RangeError);
  });

  it('runs an empty fetch list', function () {
    const r = run([]);
    assert.deepEqual(r.outputs, []);
    assert.deepEqual(r.fetches, []);
  });
});

describe('offload pipeline on CUDA', function () {
  const probe = native.info().cuda;

  it('is linked into the addon when it was built with nvcc', function () {
    if (!probe.built) this.skip();
    assert.equal(typeof native.cudaPipelineRun, 'function');
    if (!probe.available) assert.throws(() => native.cudaPipelineRun!(FETCHES), /no usable CUDA device/);
  });

  it('decodes on the GPU bit for bit as the CPU codec does, and times its copies', function () {
    if (!probe.available) this.skip();
    for (const outputSlots of [FETCHES.length, 2]) {
      const r = codecCall(() => native.cudaPipelineRun!(FETCHES, { outputSlots }));
      FETCHES.forEach((f, i) => {
        assert.ok(Buffer.from(r.outputs[i]).equals(cpuValues(f)), `fetch ${i}`);
        assert.equal(r.fetches[i].bytes, rungBytes(f));
        if (r.fetches[i].bytes > 0) assert.ok(r.fetches[i].transferSeconds > 0, `fetch ${i}: no transfer time`);
      });
    }
    assert.throws(() => codecCall(() => native.cudaPipelineRun!([{ ...FETCHES[0], k: 7 }])), (e: unknown) => e instanceof CodecError && e.code === 'BAD_RUNGS');
  });
});
