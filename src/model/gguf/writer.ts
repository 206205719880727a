/**
 * Writes a GGUF v3 file (format.ts): metadata, the tensor directory, then each tensor's bytes at
 * an offset aligned to 32 (GGUF's default alignment, which gguf-py uses and so leaves unwritten),
 * zero-padded between tensors. Tensor bytes are produced one tensor at a time by the caller's
 * `data()` so a large model never sits in memory whole. The file appears under its name only
 * when complete (written to `<out>.partial`, then renamed); a failure removes the partial file.
 *
 * @example
 * writeGguf('out.gguf', [['general.architecture', { type: GgufValueType.STRING, value: 'llama' }]],
 *   [{ name: 'token_embd.weight', type: GgmlType.F32, ne: [d, V], data: () => bytes }]);
 */
import fs from 'node:fs';

import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GgufValueType, VALUE_BYTES, type GgufEntry, type GgufValue } from './format.js';
import { typeBytes } from './quant.js';

export interface TensorToWrite {
  name: string;
  type: number;
  /** ggml dims, ne[0] fastest (the PyTorch shape reversed). */
  ne: number[];
  /** The tensor's bytes, exactly typeBytes(type, elements) long. */
  data: () => Uint8Array;
}

/** Little-endian encoder into a growing buffer. */
class Out {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  value(type: GgufValueType, v: GgufValue): void {
    const n = VALUE_BYTES[type];
    const b = n ? Buffer.alloc(n) : undefined;
    switch (type) {
      case GgufValueType.UINT8: b!.writeUInt8(v as number); break;
      case GgufValueType.INT8: b!.writeInt8(v as number); break;
      case GgufValueType.UINT16: b!.writeUInt16LE(v as number); break;
      case GgufValueType.INT16: b!.writeInt16LE(v as number); break;
      case GgufValueType.UINT32: b!.writeUInt32LE(v as number); break;
      case GgufValueType.INT32: b!.writeInt32LE(v as number); break;
      case GgufValueType.FLOAT32: b!.writeFloatLE(v as number); break;
      case GgufValueType.BOOL: b!.writeUInt8(v ? 1 : 0); break;
      case GgufValueType.UINT64: b!.writeBigUInt64LE(BigInt(v as number)); break;
      case GgufValueType.INT64: b!.writeBigInt64LE(BigInt(v as number)); break;
      case GgufValueType.FLOAT64: b!.writeDoubleLE(v as number); break;
      case GgufValueType.STRING: this.string(v as string); return;
      default: throw new RangeError(`cannot write a value of type ${type}`);
    }
    this.push(b!);
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

/** Writes `out` (see the file comment); returns the file's size in bytes. */
export function writeGguf(out: string, metadata: [string, GgufEntry][], tensors: TensorToWrite[]): number {
  const h = new Out();
  h.u32(GGUF_MAGIC);
  h.u32(GGUF_VERSION);
  h.u64(tensors.length);
  h.u64(metadata.length);
  for (const [key, e] of metadata) {
    h.string(key);
    h.u32(e.type);
    if (e.type === GgufValueType.ARRAY) {
      const items = e.value as GgufValue[];
      h.u32(e.itemType!);
      h.u64(items.length);
      for (const item of items) h.value(e.itemType!, item);
    } else h.value(e.type, e.value);
  }
  let offset = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    h.string(t.name);
    h.u32(t.ne.length);
    for (const n of t.ne) h.u64(n);
    h.u32(t.type);
    h.u64(offset);
    const size = typeBytes(t.type, t.ne.reduce((a, b) => a * b, 1));
    sizes.push(size);
    offset = align(offset + size, GGUF_DEFAULT_ALIGNMENT);
  }
  const header = h.bytes();
  const partial = `${out}.partial`;
  const fd = fs.openSync(partial, 'w');
  try {
    let pos = 0;
    const write = (b: Uint8Array) => {
      let done = 0;
      while (done < b.byteLength) done += fs.writeSync(fd, b, done, b.byteLength - done, pos + done);
      pos += b.byteLength;
    };
    write(header);
    write(new Uint8Array(align(pos, GGUF_DEFAULT_ALIGNMENT) - pos));
    const dataStart = pos;
    tensors.forEach((t, i) => {
      const bytes = t.data();
      if (bytes.byteLength !== sizes[i]) throw new RangeError(`tensor ${t.name}: ${bytes.byteLength} bytes given, ${sizes[i]} declared`);
      write(bytes);
      write(new Uint8Array(align(pos - dataStart, GGUF_DEFAULT_ALIGNMENT) - (pos - dataStart)));
    });
    fs.closeSync(fd);
    fs.renameSync(partial, out);
    return pos;
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed
    }
    fs.rmSync(partial, { force: true });
    throw e;
  }
}
