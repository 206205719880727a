/**
 * The controller: RxJS wiring from telemetry to PrecisionPlans. Telemetry samples and canary
 * results come in on Subjects; the estimators fold them (scan) into a BehaviorSubject of state;
 * a timer decides at most every decide_every_ms on the freshest state (decide.ts, a pure
 * function); decisions go to a bounded log and, unless in dry run, the new plan to plan$ and the
 * data plane's sink. A failing canary rolls the plan back to the last one that passed and
 * quarantines the (layer, level) pairs that had loosened since, for quarantine_ms. Drop rungs are
 * levels below 0 here (drop.ts): a rollback restores the last good plan's drop state with its
 * levels, and a quarantined drop rung (or a quarantined level: drops are looser still) is not
 * taken again until released.
 *
 * Time is asyncScheduler.now(), so RxJS's TestScheduler drives it all in virtual time.
 *
 * @example
 * const c = new Controller({ ...parts, sink: (plan) => engine.setPlan(plan) });
 * bus.on((s) => c.samples.next(s));   // offload telemetry in
 * c.plan$.subscribe(...);  c.stop();
 */
import { asyncScheduler, BehaviorSubject, interval, map, scan, Subject, Subscription, withLatestFrom, type SchedulerLike } from 'rxjs';

import type { PrecisionPlan } from '../offload/plan.js';
import type { OffloadSample } from '../offload/telemetry.js';
import { decide, plannerInput, type ControlState, type Decision, type Hysteresis, type LayerChange } from './decide.js';
import { bandwidthInit, bandwidthStep, type BandwidthOptions } from './estimators/bandwidth.js';
import { decodeSequences, latencyInit, latencyStep } from './estimators/latency.js';
import { missInit, missStep } from './estimators/miss-rate.js';
import { modelErrorInit, modelErrorStep } from './estimators/model-error.js';
import { movesInit, movesLookup, movesStep, movesTransfer } from './estimators/moves.js';
import { stepCostInit, stepCostStep } from './estimators/step-cost.js';
import { dropAt, planOf, scaleOf } from './drop.js';
import { predictSeconds, type DropInput, type TierACapacity } from './planner.js';

/** Tier A as the planner's capacity model sees it (planner.ts TierACapacity, less what is measured). */
export type TierAOptions = Pick<TierACapacity, 'bytes' | 'layerBytes' | 'heldBytes' | 'experts'>;

/** A canary run's scores of the plan `planVersion` (from the canary runner). */
export interface CanaryResult {
  kind: 'canary';
  at: number;
  planVersion: number;
  top1Agreement: number;
  kl?: number;
  exactMatch?: number;
}

export interface CanaryFloor {
  top1_agreement: number;
  exact_match?: number;
}

export interface ControllerOptions {
  /** [layer][level] bytes per expert (ExpertStore.layerLevelBytes). */
  levelBytes: number[][];
  lookupsPerToken: number;
  /** Tier A's capacity, for the planner to see that a tighter plan's larger experts miss more (none: not modelled). */
  tierA?: TierAOptions;
  /** [layer][level] accuracy cost (the profile's measured sensitivity or the policy's prior). */
  sensitivity: number[][];
  /** The most predicted loss (Σ sensitivity) a plan may have (the planner's lossBudget); none: unlimited. */
  lossBudget?: number;
  /** The drop rungs the policy allows, with the profile's sensitivities (none: never drop). */
  drop?: DropInput;
  floor: number[];
  ceiling: number[];
  hysteresis: Hysteresis;
  decideEveryMs: number;
  canaryFloor: CanaryFloor;
  quarantineMs: number;
  slaSeconds: number;
  bandwidth: BandwidthOptions;
  /** The plan serving starts with (and the first "last good" one). Default: every layer at its ceiling. */
  initialPlan?: PrecisionPlan;
  /** Where new plans go (the offload engine's setPlan). */
  sink?: (plan: PrecisionPlan) => void;
  dryRun?: boolean;
  logSize?: number;
  scheduler?: SchedulerLike;
}

/** Decode steps the p95 is taken over: short enough to see a change within a few dozen tokens. */
const LATENCY_WINDOW = 64;
/**
 * Steps the compute-cost model keeps: more than the p95's, so that each batch size seen lately
 * (and the steps with a prefill chunk) has steps enough for a median, and never fewer than the
 * p95's, so the batch the planner predicts at is one the model has seen.
 */
const STEP_COST_WINDOW = 256;

export class Controller {
  readonly samples = new Subject<OffloadSample>();
  readonly canaries = new Subject<CanaryResult>();
  readonly state$: BehaviorSubject<ControlState>;
  readonly plan$: BehaviorSubject<PrecisionPlan>;
  readonly decisions$ = new Subject<Decision>();
  /** Counters for metrics. */
  readonly counts = { decisions: 0, rollbacks: 0 };
  private readonly o: ControllerOptions;
  private readonly subs = new Subscription();
  private readonly logBuf: Decision[] = [];
  private readonly plans = new Map<number, PrecisionPlan>();
  private lastChange: number[];
  private tighterSince: number | null = null;
  private safestTarget: number[] | null = null;
  private lastGood: PrecisionPlan;
  private quarantine: ({ level: number; until: number } | undefined)[];
  private frozen = false;
  private dry: boolean;
  private sla: number;
  private readonly scheduler: SchedulerLike;

