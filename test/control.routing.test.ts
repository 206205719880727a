// Routing consistency on hand-made traces whose answers are worked out by hand: SRP, the paper's
// segment cache (SCH), ebserve's LRU and LFU replayed as the device cache runs them (checked against
// the real Tier driven the way the fetcher drives it), the recommendation, the bad inputs, and the
// server's rolling window.
import assert from 'node:assert/strict';

import { cacheHitRate, checkSegment, layerReport, routingChart, routingReport, RoutingWindow, segmentRoutingBest, TraceRecorder, type LayerTrace } from '../src/control/routing/index.js';
import { evictionPolicy } from '../src/offload/eviction.js';
import { Tier } from '../src/offload/tier.js';

/** A trace from token rows: [[0, 1], [2, 3]] is two tokens of k = 2. */
const trace = (numExperts: number, ...sequences: number[][][]): LayerTrace => ({
  numExperts,
  topK: sequences[0][0].length,
  sequences: sequences.map((rows) => Int32Array.from(rows.flat())),
});
const ones = (...ids: number[]) => ids.map((e) => [e]);
const close = (a: number, b: number, what: string, within = 1e-9) => assert.ok(Math.abs(a - b) < within, `${what}: ${a}, expected ${b}`);

/** Seeded uniform integers (mulberry32): random traces that are the same on every run. */
function rng(seed: number) {
  return (n: number) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

/** A random trace with some locality: each token keeps each of the previous token's experts with probability ~1/2. */
function randomTrace(seed: number, E: number, k: number, T: number): LayerTrace {
  const r = rng(seed);
  const rows: number[][] = [];
  let prev: number[] = [];
  for (let t = 0; t < T; t++) {
    const row: number[] = [];
    for (const e of prev) if (r(2) === 0 && row.length < k) row.push(e);
    while (row.length < k) {
      const e = r(E);
      if (!row.includes(e)) row.push(e);
    }
    rows.push(row);
    prev = row;
  }
  return trace(E, rows);
}

describe('segment routing best performance (SRP)', function () {
  it('is 1 when every token of every segment uses the same experts', function () {
    close(segmentRoutingBest(trace(8, [[0, 1], [0, 1], [0, 1], [0, 1]]), 2), 1, 'SRP');
    close(segmentRoutingBest(trace(8, [[0, 1], [0, 1]], [[5, 6], [5, 6], [5, 6]]), 2), 1, 'SRP over two sequences');
  });

  it('scores alternating experts 2/3 over segments of 2 (a group of four for two tokens of two)', function () {
    // Each window holds one token of {0, 1} and one of {2, 3}: every threshold-1 group is the four
    // experts, 4 of 8 predicted pairs real, 4 real in all: F1 = 2·4 / (8 + 4).
    close(segmentRoutingBest(trace(8, [[0, 1], [2, 3], [0, 1], [2, 3]]), 2), 2 / 3, 'SRP');
    // Segments of one token route perfectly whatever the routing.
    close(segmentRoutingBest(trace(8, [[0, 1], [2, 3], [0, 1], [2, 3]]), 1), 1, 'SRP at L = 1');
  });

  it('picks the best threshold over all windows (the file\'s example: 0.8)', function () {
    // Windows {0,1}{0,1} (two experts ×2) and {0,1}{2,3} (four ×1): threshold 1 predicts
    // 2·2 + 4·2 = 12 pairs, 8 of them real, 8 real: 16 / 20; threshold 2 gives 8 / 12.
    close(segmentRoutingBest(trace(8, [[0, 1], [0, 1], [2, 3]]), 2), 0.8, 'SRP');
  });

  it('never lets a window cross two sequences', function () {
    // Alone each sequence is constant; joined, the middle window would mix them.
    close(segmentRoutingBest(trace(8, [[0, 1], [0, 1]], [[2, 3], [2, 3]]), 2), 1, 'SRP');
  });

  it('names the segment when it is below 1, fractional, or longer than every sequence', function () {
    const t = trace(8, [[0, 1], [0, 1], [0, 1]]);
    for (const L of [0, -1, 1.5, 4]) assert.throws(() => segmentRoutingBest(t, L), /segment must be a whole number of tokens from 1 to 3 \(the longest sequence\), got/);
    assert.doesNotThrow(() => checkSegment(t, 3));
  });
});

describe('cache replays: the segment cache (SCH), LRU and LFU', function () {
  // 0 0 0 1 2 1 2 1 2 with one expert per token and room for two: LRU drops 0 (least recent) and
  // then holds 1 and 2; LFU drops the newcomer each time (0 was used three times) and thrashes;
  // the segment cache sees 1 and 2 coming and drops 0. The first two misses fill free slots (warm).
  const t = trace(3, ones(0, 0, 0, 1, 2, 1, 2, 1, 2));

  it('replays LRU, LFU and the segment cache to their hand-worked hit rates', function () {
    close(cacheHitRate(t, 2, 'lru'), 8 / 9, 'LRU');
    close(cacheHitRate(t, 2, 'lfu'), 4 / 9, 'LFU');
    close(cacheHitRate(t, 2, 'segment', 4), 8 / 9, 'segment cache');
    close(cacheHitRate(t, 1, 'lru'), 3 / 9, 'LRU with one slot');
  });

  it('lets the segment cache beat LRU when it sees the return of an expert LRU dropped', function () {
    // 0 1 2 0 with room for two: at 2, LRU drops 0 (least recent); the segment cache sees 0 among
    // the next tokens and drops 1 instead.
    const u = trace(3, ones(0, 1, 2, 0));
    close(cacheHitRate(u, 2, 'lru'), 2 / 4, 'LRU');
    close(cacheHitRate(u, 2, 'segment', 1), 3 / 4, 'segment cache, one token ahead');
    // 0 1 2 3 1: at 2 neither held expert comes back within one token: the tie goes to recency
    // (0 leaves), so 1 is still there when it returns; LRU drops 1 at 3 and misses it.
    const v = trace(4, ones(0, 1, 2, 3, 1));
    close(cacheHitRate(v, 2, 'segment', 1), 3 / 5, 'segment cache');
    close(cacheHitRate(v, 2, 'lru'), 2 / 5, 'LRU');
  });

  it('hits every time with every expert cached, and refuses a cache below top-k or above all experts', function () {
    const r = randomTrace(1, 8, 2, 300);
    for (const p of ['lru', 'lfu', 'segment'] as const) close(cacheHitRate(r, 8, p, 4), 1, p);
    assert.throws(() => cacheHitRate(r, 1, 'lru'), /cache must be a whole number of experts from 2 \(top-k\) to 8, got 1/);
    assert.throws(() => cacheHitRate(r, 9, 'lru'), /got 9/);
  });

  it('never does worse with the segment cache than with LRU or LFU on random traces with locality', function () {
    for (let seed = 1; seed <= 4; seed++) {
      const r = randomTrace(seed, 8, 2, 400);
      for (let c = 2; c <= 8; c++) {
        const sch = cacheHitRate(r, c, 'segment', 16);
        assert.ok(sch >= cacheHitRate(r, c, 'lru') - 0.02 && sch >= cacheHitRate(r, c, 'lfu') - 0.02, `seed ${seed} cache ${c}`);
      }
    }
  });

  it('replays LRU and LFU exactly as the device cache runs them (Tier, pins, policies of eviction.ts)', function () {
    // The fetcher's way, per step: every expert found is taken (get: a use) and pinned, then each
    // missing one makes room (reserve, never evicting a pinned one) and is inserted and pinned;
    // all are released after the step. A miss into room never used before is a warm hit.
    const viaTier = (tr: LayerTrace, cache: number, policy: 'lru' | 'lfu') => {
      const tier = new Tier<number, true>('A', cache, evictionPolicy<number>(policy));
      const s = tr.sequences[0];
      const k = tr.topK;
      let hits = 0;
      let everFull = false;
      for (let t = 0; t < s.length / k; t++) {
        const used = Array.from({ length: k }, (_, i) => s[t * k + i]);
        const missing = used.filter((e) => tier.peek(e) === undefined);
        for (const e of used) if (tier.get(e)) { hits++; tier.pin(e); }
        for (const e of missing) {
          if (!everFull && tier.used + 1 <= cache) hits++;
          assert.ok(tier.reserve(1, e));
          tier.set(e, true, 1);
          tier.pin(e);
          everFull ||= tier.used === cache;
        }
        for (const e of used) tier.unpin(e);
      }
      return hits / s.length;
    };
    for (let seed = 1; seed <= 3; seed++) {
      const r = randomTrace(seed, 8, 2, 500);
      for (const p of ['lru', 'lfu'] as const) for (const c of [2, 3, 5]) close(cacheHitRate(r, c, p), viaTier(r, c, p), `${p} cache ${c} seed ${seed}`);
    }
  });
});

describe('the routing report', function () {
  const t = trace(3, ones(0, 0, 0, 1, 2, 1, 2, 1, 2));

  it('lists every cache size from top-k to all experts with the three hit rates, and the smallest reaching the target', function () {
    const r = layerReport(5, t, { segment: 4, target: 0.85 });
    assert.equal(r.layer, 5);
    assert.deepEqual(r.sch.map((p) => p.cache), [1, 2, 3]);
    close(r.sch[1].lru_hit_rate, 0.8889, 'LRU at 2 (rounded)');
    close(r.sch[1].lfu_hit_rate, 0.4444, 'LFU at 2 (rounded)');
    assert.equal(r.sch[2].hit_rate, 1);
    assert.equal(r.recommended_cache, 2, 'LRU reaches 0.85 at two experts');
    assert.equal(layerReport(5, t, { segment: 4, target: 0.9 }).recommended_cache, 3);
    assert.equal(layerReport(5, t, { segment: 4, target: 0.85, policy: 'lfu' }).recommended_cache, 3, 'LFU needs all three');
    assert.equal(layerReport(5, t, { segment: 4, target: 1 }).recommended_cache, 3);
  });

  it('names a target outside (0, 1]', function () {
    for (const target of [0, -0.1, 1.01, Number.NaN]) assert.throws(() => routingReport([t], { segment: 2, target }), /target must be a hit rate in \(0, 1\], got/);
  });

  it('draws one chart per layer with the three caches and the target', function () {
    const r = routingReport([t, t, t], { segment: 2, target: 0.9 });
    const svg = routingChart(r, 'test model');
    assert.equal(svg.match(/<svg /g)!.length, 4, 'an outer svg and three panels');
    for (const name of ['SCH (sees 2 ahead)', 'LRU', 'LFU', 'target 0.9', 'layer 2: SRP']) assert.ok(svg.includes(name), name);
  });
});

describe('recording routing', function () {
  it('keeps each sequence apart, per layer', function () {
    const rec = new TraceRecorder({ numLayers: 2, numExperts: 4, topK: 1 });
    rec.observe({ layer: 0, ids: [0, 1] });
    rec.observe({ layer: 1, ids: [2, 3] });
    rec.observe({ layer: 0, ids: [1] }); // a second chunk of the same sequence
    rec.endSequence();
    rec.observe({ layer: 0, ids: [3] });
    const [l0, l1] = rec.traces();
    assert.deepEqual(l0.sequences.map((s) => [...s]), [[0, 1, 1], [3]]);
    assert.deepEqual(l1.sequences.map((s) => [...s]), [[2, 3]]);
  });

  it('keeps the last N tokens of every layer in order, in memory that does not grow', function () {
    const w = new RoutingWindow({ numLayers: 2, numExperts: 8, topK: 2, tokens: 4 });
    w.observe({ layer: 0, ids: Int32Array.from([0, 1, 2, 3, 4, 5]) });
    w.observe({ layer: 1, ids: Int32Array.from([7, 6]) });
    assert.equal(w.tokens, 1, 'the fewest any layer holds');
    w.observe({ layer: 1, ids: Int32Array.from([5, 4, 3, 2, 1, 0, 6, 7, 0, 1]) });
    w.observe({ layer: 0, ids: Int32Array.from([6, 7, 0, 2, 1, 3]) });
    assert.equal(w.tokens, 4);
    const [l0, l1] = w.traces();
    assert.deepEqual([...l0.sequences[0]], [4, 5, 6, 7, 0, 2, 1, 3]);
    assert.deepEqual([...l1.sequences[0]], [3, 2, 1, 0, 6, 7, 0, 1]);
    w.observe({ layer: 0, ids: new Int32Array(2 * 1000) }); // a long prefill: only its last 4 tokens stay
    assert.deepEqual([...w.traces()[0].sequences[0]], new Array(8).fill(0));
    w.observe({ layer: 7, ids: [1, 2] }); // no such layer: ignored, never thrown inside a forward
    w.observe({ layer: 0, ids: [1, 2, 3] }); // not whole tokens: ignored
  });

  it('reports over the window, recomputing only after new tokens and at most every interval', async function () {
    const w = new RoutingWindow({ numLayers: 1, numExperts: 4, topK: 1, tokens: 64, report: { segment: 4, target: 0.9 }, minIntervalMs: 1000 });
    assert.equal(await w.refresh(0), null, 'fewer tokens than a segment');
    w.observe({ layer: 0, ids: [0, 0, 0, 0, 1, 1, 1, 1] });
    const first = (await w.refresh(10))!;
    close(first.layers[0].srp, segmentRoutingBest(trace(4, ones(0, 0, 0, 0, 1, 1, 1, 1)), 4), 'SRP of the window (rounded)', 1e-4);
    assert.deepEqual(first, routingReport(w.traces(), { segment: 4, target: 0.9 }), 'the sliced computation is the plain one');
    assert.equal(first.tokens, 8);
    assert.equal(w.latest, first);
    w.observe({ layer: 0, ids: [2, 3, 2, 3] });
    assert.equal(await w.refresh(500), first, 'new tokens, but within the interval: the last report');
    const [second, same] = await Promise.all([w.refresh(1500), w.refresh(1500)]);
    assert.notEqual(second, first);
    assert.equal(same, second, 'concurrent calls share one computation');
    assert.equal(second!.tokens, 12);
    assert.equal(await w.refresh(5000), second, 'no new tokens: the last report');
    assert.equal((await w.compute({ segment: 2, target: 0.5 }))!.segment, 2, 'other options: computed fresh');
    assert.equal(await w.compute({ segment: 13, target: 0.5 }), null, 'a segment longer than the window');
  });
});
