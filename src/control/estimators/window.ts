/**
 * The last `size` values of a stream as an immutable value, for the estimators' pure reducers:
 * `push` returns a new window and leaves the old one as it was, like `[...xs.slice(1), x]`, but
 * in amortized O(1) instead of a copy of the whole window per sample (the reducers fold every
 * sample the engine emits, several per token; copying their windows showed in a served token's
 * profile).
 *
 * How: windows share one append-only buffer and each sees its own [start, end) of it. Pushing
 * onto the newest window appends in place, which no older window can see (they end before it);
 * pushing onto an older one (a branch: a test folding two futures from one state) copies its
 * values first. The buffer is compacted once its dead prefix is a few windows long.
 *
 * @example
 * const a = Window.empty<number>(2).push(1).push(2);
 * const b = a.push(3);   // b: [2, 3]; a is still [1, 2]
 */
export class Window<T> implements Iterable<T> {
  private constructor(
    /** Shared by every window pushed from the same empty one; only ever appended to. */
    private readonly buf: T[],
    private readonly start: number,
    readonly length: number,
    readonly size: number,
  ) {}

  static empty<T>(size: number): Window<T> {
    if (!(Number.isInteger(size) && size >= 1)) throw new RangeError(`a window holds a whole number ≥ 1 of values, got ${size}`);
    return new Window<T>([], 0, 0, size);
  }

  static of<T>(size: number, values: Iterable<T>): Window<T> {
    let w = Window.empty<T>(size);
    for (const v of values) w = w.push(v);
    return w;
  }

  push(x: T): Window<T> {
    const end = this.start + this.length;
    let buf = this.buf;
    let start = this.start;
    if (buf.length !== end || start >= 4 * this.size) {
      // Someone pushed onto this window before (a branch), or the dead prefix is long: copy.
      buf = buf.slice(start, end);
      start = 0;
    }
    buf.push(x);
    const length = Math.min(this.size, buf.length - start);
    return new Window(buf, buf.length - length, length, this.size);
  }

  /** Value i, oldest first (undefined outside the window). */
  at(i: number): T | undefined {
    return i >= 0 && i < this.length ? this.buf[this.start + i] : undefined;
  }

  toArray(): T[] {
    return this.buf.slice(this.start, this.start + this.length);
  }

  *[Symbol.iterator](): Iterator<T> {
    for (let i = 0; i < this.length; i++) yield this.buf[this.start + i];
  }
}

/** The smallest value of a window of numbers; `empty` when it has none. */
export function windowMin(w: Window<number>, empty = NaN): number {
  if (w.length === 0) return empty;
  let m = Infinity;
  for (const x of w) m = Math.min(m, x);
  return m;
}

/** The largest value of a window of numbers; `empty` when it has none. */
export function windowMax(w: Window<number>, empty = NaN): number {
  if (w.length === 0) return empty;
  let m = -Infinity;
  for (const x of w) m = Math.max(m, x);
  return m;
}

/** The second largest value of a window of numbers (its largest forgiven); `empty` when it has fewer than two. */
export function windowSecondMax(w: Window<number>, empty = NaN): number {
  if (w.length < 2) return empty;
  let first = -Infinity;
  let second = -Infinity;
  for (const x of w) {
    if (x > first) [first, second] = [x, first];
    else if (x > second) second = x;
  }
  return second;
}