  constructor(opts: ControllerOptions) {
    this.o = opts;
    this.scheduler = opts.scheduler ?? asyncScheduler;
    const L = opts.levelBytes.length;
    this.dry = opts.dryRun ?? false;
    this.sla = opts.slaSeconds;
    const first = opts.initialPlan ?? { version: 1, levels: [...opts.ceiling] };
    this.plan$ = new BehaviorSubject(first);
    this.plans.set(first.version, first);
    this.lastGood = first;
    this.lastChange = new Array<number>(L).fill(-Infinity);
    this.quarantine = new Array(L).fill(undefined);
    this.state$ = new BehaviorSubject<ControlState>({
      bandwidth: bandwidthInit(opts.bandwidth), latency: latencyInit(LATENCY_WINDOW), misses: missInit(L), moves: movesInit(L),
      stepCost: stepCostInit(STEP_COST_WINDOW), modelError: modelErrorInit(LATENCY_WINDOW),
      lastSampleAt: -Infinity, samples: 0,
    });
    // A step's predicted time: the plan in force, at the estimates just before the step ended, at
    // the step's own tokens. None (NaN, skipped) before any step's compute time is known: the
    // model would have no compute term.
    const predict = (st: ControlState, tokens: number) =>
      st.stepCost.compute.length === 0 ? NaN : predictSeconds(plannerInput(st, { ...this.o, slaSeconds: this.sla }, tokens, scaleOf(this.plan)), scaleOf(this.plan));

    this.subs.add(
      this.samples
        .pipe(
          map((s) => [s, this.scheduler.now()] as const),
          scan((st, [s, now]) => reduce(st, s, now, predict), this.state$.value),
        )
        .subscribe(this.state$),
    );
    this.subs.add(
      interval(opts.decideEveryMs, this.scheduler)
        .pipe(withLatestFrom(this.state$))
        .subscribe(([, state]) => this.tick(state)),
    );
    this.subs.add(this.canaries.subscribe((r) => this.onCanary(r)));
  }

  /** The current plan. */
  get plan(): PrecisionPlan {
    return this.plan$.value;
  }

  /** The last decisions, oldest first (bounded). */
  log(): Decision[] {
    return [...this.logBuf];
  }

  get slaSeconds(): number {
    return this.sla;
  }

  setSla(seconds: number): void {
    if (!(seconds > 0) || !Number.isFinite(seconds)) throw new RangeError(`the SLA must be a positive number of seconds, got ${seconds}`);
    this.sla = seconds;
  }

  freeze(): void {
    this.frozen = true;
  }

  unfreeze(): void {
    this.frozen = false;
  }

  get isFrozen(): boolean {
    return this.frozen;
  }

  setDryRun(on: boolean): void {
    this.dry = on;
  }

  get isDryRun(): boolean {
    return this.dry;
  }

  /** The (layer → level) pairs quarantined now, with when they are released (ms). */
  quarantined(): { layer: number; level: number; until: number }[] {
    const now = this.scheduler.now();
    return this.quarantine.flatMap((q, layer) => (q && q.until > now ? [{ layer, ...q }] : []));
  }

  /** Ends every subscription and completes the subjects. */
  stop(): void {
    this.subs.unsubscribe();
    this.samples.complete();
    this.canaries.complete();
    this.decisions$.complete();
    this.plan$.complete();
    this.state$.complete();
  }

  private floors(now: number): number[] {
    return this.o.floor.map((f, l) => {
      const q = this.quarantine[l];
      return q && q.until > now ? Math.min(this.o.ceiling[l], Math.max(f, q.level + 1)) : f;
    });
  }

  /** The drop rungs allowed now: the policy's, less those a quarantine covers. */
  private drops(now: number): DropInput | undefined {
    const d = this.o.drop;
    if (!d) return undefined;
    const allowed = d.allowed.map((a, l) => {
      const q = this.quarantine[l];
      if (!q || q.until <= now) return a;
      // A quarantined level forbids every drop (they are looser); a quarantined rung, it and below.
      return q.level >= 0 ? [false, false] : [a[0] && q.level < -1, a[1] && q.level < -2];
    });
    return { ...d, allowed };
  }

  private tick(state: ControlState): void {
    const now = this.scheduler.now();
    const floor = this.floors(now);
    const { decision, tighterSince, safestTarget } = decide({
      now, state, levels: scaleOf(this.plan), drop: this.drops(now), lastChange: this.lastChange, tighterSince: this.tighterSince, safestTarget: this.safestTarget, slaSeconds: this.sla,
      hysteresis: this.o.hysteresis, levelBytes: this.o.levelBytes, lookupsPerToken: this.o.lookupsPerToken, tierA: this.o.tierA,
      sensitivity: this.o.sensitivity, floor, ceiling: this.o.ceiling, lossBudget: this.o.lossBudget, frozen: this.frozen,
    });
    this.tighterSince = tighterSince;
    this.safestTarget = safestTarget;
    this.record({ ...decision, dryRun: this.dry && decision.action !== 'hold' });
    if (decision.action !== 'hold' && !this.dry) this.apply(planOf(decision.levels, floor, 0), decision.changes, now);
  }

