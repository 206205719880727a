/**
 * Text generation: prefill the prompt, then decode token by token with the sampler until
 * max tokens, a stop string, or the end of the context. Stop strings are cut from the text, and a
 * streaming caller never sees text that might still turn into a stop string.
 */
import { KvCache } from './kv-cache.js';
import { sample, seededRandom, type SamplingOptions } from './sampling.js';
import type { Tokenizer } from './tokenizer.js';
import type { MoeTransformer } from './transformer.js';
import type { ExpertEngine } from '../offload/expert-engine.js';

export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate at most (default 64). */
  maxTokens?: number;
  stop?: string[];
  /** Receives the text as it becomes final. */
  onText?: (delta: string) => void;
  /**
   * Stops the generation: checked before the prompt and before every decode step. With a signal,
   * generate yields to the event loop once per step, so that I/O (a client hanging up) gets the
   * chance to fire it; the forward pass alone may never let the loop run. An aborted generation
   * rejects with the signal's reason.
   */
  signal?: AbortSignal;
  /** Computes the experts instead of the model's own engine (the canary runner's strict engine). */
  engine?: ExpertEngine;
}

export interface Generation {
  text: string;
  finishReason: 'stop' | 'length';
  promptTokens: number;
  completionTokens: number;
}

export async function generate(model: MoeTransformer, tokenizer: Tokenizer, prompt: string, opts: GenerateOptions = {}): Promise<Generation> {
  const c = model.config;
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new RangeError('the prompt is empty');
  if (ids.length >= c.maxPositions) {
    throw new RangeError(`the prompt is ${ids.length} tokens; the context holds ${c.maxPositions}`);
  }
  opts.signal?.throwIfAborted();
  const maxTokens = opts.maxTokens ?? 64;
  const stops = (opts.stop ?? []).filter((s) => s.length > 0);
  const random = seededRandom(opts.seed ?? Math.floor(Math.random() * 2 ** 32));
  const cache = KvCache.forModel(c);
  const decoder = tokenizer.streamDecoder();
  let text = '';
  let sent = 0;
  let produced = 0;
  let logits = await model.forward(ids, cache, false, opts.engine);
  const emit = (upTo: number) => {
    if (upTo > sent) {
      opts.onText?.(text.slice(sent, upTo));
      sent = upTo;
    }
  };
  while (produced < maxTokens) {
    const next = sample(logits, opts, random);
    produced++;
    text += decoder.push(next);
    const hit = firstStop(text, stops);
    if (hit >= 0) {
      text = text.slice(0, hit);
      emit(text.length);
      return { text, finishReason: 'stop', promptTokens: ids.length, completionTokens: produced };
    }
    emit(text.length - heldBack(text, stops));
    if (produced >= maxTokens || cache.length >= c.maxPositions) break;
    if (opts.signal) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      opts.signal.throwIfAborted();
    }
    logits = await model.forward([next], cache, false, opts.engine);
  }
  text += decoder.flush();
  emit(text.length);
  return { text, finishReason: 'length', promptTokens: ids.length, completionTokens: produced };
}

function firstStop(text: string, stops: string[]): number {
  let at = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}

/** How many trailing characters could be the start of a stop string. */
function heldBack(text: string, stops: string[]): number {
  let hold = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > hold; n--) {
      if (text.endsWith(s.slice(0, n))) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}
