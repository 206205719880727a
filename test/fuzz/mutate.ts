// Stream surgery for the fuzz tests: where a stream's fields sit (read straight from the bytes, no
// validation), forging them with the checksums recomputed (so the structural checks, not the CRCs,
// are what must answer), and seeded blind damage. Layout: src/codec/FORMAT.md.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { native } from '../../src/codec/native.js';

export const HEADER_BYTES = 64;
export const ENTRY_BYTES = 24;

/** Every error code FORMAT.md defines, read from the document itself. */
export const FORMAT_CODES: ReadonlySet<string> = (() => {
  const doc = readFileSync(fileURLToPath(new URL('../../src/codec/FORMAT.md', import.meta.url)), 'utf8');
  const codes = new Set<string>();
  for (const m of doc.matchAll(/`((?:BAD_[A-Z_]+)|TRUNCATED|CHECKSUM)`/g)) codes.add(m[1]);
  return codes;
})();

/** mulberry32: a small seeded PRNG, so every failure names a case that replays. */
export function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    /** An integer in [0, n). */
    below: (n: number) => Math.floor(next() * n),
    /** An integer in [lo, hi]. */
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    coin: () => next() < 0.5,
  };
}
export type Rng = ReturnType<typeof rng>;

export function dv(s: Uint8Array): DataView {
  return new DataView(s.buffer, s.byteOffset, s.byteLength);
}

/** Where everything is in a well-formed stream (computed from its header, not validated). */
export interface Layout {
  count: number;
  escapes: number;
  rungs: number;
  blocks: number;
  headBytes: number;
  payloadBytes: number;
  ratesAt: number;
  escapesAt: number;
  /** Where rung 0's sign and plane words start. */
  wordsAt: number;
  rungAt: number[];
  rungBytes: number[];
  cut: number[];
}

export function layout(s: Uint8Array): Layout {
  const v = dv(s);
  const count = Number(v.getBigUint64(8, true));
  const escapes = Number(v.getBigUint64(40, true));
  const rungs = s[28];
  const headBytes = HEADER_BYTES + ENTRY_BYTES * rungs;
  const blocks = Math.ceil(count / 32);
  const rungAt: number[] = [];
  const rungBytes: number[] = [];
  const cut: number[] = [];
  for (let j = 0; j < rungs; j++) {
    const e = HEADER_BYTES + ENTRY_BYTES * j;
    cut.push(s[e]);
    rungAt.push(headBytes + Number(v.getBigUint64(e + 8, true)));
    rungBytes.push(Number(v.getBigUint64(e + 16, true)));
  }
  const pad = Math.ceil(blocks / 4) * 4;
  return {
    count,
    escapes,
    rungs,
    blocks,
    headBytes,
    payloadBytes: Number(v.getBigUint64(48, true)),
    ratesAt: headBytes,
    escapesAt: headBytes + pad,
    wordsAt: headBytes + pad + 8 * escapes,
    rungAt,
    rungBytes,
    cut,
  };
}

/** The head (header + rung table) and each rung, as copies (the way a store fetches them). */
export function split(s: Uint8Array): { head: Buffer; rungs: Buffer[] } {
  const l = layout(s);
  return {
    head: Buffer.from(s.subarray(0, l.headBytes)),
    rungs: l.rungAt.map((at, j) => Buffer.from(s.subarray(at, at + l.rungBytes[j]))),
  };
}

/**
 * Recomputes the checksums FORMAT.md defines, in place: each rung's CRC (when `rungs`, and its
 * table entry points inside the stream), then the header's (bytes 0..55 and the rung table).
 */
export function fixChecksums(s: Uint8Array, opts: { rungs?: boolean } = {}): Uint8Array {
  if (s.length < HEADER_BYTES) return s;
  const v = dv(s);
  const R = s[28];
  const tableRungs = Math.max(0, Math.min(R, Math.floor((s.length - HEADER_BYTES) / ENTRY_BYTES)));
  const headBytes = HEADER_BYTES + ENTRY_BYTES * R;
  if (opts.rungs && R >= 1 && R <= 16 && s.length >= headBytes) {
    for (let j = 0; j < R; j++) {
      const e = HEADER_BYTES + ENTRY_BYTES * j;
      const off = v.getBigUint64(e + 8, true);
      const len = v.getBigUint64(e + 16, true);
      const room = BigInt(s.length - headBytes);
      if (off <= room && len <= room - off) {
        const a = headBytes + Number(off);
        v.setUint32(e + 4, native.crc32c(s.subarray(a, a + Number(len))), true);
      }
    }
  }
  const covered = Buffer.concat([s.subarray(0, 56), s.subarray(HEADER_BYTES, HEADER_BYTES + ENTRY_BYTES * tableRungs)]);
  v.setUint32(56, native.crc32c(covered), true);
  return s;
}

/** A copy of `s` with `edit` applied, then (when `recompute`) every checksum recomputed. */
export function forged(s: Uint8Array, edit: (b: Buffer, v: DataView) => void, recompute = true): Buffer {
  const b = Buffer.from(s);
  edit(b, dv(b));
  if (recompute) fixChecksums(b, { rungs: true });
  return b;
}

