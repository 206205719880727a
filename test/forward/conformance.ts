// The forward-path conformance suite: what every way of running the model's forward step must
// meet, whatever computes its experts — the TensorFlow.js forward (the reference) and the native
// forward with each engine (resident tfjs experts, the CPU engine, the offload engine through its
// device cache). Each implementation is one line in test/forward.test.ts.
//
// The specifications: logits within 1e-5 of the reference for a prefill and decode steps; a batch
// of sequences (prompt chunks and decode tokens at different positions, each with its own cache)
// gives every sequence exactly what it gets alone — bit for bit, so greedy output never depends on
// the batch; greedy generation with sequences joining and leaving mid-way equals each one alone;
// a bad sequence fails the step before anything is written; the engine is told each layer's
// predicted experts before that layer computes, layer 0's from the embeddings.
import assert from 'node:assert/strict';

import { KvCache } from '../../src/model/kv-cache.js';
import type { LoadedModel } from '../../src/model/load.js';
import type { SequenceStep } from '../../src/model/transformer.js';
import type { ExpertEngine } from '../../src/offload/expert-engine.js';

export interface ForwardImpl {
  name: string;
  /** The embedded model on this path (loaded once per suite). */
  load(): Promise<LoadedModel>;
  /**
   * Each token's results are independent of the other rows of its step, bit for bit (true for
   * the native kernels). TensorFlow.js's wasm matMul is not: its results for a row shift in the
   * last bit with the number of rows, so engines that multiply experts there, batched over the
   * step's tokens, agree within 1e-6 instead (greedy tokens still match, checked below).
   */
  batchInvariant: boolean;
}

const argmax = (l: Float32Array) => {
  let b = 0;
  for (let v = 1; v < l.length; v++) if (l[v] > l[b]) b = v;
  return b;
};

const maxRel = (a: Float32Array, b: Float32Array) => {
  let scale = 0;
  let diff = 0;
  for (let i = 0; i < a.length; i++) {
    scale = Math.max(scale, Math.abs(b[i]));
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
  }
  return diff / scale;
};

/** Prompts of different lengths, so a batch holds sequences at different positions. */
const PROMPTS = ['Call me Ishmael.', '48+27=', 'In the beginning God created', 'It is a truth universally acknowledged, that a single', 'x'];

