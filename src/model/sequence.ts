/**
 * One generation as a state machine that a scheduler steps: its prompt, its own KV cache, its own
 * seeded sampler and stop strings. Each step it asks for some tokens to run (step(): the next
 * chunk of its prompt, or the token it sampled last), and takes the logits that step produced
 * (advance()): while the prompt is not all in, nothing happens; after it, one token is sampled,
 * decoded, checked against the stop strings and the limits, and streamed.
 *
 * generate() steps one sequence alone; the server's batch scheduler (src/serve/batcher.ts) steps
 * many in one forward pass. Both go through this class, so a sequence generates the same text
 * whichever runs it: the prompt is cut into the same chunks (fixed by prefillChunk, never by what
 * else is in a step) and sampling reads only this sequence's logits and random.
 *
 * Text rules: stop strings are cut from the text and never streamed — text that could still turn
 * into a stop string is held back until it cannot — a sampled end-of-sequence token (stopTokens)
 * ends it with finish reason 'stop' and adds no text, and a generation ends with finish reason
 * 'length' at max tokens or where the context ends (the last sampled token needs no forward pass,
 * so prompt + completion may reach the context + 1).
 *
 * Scores: with `logprobs` (top-N, 0..20) every sampled token carries its log-probability and the N
 * most likely tokens of its position; with `echo` as well the prompt is scored too — its steps ask
 * the forward for every position's logits (SequenceStep.allLogits), and prompt token i gets the
 * log-probability the model gave it after tokens 0..i−1 (token 0 has none: null). Log-probabilities
 * are the log-softmax of the model's own logits: logit_bias, the penalties and the temperature
 * change which token is sampled, not what the model is reported to think of it. With maxTokens 0
 * the sequence only runs (and, with echo, scores) its prompt, which may then fill the whole context.
 *
 * @example
 * const seq = new GenerationSequence(model.config, tokenizer, 'Call me', { maxTokens: 8 });
 * while (!seq.done) seq.advance((await model.forwardBatch([seq.step()]))[0]);
 * seq.result.text;
 */
import { KvCache } from './kv-cache.js';
import { adjustLogits, logSoftmax, sample, seededRandom, topLogprobs, type SamplingOptions } from './sampling.js';
import type { Tokenizer } from './tokenizer.js';
import type { SequenceStep } from './transformer.js';
import type { ModelConfig } from './types.js';

/** What the model thought of one token at its position. */
export interface TokenLogprob {
  token: number;
  /** log P(token | what came before); null for the prompt's first token (nothing came before). */
  logprob: number | null;
  /** The position's most likely tokens, most likely first (as many as `logprobs` asked); null with logprob null. */
  top: { token: number; logprob: number }[] | null;
}

/** Top-N asked for at most, as OpenAI allows. */
export const MAX_TOP_LOGPROBS = 20;

export interface SequenceOptions extends SamplingOptions {
  /** Tokens to generate at most (default 64; 0: only run the prompt). */
  maxTokens?: number;
  /** Report each sampled token's log-probability and its position's `logprobs` most likely tokens (0..20). */
  logprobs?: number;
  /** With logprobs: score the prompt's tokens too (Generation.promptLogprobs). */
  echo?: boolean;
  /** Called once, when the whole prompt has run, before any token is sampled: with its scores when echoing with logprobs. */
  onPromptRun?: (scores?: TokenLogprob[]) => void;
  stop?: string[];
  /**
   * Token ids that end the generation when sampled, finish reason 'stop', their text not added
   * (default: the model's end-of-sequence ids, config.eosTokenIds; [] generates past them).
   */
  stopTokens?: readonly number[];
  /** Receives the text as it becomes final. */
  onText?: (delta: string) => void;
  /** Called with every token sampled, the moment it exists (before its text is final), and its score with logprobs. */
  onToken?: (token: number, score?: TokenLogprob) => void;
  /** Prompt tokens per forward step (default: the whole prompt in one step). */
  prefillChunk?: number;
}

export interface Generation {
  text: string;
  finishReason: 'stop' | 'length';
  promptTokens: number;
  completionTokens: number;
  /** The prompt's token ids. */
  prompt: readonly number[];
  /** Every sampled token's id, in order (including any that completed a stop string). */
  tokens: number[];
  /** With logprobs: each sampled token's score, as `tokens`. */
  logprobs?: TokenLogprob[];
  /** With echo and logprobs: each prompt token's score (the first one's logprob null). */
  promptLogprobs?: TokenLogprob[];
}

