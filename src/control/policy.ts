/**
 * Policies (policies/*.yaml): how error bounds may move. A policy names the ladder every expert
 * is stored at, layer groups by fraction of depth with each group's floor (the loosest level
 * allowed), ceiling (the tightest) and prior sensitivity (how much accuracy a looser level costs
 * there, used until a profile has measured it), the controller's hysteresis, and canary
 * settings, and whether the drop rungs (trim, skip-moe) may be taken past the loosest level. `loadPolicy` validates the file and resolves it for a model of a given depth.
 *
 * @example
 * const p = loadPolicy('policies/u-shape.yaml');
 * const r = resolvePolicy(p, 8);   // r.floor[layer], r.ceiling[layer], r.prior[layer][level]
 */
import { z } from 'zod';

import { ladderCuts } from '../codec/index.js';
import { levelCount, type Ladder } from '../offload/plan.js';
import { ConfigError, readConfigFile } from './config-file.js';

const positive = z.number({ error: 'expected a number' }).positive({ error: 'expected a number > 0' });
const ms = z.number({ error: 'expected milliseconds' }).int({ error: 'expected whole milliseconds' }).nonnegative({ error: 'expected milliseconds ≥ 0' });
const share = z.number({ error: 'expected a number in [0, 1]' }).min(0, { error: 'expected a number in [0, 1]' }).max(1, { error: 'expected a number in [0, 1]' });
/** A ladder level named by its bound, or the exact level. */
const levelRef = z.union([positive, z.literal('exact')], { error: 'expected one of the ladder\'s bounds or "exact"' });

export const policySchema = z.strictObject({
  name: z.string({ error: 'expected a name' }).min(1),
  description: z.string().optional(),
  ladder: z.strictObject({
    bound_mode: z.enum(['abs', 'rel', 'sigma'], { error: 'expected abs, rel or sigma' }),
    bounds: z.array(positive, { error: 'expected a list of bounds, loosest first' }).min(1, { error: 'expected at least one bound' }).max(16, { error: 'expected at most 16 bounds' }),
    exact: z.boolean({ error: 'expected true or false' }),
  }),
  groups: z.array(z.strictObject({
    name: z.string().min(1),
    from: share,
    to: share,
    floor: levelRef,
    ceiling: levelRef,
    prior_sensitivity: z.number({ error: 'expected a number ≥ 0' }).nonnegative({ error: 'expected a number ≥ 0' }),
  })).min(1, { error: 'expected at least one layer group' }),
  /**
   * Drop rungs the planner may take past the loosest level (default: none): trim (top-k − 1) and
   * skip-moe (the layer's MoE output replaced by zero). Each needs the profile's measurement.
   */
  drop: z.strictObject({
    trim: z.boolean({ error: 'expected true or false' }).default(false),
    skip_moe: z.boolean({ error: 'expected true or false' }).default(false),
  }).optional(),
  control: z.strictObject({
    decide_every_ms: ms,
    stable_window_ms: ms,
    tolerance: share,
    dwell_ms: ms,
    max_layers_per_decision: z.number().int().positive({ error: 'expected a whole number ≥ 1' }),
    stale_after_ms: ms,
    headroom: z.number().gt(0, { error: 'expected a number in (0, 1]' }).max(1, { error: 'expected a number in (0, 1]' }),
  }),
  canaries: z.strictObject({
    every_ms: ms,
    items: z.number().int().positive({ error: 'expected a whole number ≥ 1' }),
    // The most of the server's time canary forwards may take (default CANARY_MAX_SHARE).
    max_share: z.number({ error: 'expected a number in (0, 1)' }).gt(0, { error: 'expected a number in (0, 1)' }).lt(1, { error: 'expected a number in (0, 1)' }).optional(),
    floor: z.strictObject({ top1_agreement: share, exact_match: share.optional() }),
    quarantine_ms: ms,
  }),
});

/**
 * The canaries' share of the server's time unless a policy says otherwise: a tenth. On the
 * OLMoE shape on 2 cores one canary forward takes seconds, and at a quarter one client's
 * tokens/s fell from 6.7 (warm-up, no canary due) to 5.0.
 */
