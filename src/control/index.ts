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
import { Controller } from './controller.js';
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
  /** Where the sensitivity came from: the profile's measurement or the policy's prior. */
  sensitivitySource: 'profile' | 'policy prior';
  stop(): void;
}

/**
 * The sensitivity the planner uses: the profile's, when measured on this policy's ladder, else
 * the policy's prior. A measured row is smoothed by the model the prior uses — cost proportional
 * to the bound — with the layer's own weight fitted by least squares: a canary set resolves a
 * few flips in hundreds at the tight levels, too few to rank moves by, while the loose levels
 * say clearly how much a layer minds.
 */
export function plannerSensitivity(policy: Policy, profile: Profile, layers: number): { table: number[][]; source: 'profile' | 'policy prior' } {
  const s = profile.sensitivity;
  const same = s && s.bound_mode === policy.ladder.bound_mode && s.exact === policy.ladder.exact && s.bounds.join() === policy.ladder.bounds.join() && s.layers.length === layers;
  if (!same) return { table: resolvePolicy(policy, layers).prior, source: 'policy prior' };
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
  const canaryFloor = { ...o.policy.canaries.floor, top1_agreement: o.profile.accuracy_floor ?? o.policy.canaries.floor.top1_agreement };
  const controller = new Controller({
    levelBytes: Array.from({ length: L }, (_, l) => o.store.layerLevelBytes(l)),
    lookupsPerToken: o.topK,
    sensitivity: table,
    // A measured profile's sensitivity is in canary units (1 − top-1 agreement), so the floor
    // bounds a plan's predicted loss before any canary runs; a prior's unit is its own.
    lossBudget: source === 'profile' ? 1 - canaryFloor.top1_agreement : undefined,
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
