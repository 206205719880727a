/**
 * `ebserve synth`'s work: a synthetic Hugging Face checkpoint folder of a real MoE's shape that
 * loads, serves and *routes* like the real model, for measuring ebserve at real scale without the
 * real weights. The folder:
 *   config.json                      the real model's config (shapes.ts), depth cut to --layers
 *   model.safetensors                one file when the checkpoint fits under the shard cap, else
 *   model-0000i-of-0000n.safetensors + model.safetensors.index.json (shards ≤ the cap, 2 GB default)
 *   tokenizer.json                   a byte-level BPE of exactly vocab_size tokens (tokenizer.ts)
 *   routing.json                     per layer: load entropy, reuse of the previous token's
 *                                    experts, and the calibration's parameters (calibrate.ts)
 *   canaries/text.jsonl              the embedded model's text canaries (plain text, no model's
 *                                    outputs), which the controller's canary runs need beside a model
 * Weights are bf16, N(0, initializer_range) per tensor from a stream seeded by (seed, tensor name),
 * norms at 1; written streaming (writer.ts). Then one forward pass of the model's own code
 * (loadModel: the native forward where it covers the architecture, else TensorFlow.js) over the
 * calibration tokens calibrates every router in order, and the calibrated routers are written over
 * the random ones in place.
 *
 * Everything is built in a hidden sibling folder and renamed to `out` only when complete, so a
 * failure or an interrupt (see removePartial) never leaves half a checkpoint under the name asked for.
 *
 * @example
 * const r = await synthesize({ shape: 'olmoe-1b-7b', layers: 2, seed: 0, out: '/tmp/olmoe-2' });
 */
import fs from 'node:fs';
import path from 'node:path';

import { progressBar, type ProgressBar } from '../../offload/progress.js';
import { initBackend } from '../backend.js';
import { parseConfig } from '../config.js';
import { KvCache } from '../kv-cache.js';
import { loadModel } from '../load.js';
import { denseTensorNames, expectedTensors, routerName } from '../names.js';
import { nativeForwardUnsupported } from '../native-forward.js';
import type { ModelConfig } from '../types.js';
import { CALIBRATION_TEXT_FILE, CalibratingEngine, calibrationText, TRAINED_LOGIT_SPREAD, type LayerCalibration } from './calibrate.js';
import { BF16_ONE, GaussianStream } from './random.js';
import { initStd, synthConfig, type ShapeName } from './shapes.js';
import { buildTokenizerJson } from './tokenizer.js';
import { isSharded, planShards, rewriteTensor, writeIndex, writeShards, type PlacedTensor, type ShardPlan, type TensorSpec } from './writer.js';

export { SHAPES, shapeDepth, synthConfig, type ShapeName } from './shapes.js';

/** Hugging Face's usual cap is 5 GB; ours is 2 GB (2·10⁹ bytes, under 2 GiB as well). */
export const DEFAULT_MAX_SHARD_BYTES = 2_000_000_000;
/** Tokens of calibration text by default: the 2,048 the load-balance criterion is stated over. */
export const DEFAULT_CALIBRATION_TOKENS = 2048;
/** The load entropy every layer must reach, as a share of log2(E). */
export const ENTROPY_FLOOR_SHARE = 0.95;
/**
 * The TensorFlow.js wasm heap is 4 GiB (measured here: 4,096 MB of tensors allocate, the next
 * 256 MB do not); the calibration's dense weights and activations must fit well inside it.
 */
const WASM_HEAP_BUDGET = 3.5 * 2 ** 30;

export interface SynthOptions {
  shape: ShapeName;
  /** Depth (default: the real model's). */
  layers?: number;
  /** Seed of every tensor's random stream (default 0). */
  seed?: number;
  /** Target share of a token's experts reused from the previous token (default: what calibration gives). */
  locality?: number;
  /** The folder to create: absent, or an empty folder. */
  out: string;
  maxShardBytes?: number;
  calibrationTokens?: number;
  /** TEST ONLY: divide every width by this factor (see SynthConfigOptions.testShrink). */
  testShrink?: number;
  /** Threads for the expert computations of the calibration pass (default: every core). */
  threads?: number;
  /** Where progress goes (default stderr). */
  progress?: NodeJS.WriteStream;
}

export interface SynthResult {
  out: string;
  config: ModelConfig;
  shards: string[];
  checkpointBytes: number;
  routing: RoutingReport;
  seconds: { write: number; calibrate: number };
}