export const CANARY_MAX_SHARE = 0.1;

export type PolicyFile = z.output<typeof policySchema>;
export interface Policy extends PolicyFile {
  file: string;
  /** The ladder as offload reads it. */
  storeLadder: Ladder;
}

/** Reads and checks a policy: the schema, then what a schema cannot say (ladder shape, group cover, floor ≤ ceiling). */
export function loadPolicy(file: string): Policy {
  const p = readConfigFile(file, policySchema);
  const problems: { field: string; message: string }[] = [];
  try {
    ladderCuts(p.ladder.bounds);
  } catch (e) {
    problems.push({ field: 'ladder.bounds', message: `expected bounds loosest first, each a power of two times the last (${(e as Error).message})` });
  }
  const levelOf = (ref: number | 'exact', field: string): number => {
    if (ref === 'exact') {
      if (!p.ladder.exact) problems.push({ field, message: 'expected one of the ladder\'s bounds: "exact" needs ladder.exact: true' });
      return p.ladder.bounds.length;
    }
    const i = p.ladder.bounds.findIndex((b) => Math.abs(b - ref) <= 1e-12 * b);
    if (i < 0) problems.push({ field, message: `expected one of the ladder's bounds (${p.ladder.bounds.join(', ')})${p.ladder.exact ? ' or "exact"' : ''}, got ${ref}` });
    return i;
  };
  let at = 0;
  p.groups.forEach((g, i) => {
    if (Math.abs(g.from - at) > 1e-9) problems.push({ field: `groups.${i}.from`, message: `expected ${at} (groups must cover depth 0..1 in order, without gaps or overlaps), got ${g.from}` });
    if (!(g.to > g.from)) problems.push({ field: `groups.${i}.to`, message: `expected a fraction above from (${g.from}), got ${g.to}` });
    at = g.to;
    const lo = levelOf(g.floor, `groups.${i}.floor`);
    const hi = levelOf(g.ceiling, `groups.${i}.ceiling`);
    if (lo >= 0 && hi >= 0 && lo > hi) problems.push({ field: `groups.${i}.floor`, message: `expected a floor no tighter than the ceiling (${g.ceiling}), got ${g.floor}` });
  });
  if (Math.abs(at - 1) > 1e-9) problems.push({ field: `groups.${p.groups.length - 1}.to`, message: `expected the last group to end at 1, got ${at}` });
  if (problems.length) throw new ConfigError(file, problems);
  return { ...p, file, storeLadder: { bounds: p.ladder.bounds, boundMode: p.ladder.bound_mode, exact: p.ladder.exact } };
}

export interface ResolvedPolicy {
  /** The group each layer falls in (by the fraction of depth at its middle). */
  group: string[];
  floor: number[];
  ceiling: number[];
  /** [layer][level]: the prior accuracy cost, proportional to the level's bound (0 at exact). */
  prior: number[][];
}

/** The policy applied to a model of `layers` layers. */
export function resolvePolicy(p: Policy, layers: number): ResolvedPolicy {
  const levels = levelCount(p.storeLadder);
  const index = (ref: number | 'exact') => (ref === 'exact' ? p.ladder.bounds.length : p.ladder.bounds.findIndex((b) => Math.abs(b - ref) <= 1e-12 * b));
  const out: ResolvedPolicy = { group: [], floor: [], ceiling: [], prior: [] };
  for (let l = 0; l < layers; l++) {
    const depth = (l + 0.5) / layers;
    const g = p.groups.find((x) => depth >= x.from && depth < x.to) ?? p.groups[p.groups.length - 1];
    out.group.push(g.name);
    out.floor.push(index(g.floor));
    out.ceiling.push(index(g.ceiling));
    // Loosening costs in proportion to the error it lets in: the bound relative to the loosest.
    out.prior.push(Array.from({ length: levels }, (_, k) => (k >= p.ladder.bounds.length ? 0 : g.prior_sensitivity * (p.ladder.bounds[k] / p.ladder.bounds[0]))));
  }
  return out;
}