export interface Damage {
  what: string;
  bytes: Buffer;
}

/**
 * Blind damage, no checksum recomputed: a cut, 1–8 bit flips, 1–4 byte overwrites, 1–16 bytes
 * inserted or removed, trailing garbage, a burst of random bytes. Half the positions fall in the
 * header and rung table, where every byte is a field.
 */
export function damage(s: Uint8Array, r: Rng): Damage {
  const l = layout(s);
  const pos = () => (r.coin() ? r.below(Math.min(s.length, l.headBytes)) : r.below(s.length));
  const b = Buffer.from(s);
  switch (r.below(7)) {
    case 0: {
      const at = r.below(s.length);
      return { what: `cut to ${at} of ${s.length} bytes`, bytes: b.subarray(0, at) };
    }
    case 1: {
      const k = r.int(1, 8);
      const where: string[] = [];
      for (let i = 0; i < k; i++) {
        const at = pos();
        const bit = r.below(8);
        b[at] ^= 1 << bit;
        where.push(`${at}.${bit}`);
      }
      return { what: `${k} bit flips at ${where.join(' ')}`, bytes: b };
    }
    case 2: {
      const k = r.int(1, 4);
      const where: string[] = [];
      for (let i = 0; i < k; i++) {
        const at = pos();
        b[at] = r.coin() ? r.below(256) : r.coin() ? 0 : 0xff;
        where.push(`[${at}]=${b[at]}`);
      }
      return { what: `${k} bytes overwritten: ${where.join(' ')}`, bytes: b };
    }
    case 3: {
      const at = r.below(s.length + 1);
      const ins = Buffer.from(Array.from({ length: r.int(1, 16) }, () => r.below(256)));
      return { what: `${ins.length} bytes inserted at ${at}`, bytes: Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]) };
    }
    case 4: {
      const at = r.below(s.length);
      const k = Math.min(r.int(1, 16), s.length - at);
      return { what: `${k} bytes removed at ${at}`, bytes: Buffer.concat([b.subarray(0, at), b.subarray(at + k)]) };
    }
    case 5: {
      const tail = Buffer.from(Array.from({ length: r.int(1, 64) }, () => r.below(256)));
      return { what: `${tail.length} bytes appended`, bytes: Buffer.concat([b, tail]) };
    }
    default: {
      const at = pos();
      const k = Math.min(r.int(2, 32), s.length - at);
      for (let i = 0; i < k; i++) b[at + i] = r.below(256);
      return { what: `${k} random bytes at ${at}`, bytes: b };
    }
  }
}

export interface Forgery {
  what: string;
  /** The codes a refusal may carry; empty when the forged stream is still well-formed. */
  codes: string[];
  /** Whether the forged stream may still be valid (checksums recomputed, so only structure counts). */
  mayDecode: boolean;
  edit: (b: Buffer, v: DataView) => void;
}

