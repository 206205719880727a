// The CUDA expert engine (cuda/eb_expert_kernels.cuh driven by src/native/device_engine_js.h
// through the offload pipeline): the shared engine suite on the emulated device, where the
// kernels' own bodies run on the CPU, and on a GPU when one is present (none here, nor in CI).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { compress, splitRungs } from '../src/codec/index.js';
import { native } from '../src/codec/native.js';
import { CudaExpertEngine } from '../src/offload/cuda-engine.js';
import type { OffloadSample as TelemetryEvent } from '../src/offload/telemetry.js';
import { gaussian } from './codec/data.js';
import { randomExperts, runEngineConformance } from './engines/conformance.js';
import { cudaEngine } from './engines/impls.js';

runEngineConformance(cudaEngine('emulated', 1e-3));
runEngineConformance(cudaEngine('emulated', 1.25e-4, { rungs: 4, k: 1 }));
runEngineConformance(cudaEngine('gpu', 1e-3));

describe('the CUDA engine build', function () {
  const object = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'build', 'cuda', 'eb_offload.o');
  it('is linked into the addon when it was built with nvcc, and says why it cannot run without a GPU', function () {
    const cuda = native.info().cuda;
    assert.equal(typeof native.cudaEngineNew === 'function', cuda.built);
    if (!cuda.built || cuda.available) this.skip();
    assert.throws(() => CudaExpertEngine.gpu(4, 4, [[]], { capacity: 1 }), /no usable CUDA device|CUDA/);
  });
  it('holds machine code of both FFN kernels for sm_80 and for sm_90', function () {
    if (!native.info().cuda.built || !existsSync(object)) this.skip();
    const bytes = readFileSync(object).toString('latin1');
    for (const kernel of ['_ZN6eb_gpu18ebx_gate_up_kernelEPKfS1_S1_iiiPf', '_ZN6eb_gpu15ebx_down_kernelEPKfS1_iiiPf']) {
      const cubins = bytes.split(`.text.${kernel}`).length - 1;
      assert.ok(cubins >= 2, `${kernel}: ${cubins} cubin sections, expected one per architecture`);
    }
    for (const arch of ['sm_80', 'sm_90']) assert.ok(bytes.includes(arch), `no ${arch} code`);
  });
});