/** What a sequence needs of the model's configuration: its context and the KV cache's shape. */
export type SequenceModelConfig = Pick<ModelConfig, 'numLayers' | 'numKvHeads' | 'headDim' | 'maxPositions' | 'eosTokenIds'>;

export class GenerationSequence {
  /** The prompt's token ids. */
  readonly prompt: readonly number[];
  private readonly maxTokens: number;
  private readonly stops: string[];
  private readonly chunk: number;
  private readonly random: () => number;
  private readonly decoder: ReturnType<Tokenizer['streamDecoder']>;
  private kv: KvCache | null = null;
  /** Prompt tokens already run. */
  private fed = 0;
  /** The token sampled last, which the next decode step runs. */
  private last = -1;
  private produced = 0;
  private text = '';
  /** Characters of text already handed to onText. */
  private sent = 0;
  private finished: Generation | null = null;
  private readonly topN: number | undefined;
  private readonly scorePrompt: boolean;
  private readonly sampled: number[] = [];
  private readonly scores: TokenLogprob[] = [];
  private readonly promptScores: TokenLogprob[] = [];
  /** How often each token id was sampled (the penalties read it). */
  private readonly counts = new Map<number, number>();

  /**
   * Takes the model's configuration, its tokenizer, the prompt (text, or token ids) and the
   * options; throws a RangeError or TypeError naming what is wrong (an empty prompt, one that
   * fills the context, a stop that is not a string, a bad max tokens or prefill chunk), so that a
   * sequence that exists can be stepped.
   */
  constructor(
    private readonly config: SequenceModelConfig,
    tokenizer: Pick<Tokenizer, 'encode' | 'streamDecoder'>,
    prompt: string | readonly number[],
    private readonly opts: SequenceOptions = {},
  ) {
    const ids = typeof prompt === 'string' ? tokenizer.encode(prompt) : [...prompt];
    if (ids.length === 0) throw new RangeError('the prompt is empty');
    this.maxTokens = opts.maxTokens ?? 64;
    if (!(Number.isInteger(this.maxTokens) && this.maxTokens >= 0)) throw new RangeError(`max tokens must be a whole number ≥ 0, got ${this.maxTokens}`);
    // A prompt that is only run may fill the context; one to continue must leave a position.
    if (this.maxTokens === 0 ? ids.length > config.maxPositions : ids.length >= config.maxPositions) throw new RangeError(`the prompt is ${ids.length} tokens; the context holds ${config.maxPositions}`);
    this.prompt = ids;
    this.topN = opts.logprobs;
    if (this.topN !== undefined && !(Number.isInteger(this.topN) && this.topN >= 0 && this.topN <= MAX_TOP_LOGPROBS)) throw new RangeError(`logprobs must be a whole number in 0..${MAX_TOP_LOGPROBS}, got ${this.topN}`);
    this.scorePrompt = this.topN !== undefined && opts.echo === true;
    for (const [name, v] of [['presence penalty', opts.presencePenalty], ['frequency penalty', opts.frequencyPenalty]] as const) {
      if (v !== undefined && !(Number.isFinite(v) && v >= -2 && v <= 2)) throw new RangeError(`the ${name} must be a number in [-2, 2], got ${v}`);
    }
    for (const [id, b] of opts.logitBias ?? []) {
      if (!(Number.isInteger(id) && id >= 0 && Number.isFinite(b) && b >= -100 && b <= 100)) throw new RangeError(`a logit bias maps a token id ≥ 0 to a number in [-100, 100], got ${id} → ${b}`);
    }
    this.chunk = opts.prefillChunk ?? ids.length;
    if (!(Number.isInteger(this.chunk) && this.chunk >= 1)) throw new RangeError(`the prefill chunk must be a whole number of tokens ≥ 1, got ${this.chunk}`);
    for (const s of opts.stop ?? []) if (typeof s !== 'string') throw new TypeError(`a stop must be a string, got ${typeof s}`);
    this.stops = (opts.stop ?? []).filter((s) => s.length > 0);
    this.random = seededRandom(opts.seed ?? Math.floor(Math.random() * 2 ** 32));
    this.decoder = tokenizer.streamDecoder();
  }

  /** This sequence's KV cache, made at its first step (a request waiting its turn holds none). */
  get cache(): KvCache {
    this.kv ??= KvCache.forModel(this.config);
    return this.kv;
  }

  /** Whether the prompt is still being run (the next step is a prompt chunk). */
  get prefilling(): boolean {
    return this.fed < this.prompt.length;
  }

  get done(): boolean {
    return this.finished !== null;
  }

