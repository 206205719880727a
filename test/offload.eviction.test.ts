// Eviction policies (src/offload/eviction.ts) and the device-cache tier (src/offload/tier.ts).
// One conformance suite holds both policies to the EvictionPolicy contract, then each is checked
// for its own order against a reference model; the tier is checked to never exceed its budget,
// never evict a pinned entry or the one it was told to keep, and report every eviction.
import assert from 'node:assert/strict';

import { evictionPolicy, LfuPolicy, LruPolicy, type EvictionPolicy } from '../src/offload/eviction.js';
import { Tier } from '../src/offload/tier.js';
import { rng } from './codec/data.js';

/** The contract every policy meets, whatever order it evicts in. */
function evictionConformance(name: string, make: () => EvictionPolicy<string>): void {
  describe(`eviction policy conformance: ${name}`, function () {
    it('names itself', function () {
      assert.equal(make().name, name);
    });

    it('starts empty', function () {
      assert.deepEqual(make().order(), []);
    });

    it('orders every inserted key exactly once', function () {
      const p = make();
      for (const k of ['a', 'b', 'c', 'd']) p.insert(k);
      assert.deepEqual([...p.order()].sort(), ['a', 'b', 'c', 'd']);
    });

    it('keeps untouched keys in insertion order, oldest first', function () {
      const p = make();
      for (const k of ['c', 'a', 'd', 'b']) p.insert(k);
      assert.deepEqual(p.order(), ['c', 'a', 'd', 'b']);
    });

    it('keeps one entry for a key inserted twice, ordered as the newest', function () {
      const p = make();
      for (const k of ['a', 'b', 'c']) p.insert(k);
      p.insert('a');
      assert.deepEqual(p.order(), ['b', 'c', 'a']);
    });

    it('puts a touched key behind the untouched ones', function () {
      const p = make();
      for (const k of ['a', 'b', 'c']) p.insert(k);
      p.touch('a');
      assert.deepEqual(p.order(), ['b', 'c', 'a']);
    });

    it('drops a removed key, and ignores removing or touching a key it does not hold', function () {
      const p = make();
      for (const k of ['a', 'b', 'c']) p.insert(k);
      p.remove('b');
      assert.deepEqual(p.order(), ['a', 'c']);
      p.remove('b');
      p.remove('zzz');
      p.touch('zzz');
      assert.deepEqual(p.order(), ['a', 'c']);
    });

    it('treats a key inserted again after removal as new', function () {
      const p = make();
      for (const k of ['a', 'b']) p.insert(k);
      for (let i = 0; i < 5; i++) p.touch('a');
      p.remove('a');
      p.insert('a');
      p.insert('c');
      // a's earlier uses are forgotten: it is as new as c, and older.
      assert.deepEqual(p.order(), ['b', 'a', 'c']);
    });

    it('returns a snapshot: changing the returned array changes nothing', function () {
      const p = make();
      for (const k of ['a', 'b']) p.insert(k);
      p.order().reverse().push('x');
      assert.deepEqual(p.order(), ['a', 'b']);
    });
  });
}

/** A random sequence of insert/touch/remove over a few keys, the same for every seed. */
function randomOps(seed: number, n: number): ['insert' | 'touch' | 'remove', string][] {
  const r = rng(seed);
  const ops: ['insert' | 'touch' | 'remove', string][] = [];
  for (let i = 0; i < n; i++) {
    const x = r();
    ops.push([x < 0.3 ? 'insert' : x < 0.85 ? 'touch' : 'remove', `k${Math.floor(r() * 8)}`]);
  }
  return ops;
}

/** Reference models: stamps for last use and counts of uses, ordered by brute force. */
function referenceOrder(kind: 'lru' | 'lfu', ops: ['insert' | 'touch' | 'remove', string][]): string[] {
  const live = new Map<string, { count: number; last: number }>();
  ops.forEach(([op, k], t) => {
    if (op === 'insert') live.set(k, { count: 1, last: t });
    else if (op === 'touch') {
      const u = live.get(k);
      if (u) live.set(k, { count: u.count + 1, last: t });
    } else live.delete(k);
  });
  const keys = [...live.keys()];
  return kind === 'lru'
    ? keys.sort((a, b) => live.get(a)!.last - live.get(b)!.last)
    : keys.sort((a, b) => live.get(a)!.count - live.get(b)!.count || live.get(a)!.last - live.get(b)!.last);
}

evictionConformance('lru', () => new LruPolicy<string>());
evictionConformance('lfu', () => new LfuPolicy<string>());

