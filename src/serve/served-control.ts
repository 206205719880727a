/**
 * The controller as the server runs it: started over the offload engine once the model is loaded
 * and the canaries' references are in hand (read from their file beside the expert store, or
 * computed in one batched pass and saved there, before the server serves), with canaries scored between the batch scheduler's steps (each item waits for a step boundary
 * and holds the next step for one item's forward pass), and the operations the admin API and the
 * dashboard need — the plan and why, estimates, SLA, policy switch, freeze, dry run, canaries now.
 * Lives in serve: it knows the model (for canaries) and control, which know nothing of each other.
 */
import fs from 'node:fs';
import path from 'node:path';

import { CanaryRunner, computeReferences, type ArithmeticCanary, type Reference, type ReferenceInput, type TextCanary } from '../control/canaries.js';
import { startControl, type CanaryResult, type Control, type Decision } from '../control/index.js';
import { bandwidthEstimate, bandwidthParts, capacityEstimate, overheadEstimate } from '../control/estimators/bandwidth.js';
import { servedStepCompute } from '../control/decide.js';
import { p95 } from '../control/estimators/latency.js';
import { missRate } from '../control/estimators/miss-rate.js';
import { modelErrorP95 } from '../control/estimators/model-error.js';
import { lookupsPerStep, movesPerToken } from '../control/estimators/moves.js';
import { CANARY_MAX_SHARE, loadPolicy, type Policy } from '../control/policy.js';
import type { Profile } from '../control/profile.js';
import type { LoadedModel } from '../model/load.js';
import { OffloadExpertEngine } from '../offload/engine.js';
import { CopyLink } from '../offload/link.js';
import { ladderKey, uniformPlan, type PrecisionPlan } from '../offload/plan.js';
import type { ExpertStore } from '../offload/store.js';
import type { TelemetryBus } from '../offload/telemetry.js';
import type { ServingHooks } from './batcher.js';
import { readOrComputeReferences, referenceFileName, referenceKey } from './canary-references.js';
import { canaryTarget } from './canary-target.js';

export interface ServedControlOptions {
  model: LoadedModel;
  store: ExpertStore;
  engine: OffloadExpertEngine;
  telemetry: TelemetryBus;
  policy: Policy;
  profile: Profile;
  dryRun: boolean;
  /** The batch scheduler's step-boundary hooks: the canaries run between its steps. */
  serving: ServingHooks;
  /** The expert store's cache folder: the canaries' reference file lives there. */
  cacheDir: string;
  log: (line: string) => void;
}

export class ApiConflict extends Error {}

/** What the canaries may hold decoded, per engine: cache and one forward's experts each stay about this size. */
const CANARY_BYTES = 256 * 2 ** 20;

/**
 * Experts each canary engine caches (decoded f32): two tokens' worth for every layer, as long as
 * that fits in CANARY_BYTES — at the embedded model's size it does, and a canary run reuses its
 * experts from token to token; at OLMoE's (25 MB an expert) it would be 6.4 GB, so there it is
 * two tokens of one layer, and the rest is served once (moved, decoded, dropped).
 */
export function canaryCacheExperts(topK: number, numLayers: number, expertBytes: number): number {
  return Math.min(2 * topK * numLayers, Math.max(2 * topK, Math.floor(CANARY_BYTES / expertBytes)));
}

/** What one canary forward may hold at once beyond the caches: the experts its tokens route to, served once. */
const CANARY_FORWARD_BYTES = 2 ** 30;

/**
 * Tokens one canary forward carries: the server's prompt chunk, unless the experts a layer call
 * holds at once — every expert its tokens route to, at most all of the layer's, `heldBytes` each
 * as the engine holds them — would pass CANARY_FORWARD_BYTES. A whole chunk reads each expert
 * once for all its tokens; at OLMoE's size (64 experts, 12.6 MB each as bf16 in place) one token
 * at a time read each of them once per token, a canary reference pass of hours from the disk.
 */
export function canaryChunk(prefillChunk: number, topK: number, numExperts: number, heldBytes: number): number {
  if (Math.min(numExperts, prefillChunk * topK) * heldBytes <= CANARY_FORWARD_BYTES) return prefillChunk;
  return Math.max(1, Math.floor(CANARY_FORWARD_BYTES / (topK * heldBytes)));
}

export class ServedControl {
  policy: Policy;
  readonly profile: Profile;
  readonly store: ExpertStore;
  lastCanary: CanaryResult | null = null;
  /** Bytes the canary engines' caches and forwards hold at most (the memory plan's canaries part). */
  readonly canaryCacheBytes: number;
  /** Set by open(), once the references are in hand. */
  private control!: Control;
  private readonly runner: CanaryRunner;
  /** The canary engines not yet disposed: the reference engine goes once the references are in hand. */
  private readonly canaryEngines: OffloadExpertEngine[];
  private readonly listeners = new Set<() => void>();
  private unsubscribe: () => void = () => {};
  private stopped = false;

