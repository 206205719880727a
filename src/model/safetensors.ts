/**
 * The safetensors format, read lazily and written for tests and tools. A file is: a u64
 * little-endian header length N, N bytes of JSON header ({name: {dtype, shape, data_offsets}} plus
 * an optional "__metadata__" of strings), then the data region the offsets point into.
 *
 * Opening a file reads only the 8 + N header bytes and checks everything that can be checked
 * without the data: sane N, valid JSON, dtype F32/F16/BF16, integral shapes, offsets that tile
 * the data region exactly (no gap, no overlap, nothing after the last tensor), byte lengths that
 * match shape × dtype, and a data region as long as the offsets say (else: truncated, naming the
 * first tensor cut off). Reading a tensor is one positioned read of its bytes; nothing is cached,
 * so the caller holds the only copy. Every error is a CheckpointError naming the file (and the
 * tensor when there is one).
 *
 * @example
 * writeSafetensors('/tmp/a.safetensors', { w: { dtype: 'BF16', shape: [2, 3], data: new Float32Array(6) } });
 * const f = SafetensorsFile.open('/tmp/a.safetensors');  f.read('w');  f.close();
 */
import fs from 'node:fs';

import { DTYPE_BYTES, encodeTensor } from '../codec/halfs-array.js';
import type { TensorDtype, TensorInfo } from './types.js';

/** The largest header accepted (the reference implementation's limit): 100 MB. */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * Every checkpoint failure: damaged or inconsistent files, unsupported content, a config.json
 * that does not describe a supported model. `code` is stable for callers to branch on; the
 * message names the file and, when there is one, the tensor or config field.
 */
export class CheckpointError extends Error {
  readonly code: string;
  readonly file?: string;
  readonly tensor?: string;
  constructor(code: string, message: string, where: { file?: string; tensor?: string } = {}) {
    super(message);
    this.name = 'CheckpointError';
    this.code = code;
    this.file = where.file;
    this.tensor = where.tensor;
  }
}

const SUPPORTED: readonly string[] = Object.keys(DTYPE_BYTES);

/** One open safetensors file: its validated header, and its tensors' bytes on demand. */
export class SafetensorsFile {
  /** Tensors in data order (ascending offset). */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  private fd: number | undefined;

  private constructor(
    /** The file's path, as given to open(). */
    readonly path: string,
    fd: number,
    /** File size in bytes and modification time, as stat gave them at open. */
    readonly size: number,
    readonly mtimeMs: number,
    /** The raw header bytes (the JSON, with its padding), e.g. for hashing. */
    readonly header: Buffer,
    /** The "__metadata__" strings, empty when absent. */
    readonly metadata: Readonly<Record<string, string>>,
    tensors: TensorInfo[],
  ) {
    this.fd = fd;
    this.tensors = new Map(tensors.map((t) => [t.name, t]));
  }

  /** Opens `path` and validates its header against the file's size; reads no tensor data. */
  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (e) {
      throw new CheckpointError('IO', `${path}: cannot open (${(e as Error).message})`, { file: path });
    }
    try {
      const st = fs.fstatSync(fd);
      const lenBytes = readExactly(fd, path, 0, 8, 'the 8-byte header length');
      const n = lenBytes.readBigUInt64LE(0);
      if (n > BigInt(st.size - 8)) {
        throw new CheckpointError('BAD_HEADER', `${path}: header length ${n} is larger than the file (${st.size} bytes)`, { file: path });
      }
      if (n > BigInt(MAX_HEADER_BYTES)) {
        throw new CheckpointError('BAD_HEADER', `${path}: header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`, { file: path });
      }
      const header = readExactly(fd, path, 8, Number(n), 'the header');
      const parsed = parseHeader(path, header, st.size);
      return new SafetensorsFile(path, fd, st.size, st.mtimeMs, header, parsed.metadata, parsed.tensors);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** The stored bytes of tensor `name` (little-endian, its dtype), in a fresh Buffer that owns its whole ArrayBuffer. */
  read(name: string): Buffer {
    const t = this.info(name);
    const out = Buffer.allocUnsafeSlow(t.byteLength); // not from the shared pool: .buffer is this tensor alone
    this.readInto(name, out);
    return out;
  }

  /** Reads tensor `name`'s stored bytes into `target`, which must be exactly its byte length. */
  readInto(name: string, target: Uint8Array): void {
    const t = this.info(name);
    if (this.fd === undefined) throw new CheckpointError('CLOSED', `${this.path}: read of ${name} after close`, { file: this.path, tensor: name });
    if (target.byteLength !== t.byteLength) throw new RangeError(`${name} is ${t.byteLength} bytes; target is ${target.byteLength}`);
    let done = 0;
    while (done < t.byteLength) {
      const got = fs.readSync(this.fd, target, done, t.byteLength - done, t.offset + done);
      if (got === 0) {
        throw new CheckpointError('TRUNCATED', `${this.path}: truncated while reading tensor ${name} (file shrank after opening?)`, { file: this.path, tensor: name });
      }
      done += got;
    }
  }

  /** The layout of tensor `name`; throws when the file has no such tensor. */
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new CheckpointError('MISSING_TENSOR', `${this.path}: no tensor ${name}`, { file: this.path, tensor: name });
    return t;
  }

