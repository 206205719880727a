/**
 * Reads a GGUF file's header — metadata and tensor directory — without reading tensor data, and
 * checks it: magic, version, every count and length against the bytes the file has, every tensor
 * type known to ggml, every tensor's data inside the file and aligned. A damaged file fails with a
 * CheckpointError naming the file and the field (`metadata tokenizer.ggml.tokens: array of …
 * runs past the end of the file`), never a RangeError or an allocation of a bogus size.
 *
 * Why not @huggingface/gguf here: it parses the same header (the tests use it as an independent
 * check of what export writes), but its errors do not name the field that is damaged and it reads
 * through fetch-style ranges; a loader needs both the exact field and bounded local reads.
 *
 * @example
 * const h = readGgufHeader('model.gguf');
 * h.metadata.get('general.architecture')?.value;   // 'llama'
 * h.tensors.get('blk.0.attn_q.weight');            // { type: GgmlType.Q8_0, ne: [d, d], offset, … }
 */
import fs from 'node:fs';

import { CheckpointError } from '../safetensors.js';
import { GGML_BLOCKS, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, ggmlTypeName, GgufValueType, VALUE_BYTES, type GgufEntry, type GgufValue } from './format.js';

/** One tensor of the directory: ggml dims (ne[0] fastest), type, and where its bytes are. */
export interface GgufTensor {
  name: string;
  type: number;
  ne: number[];
  /** Absolute offset of the first byte in the file. */
  offset: number;
  byteLength: number;
}

export interface GgufHeader {
  file: string;
  version: number;
  size: number;
  mtimeMs: number;
  metadata: Map<string, GgufEntry>;
  tensors: Map<string, GgufTensor>;
  alignment: number;
  /** Where tensor data starts (offsets in the directory are relative to it). */
  dataOffset: number;
  /** The header's raw bytes (for the checkpoint hash). */
  headerBytes: Buffer;
}

/** Largest tensor rank ggml has (GGML_MAX_DIMS). */
const MAX_DIMS = 4;

/** Reads bytes at a moving position through a window, failing with the field's name past the end. */
class Cursor {
  pos = 0;
  private win = Buffer.alloc(0);
  private winStart = 0;
  constructor(
    private readonly fd: number,
    readonly size: number,
    private readonly file: string,
  ) {}

  fail(code: string, message: string): never {
    throw new CheckpointError(code, `${this.file}: ${message}`, { file: this.file });
  }

  /** `n` bytes at pos (a view; copy to keep), advancing; `what` names the field in errors. */
  take(n: number, what: string): Buffer {
    if (this.pos + n > this.size) this.fail('BAD_GGUF', `${what} runs past the end of the file (needs ${n} bytes at offset ${this.pos}; the file has ${this.size})`);
    if (this.pos < this.winStart || this.pos + n > this.winStart + this.win.length) {
      const len = Math.min(Math.max(n, 1 << 20), this.size - this.pos);
      const buf = Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const r = fs.readSync(this.fd, buf, got, len - got, this.pos + got);
        if (r === 0) this.fail('BAD_GGUF', `${what}: the file ended early while reading`);
        got += r;
      }
      this.win = buf;
      this.winStart = this.pos;
    }
    const at = this.pos - this.winStart;
    this.pos += n;
    return this.win.subarray(at, at + n);
  }

  u32(what: string): number {
    return this.take(4, what).readUInt32LE(0);
  }

  /** A u64 as a number; past 2^53 is damage for every count and size here. */
  u64(what: string): number {
    const v = this.take(8, what).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail('BAD_GGUF', `${what} is ${v}, far beyond any file`);
    return Number(v);
  }

  /** A count of items each at least `minBytes` long: refused when they cannot fit in what is left. */
  count(what: string, minBytes: number): number {
    const n = this.u64(what);
    if (n * minBytes > this.size - this.pos) this.fail('BAD_GGUF', `${what} is ${n}, more than the ${this.size - this.pos} bytes left in the file can hold (count past the end of the file)`);
    return n;
  }

  string(what: string): string {
    const n = this.count(`${what} (string length)`, 1);
    return this.take(n, what).toString('utf8');
  }
}

