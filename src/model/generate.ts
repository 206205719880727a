/**
 * Text generation: prefill the prompt, then decode token by token with the sampler until
 * max tokens, a stop string, or the end of the context. Stop strings are cut from the text, and a
 * streaming caller never sees text that might still turn into a stop string.
 *
 * This is one GenerationSequence (sequence.ts) stepped alone through the model's batched forward
 * step, the same way the server's scheduler steps many: there is one way through the code.
 */
import { GenerationSequence, type Generation, type SequenceOptions } from './sequence.js';
import type { Tokenizer } from './tokenizer.js';
import type { MoeTransformer } from './transformer.js';
import type { ExpertEngine } from '../offload/expert-engine.js';

export type { Generation } from './sequence.js';

export interface GenerateOptions extends SequenceOptions {
  /**
   * Stops the generation: checked before the prompt and before every later step. With a signal,
   * generate yields to the event loop once per step, so that I/O (a client hanging up) gets the
   * chance to fire it; the forward pass alone may never let the loop run. An aborted generation
   * rejects with the signal's reason.
   */
  signal?: AbortSignal;
  /** Computes the experts instead of the model's own engine (the canary runner's strict engine). */
  engine?: ExpertEngine;
}

/**
 * Generates a continuation of `prompt` with `model`; resolves with its text, finish reason and
 * token counts. Rejects with a RangeError for an empty prompt or one that fills the context, and
 * with the signal's reason when `opts.signal` aborts.
 */
export async function generate(model: MoeTransformer, tokenizer: Tokenizer, prompt: string, opts: GenerateOptions = {}): Promise<Generation> {
  const seq = new GenerationSequence(model.config, tokenizer, prompt, opts);
  opts.signal?.throwIfAborted();
  for (let first = true; !seq.done; first = false) {
    if (opts.signal && !first) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      opts.signal.throwIfAborted();
    }
    const [logits] = await model.forwardBatch([seq.step()], opts.engine);
    seq.advance(logits);
  }
  return seq.result;
}
