/**
 * A file read the way the disk tier reads the expert store: positioned reads around the page
 * cache (O_DIRECT where the file system allows it — `direct` says whether it did), on libuv's
 * pool, each timed. Through the page cache, a store read once would stay in memory outside the
 * host budget, and reading it again would time memory instead of the disk.
 *
 * @example
 * const f = DirectFile.open('store.ebs');
 * const { bytes, seconds } = await f.read(1 << 20, 3000);   // any range; the aligned one around it is read
 * f.close();
 */
import { native } from '../codec/native.js';

/** What direct I/O aligns offsets, lengths and memory to (the store's expert blocks start on it). */
export const DIRECT_ALIGN = 4096;

export interface TimedRead {
  /** Exactly the bytes asked for (a view into the aligned read). */
  bytes: Buffer;
  /** The read's own time on the disk, seconds. */
  seconds: number;
  /** Bytes that crossed from the disk: the aligned range around the one asked for. */
  bytesRead: number;
}

export class DirectFile {
  private handle: unknown;

  private constructor(
    readonly path: string,
    opened: { handle: unknown; direct: boolean },
  ) {
    this.handle = opened.handle;
    this.direct = opened.direct;
  }

  /** Whether reads bypass the page cache (O_DIRECT); false: plain reads, each range dropped from the cache after it. */
  readonly direct: boolean;

  static open(path: string): DirectFile {
    return new DirectFile(path, native.directOpen(path));
  }

  /** Bytes [offset, offset + length) of the file, read as the aligned range that covers them. */
  async read(offset: number, length: number): Promise<TimedRead> {
    if (!(Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(length) && length >= 0)) {
      throw new RangeError(`a read of ${this.path} needs a whole offset and length ≥ 0, got ${offset} and ${length}`);
    }
    if (this.handle === undefined) throw new Error(`read of ${this.path} after it was closed`);
    const start = offset - (offset % DIRECT_ALIGN);
    const end = Math.ceil((offset + length) / DIRECT_ALIGN) * DIRECT_ALIGN;
    const r = await native.directRead(this.handle, start, end - start);
    if (r.bytes.length < offset + length - start) {
      throw new RangeError(`${this.path} ends at byte ${start + r.bytes.length}, before byte ${offset + length} that a read asked for`);
    }
    return { bytes: r.bytes.subarray(offset - start, offset - start + length), seconds: r.seconds, bytesRead: end - start };
  }

  /** Reads in flight finish (or fail) on their own; new ones are refused. */
  close(): void {
    if (this.handle === undefined) return;
    native.directClose(this.handle);
    this.handle = undefined;
  }
}