  /**
   * The controller over `o`, started once the canaries' references are in hand: read from their
   * file in `o.cacheDir`, or computed now in one batched pass (every item together, a prompt chunk
   * each per step) and saved there. Awaited before the server serves, so no canary run computes
   * them while clients wait: at OLMoE's size that pass reads every exact expert once, and item by
   * item it read nearly all of them once per item, through the same host tier serving uses.
   */
  static async open(o: ServedControlOptions): Promise<ServedControl> {
    const served = new ServedControl(o);
    try {
      await served.runner.references();
    } catch (e) {
      served.disposeEngines();
      throw e;
    }
    // Scoring never needs the reference engine again: its cache goes.
    served.canaryEngines.pop()!.dispose();
    served.control = served.start(o.policy);
    return served;
  }

  private constructor(private readonly o: ServedControlOptions) {
    this.policy = o.policy;
    this.profile = o.profile;
    this.store = o.store;
    // Before any engine exists: a model without canaries leaves nothing to dispose.
    const dir = path.join(o.model.checkpoint.dir, 'canaries');
    const jsonl = <T>(f: string): T[] => (fs.existsSync(path.join(dir, f)) ? fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as T) : []);
    const text = jsonl<TextCanary>('text.jsonl');
    if (!text.length) throw new Error(`${dir}/text.jsonl: the controller needs text canaries beside the model`);
    // The canaries' engines: their own small caches over the same store, exactly the plan's levels,
    // in the served engine's tier-A form: fused or symbols, a canary multiplies what it fetched in
    // place as serving does (decoding every expert it uses to f32 took ~10 s per canary token at
    // OLMoE's size, and serving waits a step for each canary forward). An expert is held as its
    // exact bytes at most (fused, symbols) or as f32.
    const form = o.engine.fetcher.form === 'tfjs' ? 'f32' : o.engine.fetcher.form;
    const fused = form !== 'f32';
    const c = o.model.checkpoint.config;
    const expertBytes = o.store.expertValues(0, 0) * 4;
    const heldBytes = fused ? Math.min(expertBytes, o.store.levelBytes(0, 0, o.store.exact)) : expertBytes;
    const budget = { tierABytes: canaryCacheExperts(c.topK, o.store.numLayers, expertBytes) * expertBytes, tierBBytes: 0 };
    const chunk = canaryChunk(o.serving.prefillChunk ?? Infinity, c.topK, c.numExperts, heldBytes);
    // One engine's cache at a time (the reference engine is gone before the scoring one fills), and
    // the experts one forward serves once beyond it: the reference pass's, every item's chunk
    // together, route to the most.
    this.canaryCacheBytes = budget.tierABytes + Math.min(c.numExperts, o.policy.canaries.items * chunk * c.topK) * heldBytes;
    const int8Activations = o.engine.fetcher.int8Activations;
    const strict = new OffloadExpertEngine({ store: o.store, link: new CopyLink(), budget, prefetch: false, strictLevels: true, tierAForm: form, int8Activations });
    const reference = new OffloadExpertEngine({ store: o.store, link: new CopyLink(), budget, prefetch: false, strictLevels: true, tierAForm: form, int8Activations, plan: uniformPlan(o.store.numLayers, o.store.levels - 1) });
    this.canaryEngines = [strict, reference]; // the reference engine last: open() disposes it
    let owedMs = 0;
    this.runner = new CanaryRunner({
      // Under continuous load the server is never idle, so a canary item cannot wait for that:
      // yieldToServing waits for the next step boundary, and the item runs between steps one
      // forward step at a time (a prompt chunk of the server's size, or one greedy token), the
      // next serving step waiting for each — admissions are held back for about one step. A
      // canary forward then owes (1 − s) / s times its duration before the next one, served or
      // idle, s the policy's canaries.max_share: at OLMoE's size on 2 cores a 64-token canary
      // chunk takes seconds, and one after every serving step left clients 0.13 tokens/s;
      // running them at once whenever the server was idle — between one client's requests —
      // still left it 1 token/s.
      target: canaryTarget(o.model, async (task) => {
        const until = performance.now() + owedMs;
        while (performance.now() < until) {
          if (o.serving.serving?.()) await o.serving.stepBoundary();
          else await new Promise((resolve) => setTimeout(resolve, Math.min(50, until - performance.now())));
        }
        const start = performance.now();
        try {
          return await o.serving.betweenSteps(task);
        } finally {
          const share = this.policy.canaries.max_share ?? CANARY_MAX_SHARE;
          owedMs = ((1 - share) / share) * (performance.now() - start);
        }
      }, chunk), engine: strict, text, arithmetic: jsonl<ArithmeticCanary>('arithmetic.jsonl'),
      // Before serving, so not through the gate above (it would make the pass wait for its owed time).
      references: (inputs) => this.readOrComputeReferences(inputs, canaryTarget(o.model, undefined, chunk), reference, fused),
      items: o.policy.canaries.items, yieldToServing: () => o.serving.stepBoundary(),
    });
  }

  /** The references of `inputs`: from their file when it is sound and made for them, else computed on `engine` and saved. */
  private async readOrComputeReferences(inputs: ReferenceInput[], target: ReturnType<typeof canaryTarget>, engine: OffloadExpertEngine, fused: boolean): Promise<Reference[]> {
    const m = this.o.model;
    const store = this.store;
    const vocabSize = m.checkpoint.config.vocabSize;
    const key = referenceKey({
      checkpointHash: store.checkpointHash,
      forward: m.model.nativeForward ? 'native' : `tfjs:${m.backend.name}`,
      // Symbols multiply the fused form's weights bit for bit: one reference serves both, unless
      // the integer product rounds the activations.
      reference: `${store.exact === store.levels - 1 ? 'exact' : `finest rung of ${ladderKey(store.ladder)}`}, ${fused ? 'fused' : 'f32'}${this.o.engine.fetcher.int8Activations ? ', int8 activations' : ''}`,
      vocabSize,
      inputs,
    });
    const got = await readOrComputeReferences({ file: referenceFileName(this.o.cacheDir, key), key, vocabSize, inputs, compute: () => computeReferences(target, engine, inputs) });
    if (got.rejected) this.o.log(`ebserve serve: canary references: not using ${got.rejected}; computing them again`);
    this.o.log(
      got.source === 'file'
        ? `ebserve serve: canary references: read from ${got.file}`
        : `ebserve serve: canary references: computed in ${got.seconds.toFixed(1)} s (${inputs.length} items, one batched pass), ${got.notSaved ? `not saved (${got.notSaved})` : `saved to ${got.file}`}`,
    );
    return got.references;
  }

  private disposeEngines(): void {
    for (const e of this.canaryEngines.splice(0)) e.dispose();
  }

  private start(policy: Policy): Control {
    const control = startControl({
      policy, profile: this.profile, store: this.store, engine: this.o.engine, telemetry: this.o.telemetry,
      topK: this.o.model.checkpoint.config.topK, canaries: this.runner, dryRun: this.o.dryRun,
      // After stop() a run still under way fails on the freed model: that is shutdown, not news.
      onCanaryError: (e) => this.stopped || this.o.log(`ebserve serve: canary run failed: ${e.message}`),
    });
    const c = control.controller;
    const subs = [
      c.plan$.subscribe(() => this.changed()),
      c.decisions$.subscribe((d) => d.action !== 'hold' && this.o.log(`ebserve serve: controller ${d.dryRun ? '(dry run) ' : ''}${d.action}: ${d.reason}`)),
      c.canaries.subscribe((r) => {
        this.lastCanary = r;
        this.changed();
      }),
    ];
    this.unsubscribe = () => subs.forEach((s) => s.unsubscribe());
    this.o.log(`ebserve serve: controller on: policy ${policy.name} (${policy.file}), SLA p95 ${this.profile.sla.p95_inter_token_seconds} s, sensitivity from the ${control.sensitivitySource}${this.o.dryRun ? ', DRY RUN (decides, changes nothing)' : ''}`);
    return control;
  }

  get controller() {
    return this.control.controller;
  }

  /** Called on every change the dashboard should show. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    for (const l of this.listeners) l();
  }

  /** Each level's label: "0.5σ" … "exact". */
  levelLabels(): string[] {
    const l = this.store.ladder;
    const unit = l.boundMode === 'sigma' ? 'σ' : l.boundMode === 'rel' ? '×range' : '';
    return Array.from({ length: this.store.levels }, (_, k) => (k === this.store.exact ? 'exact' : `${l.bounds[k]}${unit}`));
  }

  /** Each layer's bound at its level (the ladder's number; 0 at the exact level). */
  layerBounds(plan: PrecisionPlan = this.controller.plan): number[] {
    return plan.levels.map((k) => (k === this.store.exact ? 0 : this.store.ladder.bounds[k]));
  }

  /** Original bytes over the bytes moved per expert at each layer's level. */
  compressionRatios(plan: PrecisionPlan = this.controller.plan): number[] {
    return plan.levels.map((k, layer) => this.store.originalBytes(layer, 0) / this.store.layerLevelBytes(layer)[k]);
  }

  /** What the estimators read now. */
  estimates() {
    const s = this.controller.state$.value;
    const parts = bandwidthParts(s.bandwidth);
    const p = p95(s.latency);
    const cm = servedStepCompute(s);
    return {
      bandwidth_bytes_per_second: { estimate: bandwidthEstimate(s.bandwidth), fast: parts.fast, slow: parts.slow, harmonic: parts.harmonic, robust: parts.robust, capacity: capacityEstimate(s.bandwidth), using_prior: parts.usingPrior },
      overhead_seconds: overheadEstimate(s.bandwidth),
      p95_inter_token_seconds: Number.isNaN(p) ? null : p,
      // Compute of a step at the batch being served (tokens_per_step), and per token of it.
      compute_seconds_per_token: Number.isNaN(cm.seconds) ? null : cm.seconds / cm.tokens,
      compute_seconds_per_step_at_batch: Number.isNaN(cm.seconds) ? null : cm.seconds,
      tokens_per_step: Number.isNaN(cm.seconds) ? null : cm.tokens,
      miss_rate_per_layer: Array.from({ length: this.store.numLayers }, (_, l) => missRate(s.misses, l, NaN)).map((x) => (Number.isNaN(x) ? null : x)),
      moves_per_token_per_layer: Array.from({ length: this.store.numLayers }, (_, l) => movesPerToken(s.moves, l)).map((x) => (Number.isNaN(x) ? null : x)),
      // Distinct experts a decode step asks each layer for (its batch's union): what tier A's capacity model multiplies by a plan's miss share.
      lookups_per_step_per_layer: Array.from({ length: this.store.numLayers }, (_, l) => lookupsPerStep(s.moves, l)).map((x) => (Number.isNaN(x) ? null : x)),
      // p95 of measured over predicted step time: what the planner divides the SLA by.
      model_error_p95: modelErrorP95(s.modelError),
      samples: s.samples,
    };
  }

  /** The plan, and the last decision that changed something (its reason). */
  planReport() {
    const c = this.controller;
    const last = [...c.log()].reverse().find((d) => d.action !== 'hold');
    const latest = c.log().at(-1);
    return {
      version: c.plan.version,
      levels: c.plan.levels,
      labels: c.plan.levels.map((k) => this.levelLabels()[k]),
      // Each layer's drop rung past the loosest level: none, trim (top-k − 1) or skip-moe.
      drop: c.plan.drop ?? c.plan.levels.map(() => 'none'),
      bounds: this.layerBounds(),
      why: last ? { at: last.at, action: last.action, reason: last.reason, dry_run: last.dryRun } : { reason: 'the starting plan: every layer at its ceiling' },
      now: latest ? { action: latest.action, reason: latest.reason } : null,
      frozen: c.isFrozen,
      dry_run: c.isDryRun,
      policy: this.policy.name,
      sla_seconds: c.slaSeconds,
      quarantined: c.quarantined(),
      // The dense weights beside the experts: fixed at load (the profile's dense section), never moved by the controller.
      dense: this.o.model.model.nativeForward?.tensors ?? null,
    };
  }

  decisions(limit: number): Decision[] {
    return this.controller.log().slice(-limit);
  }

  setSla(seconds: number): void {
    this.controller.setSla(seconds);
    this.changed();
  }

  /** Switches to another policy file of the same ladder (the store is built for one ladder). */
  switchPolicy(file: string): Policy {
    const next = loadPolicy(file);
    const a = this.store.ladder;
    const b = next.storeLadder;
    if (a.boundMode !== b.boundMode || a.exact !== b.exact || a.bounds.join() !== b.bounds.join()) {
      throw new ApiConflict(`${file}: its ladder (${b.bounds.join(', ')} ${b.boundMode}${b.exact ? ' + exact' : ''}) is not the one the experts are stored at (${a.bounds.join(', ')} ${a.boundMode}${a.exact ? ' + exact' : ''}); restart with --policy to change ladders`);
    }
    const sla = this.controller.slaSeconds;
    const frozen = this.controller.isFrozen;
    this.unsubscribe();
    this.control.stop();
    this.policy = next;
    this.control = this.start(next);
    this.controller.setSla(sla);
    if (frozen) this.controller.freeze();
    this.changed();
    return next;
  }

  freeze(on: boolean): void {
    if (on) this.controller.freeze();
    else this.controller.unfreeze();
    this.changed();
  }

  setDryRun(on: boolean): void {
    this.controller.setDryRun(on);
    this.changed();
  }

  /** Scores the current plan now and hands the result to the controller (rollback if it fails). */
  async runCanaries(): Promise<CanaryResult> {
    if (this.runner.busy) throw new ApiConflict('a canary run is already under way');
    const r = await this.runner.score(this.controller.plan);
    this.controller.canaries.next(r);
    return r;
  }

  canaryFloor(): number {
    return this.profile.accuracy_floor ?? this.policy.canaries.floor.top1_agreement;
  }

  stop(): void {
    this.stopped = true;
    this.unsubscribe();
    this.control.stop();
    this.disposeEngines();
  }
}
