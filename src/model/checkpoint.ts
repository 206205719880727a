/**
 * A Hugging Face checkpoint folder, opened and checked up front, read lazily afterwards.
 * The folder holds config.json and either model.safetensors or model.safetensors.index.json
 * (whose weight_map names each tensor's shard; model.safetensors wins when both are present);
 * bf16, f16 or f32. Opening reads config.json and every shard's header — never tensor data — and
 * checks the tensors present against exactly the set the config implies (names.ts): a missing
 * tensor, an extra one, a wrong shape, a dtype other than F32/F16/BF16, or a damaged shard fails
 * here with a CheckpointError naming the file and the tensor, so a bad checkpoint never gets as
 * far as a forward pass.
 *
 * The hash identifies the checkpoint for caches of derived data (e.g. compressed experts):
 * sha256 over config.json, the index (when sharded) and, per shard, its name, size, mtime and
 * header bytes. It is cheap (no tensor data is read) and changes whenever a file is rewritten;
 * the price is that a copy of the same files with other mtimes hashes differently.
 *
 * @example
 * const ckpt = openCheckpoint('models/tiny');
 * const w1 = ckpt.readTensor(expertName(ckpt.config, 0, 3, 'gate'));  // Float32Array [F·d]
 * ckpt.close();
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { readConfig } from './config.js';
import { isGgufPath, openGgufCheckpoint } from './gguf/checkpoint.js';
import { DTYPE_BYTES, decodeTensor } from '../codec/halfs-array.js';
import { expectedTensors, expertName } from './names.js';
import { CheckpointError, SafetensorsFile } from './safetensors.js';
import type { ExpertMatrix, ModelConfig, TensorDtype, TensorInfo } from './types.js';

/** The error every checkpoint failure becomes (defined beside the reader, which throws it first). */
export { CheckpointError } from './safetensors.js';

/** An open checkpoint: its configuration and its tensors, read on demand. */
export interface Checkpoint {
  readonly config: ModelConfig;
  readonly dir: string;
  /** Hex sha256 of config.json, the index and each shard's name, size, mtime and header. */
  readonly hash: string;
  /** Every tensor name, in the order the config implies. */
  tensorNames(): string[];
  /** Where tensor `name` is and what it holds. */
  tensorInfo(name: string): TensorInfo;
  /** Tensor `name` converted to float32 (a fresh array; nothing is cached). */
  readTensor(name: string): Float32Array;
  /** Tensor `name` as stored, for the codec. */
  readRaw(name: string): { dtype: TensorDtype; shape: number[]; bytes: Buffer };
  /** Layer `layer`'s expert `expert`, matrix `which`. */
  expertInfo(layer: number, expert: number, which: ExpertMatrix): TensorInfo;
  /** Closes every shard; later reads throw. */
  close(): void;
}

const SINGLE = 'model.safetensors';
const INDEX = 'model.safetensors.index.json';

