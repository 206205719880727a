/**
 * The device-side buffers the copy links move expert bytes into, reused rather than allocated per
 * move. Why: with the native forward, a copy link moves hundreds of MB a second into fresh
 * ArrayBuffers, and V8 answers that much external memory with a full mark-compact every ~100 ms
 * (6–8 ms each, measured on the embedded model at 2.5 ms steps): the slowest steps were the
 * collector's. A buffer is held by whoever references it — a load in flight, tier B's compressed
 * rungs, a tier-A entry multiplied in place — and comes back to a free list when the last lets go.
 *
 * Sizes are rounded up to classes an eighth of a power of two apart (at most 12.5 % slack), so
 * rungs of similar sizes share buffers; free buffers beyond `capBytes` are left to the collector.
 *
 * @example
 * const memory = new DeviceMemory();
 * const d = memory.copy(rung);   // held once, by the move
 * memory.retain([d]);  memory.release([d]);  memory.release([d]);   // back in the free list
 */
export class DeviceMemory {
  private readonly free = new Map<number, ArrayBuffer[]>();
  // Weak: a buffer whose holder never releases it (a caller of Link.move keeping its copies) is
  // simply collected.
  private readonly holds = new WeakMap<ArrayBufferLike, number>();
  private freeBytes = 0;
  /** Buffers handed out again instead of allocated (for tests and logs). */
  reused = 0;

  constructor(readonly capBytes = 64 << 20) {}

  /** A device copy of `src`, held once (by the move that made it). */
  copy(src: Uint8Array): Uint8Array {
    const size = sizeClass(src.byteLength);
    const buffer = this.free.get(size)?.pop();
    if (buffer) {
      this.freeBytes -= size;
      this.reused++;
    }
    const view = new Uint8Array(buffer ?? new ArrayBuffer(size), 0, src.byteLength);
    view.set(src);
    this.holds.set(view.buffer, 1);
    return view;
  }

  /** One more holder of each buffer (views this memory did not make are ignored). */
  retain(views: Iterable<Uint8Array>): void {
    for (const v of views) {
      const n = this.holds.get(v.buffer);
      if (n !== undefined) this.holds.set(v.buffer, n + 1);
    }
  }

  /** One holder fewer of each; a buffer nobody holds goes back to the free list. */
  release(views: Iterable<Uint8Array>): void {
    for (const v of views) {
      const n = this.holds.get(v.buffer);
      if (n === undefined) continue;
      if (n > 1) {
        this.holds.set(v.buffer, n - 1);
        continue;
      }
      this.holds.delete(v.buffer);
      const size = v.buffer.byteLength;
      if (this.freeBytes + size > this.capBytes) continue;
      const list = this.free.get(size) ?? [];
      list.push(v.buffer as ArrayBuffer);
      this.free.set(size, list);
      this.freeBytes += size;
    }
  }
}

/** n rounded up to a multiple of an eighth of the largest power of two ≤ n (16 at least). */
function sizeClass(n: number): number {
  if (n <= 16) return 16;
  const step = 2 ** Math.floor(Math.log2(n)) / 8;
  return Math.ceil(n / step) * step;
}
