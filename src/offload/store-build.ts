/**
 * Builds an expert store file by streaming: experts are read from the source (a checkpoint's
 * safetensors shards, one positioned read per matrix) a few at a time, compressed on the codec's
 * worker threads in their stored dtype (bf16 stays bf16 until the codec reads it), and written to
 * the file in order as they complete. The working set is `inFlight` experts' raw bytes and
 * compressed forms plus the block being written — never the checkpoint, never the store — so a
 * 14 GB checkpoint builds in a few hundred MB.
 *
 * @example
 * const r = await buildStoreFile(source, DEFAULT_LADDER, '/cache/x.ebstore', { onProgress: (p) => bar(p.done, p.total) });
 */
import fs from 'node:fs';

import type { Ladder } from './plan.js';
import { MATRICES, type ExpertSource, type MatrixName, type RawTensor } from './source.js';
import { compressMatrix, type BuildProgress } from './store.js';
import { StoreFileWriter, type MatrixParts } from './store-writer.js';

export interface StreamBuildOptions {
  onProgress?: (p: BuildProgress) => void;
  /**
   * Experts read and compressing at once (default 2): while one is written the next is already
   * on the codec's workers. The memory the build holds grows with it.
   */
  inFlight?: number;
}

export interface StreamBuildResult {
  file: string;
  experts: number;
  /** Bytes of the store file, and of the checkpoint's expert matrices it was built from. */
  fileBytes: number;
  sourceBytes: number;
  seconds: number;
}

/** Compresses every expert of `source` into the store file `file` (written atomically), streaming. */
export async function buildStoreFile(source: ExpertSource, ladder: Ladder, file: string, opts: StreamBuildOptions = {}): Promise<StreamBuildResult> {
  const inFlight = opts.inFlight ?? 2;
  if (!(Number.isInteger(inFlight) && inFlight >= 1)) throw new RangeError(`inFlight must be a whole number ≥ 1, got ${inFlight}`);
  const t0 = performance.now();
  const { numLayers, numExperts } = source;
  const total = numLayers * numExperts;
  const writer = StoreFileWriter.create(file, { checkpoint: source.hash, ladder, numLayers, numExperts });
  let bytesRead = 0;
  const pending: Promise<Record<MatrixName, MatrixParts>>[] = [];
  let next = 0;
  const launch = () => {
    const i = next++;
    const raw = source.readExpert(Math.floor(i / numExperts), i % numExperts);
    bytesRead += MATRICES.reduce((a, m) => a + raw[m].bytes.byteLength, 0);
    const p = compressExpert(raw, ladder);
    p.catch(() => {}); // awaited in order below; a failure further ahead must not go unhandled meanwhile
    pending.push(p);
  };
  try {
    while (next < Math.min(inFlight, total)) launch();
    for (let i = 0; i < total; i++) {
      const parts = await pending.shift()!;
      if (next < total) launch(); // the next read starts before this write
      const [layer, expert] = [Math.floor(i / numExperts), i % numExperts];
      writer.append(layer, expert, parts);
      opts.onProgress?.({ done: i + 1, total, layer, expert, bytesRead, bytesWritten: writer.bytesWritten });
    }
    writer.finish();
  } catch (e) {
    writer.abort();
    throw e;
  }
  return { file, experts: total, fileBytes: fs.statSync(file).size, sourceBytes: bytesRead, seconds: (performance.now() - t0) / 1000 };
}

/** One expert's three matrices compressed at once (the exact level is the source's own bytes). */
async function compressExpert(raw: Record<MatrixName, RawTensor>, ladder: Ladder): Promise<Record<MatrixName, MatrixParts>> {
  const done = await Promise.all(MATRICES.map((m) => compressMatrix(raw[m], ladder)));
  const out = {} as Record<MatrixName, MatrixParts>;
  MATRICES.forEach((m, i) => (out[m] = { ...done[i], exact: ladder.exact ? raw[m].bytes : undefined }));
  return out;
}