export function runForwardConformance(impl: ForwardImpl, reference: () => Promise<LoadedModel>): void {
  describe(`forward conformance: ${impl.name}`, function () {
    this.timeout(120_000);
    let m: LoadedModel;
    let ref: LoadedModel;
    before(async () => {
      m = await impl.load();
      ref = await reference();
    });
    after(() => {
      m?.dispose();
      ref?.dispose();
    });
    const cache = () => KvCache.forModel(m.checkpoint.config);

    it('gives the logits of a prefill and of decode steps, and the KV cache, within 1e-5 of the TensorFlow.js forward', async function () {
      const tokens = m.tokenizer.encode(PROMPTS[3]);
      const [ca, cb] = [cache(), cache()];
      const a = await ref.model.forward(tokens, ca, true);
      const b = await m.model.forward(tokens, cb, true);
      assert.equal(b.length, a.length);
      assert.ok(maxRel(b, a) < 1e-5, `prefill: relative difference ${maxRel(b, a)}`);
      for (const t of [32, 101, 7]) {
        const x = await ref.model.forward([t], ca);
        const y = await m.model.forward([t], cb);
        assert.ok(maxRel(y, x) < 1e-5, `decode of ${t}: relative difference ${maxRel(y, x)}`);
      }
      // The KV cache is written as the reference writes it.
      assert.equal(cb.length, ca.length);
      const w = ca.width * ca.length;
      for (let l = 0; l < ca.numLayers; l++) {
        assert.ok(maxRel(cb.keys[l].subarray(0, w), ca.keys[l].subarray(0, w)) < 1e-5, `layer ${l} keys`);
        assert.ok(maxRel(cb.values[l].subarray(0, w), ca.values[l].subarray(0, w)) < 1e-5, `layer ${l} values`);
      }
    });

    it('gives each sequence of a batch the logits it gets alone (bit for bit where batch-invariant), prompt chunks and decode tokens mixed', async function () {
      // Alone: every prompt prefilled in two chunks, then two decode tokens.
      const alone: Float32Array[][] = [];
      for (const p of PROMPTS) {
        const ids = m.tokenizer.encode(p);
        const c = cache();
        const half = Math.max(1, ids.length >> 1);
        const out = [await m.model.forward(ids.slice(0, half), c, true)];
        if (ids.length > half) out.push(await m.model.forward(ids.slice(half), c));
        out.push(await m.model.forward([65], c), await m.model.forward([66], c));
        alone.push(out.map((x) => Float32Array.from(x)));
      }
      // Batched: the same calls, but every sequence's next call in one step, staggered so that
      // one step carries prompt chunks of some sequences and decode tokens of others.
      const plans = PROMPTS.map((p, i) => {
        const ids = m.tokenizer.encode(p);
        const half = Math.max(1, ids.length >> 1);
        const calls: SequenceStep[] = [];
        const c = cache();
        calls.push({ tokens: ids.slice(0, half), cache: c, allLogits: true });
        if (ids.length > half) calls.push({ tokens: ids.slice(half), cache: c });
        calls.push({ tokens: [65], cache: c }, { tokens: [66], cache: c });
        return { calls, start: i % 3, got: [] as Float32Array[] };
      });
      for (let step = 0; plans.some((p) => p.got.length < p.calls.length); step++) {
        const batch = plans.filter((p) => step >= p.start && p.got.length < p.calls.length);
        if (!batch.length) continue;
        const out = await m.model.forwardBatch(batch.map((p) => p.calls[p.got.length]));
        batch.forEach((p, i) => p.got.push(Float32Array.from(out[i])));
      }
      plans.forEach((p, i) => {
        assert.equal(p.got.length, alone[i].length);
        p.got.forEach((x, j) => {
          const what = `${JSON.stringify(PROMPTS[i])}, call ${j}: batched logits differ from alone`;
          if (impl.batchInvariant) assert.deepEqual(x, alone[i][j], what);
          else assert.ok(maxRel(x, alone[i][j]) < 1e-6, `${what} by ${maxRel(x, alone[i][j])}`);
        });
      });
    });

    it('generates greedily the same tokens whether a sequence runs alone or joins a batch mid-way', async function () {
      const N = 12;
      const aloneText: number[][] = [];
      for (const p of PROMPTS) {
        const c = cache();
        let logits = await m.model.forward(m.tokenizer.encode(p), c);
        const out: number[] = [];
        while (out.length < N) {
          out.push(argmax(logits));
          logits = await m.model.forward([out.at(-1)!], c);
        }
        aloneText.push(out);
      }
      // Sequence i joins at step 2i and leaves after N tokens: the batch grows and shrinks.
      const seqs = PROMPTS.map((p, i) => ({ prompt: m.tokenizer.encode(p), cache: cache(), out: [] as number[], joins: 2 * i, logits: null as Float32Array | null }));
      for (let step = 0; seqs.some((s) => s.out.length < N); step++) {
        const live = seqs.filter((s) => step >= s.joins && s.out.length < N);
        if (!live.length) continue;
        const out = await m.model.forwardBatch(live.map((s) => (s.logits ? { tokens: [s.out.at(-1)!], cache: s.cache } : { tokens: s.prompt, cache: s.cache })));
        live.forEach((s, i) => {
          s.logits = out[i];
          s.out.push(argmax(out[i]));
        });
      }
      seqs.forEach((s, i) => assert.deepEqual(s.out, aloneText[i], `${JSON.stringify(PROMPTS[i])} generated differently in the batch`));
    });

    it('fails a step with a bad sequence before writing any cache', async function () {
      const [a, b] = [cache(), cache()];
      await m.model.forward([1, 2, 3], a);
      await assert.rejects(m.model.forwardBatch([{ tokens: [4], cache: a }, { tokens: [m.checkpoint.config.vocabSize], cache: b }]), /outside the vocabulary/);
      await assert.rejects(m.model.forwardBatch([{ tokens: [4], cache: a }, { tokens: new Array(300).fill(1), cache: b }]), /context is 256 positions/);
      await assert.rejects(m.model.forwardBatch([{ tokens: [4], cache: a }, { tokens: [5], cache: a }]), /share a KV cache/);
      await assert.rejects(m.model.forwardBatch([]), /at least one sequence/);
      assert.equal(a.length, 3);
      assert.equal(b.length, 0);
      const again = await m.model.forwardBatch([{ tokens: [4], cache: a }, { tokens: [5, 6], cache: b }]);
      assert.deepEqual([a.length, b.length, again.length], [4, 2, 2]);
    });

    it("tells the engine each layer's predicted experts after it asked for the layer before's, ahead of their compute; layer 0's from the embeddings", async function () {
      const events: string[] = [];
      const inner = m.engine;
      const spy: ExpertEngine = {
        prefetch: (layer, ids) => events.push(`prefetch ${layer} ${ids.length}`),
        // As an engine that fetches: it asks for its experts in the call, computes after its first await.
        compute: (layer, hidden, ids, weights, T) => {
          events.push(`ask ${layer}`);
          return Promise.resolve().then(() => {
            events.push(`compute ${layer}`);
            return inner.compute(layer, hidden, ids, weights, T);
          });
        },
        beginForward: (s) => events.push(`begin ${s.tokens}/${s.sequences}/${s.prefillTokens}`),
        endForward: () => events.push('end'),
        dispose: () => {},
      };
      const [a, b] = [cache(), cache()];
      await m.model.forwardBatch([{ tokens: [1, 2, 3], cache: a }, { tokens: [4], cache: b }], spy);
      const L = m.checkpoint.config.numLayers;
      const k = m.checkpoint.config.topK;
      assert.equal(events[0], 'begin 4/2/3');
      assert.equal(events.at(-1), 'end');
      const first = (prefix: string) => events.findIndex((e) => e.startsWith(prefix));
      for (let l = 0; l < L; l++) {
        const p = first(`prefetch ${l} `);
        assert.ok(p > 0, `layer ${l} was never hinted: ${events.join(', ')}`);
        // Layer 0's hint comes before any layer asks (from the embeddings); layer l's after layer
        // l − 1 asked for its own experts (their fetches go first) and before they compute, so
        // its fetches overlap them.
        if (l === 0) assert.ok(p < first('ask 0'), `layer 0's hint came late: ${events.join(', ')}`);
        else {
          assert.ok(p > first(`ask ${l - 1}`), `layer ${l}'s hint came before layer ${l - 1}'s own fetches: ${events.join(', ')}`);
          assert.ok(p < first(`compute ${l - 1}`), `layer ${l}'s hint came late: ${events.join(', ')}`);
        }
      }
      // The hints cover every token of the step.
      assert.equal(events.filter((e) => e.startsWith('prefetch 0 ')).reduce((n, e) => n + Number(e.split(' ')[2]), 0), 4 * k);
    });
  });
}