/** routing.json. */
export interface RoutingReport {
  shape: ShapeName;
  num_hidden_layers: number;
  num_experts: number;
  num_experts_per_tok: number;
  seed: number;
  calibration: {
    tokens: number;
    text: string;
    forward: string;
    method: string;
    logit_spread: number;
    logit_spread_source: string;
    locality_target: number | null;
    locality_note: string;
    entropy_floor_bits: number;
  };
  layers: {
    layer: number;
    load_entropy_bits: number;
    load_entropy_share: number;
    reuse_prev: number;
    uncalibrated: { load_entropy_bits: number; reuse_prev: number };
    params: { common_direction_energy_share: number; locality_gamma: number; logit_spread: number; whitening_condition: number };
  }[];
  summary: { load_entropy_min_bits: number; reuse_prev_mean: number; entropy_floor_met: boolean };
  test_shrink?: number;
}

/** Every tensor of `config`'s checkpoint, in checkpoint order, with how its values are made. */
export function tensorSpecs(config: ModelConfig): TensorSpec[] {
  const names = denseTensorNames(config);
  const ones = new Set<string>([names.norm]);
  for (const L of names.layers) for (const n of [L.inputNorm, L.postNorm, L.qNorm, L.kNorm]) if (n) ones.add(n);
  return expectedTensors(config).map((t) => ({ name: t.name, shape: t.shape, init: ones.has(t.name) ? 'ones' : 'normal' }));
}

/** Why `out` cannot be the output folder, or null when it can (absent, or an empty folder). */
export function outProblem(out: string): string | null {
  let st: fs.Stats;
  try {
    st = fs.statSync(out);
  } catch {
    return fs.existsSync(path.dirname(path.resolve(out))) ? null : `its parent folder ${path.dirname(path.resolve(out))} does not exist`;
  }
  if (!st.isDirectory()) return `${out} exists and is not a folder`;
  if (fs.readdirSync(out).length) return `${out} exists and is not empty`;
  return null;
}

/** Bytes the TensorFlow.js model holds for the calibration pass: dense weights, and activations when tfjs runs the forward. */
export function calibrationTfjsBytes(c: ModelConfig, tokens: number): number {
  const d = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const perLayer = 2 * d + 2 * q * d + 2 * kv * d + c.numExperts * d + (c.qkNorm === 'none' ? 0 : q + kv);
  const dense = (c.vocabSize * d + c.numLayers * perLayer + d) * 4;
  // Attention scores, their softmax and the mask: [H, T, T] f32 about three times over.
  const activations = nativeForwardUnsupported(c) ? 3 * c.numHeads * tokens * tokens * 4 : 0;
  return dense + activations;
}

/** Folders being built by this process, removed by removePartial (an interrupt handler calls it). */
const building = new Set<string>();

/** Removes every half-built folder of this process (synchronous: safe in a signal handler). */
export function removePartial(): void {
  for (const dir of building) fs.rmSync(dir, { recursive: true, force: true });
  building.clear();
}