  /** Closes the file; later reads throw. Idempotent. */
  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

function readExactly(fd: number, path: string, pos: number, len: number, what: string): Buffer {
  const buf = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const got = fs.readSync(fd, buf, done, len - done, pos + done);
    if (got === 0) throw new CheckpointError('TRUNCATED', `${path}: file ends inside ${what} (${pos + done} bytes)`, { file: path });
    done += got;
  }
  return buf;
}

/** Validates a header's JSON against a file of `fileSize` bytes; returns tensors in data order. */
function parseHeader(path: string, header: Buffer, fileSize: number): { tensors: TensorInfo[]; metadata: Record<string, string> } {
  const bad = (msg: string, tensor?: string) => new CheckpointError('BAD_HEADER', `${path}: ${msg}`, { file: path, tensor });
  let json: unknown;
  try {
    json = JSON.parse(header.toString('utf8'));
  } catch (e) {
    throw bad(`header is not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(json)) throw bad('header is not a JSON object');
  const dataStart = 8 + header.length;
  const dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: (TensorInfo & { begin: number })[] = [];
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isObject(entry) || Object.values(entry).some((v) => typeof v !== 'string')) throw bad('__metadata__ is not an object of strings');
      Object.assign(metadata, entry);
      continue;
    }
    if (!isObject(entry)) throw bad(`entry for tensor ${name} is not an object`, name);
    const { dtype, shape, data_offsets: offs } = entry;
    if (typeof dtype !== 'string') throw bad(`tensor ${name} has no dtype`, name);
    if (!SUPPORTED.includes(dtype)) {
      throw new CheckpointError('UNSUPPORTED_DTYPE', `${path}: tensor ${name} has unsupported dtype ${dtype} (supported: ${SUPPORTED.join(', ')})`, { file: path, tensor: name });
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw bad(`tensor ${name} has an invalid shape ${JSON.stringify(shape)}`, name);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[0] > offs[1]) {
      throw bad(`tensor ${name} has invalid data_offsets ${JSON.stringify(offs)}`, name);
    }
    const dt = dtype as TensorDtype;
    const want = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPE_BYTES[dt];
    const [begin, end] = offs as [number, number];
    if (end - begin !== want) {
      throw new CheckpointError('BAD_OFFSETS', `${path}: tensor ${name} spans ${end - begin} bytes but ${dt} ${JSON.stringify(shape)} needs ${want}`, { file: path, tensor: name });
    }
    tensors.push({ name, dtype: dt, shape: shape as number[], file: path, offset: dataStart + begin, byteLength: want, begin });
  }
  tensors.sort((a, b) => a.begin - b.begin || a.byteLength - b.byteLength);
  let pos = 0;
  let prev = '';
  for (const t of tensors) {
    if (t.begin < pos) throw new CheckpointError('BAD_OFFSETS', `${path}: tensor ${t.name} overlaps tensor ${prev}`, { file: path, tensor: t.name });
    if (t.begin > pos) throw new CheckpointError('BAD_OFFSETS', `${path}: ${t.begin - pos} unused bytes before tensor ${t.name}`, { file: path, tensor: t.name });
    if (t.begin + t.byteLength > dataSize) {
      throw new CheckpointError('TRUNCATED', `${path}: file truncated: tensor ${t.name} needs data bytes [${t.begin}, ${t.begin + t.byteLength}) but the file holds ${dataSize} (${fileSize} bytes in all)`, { file: path, tensor: t.name });
    }
    pos = t.begin + t.byteLength;
    prev = t.name;
  }
  if (pos !== dataSize) throw new CheckpointError('BAD_OFFSETS', `${path}: ${dataSize - pos} bytes after the last tensor`, { file: path });
  return { tensors: tensors.map(({ begin: _, ...t }) => t), metadata };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A tensor to write: values converted to `dtype`, or bytes already in it. */
export interface TensorToWrite {
  dtype: TensorDtype;
  shape: number[];
  data: Float32Array | Uint8Array;
}

/**
 * Writes a safetensors file: tensors in the given order, contiguous, header padded with spaces to
 * a multiple of 8. Float32Array data is converted (halves rounded to nearest even); Uint8Array
 * data is taken as the stored bytes and must be exactly shape × dtype long.
 */
export function writeSafetensors(path: string, tensors: Record<string, TensorToWrite> | Map<string, TensorToWrite>, metadata?: Record<string, string>): void {
  const entries = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const blobs: Uint8Array[] = [];
  let pos = 0;
  for (const [name, t] of entries) {
    if (name === '__metadata__') throw new Error('__metadata__ is not a tensor name');
    const n = t.shape.reduce((a, b) => a * b, 1);
    const bytes = t.data instanceof Float32Array ? encodeTensor(t.data, t.dtype) : t.data;
    if (bytes.byteLength !== n * DTYPE_BYTES[t.dtype]) throw new Error(`${name}: ${bytes.byteLength} bytes of data for ${t.dtype} ${JSON.stringify(t.shape)}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + bytes.byteLength] };
    blobs.push(bytes);
    pos += bytes.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length % 8) json = Buffer.concat([json, Buffer.alloc(8 - (json.length % 8), 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const fd = fs.openSync(path, 'w');
  try {
    for (const b of [len, json, ...blobs]) {
      for (let done = 0; done < b.byteLength; ) done += fs.writeSync(fd, b, done, b.byteLength - done);
    }
  } finally {
    fs.closeSync(fd);
  }
}
