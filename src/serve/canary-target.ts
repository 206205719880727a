// The loaded model as the canary runner sees it (src/control/canaries.ts): logits of a token run
// and greedy answers, each with the engine the runner names. Lives in serve because serve is the
// layer that knows both the model and the controller.
import { generate } from '../model/generate.js';
import { KvCache } from '../model/kv-cache.js';
import type { LoadedModel } from '../model/load.js';
import type { CanaryTarget } from '../control/canaries.js';
import type { ExpertEngine } from '../offload/expert-engine.js';

export function canaryTarget(m: LoadedModel): CanaryTarget {
  const c = m.checkpoint.config;
  const cache = () => KvCache.forModel(c);
  return {
    vocabSize: c.vocabSize,
    encode: (text) => m.tokenizer.encode(text),
    logits: (tokens, engine: ExpertEngine) => m.model.forward(tokens, cache(), true, engine),
    greedy: async (prompt, maxTokens, stop, engine: ExpertEngine) =>
      (await generate(m.model, m.tokenizer, prompt, { maxTokens, stop: [stop], engine })).text,
  };
}