/** Builds the folder (see the file comment); throws with nothing left behind on any failure. */
export async function synthesize(opts: SynthOptions): Promise<SynthResult> {
  const out = path.resolve(opts.out);
  const problem = outProblem(out);
  if (problem) throw new Error(`--out: ${problem}`);
  const seed = opts.seed ?? 0;
  const tokens = opts.calibrationTokens ?? DEFAULT_CALIBRATION_TOKENS;
  const json = synthConfig(opts.shape, { layers: opts.layers, testShrink: opts.testShrink });
  const config = parseConfig(json, `${opts.shape} config.json`);
  if (tokens > config.maxPositions) throw new RangeError(`${tokens} calibration tokens exceed the model's ${config.maxPositions} positions`);
  const backend = await initBackend();
  const tfjsBytes = calibrationTfjsBytes(config, tokens);
  if (backend.name === 'wasm' && tfjsBytes > WASM_HEAP_BUDGET) {
    const perLayer = calibrationTfjsBytes({ ...config, numLayers: 2 }, tokens) - calibrationTfjsBytes({ ...config, numLayers: 1 }, tokens);
    const fit = Math.floor((WASM_HEAP_BUDGET - calibrationTfjsBytes({ ...config, numLayers: 0 }, tokens)) / perLayer);
    throw new RangeError(
      `--layers: calibrating ${config.numLayers} layers of ${opts.shape} needs ${(tfjsBytes / 2 ** 30).toFixed(1)} GiB in TensorFlow.js's wasm heap (budget ${(WASM_HEAP_BUDGET / 2 ** 30).toFixed(1)} GiB of its 4 GiB); at most ${Math.max(0, fit)} layers fit`,
    );
  }
  let plan: ShardPlan[];
  try {
    plan = planShards(tensorSpecs(config), opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES);
  } catch (e) {
    throw new RangeError(`--max-shard-bytes: ${(e as Error).message}`);
  }
  const text = calibrationText();
  const tokenizerJson = buildTokenizerJson(config.vocabSize, text);

  const partial = path.join(path.dirname(out), `.${path.basename(out)}.synth-${process.pid}`);
  fs.rmSync(partial, { recursive: true, force: true });
  fs.mkdirSync(partial);
  building.add(partial);
  try {
    const err = opts.progress ?? process.stderr;
    fs.writeFileSync(path.join(partial, 'tokenizer.json'), JSON.stringify(tokenizerJson));

    const t0 = performance.now();
    const sigma = initStd(json);
    let stream: { name: string; g: GaussianStream } | undefined;
    const bar = progressBar(`synth ${opts.shape}: writing`, err);
    await writeShards(partial, plan, (t, chunk, start) => {
      if (t.init === 'ones') return void chunk.fill(BF16_ONE);
      if (start === 0 || stream?.name !== t.name) stream = { name: t.name, g: new GaussianStream(seed, t.name, sigma) };
      stream.g.fillBf16(chunk);
    }, bar);
    if (isSharded(plan)) writeIndex(partial, plan);
    const checkpointBytes = plan.reduce((s, p) => s + p.bytes, 0);
    bar.done(`${plan.length} shard${plan.length === 1 ? '' : 's'}, ${(checkpointBytes / 1e9).toFixed(2)} GB`);
    const t1 = performance.now();

    // The calibration pass runs on a config whose context is the calibration tokens: the native
    // forward's KV cache must hold the whole context (Mixtral's 32,768 positions × 32 layers would
    // be 8.6 GB), and the context changes nothing else. The real config.json is written back after.
    fs.writeFileSync(path.join(partial, 'config.json'), `${JSON.stringify({ ...json, max_position_embeddings: tokens }, null, 2)}\n`);
    const layers = await calibrate(partial, { ...config, maxPositions: tokens }, plan, text, tokens, opts, err);
    fs.writeFileSync(path.join(partial, 'config.json'), `${JSON.stringify(json, null, 2)}\n`);
    const routing = routingReport(opts, config, seed, tokens, layers);
    fs.writeFileSync(path.join(partial, 'routing.json'), `${JSON.stringify(routing, null, 2)}\n`);
    copyCanaries(partial);
    const t2 = performance.now();

    if (fs.existsSync(out)) fs.rmdirSync(out); // an empty folder (checked above): replaced by the finished one
    fs.renameSync(partial, out);
    building.delete(partial);
    return {
      out,
      config,
      shards: plan.map((p) => p.file),
      checkpointBytes,
      routing,
      seconds: { write: (t1 - t0) / 1000, calibrate: (t2 - t1) / 1000 },
    };
  } catch (e) {
    fs.rmSync(partial, { recursive: true, force: true });
    building.delete(partial);
    throw e;
  }
}

/** The calibration pass over the first `tokens` tokens of the text; writes the new routers in place. */
async function calibrate(dir: string, config: ModelConfig, plan: ShardPlan[], text: string, tokens: number, opts: SynthOptions, err: NodeJS.WriteStream): Promise<LayerCalibration[]> {
  const bar: ProgressBar = progressBar(`synth ${opts.shape}: calibrating routers`, err);
  bar(0, config.numLayers, 'layers');
  let engine: CalibratingEngine | undefined;
  const floor = ENTROPY_FLOOR_SHARE * Math.log2(config.numExperts);
  const m = await loadModel(dir, {
    engine: (checkpoint) =>
      (engine = new CalibratingEngine(checkpoint, {
        spread: TRAINED_LOGIT_SPREAD,
        locality: opts.locality,
        entropyFloorBits: floor,
        threads: opts.threads,
        onLayer: (cal) => bar(cal.layer + 1, config.numLayers, `layers (layer ${cal.layer}: ${cal.stats.loadEntropyBits.toFixed(2)} bits, reuse ${cal.stats.reusePrev.toFixed(2)})`),
      })),
  });
  try {
    const ids = m.tokenizer.encode(text).slice(0, tokens);
    if (ids.length < tokens) throw new RangeError(`the calibration text ${CALIBRATION_TEXT_FILE} gives ${ids.length} tokens; ${tokens} asked`);
    const cache = new KvCache(config.numLayers, config.numKvHeads * config.headDim, tokens);
    await m.model.forward(ids, cache);
  } finally {
    m.dispose();
  }
  const layers = engine!.layers;
  const placed = new Map<string, PlacedTensor>(plan.flatMap((p) => p.tensors.map((t) => [t.name, t] as const)));
  for (const cal of layers) rewriteTensor(dir, placed.get(routerName(config, cal.layer))!, cal.bits);
  const min = Math.min(...layers.map((l) => l.stats.loadEntropyBits));
  bar.done(`load entropy ≥ ${min.toFixed(3)} bits of ${Math.log2(config.numExperts).toFixed(0)} in every layer`);
  if (min < floor) err.write(`synth ${opts.shape}: warning: a layer's load entropy (${min.toFixed(3)} bits) is below ${ENTROPY_FLOOR_SHARE}·log2(E) = ${floor.toFixed(3)} (see routing.json)\n`);
  return layers;
}

