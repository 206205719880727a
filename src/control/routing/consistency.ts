/**
 * Local routing consistency of one MoE layer (Liang et al., "Not All Models Suit Expert
 * Offloading", arXiv 2505.16056; the definitions as the paper's code computes them, ljcleo/moe-lrc
 * src/30_srp_calc.py, 31_srp_refine.py, 41_sch_calc.py), and the cache ebserve actually runs,
 * replayed over the same routing. Pure functions over routing traces; nothing here runs a model.
 *
 * Shapes: a trace is one layer's routing over a corpus, each sequence's tokens' expert ids
 * [T, k] row-major (token t's k distinct experts at t·k … t·k + k − 1); E experts, k per token,
 * L the segment length in tokens, c a cache size in experts.
 *
 * SRP(L), segment routing best performance: how well one fixed group of experts per segment
 * covers a segment of L consecutive tokens. For every window of L tokens inside a sequence
 * (sliding: every start position), count n_e, the tokens of the window routed to expert e. The
 * window's group is {e : n_e ≥ j}, "routed" to for all L tokens: it predicts |group|·L
 * (token, expert) pairs, of which Σ_{e∈group} n_e are real, against k·L real ones. SRP is the best
 * micro-averaged F1 over the threshold j (one j for the whole corpus, 0 ≤ j ≤ L):
 *   SRP = max_j 2·Σ_w Σ_{n_e(w) ≥ j} n_e(w) / (L·Σ_w |{e : n_e(w) ≥ j}| + Σ_w k·L).
 * 1 means every window's tokens all use the same k experts; 2k/(E + k) is what taking every
 * expert scores.
 *
 * SCH(L, c), segment cache best hit rate: the hit rate of a cache of c experts that sees the
 * routing of the next L tokens and, when full, evicts the expert those tokens use least (the least
 * recently used among equals). The paper computes it for every c at once as a stack algorithm; we
 * replay the cache once per c (the same cache, and the same replay as ebserve's own policies).
 *
 * The replay (the same for SCH, LRU and LFU): the sequences are one stream, as a server's cache
 * sees one request after another. Per token, its k experts are looked up against the cache as it
 * was before the token (each found one is a hit), then the found ones are touched and the missing
 * ones inserted, evicting in the policy's order among experts this token does not use (they are
 * all needed at once: the fetcher pins every expert of a step while it computes). A cache starts
 * warm, as the paper's does: a miss while the cache still has a free slot (it has never been full)
 * counts as a hit — the cache would have held that expert from the start — so a cache of all E
 * experts hits every time.
 *
 * @example
 * const trace = { numExperts: 8, topK: 2, sequences: [Int32Array.from([0, 1, 0, 1, 2, 3])] };
 * segmentRoutingBest(trace, 2);                 // 0.8: one window all {0, 1}, one of four experts once each
 * cacheHitRate(trace, 2, 'lru');               // LRU with room for two experts
 */
import { LfuPolicy, LruPolicy, type EvictionPolicy } from '../../offload/eviction.js';

export interface LayerTrace {
  numExperts: number;
  /** Experts each token uses (k). */
  topK: number;
  /** Each sequence's routing, [T, k] row-major. */
  sequences: ArrayLike<number>[];
}

/** What replays a cache: ebserve's own policies (src/offload/eviction.ts) or the paper's segment cache. */
export type CachePolicyName = 'lru' | 'lfu' | 'segment';

/** Tokens of a sequence. */
const tokensOf = (trace: LayerTrace, s: ArrayLike<number>) => Math.floor(s.length / trace.topK);

/** The longest sequence of `trace`, in tokens. */
export function longestSequence(trace: LayerTrace): number {
  return trace.sequences.reduce((m, s) => Math.max(m, tokensOf(trace, s)), 0);
}

/** Throws a RangeError naming `segment` unless it is a whole number from 1 to the longest sequence. */
export function checkSegment(trace: LayerTrace, segment: number): void {
  const longest = longestSequence(trace);
  if (!(Number.isInteger(segment) && segment >= 1 && segment <= longest)) {
    throw new RangeError(`segment must be a whole number of tokens from 1 to ${longest} (the longest sequence), got ${segment}`);
  }
}

/**
 * SRP over windows of `segment` tokens (see the file's comment), in [0, 1]. Windows never cross
 * sequences; a sequence shorter than the segment contributes none. Throws a RangeError naming
 * `segment` when no window fits.
 */
