/**
 * The profiler: the seed study's experiment as a tool. For every layer alone, for each layer
 * group, and for a sample of single experts, at every ladder rung, it perturbs those experts'
 * weights under an error model, scores the canaries against the uncompressed model, and records
 * the scores. Two error models:
 *   codec     the codec's real error: the weights decoded from rungs 0..k (bounded, ~uniform,
 *             RMS ≈ eb/√3);
 *   gaussian  the study's model: the exact weights plus N(0, eb²) noise, eb the same absolute bound
 *             (harsher by about √3 in RMS, and unbounded).
 * Every other expert stays exact. Results are kept in a state file after every cell, so an
 * interrupted run resumes where it stopped.
 *
 * Shapes: levels 0..K−1 are the ladder's rungs (loosest first); the exact level costs nothing.
 *
 * Beside the levels it measures the drop rungs (each layer alone trimmed to top-(k − 1), or its MoE
 * output zeroed: measureDrops) and each layer's importance (1 − the cosine between the hidden state
 * entering and leaving its MoE block over the canaries: measureImportance, by wrapping the engine,
 * so the forwards stay as they are).
 */
import fs from 'node:fs';

import { decompressRungs } from '../codec/index.js';
import { combineExperts, disposeSwiglu, swigluTensors, type ExpertEngine, type ExpertMatrices, type SwigluTensors } from '../offload/expert-engine.js';
import { trimRouting } from '../offload/engine.js';
import type { DropRung } from '../offload/plan.js';
import { MATRICES } from '../offload/source.js';
import type { ExpertStore } from '../offload/store.js';
import type { CanaryRunner } from './canaries.js';
import { predictLoss, type PlanMove } from './planner.js';

export type ErrorModel = 'codec' | 'gaussian';

export type ProfileTarget = { kind: 'layer'; layer: number } | { kind: 'group'; group: string; layers: number[] } | { kind: 'expert'; layer: number; expert: number };

export interface ProfileCell {
  model: ErrorModel;
  target: ProfileTarget;
  level: number;
  top1Agreement: number;
  kl: number;
  exactMatch?: number;
}

function targetKey(t: ProfileTarget): string {
  return t.kind === 'layer' ? `layer ${t.layer}` : t.kind === 'group' ? `group ${t.group}` : `expert ${t.layer}.${t.expert}`;
}

export function cellKey(model: ErrorModel, t: ProfileTarget, level: number): string {
  return `${model}/${targetKey(t)}/${level}`;
}

/** N(0, 1) from a seeded mulberry32 + Box–Muller: the same noise for the same seed. */
function gaussianSource(seed: number): () => number {
  let a = seed >>> 0;
  const u = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 1) / 4294967297;
  };
  return () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
}

/**
 * Every expert resident at the exact level, with some replaced by perturbed copies: the engine
 * the profiler scores. Its tensors are the model's own weights, so the unperturbed engine is
 * the reference.
 */
export class PerturbedEngine implements ExpertEngine {
  private readonly exact: SwigluTensors[][];
  private readonly overrides = new Map<number, SwigluTensors>();
  private dropped: { layer: number; rung: DropRung } | undefined;
  private readonly d: number;
  private readonly ff: number;

  constructor(private readonly store: ExpertStore) {
    [this.ff, this.d] = store.expert(0, 0).gate.shape;
    this.exact = Array.from({ length: store.numLayers }, (_, l) => Array.from({ length: store.numExperts }, (_, e) => swigluTensors(this.values(l, e, store.exact), this.d, this.ff)));
  }

  /** Experts' values at `level` of the ladder (the exact level: the originals). */
  values(layer: number, expert: number, level: number): ExpertMatrices {
    const s = this.store.expert(layer, expert);
    const one = (m: (typeof MATRICES)[number]) =>
      level === this.store.exact ? this.store.decodeExact(s[m], s[m].exact!) : (decompressRungs(s[m].head, s[m].rungs.slice(0, level + 1), { verify: false }) as Float32Array);
    return { gate: one('gate'), up: one('up'), down: one('down') };
  }

  /** Replaces `targets` by their weights under `model` at `level` (until restore). */
  perturb(targets: [number, number][], level: number, model: ErrorModel, seed: number): void {
    this.restore();
    const noise = gaussianSource(seed);
    for (const [l, e] of targets) {
      let w: ExpertMatrices;
      if (model === 'codec') {
        w = this.values(l, e, level);
      } else {
        w = this.values(l, e, this.store.exact);
        const s = this.store.expert(l, e);
        for (const m of MATRICES) {
          const eb = s[m].bounds[level];
          const x = w[m];
          for (let i = 0; i < x.length; i++) x[i] += eb * noise();
        }
      }
      this.overrides.set(l * this.store.numExperts + e, swigluTensors(w, this.d, this.ff));
    }
  }

  /** Every expert of each layer at that layer's level of `levels` (the codec's error). */
  perturbPlan(levels: number[]): void {
    this.restore();
    levels.forEach((level, l) => {
      if (level === this.store.exact) return;
      for (let e = 0; e < this.store.numExperts; e++) this.overrides.set(l * this.store.numExperts + e, swigluTensors(this.values(l, e, level), this.d, this.ff));
    });
  }