function routingReport(opts: SynthOptions, c: ModelConfig, seed: number, tokens: number, layers: LayerCalibration[]): RoutingReport {
  const floor = ENTROPY_FLOOR_SHARE * Math.log2(c.numExperts);
  const round = (x: number) => Number(x.toPrecision(6));
  const rows = layers.map((l) => ({
    layer: l.layer,
    load_entropy_bits: round(l.stats.loadEntropyBits),
    load_entropy_share: round(l.stats.loadEntropyBits / Math.log2(c.numExperts)),
    reuse_prev: round(l.stats.reusePrev),
    uncalibrated: { load_entropy_bits: round(l.before.loadEntropyBits), reuse_prev: round(l.before.reusePrev) },
    params: {
      common_direction_energy_share: round(l.params.commonDirectionEnergyShare),
      locality_gamma: round(l.params.localityGamma),
      logit_spread: round(l.params.logitSpread),
      whitening_condition: round(l.params.whiteningCondition),
    },
  }));
  const report: RoutingReport = {
    shape: opts.shape,
    num_hidden_layers: c.numLayers,
    num_experts: c.numExperts,
    num_experts_per_tok: c.topK,
    seed,
    calibration: {
      tokens,
      text: 'models/ebserve-moe-8x/canaries/text.jsonl: every item\'s prompt + continuation, one a line, tokenized by this folder\'s tokenizer.json',
      forward: nativeForwardUnsupported(c) ? `TensorFlow.js (${nativeForwardUnsupported(c)})` : 'native',
      method:
        'per layer on its own router input: remove the hidden states\' mean direction from the router rows, whiten the logits, ' +
        '(with a locality target) weight slow vs fast directions by exp(gamma * lag-1 autocorrelation), equalise each expert\'s logit std to logit_spread; bf16 as written',
      logit_spread: TRAINED_LOGIT_SPREAD,
      logit_spread_source: 'per-token std of router logits across experts in models/ebserve-moe-8x (trained) on the canary text, RMS over its layers',
      locality_target: opts.locality ?? null,
      locality_note:
        opts.locality === undefined
          ? 'no target: reuse_prev is what balanced routing of these hidden states gives (gamma = 0)'
          : 'gamma searched per layer for the reuse closest to the target with load entropy >= entropy_floor_bits',
      entropy_floor_bits: round(floor),
    },
    layers: rows,
    summary: {
      load_entropy_min_bits: round(Math.min(...layers.map((l) => l.stats.loadEntropyBits))),
      reuse_prev_mean: round(layers.reduce((s, l) => s + l.stats.reusePrev, 0) / layers.length),
      entropy_floor_met: layers.every((l) => l.stats.loadEntropyBits >= floor),
    },
  };
  if (opts.testShrink && opts.testShrink !== 1) report.test_shrink = opts.testShrink;
  return report;
}

/**
 * The embedded model's text canaries (prompt + continuation pairs of public-domain text; the
 * controller scores a plan by its agreement with the exact model on them) copied into `dir`.
 */
export function copyCanaries(dir: string): void {
  fs.mkdirSync(path.join(dir, 'canaries'), { recursive: true });
  fs.copyFileSync(CALIBRATION_TEXT_FILE, path.join(dir, 'canaries', 'text.jsonl'));
}
