// The loaded model as the canary runner sees it (src/control/canaries.ts): logits of a token run
// (or of several at once, the references' batched pass) and greedy answers, each with the engine
// the runner names. Lives in serve because serve is the
// layer that knows both the model and the controller.
import { KvCache } from '../model/kv-cache.js';
import type { LoadedModel } from '../model/load.js';
import { GenerationSequence } from '../model/sequence.js';
import type { SequenceStep } from '../model/transformer.js';
import type { CanaryTarget } from '../control/canaries.js';
import type { ExpertEngine } from '../offload/expert-engine.js';

/** Runs one piece of canary work; the server's is the batch scheduler's betweenSteps. */
export type CanaryGate = <T>(work: () => Promise<T>) => Promise<T>;

/**
 * The canary target over `m`. Canary work goes through `gate` one forward step at a time — a
 * logits pass in chunks of `chunk` tokens, a greedy answer a token at a time — so that in the
 * server (whose gate is its scheduler's betweenSteps) canary work holds the batch, and any
 * admission, for about one serving step, never a whole item (a canary item, a forward over its
 * prompt and continuation on two engines, took ~33 ms on the embedded model: fifteen decode
 * steps). Alone (the profiler, tests) the gate runs work at once.
 */
export function canaryTarget(m: LoadedModel, gate: CanaryGate = (work) => work(), chunk = Infinity): CanaryTarget {
  const c = m.checkpoint.config;
  const V = c.vocabSize;
  const logitsBatch: CanaryTarget['logitsBatch'] = async (lists, engine: ExpertEngine, from = lists.map(() => 0)) => {
    if (from.length !== lists.length) throw new RangeError(`logitsBatch: ${from.length} first rows for ${lists.length} token lists`);
    lists.forEach((tokens, i) => {
      if (!(Number.isInteger(from[i]) && from[i] >= 0 && from[i] < tokens.length)) throw new RangeError(`logitsBatch: list ${i} has ${tokens.length} tokens; its first row ${from[i]} is not one of them`);
    });
    const caches = lists.map(() => KvCache.forModel(c));
    const out = lists.map((tokens, i) => new Float32Array((tokens.length - from[i]) * V));
    const longest = Math.max(0, ...lists.map((t) => t.length));
    const step = Number.isFinite(chunk) ? chunk : longest;
    for (let at = 0; at < longest; at += step) {
      // Every list not yet through, its next chunk: one sequence each of one forward step.
      const active = lists.flatMap((tokens, i) => (at < tokens.length ? [i] : []));
      const steps: SequenceStep[] = active.map((i) => ({
        tokens: lists[i].slice(at, at + step),
        cache: caches[i],
        // A chunk wholly before the first row wanted needs no logits (only its last row comes back).
        allLogits: at + step > from[i],
        prefill: true,
      }));
      const logits = await gate(() => m.model.forwardBatch(steps, engine));
      active.forEach((i, j) => {
        const end = at + steps[j].tokens.length;
        const first = Math.max(at, from[i]);
        if (first < end) out[i].set(logits[j].subarray((first - at) * V, (end - at) * V), (first - from[i]) * V);
      });
    }
    return out;
  };
  return {
    vocabSize: V,
    encode: (text) => m.tokenizer.encode(text),
    // One list's logits: the batched pass with a batch of one.
    logits: async (tokens, engine: ExpertEngine) => (await logitsBatch([tokens], engine))[0],
    logitsBatch,
    greedy: async (prompt, maxTokens, stop, engine: ExpertEngine) => {
      const seq = new GenerationSequence(c, m.tokenizer, prompt, { maxTokens, stop: [stop], prefillChunk: Number.isFinite(chunk) ? chunk : undefined });
      while (!seq.done) {
        const step = seq.step();
        seq.advance((await gate(() => m.model.forwardBatch([step], engine)))[0]);
      }
      return seq.result.text;
    },
  };
}