describe('the CUDA engine on the emulated device', function () {
  const d = 64;
  const ff = 96;
  const [[a, b]] = randomExperts(1, 2, d, ff, 8);
  const part = (v: Float32Array) => {
    const s = splitRungs(compress(v, { bound: 1e-3 }));
    return { head: s.head, rungs: s.rungs };
  };
  const experts = [a, b].map((m) => ({ gate: part(m.gate), up: part(m.up), down: part(m.down) }));

  it("reports every matrix's copy as a TransferSample timed by the copy stream's events", async function () {
    const events: TelemetryEvent[] = [];
    const engine = CudaExpertEngine.emulated(d, ff, [experts], { telemetry: { emit: (e) => events.push(e) }, emulation: { linkBandwidth: 1e9, copyLatency: 1e-5 } });
    await engine.compute(0, gaussian(d, 1, 1), Int32Array.from([1, 0]), Float32Array.from([0.5, 0.5]), 1);
    await engine.compute(0, gaussian(d, 1, 1), Int32Array.from([1, 0]), Float32Array.from([0.5, 0.5]), 1); // on the device now: no transfer
    const transfers = events.filter((e) => e.kind === 'transfer');
    assert.equal(transfers.length, 6);
    for (const t of transfers) {
      assert.equal(t.kind === 'transfer' && t.link, 'emulated-cuda');
      if (t.kind !== 'transfer') continue;
      assert.ok(t.emulated);
      // Modelled: latency + bytes / bandwidth for the copy of this matrix's rungs.
      assert.ok(Math.abs(t.seconds - (1e-5 + t.bytes / 1e9)) < 1e-9, `${t.seconds} s for ${t.bytes} bytes`);
    }
    assert.deepEqual(transfers.map((t) => t.kind === 'transfer' && t.expert), [1, 1, 1, 0, 0, 0]);
  });

  it('runs the FFN kernels on the compute stream only after the weights they read were decoded', async function () {
    const engine = CudaExpertEngine.emulated(d, ff, [experts], { emulation: { seed: 5 } });
    return engine.compute(0, gaussian(d, 1, 2), Int32Array.from([0, 1]), Float32Array.from([0.5, 0.5]), 1).then(() => {
    const r = engine.trace!();
    for (const e of [0, 1]) {
      const ffn = r.trace.find((t) => t.kind === 'ffn' && t.fetch === e)!;
      assert.equal(ffn.stream, 'compute');
      const decodes = r.trace.filter((t) => t.kind === 'decode' && t.fetch === e);
      assert.equal(decodes.length, 3);
      for (const dec of decodes) {
        assert.ok(dec.seq < ffn.seq, 'a kernel ran before its weights were decoded');
        assert.ok(dec.end <= ffn.start + 1e-15, 'the modelled kernel start precedes a decode end');
      }
    }
    });
  });

  it('gives the same outputs when a small device evicts experts and reuses their buffers', async function () {
    const [[c, e2]] = randomExperts(1, 2, d, ff, 9);
    const more = [...experts, ...[c, e2].map((m) => ({ gate: part(m.gate), up: part(m.up), down: part(m.down) }))];
    const small = CudaExpertEngine.emulated(d, ff, [more], { capacity: 2, emulation: { seed: 2 } });
    const roomy = CudaExpertEngine.emulated(d, ff, [more]);
    const h = gaussian(2 * d, 1, 6);
    const w = Float32Array.from([0.6, 0.4, 0.3, 0.7]);
    for (const ids of [[0, 1, 1, 0], [2, 3, 3, 2], [0, 2, 1, 3], [1, 0, 0, 1]]) {
      const a = await small.compute(0, h, Int32Array.from(ids), w, 2);
      const b = await roomy.compute(0, h, Int32Array.from(ids), w, 2);
      assert.deepEqual(a, b, `experts ${ids}`);
    }
    assert.ok(small.stats.misses > roomy.stats.misses, 'the small device fetched again what it had evicted');
  });

  it("overlaps the next layer's prefetched transfers and decodes with this layer's kernels", async function () {
    // Two layers of the same two experts; prefetch(1) is hinted before layer 0 computes, as the model does.
    const engine = CudaExpertEngine.emulated(d, ff, [experts, experts], { emulation: { seed: 3, linkBandwidth: 1e8 } });
    const h = gaussian(d, 1, 4);
    const ids = Int32Array.from([0, 1]);
    const w = Float32Array.from([0.5, 0.5]);
    await engine.compute(0, h, ids, w, 1);
    engine.prefetch(1, ids);
    await engine.compute(0, h, ids, w, 1); // layer 0 again, its experts on the device: kernels only
    await engine.compute(1, h, ids, w, 1);
    assert.equal(engine.stats.misses, 2, 'layer 0 fetched its two experts once');
    assert.equal(engine.stats.hits, 4, "the second layer-0 call and layer 1 (prefetched) found theirs");
    const t = engine.trace!().trace;
    const secondFfn = t.filter((x) => x.kind === 'ffn' && x.fetch < 2)[2];
    const layer1Copies = t.filter((x) => x.kind === 'copy_h2d' && x.stream === 'copy' && x.fetch >= 2);
    assert.ok(layer1Copies.length >= 6, 'layer 1 rungs crossed the link');
    // In modelled time the copy engine moved layer 1's rungs while compute ran layer 0's kernels.
    assert.ok(layer1Copies[0].start < secondFfn.end, `layer 1's first copy started at ${layer1Copies[0].start}, after layer 0's kernels ended at ${secondFfn.end}`);
  });

  const damage = (r: Uint8Array) => {
    const b = Buffer.from(r);
    b[b.length - 6] ^= 0x10; // a plane word: the rung's checksum no longer matches
    return b;
  };
  it('refuses a damaged stream with the codec error that names it', async function () {
    const bad = { ...experts[0], up: { head: experts[0].up.head, rungs: [damage(experts[0].up.rungs[0])] } };
    const engine = CudaExpertEngine.emulated(d, ff, [[bad]]);
    await assert.rejects(engine.compute(0, gaussian(d, 1, 3), Int32Array.from([0]), Float32Array.from([1]), 1), (e: unknown) => (e as { code?: string }).code === 'CHECKSUM');
  });
});

describe('the embedded model on the emulated CUDA engine', function () {
  this.timeout(120_000);
  it("gives the resident model's greedy tokens at a tight bound, prefetching each next layer's experts", async function () {
    const { EMBEDDED_MODEL_DIR, loadModel, readExpert } = await import('../src/model/load.js');
    const { generate } = await import('../src/model/generate.js');
    const resident = await loadModel(EMBEDDED_MODEL_DIR);
    let engine!: CudaExpertEngine;
    const cuda = await loadModel(EMBEDDED_MODEL_DIR, {
      engine: (ck) => {
        const c = ck.config;
        const part = (v: Float32Array) => {
          const s = splitRungs(compress(v, { bound: 1e-5 }));
          return { head: s.head, rungs: s.rungs };
        };
        const experts = Array.from({ length: c.numLayers }, (_, l) =>
          Array.from({ length: c.numExperts }, (_, e) => {
            const m = readExpert(ck, l, e);
            return { gate: part(m.gate), up: part(m.up), down: part(m.down) };
          }),
        );
        // Room for two layers' worth of routed experts: what prefetch needs to run a layer ahead.
        return (engine = CudaExpertEngine.emulated(c.hiddenSize, c.expertFfnSize, experts, { capacity: 2 * c.topK * 2 }));
      },
    });
    try {
      const want = await generate(resident.model, resident.tokenizer, '48+27=', { maxTokens: 4, stop: ['\n'] });
      const got = await generate(cuda.model, cuda.tokenizer, '48+27=', { maxTokens: 4, stop: ['\n'] });
      assert.equal(got.text, want.text);
      assert.ok(engine.stats.prefetched > 0 && engine.stats.hits > 0, JSON.stringify(engine.stats));
    } finally {
      resident.dispose();
      cuda.dispose();
    }
  });
});
