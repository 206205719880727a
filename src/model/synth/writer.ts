/**
 * Writes a checkpoint's tensors as sharded safetensors, streaming: each tensor's values are
 * generated a chunk at a time and written straight to its shard, so memory holds one chunk
 * (8 MB), never a tensor or the model. The layout is planned first (pure arithmetic: which tensor
 * goes in which shard, at which offset), so shard names can carry their count as Hugging Face's
 * do (`model-00001-of-00003.safetensors`) and the index can be written beside them.
 *
 * A shard holds tensors in the checkpoint's order until the next one would take the file (8-byte
 * length + JSON header + data) over `maxShardBytes`; a single tensor larger than the cap is an
 * error naming it (Hugging Face would give it a shard of its own, over the cap).
 *
 * @example
 * const plan = planShards(tensors, 2e9);
 * await writeShards(dir, plan, (t, out, offset) => fillValues(t, out, offset), bar);
 * writeIndex(dir, plan);
 */
import fs from 'node:fs';
import path from 'node:path';

import type { ProgressBar } from '../../offload/progress.js';

/** One tensor to write: its name, shape and how its bf16 values are made. */
export interface TensorSpec {
  name: string;
  shape: number[];
  /** 'normal': N(0, σ) from the tensor's own random stream; 'ones': every value 1 (norm weights). */
  init: 'normal' | 'ones';
}

/** Where a tensor lands: its shard, and its data's byte offset within that file. */
export interface PlacedTensor extends TensorSpec {
  shard: string;
  offset: number;
  byteLength: number;
}

export interface ShardPlan {
  file: string;
  header: Buffer;
  tensors: PlacedTensor[];
  /** The whole file: 8 + header + data. */
  bytes: number;
}

/** Bytes per value: every synthetic tensor is bf16. */
const BF16 = 2;
const METADATA = { format: 'pt' };

/**
 * Splits `tensors` (in order) into shards of at most `maxShardBytes` each, with the exact header
 * each shard will have. Throws a RangeError naming a tensor that cannot fit in any shard.
 */
export function planShards(tensors: TensorSpec[], maxShardBytes: number): ShardPlan[] {
  const groups: TensorSpec[][] = [];
  let current: TensorSpec[] = [];
  for (const t of tensors) {
    const alone = fileBytes([t]);
    if (alone > maxShardBytes) {
      throw new RangeError(`tensor ${t.name} [${t.shape}] needs a ${alone}-byte shard, over the cap of ${maxShardBytes} bytes`);
    }
    if (current.length && fileBytes([...current, t]) > maxShardBytes) {
      groups.push(current);
      current = [];
    }
    current.push(t);
  }
  if (current.length) groups.push(current);
  const n = groups.length;
  return groups.map((group, i) => {
    const file = n === 1 ? 'model.safetensors' : `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
    const header = headerBytes(group);
    let pos = 8 + header.length;
    const placed = group.map((t) => {
      const byteLength = count(t.shape) * BF16;
      const p = { ...t, shard: file, offset: pos, byteLength };
      pos += byteLength;
      return p;
    });
    return { file, header, tensors: placed, bytes: pos };
  });
}

/** A sharded plan is listed in the index; a single shard is plain model.safetensors (as HF writes it). */
export function isSharded(plan: ShardPlan[]): boolean {
  return plan.length > 1;
}

function count(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** The header JSON of a shard holding `tensors` contiguously, padded with spaces to a multiple of 8. */
function headerBytes(tensors: TensorSpec[]): Buffer {
  const header: Record<string, unknown> = { __metadata__: METADATA };
  let pos = 0;
  for (const t of tensors) {
    const n = count(t.shape) * BF16;
    header[t.name] = { dtype: 'BF16', shape: t.shape, data_offsets: [pos, pos + n] };
    pos += n;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  return pad ? Buffer.concat([json, Buffer.alloc(pad, 0x20)]) : json;
}

function fileBytes(tensors: TensorSpec[]): number {
  return 8 + headerBytes(tensors).length + tensors.reduce((s, t) => s + count(t.shape) * BF16, 0);
}

/** Fills `out` with tensor `t`'s bf16 bits for values [start, start + out.length). */
export type ValueSource = (t: PlacedTensor, out: Uint16Array, start: number) => void;

/** Values per write: 4 Mi bf16 values, 8 MB. */
const CHUNK_VALUES = 1 << 22;

/**
 * Writes every shard of `plan` into `dir`, values from `source`, reporting progress in MB to `bar`.
 * Files are written in full or the error propagates (the caller removes the folder).
 * @example await writeShards(dir, planShards(specs, 2e9), (t, out, start) => out.fill(0x3f80));
 */
export async function writeShards(dir: string, plan: ShardPlan[], source: ValueSource, bar?: ProgressBar): Promise<void> {
  const totalMb = Math.max(1, Math.round(plan.reduce((s, p) => s + p.bytes, 0) / 1e6));
  let written = 0;
  const chunk = new Uint16Array(CHUNK_VALUES);
  for (const shard of plan) {
    const fd = fs.openSync(path.join(dir, shard.file), 'w');
    try {
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(shard.header.length));
      writeAll(fd, len);
      writeAll(fd, shard.header);
      written += 8 + shard.header.length;
      for (const t of shard.tensors) {
        const n = t.byteLength / BF16;
        for (let start = 0; start < n; start += CHUNK_VALUES) {
          const part = chunk.subarray(0, Math.min(CHUNK_VALUES, n - start));
          source(t, part, start);
          writeAll(fd, new Uint8Array(part.buffer, part.byteOffset, part.byteLength));
          written += part.byteLength;
          bar?.(Math.round(written / 1e6), totalMb, `MB · ${shard.file}`);
          // Back to the event loop between chunks, so an interrupt is handled within a chunk's time.
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}

function writeAll(fd: number, bytes: Uint8Array, position?: number): void {
  for (let done = 0; done < bytes.byteLength; ) {
    done += fs.writeSync(fd, bytes, done, bytes.byteLength - done, position === undefined ? null : position + done);
  }
}

/** Writes model.safetensors.index.json for a sharded plan (total_size = tensor bytes, as HF counts). */
export function writeIndex(dir: string, plan: ShardPlan[]): void {
  const all = plan.flatMap((p) => p.tensors);
  const weightMap = Object.fromEntries([...all].sort((a, b) => (a.name < b.name ? -1 : 1)).map((t) => [t.name, t.shard]));
  const index = { metadata: { total_size: all.reduce((s, t) => s + t.byteLength, 0) }, weight_map: weightMap };
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), `${JSON.stringify(index, null, 2)}\n`);
}

/** Overwrites tensor `t`'s bytes in place (same dtype and shape: the header is unchanged). */
export function rewriteTensor(dir: string, t: PlacedTensor, bits: Uint16Array): void {
  if (bits.byteLength !== t.byteLength) throw new RangeError(`${t.name} is ${t.byteLength} bytes; got ${bits.byteLength}`);
  const fd = fs.openSync(path.join(dir, t.shard), 'r+');
  try {
    writeAll(fd, new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength), t.offset);
  } finally {
    fs.closeSync(fd);
  }
}
