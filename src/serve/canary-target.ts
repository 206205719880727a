// The loaded model as the canary runner sees it (src/control/canaries.ts): logits of a token run
// and greedy answers, each with the engine the runner names. Lives in serve because serve is the
// layer that knows both the model and the controller.
import { generate } from '../model/generate.js';
import { KvCache } from '../model/kv-cache.js';
import type { LoadedModel } from '../model/load.js';
import type { CanaryTarget } from '../control/canaries.js';
import type { ExpertEngine } from '../offload/expert-engine.js';

/** Runs one piece of canary work; the server's is the batch scheduler's betweenSteps. */
export type CanaryGate = <T>(work: () => Promise<T>) => Promise<T>;

/**
 * The canary target over `m`. Each call (one item: a logits pass, or one greedy answer) runs
 * through `gate`: the server passes its scheduler's betweenSteps, so an item never overlaps a
 * serving step; alone (the profiler, tests) it runs at once.
 */
export function canaryTarget(m: LoadedModel, gate: CanaryGate = (work) => work()): CanaryTarget {
  const c = m.checkpoint.config;
  const cache = () => KvCache.forModel(c);
  return {
    vocabSize: c.vocabSize,
    encode: (text) => m.tokenizer.encode(text),
    logits: (tokens, engine: ExpertEngine) => gate(() => m.model.forward(tokens, cache(), true, engine)),
    greedy: (prompt, maxTokens, stop, engine: ExpertEngine) =>
      gate(async () => (await generate(m.model, m.tokenizer, prompt, { maxTokens, stop: [stop], engine })).text),
  };
}
