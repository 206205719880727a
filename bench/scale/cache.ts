/**
 * bench-scale's caches, outside the repository and kept between runs: the synthetic checkpoint
 * (`bin/ebserve synth` writes a folder, built aside and renamed into place when finished) and the
 * time its expert store took to build (a small JSON file beside the store file, which lives in
 * the checkpoint's `.ebserve-cache/`: the store itself is checked by ebserve when it opens it).
 *
 * @example
 * const dir = modelDir('/root/.cache/ebserve', 'olmoe-1b-7b', 2);   // …/bench-scale/olmoe-1b-7b-l2
 * checkpointProblem(dir);   // null when complete, else why not ("no config.json", "shard … is 12 bytes short", …)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** The cache root: $EBSERVE_BENCH_CACHE, else ~/.cache/ebserve. */
export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  const set = env.EBSERVE_BENCH_CACHE?.trim();
  return set ? path.resolve(set) : path.join(os.homedir(), '.cache', 'ebserve');
}

/** The synthetic checkpoint's folder: ROOT/bench-scale/SHAPE, or SHAPE-lN for a depth cut to N layers. */
export function modelDir(root: string, shape: string, layers?: number): string {
  return path.join(root, 'bench-scale', layers === undefined ? shape : `${shape}-l${layers}`);
}

/** BENCH_SCALE_LAYERS: undefined when unset, else a whole number ≥ 1 (synth checks the shape's own limit). */
export function layersFromEnv(env: string | undefined): number | undefined {
  if (env === undefined || env.trim() === '') return undefined;
  const n = Number(env);
  if (!(Number.isInteger(n) && n >= 1)) throw new Error(`BENCH_SCALE_LAYERS must be a whole number ≥ 1, got '${env}'`);
  return n;
}

/** Bytes a safetensors file must have: 8 + its header + its data's end; or why it cannot be read. */
export function safetensorsExpectedBytes(file: string): number | string {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return `no ${path.basename(file)}`;
  }
  try {
    const head = Buffer.alloc(8);
    if (fs.readSync(fd, head, 0, 8, 0) !== 8) return `${path.basename(file)} is shorter than its 8-byte header length`;
    const headerLength = Number(head.readBigUInt64LE(0));
    if (!(headerLength > 1 && headerLength < 1 << 30)) return `${path.basename(file)}: header length ${headerLength} is not plausible`;
    const header = Buffer.alloc(headerLength);
    if (fs.readSync(fd, header, 0, headerLength, 8) !== headerLength) return `${path.basename(file)} ends inside its header`;
    let end = 0;
    try {
      for (const [name, t] of Object.entries(JSON.parse(header.toString('utf8')) as Record<string, { data_offsets?: [number, number] }>)) {
        if (name !== '__metadata__' && t.data_offsets) end = Math.max(end, t.data_offsets[1]);
      }
    } catch {
      return `${path.basename(file)}: its header is not JSON`;
    }
    return 8 + headerLength + end;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Why `dir` is not a complete synthetic checkpoint, or null when it is: config.json,
 * tokenizer.json and routing.json there, and every safetensors file (model.safetensors, or each
 * shard the index names) exactly as long as its header says.
 */
export function checkpointProblem(dir: string): string | null {
  if (!fs.existsSync(dir)) return `${dir} does not exist`;
  for (const f of ['config.json', 'tokenizer.json', 'routing.json']) if (!fs.existsSync(path.join(dir, f))) return `no ${f} in ${dir}`;
  let shards: string[];
  const index = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(index)) {
    try {
      shards = [...new Set(Object.values((JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map))];
    } catch (e) {
      return `${index}: ${(e as Error).message}`;
    }
  } else if (fs.existsSync(path.join(dir, 'model.safetensors'))) {
    shards = ['model.safetensors'];
  } else {
    return `no model.safetensors or model.safetensors.index.json in ${dir}`;
  }
  for (const s of shards) {
    const want = safetensorsExpectedBytes(path.join(dir, s));
    if (typeof want === 'string') return want;
    const have = fs.statSync(path.join(dir, s)).size;
    if (have !== want) return `${s} is ${have} bytes, its header says ${want}`;
  }
  return null;
}

/** The safetensors files of a complete checkpoint and their bytes in all. */
export function checkpointBytes(dir: string): number {
  return fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).reduce((sum, f) => sum + fs.statSync(path.join(dir, f)).size, 0);
}

/** What bench-scale writes beside a store file it built (`STORE.bench-scale.json`). */
export interface StoreBuildRecord {
  store_file: string;
  store_bytes: number;
  /** Wall-clock seconds of the build (ensureStoreFile: compress, write, check). */
  build_seconds: number;
  built_at: string;
}

/** The record's path for a store file. */
export function storeRecordPath(storeFile: string): string {
  return `${storeFile}.bench-scale.json`;
}

/** The build record of `storeFile`, when there is one and it describes this file as it is (same bytes); else null. */
export function readStoreRecord(storeFile: string): StoreBuildRecord | null {
  try {
    const r = JSON.parse(fs.readFileSync(storeRecordPath(storeFile), 'utf8')) as StoreBuildRecord;
    if (typeof r.build_seconds !== 'number' || r.store_bytes !== fs.statSync(storeFile).size) return null;
    return r;
  } catch {
    return null;
  }
}

export function writeStoreRecord(storeFile: string, buildSeconds: number): StoreBuildRecord {
  const r: StoreBuildRecord = { store_file: storeFile, store_bytes: fs.statSync(storeFile).size, build_seconds: buildSeconds, built_at: new Date().toISOString() };
  fs.writeFileSync(storeRecordPath(storeFile), `${JSON.stringify(r, null, 2)}\n`);
  return r;
}
