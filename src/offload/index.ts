/**
 * Offload, wired: the expert store (loaded from its disk cache or built with progress), the
 * link, the device cache and the engine the model computes experts through. The stages live one
 * per file beside this one: store.ts and store-file.ts (host tier), link.ts, tier.ts +
 * eviction.ts + fetcher.ts (device cache and fetch path), engine.ts (ExpertEngine), plan.ts
 * (the PrecisionPlan contract with control) and telemetry.ts (what it reports).
 */
import { OffloadExpertEngine } from './engine.js';
import type { EvictionPolicyName } from './eviction.js';
import type { DeviceBudget, TierAForm } from './fetcher.js';
import { CopyLink, EmulatedLink, type Link } from './link.js';
import { DEFAULT_LADDER, type Ladder, type PrecisionPlan } from './plan.js';
import { progressBar } from './progress.js';
import type { ExpertSource } from './source.js';
import { DiskExpertStore } from './disk-store.js';
import { ensureStoreFile, openStore, type OpenedStore } from './store-file.js';
import type { BuildProgress, ExpertStore } from './store.js';
import type { TelemetrySink } from './telemetry.js';

export * from './plan.js';
export * from './telemetry.js';
export { OffloadExpertEngine } from './engine.js';
export { CopyLink, EmulatedLink, type Link } from './link.js';
export { deviceBudget, type DeviceBudget, type TierAForm } from './fetcher.js';
export type { ExpertSource, RawTensor } from './source.js';
export { ExpertStore } from './store.js';
export { openStore } from './store-file.js';
export { DiskExpertStore } from './disk-store.js';

export interface OffloadOptions {
  ladder?: Ladder;
  /** Folder of the store's disk cache; null: no disk cache. */
  cacheDir: string | null;
  /** An emulated link, or (default) a plain copy. */
  emulatedLink?: { bytesPerSecond: number; latencySeconds?: number };
  budget: DeviceBudget;
  policy?: EvictionPolicyName;
  plan?: PrecisionPlan;
  prefetch?: boolean;
  /** Who multiplies the fetched experts: the CPU engine in the addon (default) or TensorFlow.js. */
  compute?: 'tfjs' | 'cpu';
  /** With the CPU engine: how tier A holds a codec level (OffloadEngineOptions.tierAForm). */
  tierAForm?: TierAForm;
  /** With tierAForm 'symbols': the integer product (OffloadEngineOptions.int8Activations). */
  int8Activations?: boolean;
  telemetry?: TelemetrySink;
  /**
   * Keep the store on disk (the disk tier): host memory holds at most `bytes` of experts' levels,
   * the rest is read from the store file in cacheDir as needed. The budget must hold `minExperts`
   * experts at the store's largest level (one layer's routed experts: top-k).
   */
  hostBudget?: { bytes: number; minExperts: number };
  /** Show a progress bar on stderr while compressing (default true). */
  progress?: boolean;
  log?: (line: string) => void;
}

export interface Offload {
  opened: OpenedStore;
  link: Link;
  engine: OffloadExpertEngine;
}

/** Opens (or builds) the store for `source` and makes the engine over it. */
export async function createOffload(source: ExpertSource, opts: OffloadOptions): Promise<Offload> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const bar = opts.progress === false ? undefined : progressBar('compressing experts');
  const ladder = opts.ladder ?? DEFAULT_LADDER;
  const onProgress = bar && ((p: BuildProgress) => bar(p.done, p.total, `layer ${p.layer} expert ${p.expert}`));
  let opened: OpenedStore;
  if (opts.hostBudget) {
    if (!opts.cacheDir) throw new RangeError('a host budget keeps the experts on disk, in the store file: it needs the store\'s folder (cacheDir)');
    const f = await ensureStoreFile(source, ladder, opts.cacheDir, onProgress);
    if (bar && f.from === 'built') bar.done(`${source.numLayers * source.numExperts} experts written to ${f.file}`);
    const store = DiskExpertStore.open(f.file, { checkpointHash: source.hash, ladder }, { budgetBytes: opts.hostBudget.bytes, policy: opts.policy, telemetry: opts.telemetry });
    const min = minHostBudget(store, opts.hostBudget.minExperts);
    if (opts.hostBudget.bytes < min) {
      store.close();
      throw new RangeError(`host budget ${opts.hostBudget.bytes} bytes is below the minimum ${min}: ${opts.hostBudget.minExperts} experts (one layer's top-k) at the store's largest level, as read from disk`);
    }
    opened = { store, from: f.from, file: f.file, notes: f.notes };
  } else {
    opened = await openStore(source, ladder, opts.cacheDir, onProgress);
    if (bar && opened.from === 'built') bar.done(`${source.numLayers * source.numExperts} experts, ${(opened.store.totalBytes() / 1e6).toFixed(1)} MB in host memory`);
  }
  for (const n of opened.notes) log(`offload: ${n}`);
  if (opened.store instanceof DiskExpertStore) log(`offload: experts on disk: ${opened.store.describe()}`);
  else if (opened.from === 'cache') log(`offload: experts loaded from ${opened.file}`);
  const link = opts.emulatedLink ? new EmulatedLink(opts.emulatedLink) : new CopyLink();
  log(`offload: link ${link.describe()}`);
  const engine = new OffloadExpertEngine({ store: opened.store, link, budget: opts.budget, policy: opts.policy, telemetry: opts.telemetry, plan: opts.plan, prefetch: opts.prefetch, compute: opts.compute, tierAForm: opts.tierAForm, int8Activations: opts.int8Activations });
  return { opened, link, engine };
}

/**
 * The least host budget a store on disk can serve from: `experts` experts at the store's largest
 * level, each as read (whole 4096-byte blocks, one more for a read that starts mid-block).
 */
export function minHostBudget(store: ExpertStore, experts: number): number {
  let largest = 0;
  for (let l = 0; l < store.numLayers; l++) {
    for (let e = 0; e < store.numExperts; e++) for (let k = 0; k < store.levels; k++) largest = Math.max(largest, store.levelBytes(l, e, k));
  }
  return experts * (Math.ceil(largest / 4096) + 1) * 4096;
}
