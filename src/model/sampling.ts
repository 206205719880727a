/**
 * Choosing the next token from logits: greedy (temperature 0), or temperature with nucleus
 * (top-p) sampling from a seeded generator, so a seed reproduces a completion exactly.
 */

export interface SamplingOptions {
  /** 0 (default) is greedy. */
  temperature?: number;
  /** Keep the smallest set of tokens whose probability reaches top_p (default 1: all). */
  topP?: number;
  /** Seed of the sampler (default: random). */
  seed?: number;
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
