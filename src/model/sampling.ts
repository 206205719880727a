/**
 * Choosing the next token from logits: greedy (temperature 0), or temperature with nucleus
 * (top-p) sampling from a seeded generator, so a seed reproduces a completion exactly. Before
 * either, OpenAI's logit modifiers may shift the logits (adjustLogits): a bias per token id, and
 * presence/frequency penalties on the tokens this completion already produced. And what the API
 * reports of a position — the log-probabilities of its tokens and the N most likely — comes from
 * the model's own logits (logSoftmax, topLogprobs), never from the modified ones.
 */

export interface SamplingOptions {
  /** 0 (default) is greedy. */
  temperature?: number;
  /** Keep the smallest set of tokens whose probability reaches top_p (default 1: all). */
  topP?: number;
  /** Seed of the sampler (default: random). */
  seed?: number;
  /** Added to the logit of each token id before sampling (OpenAI's logit_bias; −100 bans, +100 forces). */
  logitBias?: ReadonlyMap<number, number>;
  /** Subtracted once from the logit of every token the completion already holds (OpenAI's presence_penalty). */
  presencePenalty?: number;
  /** Subtracted from a token's logit once per time the completion already holds it (OpenAI's frequency_penalty). */
  frequencyPenalty?: number;
}

/**
 * The logits sampling reads: OpenAI's rule
 *   logit[j] + bias[j] − count[j] · frequency_penalty − (count[j] > 0) · presence_penalty
 * where count[j] is how often the completion so far holds token j. Returns `logits` itself when
 * nothing applies, else a modified copy (the model's logits stay as they were, for logprobs).
 */
export function adjustLogits(logits: Float32Array, opts: SamplingOptions, counts: ReadonlyMap<number, number>): Float32Array {
  const presence = opts.presencePenalty ?? 0;
  const frequency = opts.frequencyPenalty ?? 0;
  const bias = opts.logitBias;
  const penalise = (presence !== 0 || frequency !== 0) && counts.size > 0;
  if (!penalise && !(bias && bias.size > 0)) return logits;
  const out = Float32Array.from(logits);
  if (bias) for (const [id, b] of bias) if (id >= 0 && id < out.length) out[id] += b;
  if (penalise) for (const [id, c] of counts) if (c > 0 && id < out.length) out[id] -= c * frequency + presence;
  return out;
}

/** One position's log-probabilities: log-softmax of `logits` (in f64). */
export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  let z = 0;
  for (const v of logits) z += Math.exp(v - max);
  const lse = max + Math.log(z);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** The `n` most likely token ids of a position and their log-probabilities, most likely first (ties: lower id first). */
export function topLogprobs(logprobs: Float64Array, n: number): { token: number; logprob: number }[] {
  const top: { token: number; logprob: number }[] = [];
  if (n <= 0) return top;
  for (let id = 0; id < logprobs.length; id++) {
    const lp = logprobs[id];
    if (top.length === n && !(lp > top[n - 1].logprob)) continue;
    let at = top.length;
    while (at > 0 && lp > top[at - 1].logprob) at--;
    top.splice(at, 0, { token: id, logprob: lp });
    if (top.length > n) top.pop();
  }
  return top;
}

/** A seeded generator of floats in [0, 1) (mulberry32). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Picks a token id from `logits` (one position). */
export function sample(logits: Float32Array, opts: SamplingOptions, random: () => number): number {
  const temperature = opts.temperature ?? 0;
  if (!(temperature > 0)) return argmax(logits);
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const probs = Array.from(logits, (v, id) => ({ id, p: Math.exp((v - max) / temperature) }));
  const z = probs.reduce((a, b) => a + b.p, 0);
  probs.sort((a, b) => b.p - a.p || a.id - b.id);
  const topP = opts.topP ?? 1;
  let kept = probs.length;
  let mass = 0;
  for (let i = 0; i < probs.length; i++) {
    mass += probs[i].p / z;
    if (mass >= topP) {
      kept = i + 1;
      break;
    }
  }
  const keptMass = probs.slice(0, kept).reduce((a, b) => a + b.p, 0);
  let r = random() * keptMass;
  for (let i = 0; i < kept; i++) {
    r -= probs[i].p;
    if (r < 0) return probs[i].id;
  }
  return probs[kept - 1].id;
}

export function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}