describe('eviction policy: LRU', function () {
  it('evicts the least recently used first, however often the others were used', function () {
    const p = new LruPolicy<string>();
    for (const k of ['a', 'b', 'c']) p.insert(k);
    for (let i = 0; i < 10; i++) p.touch('a');
    p.touch('b');
    assert.deepEqual(p.order(), ['c', 'a', 'b']);
  });

  it('matches a reference model over random operations', function () {
    for (let seed = 1; seed <= 20; seed++) {
      const ops = randomOps(seed, 200);
      const p = new LruPolicy<string>();
      for (const [op, k] of ops) p[op](k);
      assert.deepEqual(p.order(), referenceOrder('lru', ops), `seed ${seed}`);
    }
  });
});

describe('eviction policy: LFU', function () {
  it('evicts the least frequently used first, however recently it was used', function () {
    const p = new LfuPolicy<string>();
    for (const k of ['a', 'b', 'c']) p.insert(k);
    for (let i = 0; i < 10; i++) p.touch('a');
    p.touch('b');
    p.touch('c');
    p.touch('c');
    // uses: a 11, b 2, c 3; c and b are more recent than a.
    assert.deepEqual(p.order(), ['b', 'c', 'a']);
  });

  it('breaks ties in frequency by recency, least recent first', function () {
    const p = new LfuPolicy<string>();
    for (const k of ['a', 'b', 'c', 'd']) p.insert(k);
    p.touch('d');
    p.touch('a');
    p.touch('c');
    // uses: a 2, b 1, c 2, d 2; among the 2s, d was used longest ago.
    assert.deepEqual(p.order(), ['b', 'd', 'a', 'c']);
  });

  it('matches a reference model over random operations', function () {
    for (let seed = 1; seed <= 20; seed++) {
      const ops = randomOps(seed, 200);
      const p = new LfuPolicy<string>();
      for (const [op, k] of ops) p[op](k);
      assert.deepEqual(p.order(), referenceOrder('lfu', ops), `seed ${seed}`);
    }
  });
});

describe('eviction policy by name', function () {
  it('makes the policy it is asked for', function () {
    assert.ok(evictionPolicy('lru') instanceof LruPolicy);
    assert.ok(evictionPolicy('lfu') instanceof LfuPolicy);
  });

  it('refuses a name it does not know', function () {
    assert.throws(() => evictionPolicy('fifo' as 'lru'), RangeError);
  });
});

