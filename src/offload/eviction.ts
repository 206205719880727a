/**
 * Which cached entry goes first when a tier is full. One small interface, two policies: LRU (the
 * default: recency is what decode's routing locality rewards) and LFU (frequency, recency breaking
 * ties: better when a few experts are hot for a long time). Both are tested by one shared suite.
 */

export interface EvictionPolicy<K> {
  readonly name: string;
  insert(key: K): void;
  /** The entry was used. */
  touch(key: K): void;
  remove(key: K): void;
  /** Every key, the one to evict first first. */
  order(): K[];
}

export type EvictionPolicyName = 'lru' | 'lfu';

export class LruPolicy<K> implements EvictionPolicy<K> {
  readonly name = 'lru';
  // A Map iterates in insertion order: re-inserting on use keeps the least recent first.
  private readonly keys = new Map<K, true>();
  insert(key: K): void {
    this.keys.delete(key);
    this.keys.set(key, true);
  }
  touch(key: K): void {
    if (this.keys.has(key)) this.insert(key);
  }
  remove(key: K): void {
    this.keys.delete(key);
  }
  order(): K[] {
    return [...this.keys.keys()];
  }
}

export class LfuPolicy<K> implements EvictionPolicy<K> {
  readonly name = 'lfu';
  private readonly uses = new Map<K, { count: number; last: number }>();
  private clock = 0;
  insert(key: K): void {
    this.uses.set(key, { count: 1, last: ++this.clock });
  }
  touch(key: K): void {
    const u = this.uses.get(key);
    if (u) {
      u.count++;
      u.last = ++this.clock;
    }
  }
  remove(key: K): void {
    this.uses.delete(key);
  }
  order(): K[] {
    return [...this.uses.entries()].sort(([, a], [, b]) => a.count - b.count || a.last - b.last).map(([k]) => k);
  }
}

export function evictionPolicy<K>(name: EvictionPolicyName): EvictionPolicy<K> {
  switch (name) {
    case 'lru':
      return new LruPolicy<K>();
    case 'lfu':
      return new LfuPolicy<K>();
    default:
      throw new RangeError(`eviction policy must be lru or lfu, got ${String(name)}`);
  }
}