  /** Runs `layer` alone at a drop rung (the offload engine's own rule for it; until restore). */
  drop(layer: number, rung: DropRung): void {
    this.restore();
    this.dropped = { layer, rung };
  }

  restore(): void {
    for (const t of this.overrides.values()) disposeSwiglu(t);
    this.overrides.clear();
    this.dropped = undefined;
  }

  async compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array> {
    if (this.dropped?.layer === layer) {
      if (this.dropped.rung === 'skip-moe') return new Float32Array(T * this.d);
      ({ ids, weights } = trimRouting(ids, weights, T));
    }
    return combineExperts(this.d, hidden, ids, weights, T, (e) => this.overrides.get(layer * this.store.numExperts + e) ?? this.exact[layer][e]);
  }

  dispose(): void {
    this.restore();
    for (const row of this.exact) for (const t of row) disposeSwiglu(t);
  }
}

export interface ProfileRun {
  store: ExpertStore;
  runner: CanaryRunner;
  engine: PerturbedEngine;
  groups: { name: string; layers: number[] }[];
  experts: [number, number][];
  models: ErrorModel[];
  /** The state file (JSON): done cells survive an interruption. */
  statePath: string;
  /** Identifies the settings: a state file made with others is not resumed. */
  settingsKey: string;
  seed?: number;
  onCell?: (done: number, total: number, cell: ProfileCell, resumed: boolean) => void;
}

/** Runs (or resumes) every cell; returns them all. */
export async function runProfile(p: ProfileRun): Promise<ProfileCell[]> {
  const targets: ProfileTarget[] = [
    ...Array.from({ length: p.store.numLayers }, (_, layer) => ({ kind: 'layer' as const, layer })),
    ...p.groups.map((g) => ({ kind: 'group' as const, group: g.name, layers: g.layers })),
    ...p.experts.map(([layer, expert]) => ({ kind: 'expert' as const, layer, expert })),
  ];
  const levels = Array.from({ length: p.store.ladder.bounds.length }, (_, k) => k);
  const state: { settings: string; cells: Record<string, ProfileCell> } = readState(p.statePath, p.settingsKey);
  const total = p.models.length * targets.length * levels.length;
  let done = 0;
  await p.runner.references(); // from the unperturbed engine, before any cell perturbs it
  for (const model of p.models) {
    for (const t of targets) {
      for (const level of levels) {
        const key = cellKey(model, t, level);
        let cell = state.cells[key];
        const resumed = Boolean(cell);
        if (!cell) {
          const experts: [number, number][] =
            t.kind === 'expert' ? [[t.layer, t.expert]] : (t.kind === 'layer' ? [t.layer] : t.layers).flatMap((l) => Array.from({ length: p.store.numExperts }, (_, e) => [l, e] as [number, number]));
          p.engine.perturb(experts, level, model, (p.seed ?? 1) + done);
          try {
            const r = await p.runner.scoreWith(p.engine, 0);
            cell = { model, target: t, level, top1Agreement: r.top1Agreement, kl: r.kl ?? 0, exactMatch: r.exactMatch };
          } finally {
            p.engine.restore();
          }
          state.cells[key] = cell;
          writeState(p.statePath, state);
        }
        p.onCell?.(++done, total, cell, resumed);
      }
    }
  }
  return Object.values(state.cells);
}

function readState(file: string, settings: string): { settings: string; cells: Record<string, ProfileCell> } {
  try {
    const s = JSON.parse(fs.readFileSync(file, 'utf8')) as { settings: string; cells: Record<string, ProfileCell> };
    if (s.settings === settings && s.cells && typeof s.cells === 'object') return s;
  } catch {
    // no state yet, or an unreadable one: start over
  }
  return { settings, cells: {} };
}

function writeState(file: string, state: unknown): void {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(state));
  fs.renameSync(tmp, file);
}

/**
 * [layer][level] accuracy cost (1 − top-1 agreement) of each layer alone under `model`; the
 * exact level costs 0. Made non-increasing in the level (a looser level never reads as cheaper
 * than a tighter one: the canaries' sampling noise can say so, the planner should not believe it).
 */
export function sensitivityTable(cells: ProfileCell[], store: ExpertStore, model: ErrorModel): number[][] {
  return Array.from({ length: store.numLayers }, (_, layer) => {
    const row = Array.from({ length: store.levels }, (_, level) => {
      if (level === store.exact) return 0;
      const c = cells.find((x) => x.model === model && x.target.kind === 'layer' && x.target.layer === layer && x.level === level);
      return c ? Math.max(0, 1 - c.top1Agreement) : NaN;
    });
    for (let k = row.length - 2; k >= 0; k--) row[k] = Math.max(row[k], row[k + 1]);
    return row.map((v) => Number(v.toFixed(6)));
  });
}

/**
 * Prefixes of the planner's move sequence, from `ceiling`: for each loss in `losses`, the first
 * prefix whose summed cost by `table` reaches it (the whole sequence if none does); distinct plans.
 */
