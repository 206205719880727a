/**
 * Profiles (profiles/*.yaml): where a model runs and what it tolerates. The link (a bandwidth
 * prior until the link is measured, or an emulated link — a set bandwidth and latency, reported
 * as EMULATED everywhere), the device memory budget, the SLA targets, the accuracy floor, the
 * model folder (relative to the profile file), and the per-layer sensitivity `ebserve profile`
 * measured (the levels', and the drop rungs' when measured), and each layer's importance (how much
 * its MoE block changes the hidden state: the planner's prior where nothing is measured). Tier A may be sized per layer (device.experts_by_layer, from the routing report);
 * checkProfileForModel checks it against the model once the model is known.
 *
 * @example
 * const prof = loadProfile('profiles/cpu.yaml');  prof.sla.p95_inter_token_seconds
 */
import path from 'node:path';

import { z } from 'zod';

import { ConfigError, readConfigFile } from './config-file.js';

const positive = z.number({ error: 'expected a number' }).positive({ error: 'expected a number > 0' });
const share = z.number({ error: 'expected a number in [0, 1]' }).min(0, { error: 'expected a number in [0, 1]' }).max(1, { error: 'expected a number in [0, 1]' });

export const profileSchema = z.strictObject({
  name: z.string().min(1),
  description: z.string().optional(),
  model: z.string().min(1).optional(),
  link: z.strictObject({
    prior_bytes_per_second: positive,
    emulated: z.strictObject({ bytes_per_second: positive, latency_seconds: z.number().nonnegative({ error: 'expected seconds ≥ 0' }).default(0) }).optional(),
  }),
  device: z.strictObject({
    experts_per_layer: z.number().int({ error: 'expected a whole number' }).positive({ error: 'expected a whole number ≥ 1' }).optional(),
    /**
     * Tier A's size per layer, in experts (`ebserve profile` writes the routing report's
     * recommendation): with memory_budget_bytes, tier A's bytes are split between the layers in
     * these proportions; alone, tier A holds exactly this many experts of each layer.
     */
    experts_by_layer: z.array(z.number({ error: 'expected a whole number of experts' }).int({ error: 'expected a whole number of experts' }).positive({ error: 'expected a whole number of experts ≥ 1' }), { error: 'expected a list of whole numbers, one per layer' }).min(1, { error: 'expected one whole number per layer' }).optional(),
    memory_budget_bytes: positive.optional(),
    tier_b_fraction: z.number().min(0).lt(1, { error: 'expected a number in [0, 1)' }).optional(),
    tier_b_bytes: z.number().nonnegative().optional(),
    /**
     * What tier A holds at a codec level: the rungs decoded to f32 (default), or the compressed
     * rungs themselves, multiplied by the CPU engine's fused product (no decode on a miss, and an
     * entry costs its compressed bytes, so the budget holds more experts; the product is slower).
     */
    tier_a_form: z.enum(['f32', 'fused', 'symbols'], { error: 'expected f32, fused or symbols' }).optional(),
    /**
     * With tier_a_form symbols: multiply them by the integer product, each token's activations
     * quantized to 8 bits per 256 values as llama.cpp's Q8_K (faster; the activations' rounding
     * then shows in the canaries' agreement like the levels' own).
     */
    int8_activations: z.boolean({ error: 'expected true or false' }).optional(),
  }),
  /**
   * How the native forward holds its dense weights: `stored` (default: bf16 bits where the
   * checkpoint's values are bf16, else f32), or `symbols`: the attention projections as 8-bit
   * symbols, each tensor at its own tight bound (about 1/256 of its values kept aside exactly), and
   * with lm_head the LM head too; int8_activations multiplies them by the integer product; bits 4
   * (default 8) holds the attention projections in a quarter of bf16's bytes at a bound 18×
   * coarser (the LM head stays at 8). Routers, norms and embeddings stay as stored.
   */
  dense: z.strictObject({
    form: z.enum(['stored', 'symbols'], { error: 'expected stored or symbols' }),
    lm_head: z.boolean({ error: 'expected true or false' }).optional(),
    bits: z.union([z.literal(4), z.literal(8)], { error: 'expected 4 or 8' }).optional(),
    int8_activations: z.boolean({ error: 'expected true or false' }).optional(),
  }).optional(),
  /**
   * The disk tier: keep the experts in the store file and at most budget_bytes of them in host
   * memory, reading the rest from the disk as needed (`serve --host-budget` overrides it).
   */
  host: z.strictObject({ budget_bytes: positive }).optional(),
  sla: z.strictObject({
    p95_inter_token_seconds: positive,
    time_to_first_token_seconds: positive.optional(),
  }),
  accuracy_floor: share.optional(),
  sensitivity: z.strictObject({
    error_model: z.enum(['codec', 'gaussian'], { error: 'expected codec or gaussian' }),
    metric: z.literal('1 - top1_agreement', { error: 'expected "1 - top1_agreement"' }),
    bound_mode: z.enum(['abs', 'rel', 'sigma']),
    bounds: z.array(positive).min(1),
    exact: z.boolean(),
    /** [layer][level]: measured accuracy cost of that layer alone at that level. */
    layers: z.array(z.array(z.number().min(0).max(1))).min(1),
    /**
     * Measured loss of whole plans over the loss the layers' costs add up to (ebserve profile
     * scores a few of the planner's plans): how far the layers' losses add. 1 when absent.
     */
    loss_scale: z.number().gt(0, { error: 'expected a number > 0' }).max(10, { error: 'expected a number ≤ 10' }).optional(),
    /**
     * [layer]: measured cost (same metric) of that layer alone at each drop rung — trim (top-k − 1,
     * weights renormalised) and skip-moe (MoE output zero) — and the mean KL to the exact model.
     */
    drop: z.strictObject({
      trim: z.array(z.number().min(0).max(1)).min(1),
      skip_moe: z.array(z.number().min(0).max(1)).min(1),
      trim_kl: z.array(z.number().nonnegative()).optional(),
      skip_moe_kl: z.array(z.number().nonnegative()).optional(),
    }).optional(),
  }).optional(),
  /**
   * [layer]: how much each MoE block changes the hidden state over the canaries, 1 − cos(state
   * entering, state leaving): the planner's prior where no sensitivity is measured.
   */
  layer_importance: z.strictObject({
    metric: z.literal('1 - cos(moe_in, moe_out)', { error: 'expected "1 - cos(moe_in, moe_out)"' }),
    layers: z.array(z.number().min(0).max(2)).min(1),
  }).optional(),
});