  /** The finished generation; throws before it is done. */
  get result(): Generation {
    if (!this.finished) throw new Error('the sequence has not finished');
    return this.finished;
  }

  /**
   * What the next forward step runs for this sequence: the next prompt chunk (prefillChunk tokens,
   * the last one shorter) while prefilling, else the token sampled last. Asking again before
   * advance() gives the same tokens.
   */
  step(): SequenceStep {
    if (this.finished) throw new Error('the sequence has finished: it has no next step');
    if (this.prefilling) {
      const tokens = this.prompt.slice(this.fed, this.fed + this.chunk);
      return this.scorePrompt ? { tokens, cache: this.cache, prefill: true, allLogits: true } : { tokens, cache: this.cache, prefill: true };
    }
    return { tokens: [this.last], cache: this.cache, prefill: false };
  }

  /**
   * Takes the logits of the step() just run (its cache already advanced by it): [V], or [T, V]
   * for a prompt chunk being scored. Scores the chunk's prompt tokens when echoing. After the
   * prompt's last chunk and after every decode step, samples the next token, calls onToken, and
   * streams whatever text became final; may finish the sequence. Throws if the cache does not
   * hold the step or the logits do not match it, or whatever sampling or the hooks throw.
   */
  advance(logits: Float32Array): void {
    const step = this.step();
    const ran = step.tokens.length;
    const expected = this.prefilling ? this.fed + ran : this.prompt.length + this.produced;
    if (this.cache.length !== expected) throw new Error(`the KV cache holds ${this.cache.length} positions; the step just run should have left ${expected}`);
    if (this.prefilling) {
      if (step.allLogits) {
        if (logits.length % ran !== 0) throw new Error(`a scored prompt chunk of ${ran} tokens needs ${ran} rows of logits; got ${logits.length} values`);
        const V = logits.length / ran;
        if (this.fed === 0) this.promptScores.push({ token: this.prompt[0], logprob: null, top: null });
        // Row j (position fed + j) predicts the prompt's token fed + j + 1, if there is one.
        for (let j = 0; j < ran && this.fed + j + 1 < this.prompt.length; j++) this.promptScores.push(this.score(logits.subarray(j * V, (j + 1) * V), this.prompt[this.fed + j + 1]));
        logits = logits.subarray((ran - 1) * V);
      }
      this.fed += ran;
      if (this.prefilling) return; // a chunk before the prompt's last: nothing to sample yet
      this.opts.onPromptRun?.(this.scorePrompt ? this.promptScores.slice() : undefined);
      if (this.maxTokens === 0) {
        this.finish('length');
        return;
      }
    }
    const next = sample(adjustLogits(logits, this.opts, this.counts), this.opts, this.random);
    const score = this.topN === undefined ? undefined : this.score(logits, next);
    this.produced++;
    this.sampled.push(next);
    this.counts.set(next, (this.counts.get(next) ?? 0) + 1);
    if (score) this.scores.push(score);
    this.opts.onToken?.(next, score);
    if ((this.opts.stopTokens ?? this.config.eosTokenIds ?? []).includes(next)) {
      this.text += this.decoder.flush();
      this.finish('stop');
      return;
    }
    this.text += this.decoder.push(next);
    const hit = firstStop(this.text, this.stops);
    if (hit >= 0) {
      this.text = this.text.slice(0, hit);
      this.finish('stop');
      return;
    }
    if (this.produced >= this.maxTokens || this.cache.length >= this.config.maxPositions) {
      this.text += this.decoder.flush();
      this.finish('length');
      return;
    }
    this.emit(this.text.length - heldBack(this.text, this.stops));
    this.last = next;
  }

  /** What the model's logits [V] of one position say of `token` there, with the top-N. */
  private score(logits: Float32Array, token: number): TokenLogprob {
    const lp = logSoftmax(logits);
    return { token, logprob: lp[token], top: topLogprobs(lp, this.topN ?? 0) };
  }

  private finish(reason: Generation['finishReason']): void {
    this.emit(this.text.length);
    this.finished = {
      text: this.text, finishReason: reason, promptTokens: this.prompt.length, completionTokens: this.produced, prompt: this.prompt, tokens: this.sampled,
      ...(this.topN === undefined ? {} : { logprobs: this.scores }),
      ...(this.scorePrompt ? { promptLogprobs: this.promptScores } : {}),
    };
  }

  private emit(upTo: number): void {
    if (upTo > this.sent) {
      const delta = this.text.slice(this.sent, upTo);
      this.sent = upTo;
      this.opts.onText?.(delta);
    }
  }
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
