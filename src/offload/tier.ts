/**
 * One tier of the device cache: entries with a byte size, a byte budget that is never exceeded,
 * an eviction policy, and pins (an entry in use by a computation cannot be evicted).
 *
 * A tier may be split into shares (tier A: one per layer, sized by the profile's experts_by_layer):
 * each key belongs to one share, each share has a byte budget of its own, never exceeded, and
 * making room for a key evicts only within its share — one policy still orders every entry, so a
 * layer's LRU is the tier's LRU restricted to that layer.
 */
import type { EvictionPolicy } from './eviction.js';

/** How a tier is split: the share a key belongs to, and each share's byte budget. */
export interface TierShares<K> {
  of(key: K): number;
  budgets: number[];
}

interface Slot<V> {
  value: V;
  bytes: number;
  pins: number;
}

export class Tier<K, V> {
  private readonly slots = new Map<K, Slot<V>>();
  private usedBytes = 0;
  /** Bytes used per share (empty without shares). */
  private readonly shareBytes: number[];
  /** Entries evicted so far. */
  evictions = 0;

  constructor(
    readonly name: string,
    readonly budgetBytes: number,
    private readonly policy: EvictionPolicy<K>,
    /** Called with each entry that leaves the tier by eviction (to free what it holds). */
    private readonly onEvict: (key: K, value: V) => void = () => {},
    readonly shares?: TierShares<K>,
  ) {
    if (!(budgetBytes >= 0) || !Number.isFinite(budgetBytes)) throw new RangeError(`tier ${name}: budget must be a finite number of bytes ≥ 0, got ${budgetBytes}`);
    const b = shares?.budgets ?? [];
    if (b.some((x) => !(x >= 0) || !Number.isFinite(x)) || b.reduce((a, x) => a + x, 0) > budgetBytes) {
      throw new RangeError(`tier ${name}: shares must be finite byte budgets ≥ 0 adding up to at most the tier's ${budgetBytes}, got ${b.join(', ')}`);
    }
    this.shareBytes = b.map(() => 0);
  }

  get used(): number {
    return this.usedBytes;
  }

  /** Bytes the entries of share `share` hold. */
  usedBy(share: number): number {
    return this.shareBytes[share] ?? 0;
  }

  /** The share of `key`, checked; undefined without shares. */
  private shareOf(key: K): number | undefined {
    if (!this.shares) return undefined;
    const s = this.shares.of(key);
    if (!(Number.isInteger(s) && s >= 0 && s < this.shareBytes.length)) throw new RangeError(`tier ${this.name}: key ${String(key)} belongs to share ${s}, not one of the ${this.shareBytes.length}`);
    return s;
  }

  /** Bytes in use and the budget that `key` counts against: its share's, or the whole tier's. */
  private room(key: K | undefined): { used: number; budget: number; share?: number } {
    if (!this.shares) return { used: this.usedBytes, budget: this.budgetBytes };
    if (key === undefined) throw new RangeError(`tier ${this.name} is split into shares: say which key the room is for`);
    const share = this.shareOf(key)!;
    return { used: this.shareBytes[share], budget: this.shares.budgets[share], share };
  }

  get size(): number {
    return this.slots.size;
  }

  /** The entry, counting as a use. */
  get(key: K): V | undefined {
    const s = this.slots.get(key);
    if (s) this.policy.touch(key);
    return s?.value;
  }

  /** The entry, without counting as a use. */
  peek(key: K): V | undefined {
    return this.slots.get(key)?.value;
  }

  keys(): K[] {
    return [...this.slots.keys()];
  }

  /**
   * Makes room for `bytes` more by evicting unpinned entries in the policy's order (`keep` is
   * never evicted). With shares, the room is made in `keep`'s share, from its own entries (so
   * `keep` is then required). Returns false, evicting nothing, when even that cannot make room.
   */
  reserve(bytes: number, keep?: K): boolean {
    const { used, budget, share } = this.room(keep);
    if (used + bytes <= budget) return true;
    const victims: K[] = [];
    let freed = 0;
    for (const k of this.policy.order()) {
      if (used - freed + bytes <= budget) break;
      const s = this.slots.get(k)!;
      if (s.pins > 0 || k === keep || (share !== undefined && this.shares!.of(k) !== share)) continue;
      victims.push(k);
      freed += s.bytes;
    }
    if (used - freed + bytes > budget) return false;
    for (const k of victims) {
      const s = this.slots.get(k)!;
      this.remove(k);
      this.evictions++;
      this.onEvict(k, s.value);
    }
    return true;
  }

  /** Inserts (or replaces) an entry; call reserve first. Throws rather than exceed the budget. */
  set(key: K, value: V, bytes: number): void {
    const old = this.slots.get(key);
    const pins = old?.pins ?? 0;
    const room = this.room(key);
    const grows = bytes - (old?.bytes ?? 0);
    if (room.used + grows > room.budget) {
      throw new RangeError(`tier ${this.name}${room.share === undefined ? '' : ` share ${room.share}`}: ${bytes} bytes do not fit (${room.used} of ${room.budget} used)`);
    }
    this.slots.set(key, { value, bytes, pins });
    this.usedBytes += grows;
    if (room.share !== undefined) this.shareBytes[room.share] += grows;
    this.policy.insert(key);
  }

  /** Takes an entry out (no onEvict); returns its value. */
  remove(key: K): V | undefined {
    const s = this.slots.get(key);
    if (!s) return undefined;
    this.slots.delete(key);
    this.usedBytes -= s.bytes;
    const share = this.shareOf(key);
    if (share !== undefined) this.shareBytes[share] -= s.bytes;
    this.policy.remove(key);
    return s.value;
  }

  pin(key: K): void {
    const s = this.slots.get(key);
    if (s) s.pins++;
  }

  unpin(key: K): void {
    const s = this.slots.get(key);
    if (s && s.pins > 0) s.pins--;
  }

  pinned(key: K): boolean {
    return (this.slots.get(key)?.pins ?? 0) > 0;
  }
}