export type ProfileFile = z.output<typeof profileSchema>;
export interface Profile extends ProfileFile {
  file: string;
  /** The model folder, resolved against the profile's own folder (undefined: the embedded model). */
  modelDir?: string;
}

export function loadProfile(file: string): Profile {
  const p = readConfigFile(file, profileSchema);
  const problems: { field: string; message: string }[] = [];
  const d = p.device;
  if (d.experts_per_layer !== undefined && d.experts_by_layer !== undefined) {
    problems.push({ field: 'device.experts_by_layer', message: 'expected either experts_per_layer (one size for every layer) or experts_by_layer, not both' });
  } else if ((d.experts_per_layer === undefined) === (d.memory_budget_bytes === undefined) && !(d.experts_by_layer !== undefined && d.memory_budget_bytes === undefined)) {
    problems.push({ field: 'device', message: 'expected exactly one of experts_per_layer and memory_budget_bytes (or experts_by_layer, alone or with memory_budget_bytes)' });
  }
  if (d.tier_b_fraction !== undefined && d.memory_budget_bytes === undefined) problems.push({ field: 'device.tier_b_fraction', message: 'expected only with memory_budget_bytes (use tier_b_bytes with experts_per_layer)' });
  if (d.int8_activations && d.tier_a_form !== 'symbols') problems.push({ field: 'device.int8_activations', message: `expected only with tier_a_form: symbols (the integer product multiplies symbols), not ${d.tier_a_form ?? 'f32'}` });
  for (const k of ['lm_head', 'int8_activations', 'bits'] as const) {
    if (p.dense?.[k] !== undefined && p.dense?.[k] !== false && p.dense.form !== 'symbols') problems.push({ field: `dense.${k}`, message: `expected only with form: symbols, not ${p.dense.form}` });
  }
  if (d.tier_b_bytes !== undefined && d.memory_budget_bytes !== undefined) problems.push({ field: 'device.tier_b_bytes', message: 'expected only with experts_per_layer or experts_by_layer (use tier_b_fraction with memory_budget_bytes)' });
  const s = p.sensitivity;
  if (s) {
    const levels = s.bounds.length + (s.exact ? 1 : 0);
    s.layers.forEach((row, l) => {
      if (row.length !== levels) problems.push({ field: `sensitivity.layers.${l}`, message: `expected ${levels} levels (the bounds${s.exact ? ' and exact' : ''}), got ${row.length}` });
    });
    for (const k of ['trim', 'skip_moe', 'trim_kl', 'skip_moe_kl'] as const) {
      const row = s.drop?.[k];
      if (row && row.length !== s.layers.length) problems.push({ field: `sensitivity.drop.${k}`, message: `expected ${s.layers.length} entries, one per layer, got ${row.length}` });
    }
  }
  const imp = p.layer_importance;
  if (imp && s && imp.layers.length !== s.layers.length) problems.push({ field: 'layer_importance.layers', message: `expected ${s.layers.length} entries (the sensitivity's layers), got ${imp.layers.length}` });
  if (problems.length) throw new ConfigError(file, problems);
  return { ...p, file, modelDir: p.model === undefined ? undefined : path.resolve(path.dirname(file), p.model) };
}

/**
 * Checks what the profile says of tier A against the model it serves: experts_by_layer needs one
 * entry per layer, each from the model's top-k (a token's experts must fit together) to its
 * experts per layer. Throws a ConfigError naming the file and device.experts_by_layer.
 */
export function checkProfileForModel(profile: Profile, model: { numLayers: number; numExperts: number; topK: number }): void {
  const sizes = profile.device.experts_by_layer;
  if (sizes === undefined) return;
  const field = 'device.experts_by_layer';
  const problems: { field: string; message: string }[] = [];
  if (sizes.length !== model.numLayers) problems.push({ field, message: `expected ${model.numLayers} entries, one per layer of the model, got ${sizes.length}` });
  sizes.forEach((n, l) => {
    if (n < model.topK) problems.push({ field: `${field}.${l}`, message: `expected at least the model's top-k (${model.topK}): a token's experts must fit together, got ${n}` });
    else if (n > model.numExperts) problems.push({ field: `${field}.${l}`, message: `expected at most the model's ${model.numExperts} experts per layer, got ${n}` });
  });
  if (problems.length) throw new ConfigError(profile.file, problems);
}