/** Reads and checks the header of the GGUF file `file`. */
export function readGgufHeader(file: string): GgufHeader {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new CheckpointError('NO_WEIGHTS', `${file}: cannot open (${(e as Error).message})`, { file });
  }
  try {
    const st = fs.fstatSync(fd);
    const c = new Cursor(fd, st.size, file);
    const magic = c.u32('magic');
    if (magic !== GGUF_MAGIC) c.fail('BAD_GGUF', `bad magic ${JSON.stringify(Buffer.from(Uint32Array.of(magic).buffer).toString('latin1'))} (a GGUF file starts with "GGUF")`);
    const version = c.u32('version');
    if (version !== 2 && version !== 3) c.fail('BAD_GGUF', `version ${version} is not supported (2 or 3)`);
    // The smallest tensor info is 8 (name length) + 4 + 4 + 8 bytes; the smallest kv 8 + 4 + 1.
    const tensorCount = c.u64('tensor_count');
    const kvCount = c.count('kv_count', 13);
    if (tensorCount * 24 > c.size - c.pos) c.fail('BAD_GGUF', `tensor_count is ${tensorCount}, more than the file can hold (count past the end of the file)`);

    const metadata = new Map<string, GgufEntry>();
    for (let i = 0; i < kvCount; i++) {
      const key = c.string(`metadata key #${i}`);
      if (metadata.has(key)) c.fail('BAD_GGUF', `metadata ${key} appears twice`);
      const type = c.u32(`metadata ${key} (value type)`);
      if (type === GgufValueType.ARRAY) {
        const itemType = c.u32(`metadata ${key} (array element type)`);
        if (itemType === GgufValueType.ARRAY || !(itemType in GgufValueType)) c.fail('BAD_GGUF', `metadata ${key}: unknown array element type ${itemType}`);
        const min = itemType === GgufValueType.STRING ? 8 : VALUE_BYTES[itemType as GgufValueType]!;
        const n = c.count(`metadata ${key} (array count)`, min);
        const items: GgufValue[] = new Array(n);
        for (let j = 0; j < n; j++) items[j] = scalar(c, itemType, `metadata ${key}[${j}]`);
        metadata.set(key, { type, itemType, value: items });
      } else {
        if (!(type in GgufValueType)) c.fail('BAD_GGUF', `metadata ${key}: unknown value type ${type}`);
        metadata.set(key, { type, value: scalar(c, type, `metadata ${key}`) });
      }
    }

    const alignEntry = metadata.get('general.alignment');
    let alignment = GGUF_DEFAULT_ALIGNMENT;
    if (alignEntry) {
      const a = alignEntry.value;
      if (alignEntry.type !== GgufValueType.UINT32 || typeof a !== 'number' || a === 0 || (a & (a - 1)) !== 0) c.fail('BAD_GGUF', `metadata general.alignment must be a u32 power of two (got ${String(a)})`);
      alignment = a as number;
    }

    const infos: { name: string; type: number; ne: number[]; rel: number; bytes: number }[] = [];
    const names = new Set<string>();
    for (let i = 0; i < tensorCount; i++) {
      const name = c.string(`tensor #${i} name`);
      if (names.has(name)) c.fail('BAD_GGUF', `tensor ${name} appears twice`);
      names.add(name);
      const nDims = c.u32(`tensor ${name} n_dims`);
      if (nDims < 1 || nDims > MAX_DIMS) c.fail('BAD_GGUF', `tensor ${name}: n_dims ${nDims} is not in 1..${MAX_DIMS}`);
      const ne: number[] = [];
      for (let d = 0; d < nDims; d++) ne.push(c.u64(`tensor ${name} ne[${d}]`));
      const type = c.u32(`tensor ${name} type`);
      const traits = GGML_BLOCKS[type];
      if (!traits) c.fail('BAD_GGUF', `tensor ${name}: unknown tensor type ${type} (not a ggml type)`);
      if (ne[0] % traits.block !== 0) c.fail('BAD_GGUF', `tensor ${name}: ne[0] = ${ne[0]} is not a multiple of ${ggmlTypeName(type)}'s block of ${traits.block}`);
      const elements = ne.reduce((a, b) => a * b, 1);
      if (!Number.isSafeInteger(elements)) c.fail('BAD_GGUF', `tensor ${name}: shape [${ne}] is too large`);
      const rel = c.u64(`tensor ${name} offset`);
      if (rel % alignment !== 0) c.fail('BAD_GGUF', `tensor ${name}: data offset ${rel} is not a multiple of the alignment ${alignment}`);
      infos.push({ name, type, ne, rel, bytes: (elements / traits.block) * traits.bytes });
    }
    const dataOffset = Math.ceil(c.pos / alignment) * alignment;
    const tensors = new Map<string, GgufTensor>();
    for (const t of infos) {
      const offset = dataOffset + t.rel;
      if (offset + t.bytes > st.size) {
        c.fail('BAD_GGUF', `tensor ${t.name}: data truncated (${t.bytes} bytes at offset ${offset}, but the file has ${st.size})`);
      }
      tensors.set(t.name, { name: t.name, type: t.type, ne: t.ne, offset, byteLength: t.bytes });
    }
    const headerBytes = Buffer.alloc(c.pos);
    fs.readSync(fd, headerBytes, 0, c.pos, 0);
    return { file, version, size: st.size, mtimeMs: st.mtimeMs, metadata, tensors, alignment, dataOffset, headerBytes };
  } finally {
    fs.closeSync(fd);
  }
}

function scalar(c: Cursor, type: GgufValueType, what: string): GgufValue {
  switch (type) {
    case GgufValueType.UINT8:
      return c.take(1, what).readUInt8(0);
    case GgufValueType.INT8:
      return c.take(1, what).readInt8(0);
    case GgufValueType.UINT16:
      return c.take(2, what).readUInt16LE(0);
    case GgufValueType.INT16:
      return c.take(2, what).readInt16LE(0);
    case GgufValueType.UINT32:
      return c.take(4, what).readUInt32LE(0);
    case GgufValueType.INT32:
      return c.take(4, what).readInt32LE(0);
    case GgufValueType.FLOAT32:
      return c.take(4, what).readFloatLE(0);
    case GgufValueType.BOOL: {
      const b = c.take(1, what).readUInt8(0);
      if (b > 1) c.fail('BAD_GGUF', `${what}: bool byte ${b} is neither 0 nor 1`);
      return b === 1;
    }
    case GgufValueType.STRING:
      return c.string(what);
    case GgufValueType.UINT64: {
      const v = c.take(8, what).readBigUInt64LE(0);
      return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
    }
    case GgufValueType.INT64: {
      const v = c.take(8, what).readBigInt64LE(0);
      return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
    }
    case GgufValueType.FLOAT64:
      return c.take(8, what).readDoubleLE(0);
    default:
      return c.fail('BAD_GGUF', `${what}: unknown value type ${type}`);
  }
}