  /** Serves `next` (its version replaced by the next one). */
  private apply(next: PrecisionPlan, changes: LayerChange[], now: number): void {
    const plan: PrecisionPlan = { ...next, version: this.plan.version + 1 };
    for (const c of changes) this.lastChange[c.layer] = now;
    this.plans.set(plan.version, plan);
    for (const v of this.plans.keys()) if (v < plan.version - 64) this.plans.delete(v);
    this.o.sink?.(plan);
    this.plan$.next(plan);
  }

  private record(d: Decision): void {
    if (d.levels.some((lv) => lv < 0)) d = { ...d, drop: d.levels.map(dropAt) };
    this.counts.decisions++;
    this.logBuf.push(d);
    if (this.logBuf.length > (this.o.logSize ?? 500)) this.logBuf.shift();
    this.decisions$.next(d);
  }

  private onCanary(r: CanaryResult): void {
    const now = this.scheduler.now();
    const scored = this.plans.get(r.planVersion);
    if (!scored) return; // a plan too old to act on
    const f = this.o.canaryFloor;
    const pass = r.top1Agreement >= f.top1_agreement && (f.exact_match === undefined || r.exactMatch === undefined || r.exactMatch >= f.exact_match);
    if (pass) {
      if (scored.version >= this.lastGood.version) this.lastGood = scored;
      return;
    }
    // Quarantine what loosened between the last good plan and the one that failed.
    // On the planner's scale, so a drop rung counts as looser than any level.
    const scoredScale = scaleOf(scored);
    const goodScale = scaleOf(this.lastGood);
    const loosened = scoredScale.map((lv, l) => (lv < goodScale[l] ? l : -1)).filter((l) => l >= 0);
    for (const l of loosened) this.quarantine[l] = { level: scoredScale[l], until: now + this.o.quarantineMs };
    const changes = scaleOf(this.plan).map((lv, l) => ({ layer: l, from: lv, to: goodScale[l] })).filter((c) => c.from !== c.to || this.plan.levels[c.layer] !== this.lastGood.levels[c.layer]);
    const what = (l: number) => (scoredScale[l] < 0 ? `layer ${l} ${dropAt(scoredScale[l])}` : `layer ${l} level ${scoredScale[l]}`);
    const reason = `canary below the floor (top-1 ${r.top1Agreement.toFixed(4)} < ${f.top1_agreement}${r.exactMatch !== undefined ? `, exact ${r.exactMatch.toFixed(3)}` : ''}) on plan ${r.planVersion}: back to plan ${this.lastGood.version}, quarantining ${loosened.map(what).join(', ') || 'nothing'}`;
    this.counts.rollbacks++;
    this.tighterSince = null;
    this.safestTarget = null;
    this.record({ at: now, action: 'rollback', reason, changes, levels: goodScale, dryRun: this.dry });
    if (!this.dry && changes.length) this.apply(this.lastGood, changes, now);
  }
}

/**
 * Folds one telemetry sample into the estimators (a pure step). `predict` gives the model's time
 * for a step of `tokens` tokens from the state before it (for the model-error estimator); none:
 * not tracked.
 *
 * A step's shape decides what it feeds. Every step with a decode sequence in it (tokens >
 * prefillTokens: any batch, a prefill chunk riding along or not) is an inter-token gap its
 * clients saw: it counts for the p95 (weighted by its decode sequences), for the compute model,
 * and for the model's error. Only a pure decode step (no prompt tokens) is a sample of the moves
 * per decode step; a step with a chunk clears them. A step of prompt tokens alone is time to
 * first token, which the SLA is not about: it only clears the moves.
 */
export function reduce(st: ControlState, s: OffloadSample, now: number, predict?: (st: ControlState, tokens: number) => number): ControlState {
  const base = { ...st, lastSampleAt: now, samples: st.samples + 1 };
  switch (s.kind) {
    case 'transfer':
      return { ...base, bandwidth: bandwidthStep(st.bandwidth, s), moves: movesTransfer(st.moves, s.layer) };
    case 'token':
      if (!(decodeSequences(s) > 0)) return { ...base, moves: movesStep(st.moves, s) };
      // The prediction is made before this step's moves are folded in, from the rates so far.
      return {
        ...base,
        latency: latencyStep(st.latency, s),
        stepCost: stepCostStep(st.stepCost, s),
        moves: movesStep(st.moves, s),
        modelError: predict ? modelErrorStep(st.modelError, s.seconds, predict(st, s.tokens)) : st.modelError,
      };
    case 'cache':
      return { ...base, misses: missStep(st.misses, s), moves: movesLookup(st.moves, s) };
    default:
      return base;
  }
}
