/**
 * bench-scale's store step, run as its own process (`node --import tsx bench/scale/store.ts DIR`)
 * so that the checkpoint reads and the codec's workers leave nothing in the benchmark's memory:
 * the expert store of the checkpoint in DIR at the default policy's ladder — the file
 * `bin/ebserve serve --model DIR` opens, in DIR/.ebserve-cache/ — built (streaming, on the codec's
 * workers, with a progress bar and ETA) and timed when it is missing, stale or damaged; the build
 * time is kept beside it (cache.ts). Prints one JSON line on stdout:
 * {"store_file", "store_bytes", "store_build_seconds" (null: built before bench-scale kept
 * times), "store_build_cached", "notes"}.
 */
import fs from 'node:fs';

import { DEFAULT_POLICY } from '../../src/cli/check-config.js';
import { loadPolicy } from '../../src/control/policy.js';
import { openCheckpoint } from '../../src/model/checkpoint.js';
import { checkpointExperts } from '../../src/model/load.js';
import { progressBar } from '../../src/offload/progress.js';
import { defaultCacheDir, ensureStoreFile } from '../../src/offload/store-file.js';
import { readStoreRecord, writeStoreRecord } from './cache.js';

export interface StoreStep {
  store_file: string;
  store_bytes: number;
  store_build_seconds: number | null;
  store_build_cached: boolean;
  notes: string[];
}

async function main(dir: string): Promise<StoreStep> {
  const checkpoint = openCheckpoint(dir);
  try {
    const ladder = loadPolicy(DEFAULT_POLICY).storeLadder;
    const bar = progressBar('bench-scale: building the expert store');
    const t = performance.now();
    const f = await ensureStoreFile(checkpointExperts(checkpoint), ladder, defaultCacheDir(dir), (p) => bar(p.done, p.total, `layer ${p.layer} expert ${p.expert}`));
    const seconds = (performance.now() - t) / 1000;
    const bytes = fs.statSync(f.file).size;
    if (f.from === 'built') {
      bar.done(`${(bytes / 1e9).toFixed(2)} GB written to ${f.file}`);
      writeStoreRecord(f.file, seconds);
      return { store_file: f.file, store_bytes: bytes, store_build_seconds: seconds, store_build_cached: false, notes: f.notes };
    }
    const record = readStoreRecord(f.file);
    const notes = record ? [] : ['the store file was built before bench-scale kept its build time (by a server, or inspect-model): no build time'];
    return { store_file: f.file, store_bytes: bytes, store_build_seconds: record?.build_seconds ?? null, store_build_cached: true, notes };
  } finally {
    checkpoint.close();
  }
}

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: node --import tsx bench/scale/store.ts MODEL_DIR\n');
  process.exitCode = 2;
} else {
  process.stdout.write(`${JSON.stringify(await main(dir))}\n`);
  // The codec's worker pool may keep the loop alive.
  process.exit(0);
}
