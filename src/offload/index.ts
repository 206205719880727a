/**
 * Offload, wired: the expert store (loaded from its disk cache or built with progress), the
 * link, the device cache and the engine the model computes experts through. The stages live one
 * per file beside this one: store.ts and store-file.ts (host tier), link.ts, tier.ts +
 * eviction.ts + fetcher.ts (device cache and fetch path), engine.ts (ExpertEngine), plan.ts
 * (the PrecisionPlan contract with control) and telemetry.ts (what it reports).
 */
import { OffloadExpertEngine } from './engine.js';
import type { EvictionPolicyName } from './eviction.js';
import type { DeviceBudget } from './fetcher.js';
import { CopyLink, EmulatedLink, type Link } from './link.js';
import { DEFAULT_LADDER, type Ladder, type PrecisionPlan } from './plan.js';
import { progressBar } from './progress.js';
import type { ExpertSource } from './source.js';
import { openStore, type OpenedStore } from './store-file.js';
import type { TelemetrySink } from './telemetry.js';

export * from './plan.js';
export * from './telemetry.js';
export { OffloadExpertEngine } from './engine.js';
export { CopyLink, EmulatedLink, type Link } from './link.js';
export { deviceBudget, type DeviceBudget } from './fetcher.js';
export type { ExpertSource, RawTensor } from './source.js';
export { ExpertStore } from './store.js';
export { openStore } from './store-file.js';

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
  /** With the CPU engine: tier A keeps codec levels compressed for the fused product (OffloadEngineOptions.fused). */
  fused?: boolean;
  telemetry?: TelemetrySink;
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
  const opened = await openStore(source, opts.ladder ?? DEFAULT_LADDER, opts.cacheDir, bar && ((p) => bar(p.done, p.total, `layer ${p.layer} expert ${p.expert}`)));
  if (bar && opened.from === 'built') bar.done(`${source.numLayers * source.numExperts} experts, ${(opened.store.totalBytes() / 1e6).toFixed(1)} MB in host memory`);
  for (const n of opened.notes) log(`offload: ${n}`);
  if (opened.from === 'cache') log(`offload: experts loaded from ${opened.file}`);
  const link = opts.emulatedLink ? new EmulatedLink(opts.emulatedLink) : new CopyLink();
  log(`offload: link ${link.describe()}`);
  const engine = new OffloadExpertEngine({ store: opened.store, link, budget: opts.budget, policy: opts.policy, telemetry: opts.telemetry, plan: opts.plan, prefetch: opts.prefetch, compute: opts.compute, fused: opts.fused });
  return { opened, link, engine };
}
