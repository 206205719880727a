// The native forward pass (src/native/decoder_cpu.h) against the TensorFlow.js model on the
// embedded checkpoint: the same routing, the same greedy text, and the model's errors (its logits
// and KV cache against the reference, and batches, are the forward conformance suite's:
// test/forward.test.ts).
import assert from 'node:assert/strict';

import * as tf from '@tensorflow/tfjs';

import { native } from '../src/codec/native.js';
import { generate } from '../src/model/generate.js';
import { KvCache } from '../src/model/kv-cache.js';
import { EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../src/model/load.js';
import type { Routing } from '../src/model/transformer.js';
import type { CpuExpertEngine } from '../src/offload/cpu-engine.js';
import type { ExpertEngine } from '../src/offload/expert-engine.js';
import type { OffloadSample as TelemetryEvent } from '../src/offload/telemetry.js';
import { post, startEmbedded } from './serve/helpers.js';

describe('the native forward pass on the embedded model', function () {
  this.timeout(120_000);
  let tfjs: LoadedModel;
  let cpu: LoadedModel;
  before(async () => {
    tfjs = await loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', nativeForward: false });
    cpu = await loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', cpu: {} });
    assert.ok(cpu.model.nativeForward, 'the embedded model should run natively');
  });
  after(() => {
    tfjs?.dispose();
    cpu?.dispose();
  });

  it('holds no TensorFlow.js copy of the dense weights while the native forward serves, and builds one on the first TensorFlow.js pass', async function () {
    const c = cpu.checkpoint.config;
    const attention = c.numLayers * (2 * c.numHeads + 2 * c.numKvHeads) * c.headDim * c.hiddenSize;
    const denseBytes = 4 * (attention + c.vocabSize * c.hiddenSize);
    const before = tf.memory().numBytes;
    const m = await loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', cpu: {} });
    try {
      const tokens = m.tokenizer.encode('48+27=');
      const native = await m.model.forward(tokens, KvCache.forModel(c));
      assert.ok(tf.memory().numBytes - before < denseBytes / 4, `${tf.memory().numBytes - before} bytes of tensors after a native pass (dense weights: ${denseBytes})`);
      m.model.useNativeForward(undefined);
      const reference = await m.model.forward(tokens, KvCache.forModel(c));
      assert.ok(tf.memory().numBytes - before >= denseBytes, 'the TensorFlow.js pass built its tensors');
      assert.equal(reference.indexOf(Math.max(...reference)), native.indexOf(Math.max(...native)), 'the same next token either way');
    } finally {
      m.dispose();
    }
    assert.ok(tf.memory().numBytes - before < denseBytes / 4, 'dispose frees them');
  });

  it('reports the same routing to onRouting', async function () {
    const tokens = tfjs.tokenizer.encode('48+27=');
    const seen = (m: LoadedModel) => {
      const r: Routing[] = [];
      m.model.onRouting = (x) => r.push({ layer: x.layer, ids: Int32Array.from(x.ids), weights: Float32Array.from(x.weights) });
      return r;
    };
    const ra = seen(tfjs);
    const rb = seen(cpu);
    await tfjs.model.forward(tokens, KvCache.forModel(tfjs.checkpoint.config));
    await cpu.model.forward(tokens, KvCache.forModel(cpu.checkpoint.config));
    tfjs.model.onRouting = cpu.model.onRouting = undefined;
    assert.equal(rb.length, ra.length);
    for (let i = 0; i < ra.length; i++) {
      assert.equal(rb[i].layer, ra[i].layer);
      assert.deepEqual([...rb[i].ids], [...ra[i].ids], `layer ${ra[i].layer} routes differently`);
      for (let j = 0; j < ra[i].weights.length; j++) assert.ok(Math.abs(rb[i].weights[j] - ra[i].weights[j]) < 1e-5);
    }
  });

  it('generates the same greedy text, and the same answers to additions', async function () {
    for (const prompt of ['Call me Ishmael.', '48+27=', 'In the beginning']) {
      const a = await generate(tfjs.model, tfjs.tokenizer, prompt, { maxTokens: 24 });
      const b = await generate(cpu.model, cpu.tokenizer, prompt, { maxTokens: 24 });
      assert.equal(b.text, a.text, prompt);
    }
  });

  it('refuses what the tfjs model refuses, and keeps the cache as it was', async function () {
    const cache = KvCache.forModel(cpu.checkpoint.config);
    await cpu.model.forward([1, 2, 3], cache);
    await assert.rejects(cpu.model.forward([9999], cache), /outside the vocabulary/);
    await assert.rejects(cpu.model.forward(new Array(300).fill(1), cache), /context is 256 positions/);
    assert.equal(cache.length, 3);
    const ok = await cpu.model.forward([4], cache);
    assert.equal(ok.length, cpu.checkpoint.config.vocabSize);
  });

  it('runs a step whole in one native call where every expert is resident: the per-layer path\'s logits bit for bit, its routing, its reads', async function () {
    // Compressed experts as symbols with the integer product; two sequences a step (their
    // prompts, then a token each).
    const m = await loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', cpu: { bound: 1e-3, symbols: true, int8Activations: true } });
    try {
      const engine = m.engine as CpuExpertEngine;
      assert.ok(engine.resident, 'the CPU engine holds every expert');
      const perLayer: ExpertEngine = { compute: (l, h, ids, w, T) => engine.compute(l, h, ids, w, T), dispose: () => {} };
      const c = m.checkpoint.config;
      const run = async (e: ExpertEngine) => {
        const routing: Routing[] = [];
        m.model.onRouting = (x) => routing.push({ layer: x.layer, ids: Int32Array.from(x.ids), weights: Float32Array.from(x.weights) });
        const read0 = engine.stats.bytesRead;
        const [a, b] = [KvCache.forModel(c), KvCache.forModel(c)];
        const first = await m.model.forwardBatch([{ tokens: m.tokenizer.encode('Call me Ishmael.'), cache: a }, { tokens: m.tokenizer.encode('48+27='), cache: b }], e);
        const next = await m.model.forwardBatch([{ tokens: [5], cache: a }, { tokens: [7], cache: b }], e);
        m.model.onRouting = undefined;
        return { logits: [...first, ...next].map((x) => Float32Array.from(x)), routing, read: engine.stats.bytesRead - read0 };
      };
      const whole = await run(engine);
      const layered = await run(perLayer);
      assert.equal(whole.logits.length, layered.logits.length);
      whole.logits.forEach((x, i) => assert.deepEqual(x, layered.logits[i], `sequence ${i % 2}, step ${i >> 1}`));
      assert.equal(whole.routing.length, 2 * c.numLayers);
      assert.deepEqual(whole.routing, layered.routing);
      assert.ok(whole.read > 0);
      assert.equal(whole.read, layered.read, 'the engine counts the same expert reads either way');
    } finally {
      m.dispose();
    }
  });

  it('refuses resident experts of another shape, naming what is wrong, and the step stays usable', async function () {
    const c = cpu.checkpoint.config;
    const engine = cpu.engine as CpuExpertEngine;
    assert.throws(() => native.residentExperts([[[new Float32Array(3)]]] as never, c.hiddenSize, c.expertFfnSize, 0), /layer 0 expert 0 must be \[gate, up, down\]/);
    assert.throws(() => native.residentExperts([], 0, c.expertFfnSize, 0), /d and ff must be ≥ 1/);
    // One layer's experts where the model has more.
    const one = native.residentExperts([engine.layer(0).map((x) => [x.gate, x.up, x.down])], c.hiddenSize, c.expertFfnSize, 0);
    const forward = cpu.model.nativeForward!;
    const cache = KvCache.forModel(c);
    const out = { hidden: new Float32Array(c.hiddenSize), ids: new Int32Array(c.topK), weights: new Float32Array(c.topK), predicted: new Int32Array(c.topK) };
    const step = native.decoderBegin((forward as unknown as { handle: unknown }).handle, Int32Array.of(5), [{ count: 1, pos0: 0, allLogits: false, keys: cache.keys, values: cache.values }], out, 0);
    const routing = { ids: new Int32Array(c.numLayers * c.topK), weights: new Float32Array(c.numLayers * c.topK) };
    assert.throws(() => native.decoderRun(step, one, routing), /not this model's \(1 layers/);
    assert.throws(() => native.decoderRun(step, engine.resident().handle, { ids: new Int32Array(1), weights: routing.weights }), /ids must be a Int32Array of at least/);
    const r = await native.decoderRun(step, engine.resident().handle, routing);
    assert.equal(r.logits.length, c.vocabSize);
  });

  it('keeps the event loop running during a long prefill', async function () {
    const tokens = new Array(200).fill(0).map((_, i) => 32 + (i % 90));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const started = performance.now();
    let steps = 0;
    while (performance.now() - started < 150) {
      await cpu.model.forward(tokens, KvCache.forModel(cpu.checkpoint.config), true);
      steps++;
    }
    clearInterval(timer);
    assert.ok(ticks >= steps, `the timer ticked ${ticks} times during ${steps} forwards`);
  });
});

describe('the CPU engine telemetry', function () {
  it('reports every forward step, native or not, as a TokenSample of compute time', async function () {
    const samples: TelemetryEvent[] = [];
    const m = await loadModel(EMBEDDED_MODEL_DIR, { backend: 'wasm', cpu: { telemetry: { emit: (e) => samples.push(e) } } });
    try {
      const cache = KvCache.forModel(m.checkpoint.config);
      await m.model.forward([1, 2, 3], cache);
      await m.model.forward([4], cache);
      const tokens = samples.filter((s) => s.kind === 'token');
      assert.deepEqual(tokens.map((s) => s.kind === 'token' && s.tokens), [3, 1]);
      for (const s of tokens) if (s.kind === 'token') assert.ok(s.seconds > 0 && s.computeSeconds === s.seconds && s.transferWaitSeconds === 0);
    } finally {
      m.dispose();
    }
  });
});

describe('ebserve serve --engine cpu', function () {
  this.timeout(120_000);
  it('serves completions from the CPU engine on compressed experts, and says so in /health', async function () {
    const server = await startEmbedded({ spec: { engine: 'cpu', cpuBound: 1e-3, fixedLevel: undefined } });
    try {
      const res = await post(server.url, '/v1/completions', { prompt: '48+27=', max_tokens: 4, stop: ['\n'] });
      assert.equal(res.status, 200);
      const body = (await res.json()) as { choices: { text: string }[] };
      assert.equal(body.choices[0].text, '75');
      const health = (await (await fetch(`${server.url}/health`)).json()) as { engine: string; engine_details: Record<string, unknown> };
      assert.equal(health.engine, 'cpu');
      assert.equal(health.engine_details.cpu_bound, 1e-3);
      assert.equal(health.engine_details.native_forward, true);
    } finally {
      await server.shutdown();
    }
  });
});
