/**
 * One tier of the device cache: entries with a byte size, a byte budget that is never exceeded,
 * an eviction policy, and pins (an entry in use by a computation cannot be evicted).
 */
import type { EvictionPolicy } from './eviction.js';

interface Slot<V> {
  value: V;
  bytes: number;
  pins: number;
}

export class Tier<K, V> {
  private readonly slots = new Map<K, Slot<V>>();
  private usedBytes = 0;
  /** Entries evicted so far. */
  evictions = 0;

  constructor(
    readonly name: string,
    readonly budgetBytes: number,
    private readonly policy: EvictionPolicy<K>,
    /** Called with each entry that leaves the tier by eviction (to free what it holds). */
    private readonly onEvict: (key: K, value: V) => void = () => {},
  ) {
    if (!(budgetBytes >= 0) || !Number.isFinite(budgetBytes)) throw new RangeError(`tier ${name}: budget must be a finite number of bytes ≥ 0, got ${budgetBytes}`);
  }

  get used(): number {
    return this.usedBytes;
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
   * never evicted). Returns false, evicting nothing, when even that cannot make room.
   */
  reserve(bytes: number, keep?: K): boolean {
    if (this.usedBytes + bytes <= this.budgetBytes) return true;
    const victims: K[] = [];
    let freed = 0;
    for (const k of this.policy.order()) {
      if (this.usedBytes - freed + bytes <= this.budgetBytes) break;
      const s = this.slots.get(k)!;
      if (s.pins > 0 || k === keep) continue;
      victims.push(k);
      freed += s.bytes;
    }
    if (this.usedBytes - freed + bytes > this.budgetBytes) return false;
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
    const used = this.usedBytes - (old?.bytes ?? 0) + bytes;
    if (used > this.budgetBytes) throw new RangeError(`tier ${this.name}: ${bytes} bytes do not fit (${this.usedBytes} of ${this.budgetBytes} used)`);
    this.slots.set(key, { value, bytes, pins });
    this.usedBytes = used;
    this.policy.insert(key);
  }

  /** Takes an entry out (no onEvict); returns its value. */
  remove(key: K): V | undefined {
    const s = this.slots.get(key);
    if (!s) return undefined;
    this.slots.delete(key);
    this.usedBytes -= s.bytes;
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