export function plansAtLosses(moves: PlanMove[], table: number[][], ceiling: number[], losses: number[]): number[][] {
  const plans: number[][] = [];
  for (const target of losses) {
    const levels = [...ceiling];
    let loss = 0;
    for (const mv of moves) {
      if (loss >= target) break;
      loss += table[mv.layer][mv.to] - table[mv.layer][mv.from];
      levels[mv.layer] = mv.to;
    }
    if (!plans.some((p) => p.join() === levels.join())) plans.push(levels);
  }
  return plans;
}

export interface PlanCell {
  levels: number[];
  /** The plan's cost by the (smoothed) per-layer table, summed over layers. */
  predictedLoss: number;
  /** 1 − top-1 agreement measured with the whole plan (the codec's error). */
  measuredLoss: number;
}

/**
 * Scores whole plans with the codec's error and fits how far the layers' losses add up: the
 * least-squares scale s with measured ≈ s · predicted. A plan perturbs every layer at once, so
 * this is the evidence the per-layer cells cannot give.
 */
export async function scorePlans(runner: CanaryRunner, engine: PerturbedEngine, table: number[][], plans: number[][], onPlan?: (done: number, total: number) => void): Promise<{ cells: PlanCell[]; lossScale: number | undefined }> {
  const cells: PlanCell[] = [];
  for (const levels of plans) {
    engine.perturbPlan(levels);
    try {
      const r = await runner.scoreWith(engine, 0);
      cells.push({ levels, predictedLoss: predictLoss(table, levels), measuredLoss: 1 - r.top1Agreement });
    } finally {
      engine.restore();
    }
    onPlan?.(cells.length, plans.length);
  }
  const pp = cells.reduce((a, c) => a + c.predictedLoss * c.predictedLoss, 0);
  const pm = cells.reduce((a, c) => a + c.predictedLoss * c.measuredLoss, 0);
  return { cells, lossScale: pp > 0 && pm > 0 ? Math.min(10, Math.max(0.05, pm / pp)) : undefined };
}

export interface DropMeasurement {
  /** [layer]: 1 − top-1 agreement with that layer alone trimmed / skipped; and the mean KL. */
  trim: number[];
  skip_moe: number[];
  trim_kl: number[];
  skip_moe_kl: number[];
}

/** Scores each layer alone at each drop rung against the exact model (every other layer exact). */
export async function measureDrops(runner: CanaryRunner, engine: PerturbedEngine, layers: number, onCell?: (done: number, total: number) => void): Promise<DropMeasurement> {
  const out: DropMeasurement = { trim: [], skip_moe: [], trim_kl: [], skip_moe_kl: [] };
  await runner.references();
  let done = 0;
  for (const rung of ['trim', 'skip-moe'] as const) {
    for (let l = 0; l < layers; l++) {
      engine.drop(l, rung);
      try {
        const r = await runner.scoreWith(engine, 0);
        const key = rung === 'trim' ? 'trim' : 'skip_moe';
        out[key].push(Number(Math.max(0, 1 - r.top1Agreement).toFixed(6)));
        out[`${key}_kl`].push(Number((r.kl ?? 0).toFixed(6)));
      } finally {
        engine.restore();
      }
      onCell?.(++done, 2 * layers);
    }
  }
  return out;
}

/**
 * An engine that computes with `inner` and records, per layer, the cosine between the hidden
 * state entering the MoE block (what compute is given) and leaving it (that plus what compute
 * returns), averaged over every token it sees.
 */
export class ImportanceProbe implements ExpertEngine {
  readonly cosSum: number[];
  readonly tokens: number[];

  constructor(private readonly inner: ExpertEngine, layers: number, private readonly d: number) {
    this.cosSum = new Array<number>(layers).fill(0);
    this.tokens = new Array<number>(layers).fill(0);
  }

  async compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array> {
    const out = await this.inner.compute(layer, hidden, ids, weights, T);
    for (let t = 0; t < T; t++) {
      let dot = 0;
      let a2 = 0;
      let b2 = 0;
      for (let i = t * this.d; i < (t + 1) * this.d; i++) {
        const a = hidden[i];
        const b = a + out[i];
        dot += a * b;
        a2 += a * a;
        b2 += b * b;
      }
      if (a2 > 0 && b2 > 0) {
        this.cosSum[layer] += dot / Math.sqrt(a2 * b2);
        this.tokens[layer]++;
      }
    }
    return out;
  }

  /** [layer]: 1 − the mean cosine (0: the block leaves the state's direction as it was). */
  importance(): number[] {
    return this.cosSum.map((c, l) => Number(Math.max(0, this.tokens[l] ? 1 - c / this.tokens[l] : 0).toFixed(6)));
  }

  dispose(): void {
    // The inner engine is its owner's to dispose.
  }
}

/** Each layer's importance over the canaries: the exact model's MoE blocks, probed (ImportanceProbe). */
export async function measureImportance(runner: CanaryRunner, engine: ExpertEngine, layers: number, d: number): Promise<number[]> {
  const probe = new ImportanceProbe(engine, layers, d);
  await runner.scoreWith(probe, 0);
  return probe.importance();
}