/** A forged header, rung-table or rate-byte field, with what the validator must say about it. */
export function forgery(s: Uint8Array, r: Rng): Forgery {
  const l = layout(s);
  const j = r.below(l.rungs);
  const entry = HEADER_BYTES + ENTRY_BYTES * j;
  const pick = <T>(xs: T[]) => xs[r.below(xs.length)];
  const forgeries: (() => Forgery)[] = [
    () => ({ what: 'magic', codes: ['BAD_MAGIC'], mayDecode: false, edit: (b) => void (b[r.below(4)] ^= r.int(1, 255)) }),
    () => {
      // Version 2 reads a fixed-length (mode 0) stream the same as version 1: not a forgery.
      const ver = pick([0, 3, 4, 0x100, 0xffff]);
      return { what: `version ${ver}`, codes: ['BAD_VERSION'], mayDecode: false, edit: (_, v) => v.setUint16(4, ver, true) };
    },
    () => {
      const d = r.int(3, 255);
      return { what: `dtype ${d}`, codes: ['BAD_DTYPE'], mayDecode: false, edit: (b) => void (b[6] = d) };
    },
    () => {
      const m = r.int(1, 255);
      return { what: `mode ${m}`, codes: ['BAD_MODE'], mayDecode: false, edit: (b) => void (b[7] = m) };
    },
    () => {
      const n = pick([2n ** 32n, 2n ** 40n, 2n ** 63n, 2n ** 64n - 1n]);
      return { what: `count ${n}`, codes: ['BAD_COUNT'], mayDecode: false, edit: (_, v) => v.setBigUint64(8, n, true) };
    },
    () => {
      const n = BigInt(l.count + r.int(1, 64));
      return {
        what: `count ${n} (was ${l.count})`,
        codes: ['BAD_LENGTH', 'BAD_RUNG', 'BAD_PADDING', 'BAD_RATE'],
        mayDecode: true, // the same number of blocks, and the padding happens to be zero
        edit: (_, v) => v.setBigUint64(8, n, true),
      };
    },
    () => {
      const eb = pick([0, -1e-3, NaN, Infinity, -Infinity, 2 ** -140, 5e-324, 0.1, 1e39]);
      return { what: `eb ${eb}`, codes: ['BAD_BOUND'], mayDecode: false, edit: (_, v) => v.setFloat64(16, eb, true) };
    },
    () => {
      const bs = pick([0, 16, 31, 33, 64, 0xffffffff]);
      return { what: `block size ${bs}`, codes: ['BAD_BLOCK'], mayDecode: false, edit: (_, v) => v.setUint32(24, bs, true) };
    },
    () => {
      const rc = pick([0, 17, 255]);
      return { what: `rung count ${rc}`, codes: ['BAD_RUNGS'], mayDecode: false, edit: (b) => void (b[28] = rc) };
    },
    () => {
      const bm = r.int(3, 255);
      return { what: `bound mode ${bm}`, codes: ['BAD_BOUND_MODE'], mayDecode: false, edit: (b) => void (b[29] = bm) };
    },
    () => {
      const at = pick([30, 31, 60, 61, 62, 63, entry + 1, entry + 2, entry + 3]);
      return { what: `reserved byte ${at}`, codes: ['BAD_RESERVED'], mayDecode: false, edit: (b) => void (b[at] = r.int(1, 255)) };
    },
    () => ({
      what: 'bound parameter (informational)',
      codes: [],
      mayDecode: true,
      edit: (_, v) => v.setFloat64(32, r.next() * 10, true),
    }),
    () => {
      const e = pick([BigInt(l.count) + 1n, 2n ** 40n, 2n ** 64n - 1n]);
      return { what: `escape count ${e} (count ${l.count})`, codes: ['BAD_ESCAPES'], mayDecode: false, edit: (_, v) => v.setBigUint64(40, e, true) };
    },
    () => {
      const d = pick([1n, -1n, 4n, -4n, 1000n, 2n ** 63n]);
      const p = BigInt.asUintN(64, BigInt(l.payloadBytes) + d);
      return { what: `payload length ${p} (was ${l.payloadBytes})`, codes: ['BAD_LENGTH', 'BAD_RUNG', 'TRUNCATED'], mayDecode: false, edit: (_, v) => v.setBigUint64(48, p, true) };
    },
    () => {
      const d = pick([1n, -1n, 4n, 2n ** 40n]);
      return {
        what: `rung ${j} offset +${d}`,
        codes: ['BAD_RUNG'],
        mayDecode: false,
        edit: (_, v) => v.setBigUint64(entry + 8, BigInt.asUintN(64, v.getBigUint64(entry + 8, true) + d), true),
      };
    },
    () => {
      const d = pick([1n, -1n, 4n, -4n, 2n ** 40n]);
      return {
        what: `rung ${j} length +${d}`,
        codes: ['BAD_RUNG', 'BAD_LENGTH'],
        mayDecode: false,
        edit: (_, v) => v.setBigUint64(entry + 16, BigInt.asUintN(64, v.getBigUint64(entry + 16, true) + d), true),
      };
    },
    () => {
      const p = pick([22, 23, 200, 255]);
      return { what: `rung ${j} drops ${p} planes`, codes: ['BAD_RUNG'], mayDecode: false, edit: (b) => void (b[entry] = p) };
    },
    () => {
      if (l.blocks === 0) return { what: 'magic (no rate bytes)', codes: ['BAD_MAGIC'], mayDecode: false, edit: (b) => void (b[0] = 0) };
      const blk = r.below(l.blocks);
      const rate = r.int(23, 255);
      return { what: `block ${blk} rate ${rate}`, codes: ['BAD_RATE'], mayDecode: false, edit: (b) => void (b[l.ratesAt + blk] = rate) };
    },
  ];
  return pick(forgeries)();
}

/** Where an entropy-coded (version 2, mode 1) stream's rung-0 parts are (FORMAT.md, "Entropy-coded rungs"). */
export interface EntropyLayout extends Layout {
  /** Rung 0's descriptor: raw planes, scale bits, symbol count, segment count. */
  descAt: number;
  symbols: number;
  segments: number;
  freqAt: number;
  /** The escapes and the segment table (u32 words per segment), then each segment's states. */
  entropyEscapesAt: number;
  segTableAt: number;
  segAt: number[];
  segWords: number[];
  rawAt: number;
}

export function entropyLayout(s: Uint8Array): EntropyLayout {
  const l = layout(s);
  const v = dv(s);
  const descAt = l.rungAt[0];
  const symbols = v.getUint16(descAt + 2, true);
  const segments = v.getUint32(descAt + 4, true);
  const freqAt = descAt + 8;
  const entropyEscapesAt = freqAt + Math.ceil((2 * symbols) / 4) * 4;
  const segTableAt = entropyEscapesAt + 8 * l.escapes;
  const segAt: number[] = [];
  const segWords: number[] = [];
  let at = segTableAt + 4 * segments;
  for (let g = 0; g < segments; g++) {
    const w = v.getUint32(segTableAt + 4 * g, true);
    segAt.push(at);
    segWords.push(w);
    at += 128 + Math.ceil((2 * w) / 4) * 4;
  }
  return { ...l, descAt, symbols, segments, freqAt, entropyEscapesAt, segTableAt, segAt, segWords, rawAt: at };
}