describe('offload: tier', function () {
  const policies: [string, () => EvictionPolicy<string>][] = [
    ['lru', () => new LruPolicy<string>()],
    ['lfu', () => new LfuPolicy<string>()],
  ];

  for (const [pname, make] of policies) {
    it(`never exceeds its budget over a random sequence of operations (${pname})`, function () {
      let [fits, refused, evictions] = [0, 0, 0];
      for (let seed = 1; seed <= 10; seed++) {
        const r = rng(seed);
        const budget = 1000;
        const live = new Map<string, number>(); // what the tier should hold: key → bytes
        const pins = new Map<string, number>(); // pins each live key holds
        const evicted: string[] = [];
        const tier = new Tier<string, string>('t', budget, make(), (k, v) => {
          assert.ok(!pins.get(k), `seed ${seed}: evicted pinned ${k}`);
          assert.equal(v, `value of ${k}`, `seed ${seed}: onEvict value`);
          evicted.push(k);
          live.delete(k);
          pins.delete(k);
        });
        for (let step = 0; step < 400; step++) {
          const key = `k${Math.floor(r() * 16)}`;
          const x = r();
          if (x < 0.45) {
            const bytes = 1 + Math.floor(r() * 500);
            const before = evicted.length;
            const keep = live.has(key) ? key : undefined;
            const extra = bytes - (live.get(key) ?? 0);
            if (tier.reserve(Math.max(0, extra), keep)) {
              fits++;
              tier.set(key, `value of ${key}`, bytes);
              live.set(key, bytes);
            } else {
              refused++;
              assert.equal(evicted.length, before, `seed ${seed} step ${step}: a refused reserve evicted`);
              // Refused only when evicting every unpinned entry but `keep` would not make room.
              let freeable = 0;
              for (const [k, b] of live) if (!pins.get(k) && k !== keep) freeable += b;
              assert.ok(tier.used - freeable + extra > budget, `seed ${seed} step ${step}: refused ${extra} bytes that could be freed`);
            }
          } else if (x < 0.7) {
            assert.equal(tier.get(key), live.has(key) ? `value of ${key}` : undefined);
          } else if (x < 0.8) {
            assert.equal(tier.remove(key), live.has(key) ? `value of ${key}` : undefined);
            live.delete(key);
            pins.delete(key);
          } else if (x < 0.92) {
            tier.pin(key);
            if (live.has(key)) pins.set(key, (pins.get(key) ?? 0) + 1);
          } else {
            tier.unpin(key);
            if (pins.get(key)) pins.set(key, pins.get(key)! - 1);
          }
          assert.ok(tier.used <= tier.budgetBytes, `seed ${seed} step ${step}: ${tier.used} of ${tier.budgetBytes}`);
          assert.equal(tier.used, [...live.values()].reduce((a, b) => a + b, 0), `seed ${seed} step ${step}: used`);
          assert.deepEqual(tier.keys().sort(), [...live.keys()].sort(), `seed ${seed} step ${step}: keys`);
          assert.equal(tier.size, live.size);
          for (const k of live.keys()) assert.equal(tier.pinned(k), (pins.get(k) ?? 0) > 0, `seed ${seed} step ${step}: ${k} pinned`);
        }
        assert.equal(tier.evictions, evicted.length);
        evictions += evicted.length;
      }
      // The sequences exercised all of it: fits, refusals and evictions.
      assert.ok(fits > 0 && refused > 0 && evictions > 0, `${fits} fits, ${refused} refused, ${evictions} evictions`);
    });
  }

  it('never evicts a pinned entry, refusing (and evicting nothing) when only pinned ones could make room', function () {
    const evicted: string[] = [];
    const tier = new Tier<string, number>('t', 100, new LruPolicy<string>(), (k) => evicted.push(k));
    tier.set('a', 1, 40);
    tier.set('b', 2, 40);
    tier.pin('a');
    // Evicting b alone leaves 40 + 70 > 100: refused, and b stays.
    assert.equal(tier.reserve(70), false);
    assert.deepEqual(evicted, []);
    assert.deepEqual(tier.keys(), ['a', 'b']);
    assert.equal(tier.used, 80);
    // b alone makes room for 60: it goes, a (least recent, but pinned) stays.
    assert.equal(tier.reserve(60), true);
    assert.deepEqual(evicted, ['b']);
    assert.deepEqual(tier.keys(), ['a']);
    // Pins count: two pins need two unpins.
    tier.pin('a');
    tier.unpin('a');
    assert.equal(tier.reserve(80), false);
    tier.unpin('a');
    assert.equal(tier.pinned('a'), false);
    assert.equal(tier.reserve(80), true);
    assert.deepEqual(evicted, ['b', 'a']);
    assert.equal(tier.used, 0);
  });

  it('never evicts the entry it is told to keep', function () {
    const evicted: string[] = [];
    const tier = new Tier<string, number>('t', 100, new LruPolicy<string>(), (k) => evicted.push(k));
    tier.set('a', 1, 50);
    tier.set('b', 2, 50);
    assert.equal(tier.reserve(50, 'a'), true); // a is least recent, but kept: b goes
    assert.deepEqual(evicted, ['b']);
    assert.equal(tier.reserve(60, 'a'), false);
    assert.deepEqual(evicted, ['b']);
    assert.deepEqual(tier.keys(), ['a']);
  });

  it("evicts in the policy's order, only as many as it needs, calling onEvict with each", function () {
    const evicted: [string, string][] = [];
    const tier = new Tier<string, string>('t', 100, new LruPolicy<string>(), (k, v) => evicted.push([k, v]));
    for (const k of ['a', 'b', 'c', 'd']) tier.set(k, `v${k}`, 25);
    tier.get('a'); // a becomes most recent: b and c go first
    assert.equal(tier.reserve(30), true);
    assert.deepEqual(evicted, [['b', 'vb'], ['c', 'vc']]);
    assert.deepEqual(tier.keys().sort(), ['a', 'd']);
    assert.equal(tier.evictions, 2);
    assert.equal(tier.used, 50);
    assert.equal(tier.reserve(50), true, 'room already there');
    assert.equal(tier.evictions, 2);
  });

  it('counts get as a use and peek as none', function () {
    const tier = new Tier<string, number>('t', 20, new LruPolicy<string>());
    tier.set('a', 1, 10);
    tier.set('b', 2, 10);
    assert.equal(tier.peek('a'), 1);
    assert.equal(tier.reserve(10), true);
    assert.deepEqual(tier.keys(), ['b'], 'peek did not save a');
    tier.set('c', 3, 10);
    assert.equal(tier.get('b'), 2);
    assert.equal(tier.reserve(10), true);
    assert.deepEqual(tier.keys(), ['b'], 'get saved b');
  });

  it('takes entries out on remove without calling onEvict', function () {
    const evicted: string[] = [];
    const tier = new Tier<string, number>('t', 100, new LruPolicy<string>(), (k) => evicted.push(k));
    tier.set('a', 1, 30);
    assert.equal(tier.remove('a'), 1);
    assert.equal(tier.remove('a'), undefined);
    assert.equal(tier.used, 0);
    assert.deepEqual(evicted, []);
    assert.equal(tier.evictions, 0);
  });

  it('throws on set rather than exceed its budget, leaving the tier unchanged', function () {
    const tier = new Tier<string, number>('t', 100, new LruPolicy<string>());
    tier.set('a', 1, 60);
    assert.throws(() => tier.set('b', 2, 41), RangeError);
    assert.equal(tier.used, 60);
    assert.deepEqual(tier.keys(), ['a']);
    assert.throws(() => tier.set('a', 3, 101), RangeError);
    assert.equal(tier.peek('a'), 1);
    // Replacing an entry counts only the difference, and keeps its pins.
    tier.pin('a');
    tier.set('a', 4, 100);
    assert.equal(tier.used, 100);
    assert.equal(tier.peek('a'), 4);
    assert.equal(tier.pinned('a'), true);
  });

  it('keeps each share within its own budget, evicting only its own entries, over random operations', function () {
    // Tier A per layer: keys "<share>:<n>", three shares of different sizes in one tier.
    const budgets = [300, 500, 200];
    for (let seed = 1; seed <= 6; seed++) {
      const r = rng(seed);
      const tier = new Tier<string, number>('A', 1000, new LruPolicy<string>(), (k) => assert.ok(evictedFrom !== undefined && k.startsWith(`${evictedFrom}:`), `seed ${seed}: ${k} evicted for share ${evictedFrom}`), {
        of: (k) => Number(k.split(':')[0]),
        budgets,
      });
      let evictedFrom: number | undefined;
      for (let step = 0; step < 300; step++) {
        const share = Math.floor(r() * 3);
        const key = `${share}:${Math.floor(r() * 8)}`;
        const bytes = 1 + Math.floor(r() * 150);
        const extra = bytes - ((tier.peek(key) ?? 0) as number);
        evictedFrom = share;
        if (tier.reserve(Math.max(0, extra), key)) tier.set(key, bytes, bytes);
        evictedFrom = undefined;
        if (r() < 0.3) tier.get(key);
        for (let s = 0; s < 3; s++) {
          const held = tier.keys().filter((k) => k.startsWith(`${s}:`)).reduce((a, k) => a + tier.peek(k)!, 0);
          assert.equal(tier.usedBy(s), held, `seed ${seed} step ${step}: share ${s} used`);
          assert.ok(held <= budgets[s], `seed ${seed} step ${step}: share ${s} holds ${held} of ${budgets[s]}`);
        }
      }
      assert.ok(tier.evictions > 0, 'the shares filled up and evicted');
    }
  });

  it('refuses shares larger than the tier, and room asked without saying for which key', function () {
    assert.throws(() => new Tier<string, number>('A', 100, new LruPolicy<string>(), undefined, { of: () => 0, budgets: [60, 50] }), /adding up to at most the tier's 100, got 60, 50/);
    const t = new Tier<string, number>('A', 100, new LruPolicy<string>(), undefined, { of: (k) => Number(k), budgets: [50, 50] });
    assert.throws(() => t.reserve(10), /split into shares: say which key/);
    assert.throws(() => t.set('2', 1, 1), /belongs to share 2, not one of the 2/);
    t.set('0', 1, 50);
    assert.throws(() => t.set('0', 1, 51), /share 0: 51 bytes do not fit \(50 of 50 used\)/);
    assert.equal(t.reserve(10, '1'), true, 'the other share has its own room');
  });

  it('accepts a zero budget and refuses a negative or non-finite one', function () {
    const zero = new Tier<string, number>('t', 0, new LruPolicy<string>());
    assert.equal(zero.reserve(1), false);
    assert.equal(zero.reserve(0), true);
    for (const bad of [-1, -0.5, NaN, Infinity]) assert.throws(() => new Tier<string, number>('t', bad, new LruPolicy<string>()), RangeError, String(bad));
  });
});