/** Opens and checks the checkpoint in `dir` (see the file comment), or the GGUF file `dir` (gguf/checkpoint.ts). */
export function openCheckpoint(dir: string): Checkpoint {
  if (isGgufPath(dir)) return openGgufCheckpoint(dir);
  const config = readConfig(dir);
  const hash = createHash('sha256').update('ebserve-checkpoint-v1\0');
  hash.update(fs.readFileSync(path.join(dir, 'config.json')));
  const shards = new Map<string, SafetensorsFile>();
  try {
    // where[name] = the shard that holds it; `listed` = the file that names it (shard or index).
    const where = new Map<string, SafetensorsFile>();
    let listedIn: string;
    if (fs.existsSync(path.join(dir, SINGLE))) {
      listedIn = path.join(dir, SINGLE);
      const f = SafetensorsFile.open(listedIn);
      shards.set(SINGLE, f);
      for (const name of f.tensors.keys()) where.set(name, f);
    } else if (fs.existsSync(path.join(dir, INDEX))) {
      listedIn = path.join(dir, INDEX);
      const text = fs.readFileSync(listedIn);
      hash.update(text);
      for (const [name, shard] of readIndex(listedIn, text)) {
        let f = shards.get(shard);
        if (!f) shards.set(shard, (f = SafetensorsFile.open(path.join(dir, shard))));
        if (!f.tensors.has(name)) throw new CheckpointError('MISSING_TENSOR', `${f.path}: missing tensor ${name} (${listedIn} puts it there)`, { file: f.path, tensor: name });
        where.set(name, f);
      }
      for (const f of shards.values()) {
        for (const name of f.tensors.keys()) {
          if (where.get(name) !== f) throw new CheckpointError('EXTRA_TENSOR', `${f.path}: tensor ${name} is not in ${listedIn}'s weight_map for this shard`, { file: f.path, tensor: name });
        }
      }
    } else {
      throw new CheckpointError('NO_WEIGHTS', `${dir}: neither ${SINGLE} nor ${INDEX} found`, { file: dir });
    }
    for (const [name, f] of [...shards].sort(([a], [b]) => (a < b ? -1 : 1))) {
      hash.update(`${name}\0${f.size}\0${f.mtimeMs}\0`).update(f.header);
    }

    const expected = expectedTensors(config);
    const want = new Set(expected.map((t) => t.name));
    const missing = expected.filter((t) => !where.has(t.name));
    if (missing.length) {
      const more = missing.length > 1 ? ` (and ${missing.length - 1} more)` : '';
      const m = missing[0];
      throw new CheckpointError('MISSING_TENSOR', `${listedIn}: missing tensor ${m.name} [${m.shape}] that a ${config.arch} config implies${more}`, { file: listedIn, tensor: m.name });
    }
    for (const [name, f] of where) {
      if (!want.has(name)) throw new CheckpointError('EXTRA_TENSOR', `${f.path}: unexpected tensor ${name} (not part of a ${config.arch} checkpoint with this config.json)`, { file: f.path, tensor: name });
    }
    for (const t of expected) {
      const got = where.get(t.name)!.tensors.get(t.name)!;
      if (got.shape.join() !== t.shape.join()) {
        throw new CheckpointError('SHAPE_MISMATCH', `${got.file}: tensor ${t.name} has shape [${got.shape}] but config.json implies [${t.shape}]`, { file: got.file, tensor: t.name });
      }
    }
    return new OpenCheckpoint(config, dir, hash.digest('hex'), expected.map((t) => t.name), where, [...shards.values()]);
  } catch (e) {
    for (const f of shards.values()) f.close();
    throw e;
  }
}

/** Parses an index's weight_map into [tensor, shard file] pairs, checking its form. */
function readIndex(file: string, text: Buffer): [string, string][] {
  let json: unknown;
  try {
    json = JSON.parse(text.toString('utf8'));
  } catch (e) {
    throw new CheckpointError('BAD_INDEX', `${file}: not valid JSON (${(e as Error).message})`, { file });
  }
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new CheckpointError('BAD_INDEX', `${file}: no weight_map object`, { file });
  return Object.entries(map).map(([name, shard]) => {
    if (typeof shard !== 'string' || shard !== path.basename(shard) || shard === '..' || !shard.endsWith('.safetensors')) {
      throw new CheckpointError('BAD_INDEX', `${file}: tensor ${name} maps to ${JSON.stringify(shard)}, not a .safetensors file in this folder`, { file, tensor: name });
    }
    return [name, shard];
  });
}

class OpenCheckpoint implements Checkpoint {
  constructor(
    readonly config: ModelConfig,
    readonly dir: string,
    readonly hash: string,
    private readonly names: string[],
    private readonly where: Map<string, SafetensorsFile>,
    private readonly shards: SafetensorsFile[],
  ) {}

  tensorNames(): string[] {
    return [...this.names];
  }

  tensorInfo(name: string): TensorInfo {
    const f = this.where.get(name);
    if (!f) throw new CheckpointError('MISSING_TENSOR', `${this.dir}: no tensor ${name} in this checkpoint`, { file: this.dir, tensor: name });
    const t = f.info(name);
    return { ...t, shape: [...t.shape] };
  }

  readTensor(name: string): Float32Array {
    const t = this.tensorInfo(name);
    if (t.dtype === 'F32') {
      const out = new Float32Array(t.byteLength / DTYPE_BYTES.F32);
      this.where.get(name)!.readInto(name, new Uint8Array(out.buffer)); // straight into the result: no second copy
      return out;
    }
    return decodeTensor(this.where.get(name)!.read(name), t.dtype);
  }

  readRaw(name: string): { dtype: TensorDtype; shape: number[]; bytes: Buffer } {
    const t = this.tensorInfo(name);
    return { dtype: t.dtype, shape: [...t.shape], bytes: this.where.get(name)!.read(name) };
  }

  expertInfo(layer: number, expert: number, which: ExpertMatrix): TensorInfo {
    return this.tensorInfo(expertName(this.config, layer, expert, which));
  }

  close(): void {
    for (const f of this.shards) f.close();
  }
}
