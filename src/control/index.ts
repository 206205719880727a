/**
 * Control, wired: the controller fed by the data plane's telemetry, its plans sent to the
 * offload engine, and canaries scored on a schedule. A policy says how levels may move, a
 * profile where the model runs; this short file turns both into the controller's options.
 *
 * @example
 * const control = startControl({ policy, profile, store, engine, telemetry: bus, topK: 2, canaries: runner });
 * control.controller.plan$.subscribe(...);   control.stop();
 */
import { interval, Subscription } from 'rxjs';

import type { OffloadExpertEngine } from '../offload/engine.js';
import type { ExpertStore } from '../offload/store.js';
import type { TelemetryBus } from '../offload/telemetry.js';
import type { CanaryRunner } from './canaries.js';
import { ConfigError } from './config-file.js';
import { Controller } from './controller.js';
import type { DropInput } from './planner.js';
import { resolvePolicy, type Policy } from './policy.js';
import type { Profile } from './profile.js';

export { Controller, type CanaryResult } from './controller.js';
export type { Decision } from './decide.js';

export interface ControlOptions {
  policy: Policy;
  profile: Profile;
  store: ExpertStore;
  engine: OffloadExpertEngine;
  telemetry: TelemetryBus;
  /** Experts each token uses per layer. */
  topK: number;
  canaries?: CanaryRunner;
  dryRun?: boolean;
  /** Called when a canary run fails to run at all (not when it scores low). */
  onCanaryError?: (e: Error) => void;
}

export interface Control {
  controller: Controller;
  /** Where the sensitivity came from: the profile's measurement, its layer importance, or the policy's prior. */
  sensitivitySource: SensitivitySource;
  stop(): void;
}

export type SensitivitySource = 'profile' | 'layer importance' | 'policy prior';

/**
 * The prior from the profile's layer importance (1 − cos of each MoE block's input and output):
 * the policy's prior shape per level (proportional to the bound, 0 at exact), each layer weighted
 * by its importance over the mean importance, times the policy's mean prior — the policy's scale,
 * the measured ranking of layers. Undefined when the profile has none for this depth.
 */
export function importancePrior(policy: Policy, profile: Profile, layers: number): number[][] | undefined {
  const imp = profile.layer_importance?.layers;
  if (!imp || imp.length !== layers) return undefined;
  const mean = imp.reduce((a, x) => a + x, 0) / layers;
  if (!(mean > 0)) return undefined;
  const prior = resolvePolicy(policy, layers).prior;
  const b = policy.ladder.bounds;
  const base = prior.reduce((a, row) => a + row[0], 0) / layers;
  return imp.map((x) => Array.from({ length: prior[0].length }, (_, k) => (k < b.length ? base * (x / mean) * (b[k] / b[0]) : 0)));
}

/**
 * The drop rungs the planner may take: none unless the policy allows one (policy drop.trim /
 * drop.skip_moe), and then the profile must have measured it for every layer (a ConfigError
 * naming the key otherwise). Trimming a top-1 model would leave no expert: not offered.
 */
export function dropInput(policy: Policy, profile: Profile, layers: number, topK: number): DropInput | undefined {
  const want = { trim: Boolean(policy.drop?.trim) && topK >= 2, skip_moe: Boolean(policy.drop?.skip_moe) };
  if (!want.trim && !want.skip_moe) return undefined;
  const measured = profile.sensitivity?.drop;
  const problems: { field: string; message: string }[] = [];
  for (const k of ['trim', 'skip_moe'] as const) {
    if (!want[k]) continue;
    const row = measured?.[k];
    if (!row) problems.push({ field: `sensitivity.drop.${k}`, message: `the policy ${policy.name} (${policy.file}) allows drop.${k}, but this profile has no measurement of it: run ebserve profile` });
    else if (row.length !== layers) problems.push({ field: `sensitivity.drop.${k}`, message: `the policy allows drop.${k}; expected a measurement for each of the model's ${layers} layers, got ${row.length} (layer ${Math.min(row.length, layers)} unmeasured or extra)` });
  }
  if (problems.length) throw new ConfigError(profile.file, problems);
  // In the levels' unit: the profile's loss_scale says how layers' losses add, drops' included.
  const scale = profile.sensitivity?.loss_scale ?? 1;
  return {
    sensitivity: Array.from({ length: layers }, (_, l) => [scale * (measured?.trim?.[l] ?? 0), scale * (measured?.skip_moe?.[l] ?? 0)]),
    allowed: Array.from({ length: layers }, () => [want.trim, want.skip_moe]),
    trimShare: (topK - 1) / topK,
  };
}