export function segmentRoutingBest(trace: LayerTrace, segment: number): number {
  checkSegment(trace, segment);
  const { numExperts: E, topK: k } = trace;
  const L = segment;
  // hist[n]: (window, expert) pairs where the expert serves n of the window's tokens.
  const hist = new Float64Array(L + 1);
  const n = new Int32Array(E);
  let windows = 0;
  for (const s of trace.sequences) {
    const T = tokensOf(trace, s);
    if (T < L) continue;
    n.fill(0);
    for (let t = 0; t < T; t++) {
      for (let i = 0; i < k; i++) n[s[t * k + i]]++;
      if (t >= L) for (let i = 0; i < k; i++) n[s[(t - L) * k + i]]--;
      if (t >= L - 1) {
        windows++;
        for (let e = 0; e < E; e++) hist[n[e]]++;
      }
    }
  }
  const actual = windows * k * L;
  let best = 0;
  let matched = 0;
  let grouped = 0;
  // Thresholds from the strictest down: the group grows by the experts at exactly j.
  for (let j = L; j >= 0; j--) {
    matched += j * hist[j];
    grouped += hist[j];
    best = Math.max(best, (2 * matched) / (grouped * L + actual));
  }
  return best;
}

/**
 * The paper's segment cache as an eviction order: the experts the next `segment` tokens use
 * least first, the least recently used first among equals. `at(t)` moves it to token t.
 */
class SegmentCachePolicy implements EvictionPolicy<number> {
  readonly name = 'segment';
  private readonly lastUse = new Map<number, number>();
  /** Uses of each expert in tokens t+1 … t+L, t the token being served. */
  private readonly future: Int32Array;
  private t = 0;
  private clock = 0;

  constructor(private readonly stream: Int32Array, private readonly k: number, numExperts: number, private readonly segment: number) {
    this.future = new Int32Array(numExperts);
    for (let u = 1; u <= segment; u++) this.count(u, 1);
  }

  /** Token t is being served: the window becomes t+1 … t+L. */
  at(t: number): void {
    for (; this.t < t; this.t++) {
      this.count(this.t + 1, -1);
      this.count(this.t + 1 + this.segment, 1);
    }
  }

  private count(token: number, by: number): void {
    if (token * this.k >= this.stream.length) return;
    for (let i = 0; i < this.k; i++) this.future[this.stream[token * this.k + i]] += by;
  }

  insert(key: number): void {
    this.lastUse.set(key, ++this.clock);
  }
  touch(key: number): void {
    if (this.lastUse.has(key)) this.lastUse.set(key, ++this.clock);
  }
  remove(key: number): void {
    this.lastUse.delete(key);
  }
  order(): number[] {
    return [...this.lastUse.entries()].sort(([a, ua], [b, ub]) => this.future[a] - this.future[b] || ua - ub).map(([key]) => key);
  }
}

/** The stream of every sequence's routing, one after another. */
function streamOf(trace: LayerTrace): Int32Array {
  const total = trace.sequences.reduce((n, s) => n + tokensOf(trace, s) * trace.topK, 0);
  const out = new Int32Array(total);
  let at = 0;
  for (const s of trace.sequences) {
    const len = tokensOf(trace, s) * trace.topK;
    for (let i = 0; i < len; i++) out[at + i] = s[i];
    at += len;
  }
  return out;
}

/**
 * The hit rate of a cache of `cache` experts replayed over `trace` under `policy` (see the file's
 * comment): lru and lfu are ebserve's own policies (src/offload/eviction.ts, the same objects the
 * device cache runs), segment the paper's segment cache seeing the next `segment` tokens (SCH).
 */
export function cacheHitRate(trace: LayerTrace, cache: number, policy: CachePolicyName, segment = 1): number {
  const { numExperts: E, topK: k } = trace;
  if (!(Number.isInteger(cache) && cache >= k && cache <= E)) throw new RangeError(`cache must be a whole number of experts from ${k} (top-k) to ${E}, got ${cache}`);
  const stream = streamOf(trace);
  const T = stream.length / k;
  if (T === 0) return 1;
  const segmentPolicy = policy === 'segment' ? new SegmentCachePolicy(stream, k, E, segment) : undefined;
  const order: EvictionPolicy<number> = segmentPolicy ?? (policy === 'lfu' ? new LfuPolicy<number>() : new LruPolicy<number>());
  const held = new Uint8Array(E);
  const usedNow = new Uint8Array(E);
  let size = 0;
  let hits = 0;
  for (let t = 0; t < T; t++) {
    segmentPolicy?.at(t);
    const first = t * k;
    for (let i = 0; i < k; i++) usedNow[stream[first + i]] = 1;
    // Found ones are taken first (a use each), as the fetcher's acquires find them before any
    // missing one has crossed; then each missing one makes room and goes in.
    for (let i = 0; i < k; i++) {
      const e = stream[first + i];
      if (held[e]) {
        hits++;
        order.touch(e);
      }
    }
    for (let i = 0; i < k; i++) {
      const e = stream[first + i];
      if (held[e]) continue;
      if (size >= cache) {
        let victim = -1;
        for (const x of order.order()) {
          if (!usedNow[x]) {
            victim = x;
            break;
          }
        }
        order.remove(victim);
        held[victim] = 0;
        size--;
      } else hits++; // warm start: a free slot would have held it already
      held[e] = 1;
      size++;
      order.insert(e);
    }
    for (let i = 0; i < k; i++) usedNow[stream[first + i]] = 0;
  }
  return hits / (T * k);
}