/**
 * The sensitivity the planner uses: the profile's, when measured on this policy's ladder, else
 * the prior from the profile's layer importance, else the policy's prior. A measured row is smoothed by the model the prior uses — cost proportional
 * to the bound — with the layer's own weight fitted by least squares: a canary set resolves a
 * few flips in hundreds at the tight levels, too few to rank moves by, while the loose levels
 * say clearly how much a layer minds.
 */
export function plannerSensitivity(policy: Policy, profile: Profile, layers: number): { table: number[][]; source: SensitivitySource } {
  const s = profile.sensitivity;
  const same = s && s.bound_mode === policy.ladder.bound_mode && s.exact === policy.ladder.exact && s.bounds.join() === policy.ladder.bounds.join() && s.layers.length === layers;
  if (!same) {
    const imp = importancePrior(policy, profile, layers);
    return imp ? { table: imp, source: 'layer importance' } : { table: resolvePolicy(policy, layers).prior, source: 'policy prior' };
  }
  const b = s.bounds;
  const bb = b.reduce((a, x) => a + x * x, 0);
  const scale = s.loss_scale ?? 1;
  return {
    table: s.layers.map((row) => {
      const w = (scale * b.reduce((a, x, k) => a + x * row[k], 0)) / bb;
      return row.map((_, k) => (k < b.length ? w * b[k] : 0));
    }),
    source: 'profile',
  };
}

export function startControl(o: ControlOptions): Control {
  const L = o.store.numLayers;
  const r = resolvePolicy(o.policy, L);
  const { table, source } = plannerSensitivity(o.policy, o.profile, L);
  const drop = dropInput(o.policy, o.profile, L, o.topK);
  const canaryFloor = { ...o.policy.canaries.floor, top1_agreement: o.profile.accuracy_floor ?? o.policy.canaries.floor.top1_agreement };
  const controller = new Controller({
    levelBytes: Array.from({ length: L }, (_, l) => o.store.layerLevelBytes(l)),
    lookupsPerToken: o.topK,
    tierA: {
      bytes: o.engine.fetcher.tierA.budgetBytes,
      layerBytes: o.engine.fetcher.tierA.shares?.budgets,
      heldBytes: Array.from({ length: L }, (_, l) => o.engine.fetcher.heldBytesByLevel(l)),
      experts: o.store.numExperts,
    },
    sensitivity: table,
    // A measured profile's sensitivity is in canary units (1 − top-1 agreement), so the floor
    // bounds a plan's predicted loss before any canary runs; a prior's unit is its own.
    lossBudget: source === 'profile' ? 1 - canaryFloor.top1_agreement : undefined,
    drop,
    floor: r.floor,
    ceiling: r.ceiling,
    hysteresis: o.policy.control,
    decideEveryMs: o.policy.control.decide_every_ms,
    canaryFloor,
    quarantineMs: o.policy.canaries.quarantine_ms,
    slaSeconds: o.profile.sla.p95_inter_token_seconds,
    bandwidth: { priorBytesPerSecond: o.profile.link.prior_bytes_per_second },
    initialPlan: { version: o.engine.currentPlan.version + 1, levels: [...r.ceiling] },
    sink: (plan) => o.engine.setPlan(plan),
    dryRun: o.dryRun,
  });
  if (!o.dryRun) o.engine.setPlan(controller.plan);
  const subs = new Subscription();
  const off = o.telemetry.on((s) => controller.samples.next(s));
  const runner = o.canaries;
  if (runner && o.policy.canaries.every_ms > 0) {
    subs.add(
      interval(o.policy.canaries.every_ms).subscribe(() => {
        if (runner.busy) return;
        runner.score(controller.plan).then(
          (result) => controller.canaries.next(result),
          (e: Error) => o.onCanaryError?.(e),
        );
      }),
    );
  }
  return {
    controller,
    sensitivitySource: source,
    stop() {
      off();
      subs.unsubscribe();
      controller.stop();
    },
  };
}
