/**
 * config.json → ModelConfig, for the four Hugging Face architectures the runtime implements
 * (model_type mixtral, qwen2_moe, qwen3_moe, olmoe). Field names and defaults follow the
 * transformers configuration classes; sizes have no default here (a config.json without them
 * is broken, not small). Anything the forward pass does not implement — another activation,
 * scaled rope, dense MLP layers among the MoE ones, biases on o_proj, clipped qkv — is refused
 * with an error naming the file and field rather than run wrong.
 *
 * Sliding-window attention equals full attention while the context fits in the window, so a
 * window narrower than max_position_embeddings becomes the context limit (maxPositions).
 *
 * @example
 * const c = readConfig('models/tiny');  // { arch: 'mixtral', hiddenSize: 256, … }
 */
import fs from 'node:fs';
import path from 'node:path';

import { CheckpointError } from './safetensors.js';
import type { Architecture, ModelConfig } from './types.js';

/** The model_type values readConfig accepts. */
export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'olmoe'];

/** Reads `<dir>/config.json` and, when it asks for one, checks `<dir>/tokenizer.json` exists. */
export function readConfig(dir: string): ModelConfig {
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CheckpointError('NO_CONFIG', `${file}: cannot read (${(e as Error).message})`, { file });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError('BAD_CONFIG', `${file}: not valid JSON (${(e as Error).message})`, { file });
  }
  const config = parseConfig(json, file);
  if (config.tokenizer === 'tokenizer.json' && !fs.existsSync(path.join(dir, 'tokenizer.json'))) {
    throw new CheckpointError('NO_TOKENIZER', `${path.join(dir, 'tokenizer.json')}: not found (a byte-level model says "ebserve_tokenizer": "bytes" in ${file})`, { file });
  }
  return config;
}

/** Normalises a parsed config.json (`file` is only for messages); does not touch the disk. */
export function parseConfig(json: unknown, file: string): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new CheckpointError('BAD_CONFIG', `${file}: not a JSON object`, { file });
  const f = new Fields(json as Record<string, unknown>, file);
  const arch = f.raw('model_type');
  if (typeof arch !== 'string' || !(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new CheckpointError('UNSUPPORTED_ARCH', `unsupported architecture ${String(arch)} in ${file} (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`, { file });
  }
  const a = arch as Architecture;

  const hiddenSize = f.int('hidden_size');
  const numHeads = f.int('num_attention_heads');
  const numKvHeads = f.int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads) f.fail('num_key_value_heads', `a divisor of num_attention_heads (${numHeads})`);
  // OLMoE's attention ignores head_dim; the others take it when given.
  const headDim = a !== 'olmoe' && f.raw('head_dim') != null ? f.int('head_dim') : hiddenSize / numHeads;
  if (!Number.isInteger(headDim)) f.fail('num_attention_heads', `a divisor of hidden_size (${hiddenSize}) when head_dim is not given`);

  f.check(f.str('hidden_act', 'silu') === 'silu', 'hidden_act', '"silu" (the only activation implemented)');
  const ropeTheta = ropeBase(f);
  let maxPositions = f.int('max_position_embeddings');
  const window = slidingWindow(f, a);
  if (window !== undefined) maxPositions = Math.min(maxPositions, window);

  let numExperts: number;
  let expertFfnSize: number;
  let sharedExpertFfnSize = 0;
  let normTopkProb: boolean;
  let attentionBias = false;
  if (a === 'mixtral') {
    numExperts = f.int('num_local_experts');
    expertFfnSize = f.int('intermediate_size');
    normTopkProb = true; // Mixtral always renormalises its top-k weights
  } else {
    numExperts = f.int('num_experts');
    expertFfnSize = f.int(a === 'olmoe' ? 'intermediate_size' : 'moe_intermediate_size');
    normTopkProb = f.bool('norm_topk_prob', false);
    if (a !== 'olmoe') everyLayerSparse(f);
    if (a === 'qwen2_moe') {
      sharedExpertFfnSize = f.int('shared_expert_intermediate_size');
      attentionBias = f.bool('qkv_bias', true);
    } else {
      // Qwen3-MoE's and OLMoE's attention_bias also puts a bias on o_proj, which is not implemented.
      f.check(!f.bool('attention_bias', false), 'attention_bias', 'false (biases on o_proj are not supported)');
    }
    if (a === 'olmoe') f.check(f.raw('clip_qkv') == null, 'clip_qkv', 'null (clipped q/k/v is not supported)');
  }
  const topK = f.int('num_experts_per_tok');
  if (topK > numExperts) f.fail('num_experts_per_tok', `at most the number of experts (${numExperts})`);

  const tok = f.raw('ebserve_tokenizer');
  if (tok !== undefined && tok !== 'bytes') f.fail('ebserve_tokenizer', '"bytes" or absent');
  const vocabSize = f.int('vocab_size');
  if (tok === 'bytes' && vocabSize < 256) f.fail('vocab_size', 'at least 256 for the byte tokenizer');

  const eos = f.raw('eos_token_id');
  const eosTokenIds = eos == null ? [] : Array.isArray(eos) ? eos : [eos];
  if (!eosTokenIds.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize)) f.fail('eos_token_id', `a token id or a list of token ids in 0..${vocabSize - 1}`);

  return {
    arch: a,
    vocabSize,
    hiddenSize,
    numLayers: f.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    numExperts,
    topK,
    normTopkProb,
    expertFfnSize,
    sharedExpertFfnSize,
    ropeTheta,
    rmsNormEps: f.num('rms_norm_eps'),
    maxPositions,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias,
    qkNorm: a === 'qwen3_moe' ? 'head' : a === 'olmoe' ? 'full' : 'none',
    tokenizer: tok === 'bytes' ? 'bytes' : 'tokenizer.json',
    ...(eosTokenIds.length ? { eosTokenIds: eosTokenIds as number[] } : {}),
  };
}

/** rope_theta, from the top level (transformers 4.x) or rope_parameters (5.x); only unscaled rope. */
function ropeBase(f: Fields): number {
  const params = f.raw('rope_parameters');
  const scaling = f.raw('rope_scaling');
  for (const [field, v] of [['rope_parameters', params], ['rope_scaling', scaling]] as const) {
    if (v == null) continue;
    if (typeof v !== 'object' || Array.isArray(v)) f.fail(field, 'an object or null');
    const r = v as Record<string, unknown>;
    const type = r.rope_type ?? r.type ?? 'default';
    if (type !== 'default') f.fail(field, `rope type "default" (got ${JSON.stringify(type)}; scaled rope is not supported)`);
  }
  const nested = (params as Record<string, unknown> | null | undefined)?.rope_theta;
  if (f.raw('rope_theta') === undefined && nested !== undefined) {
    if (typeof nested !== 'number' || !(nested > 0)) f.fail('rope_parameters.rope_theta', 'a positive number');
    return nested as number;
  }
  return f.num('rope_theta');
}

/** The attention window when one applies, else undefined. */
function slidingWindow(f: Fields, a: Architecture): number | undefined {
  if (a === 'olmoe') return undefined;
  if (a !== 'mixtral' && !f.bool('use_sliding_window', false)) return undefined;
  return f.raw('sliding_window') == null ? undefined : f.int('sliding_window');
}

/** Qwen-MoE can interleave dense MLP layers; only the all-MoE layout is supported. */
function everyLayerSparse(f: Fields): void {
  f.check(f.int('decoder_sparse_step', 1) === 1, 'decoder_sparse_step', '1 (every layer sparse; dense MLP layers are not supported)');
  const dense = f.raw('mlp_only_layers');
  f.check(dense == null || (Array.isArray(dense) && dense.length === 0), 'mlp_only_layers', '[] (every layer sparse; dense MLP layers are not supported)');
}

/** Typed reads of config fields, each failure naming the file, the field and what was expected. */
class Fields {
  constructor(
    private readonly json: Record<string, unknown>,
    private readonly file: string,
  ) {}

  raw(name: string): unknown {
    return this.json[name];
  }

  fail(name: string, expected: string): never {
    const got = name in this.json ? `got ${JSON.stringify(this.json[name])}` : 'missing';
    throw new CheckpointError('BAD_CONFIG', `${this.file}: field ${name} must be ${expected} (${got})`, { file: this.file });
  }

  check(ok: boolean, name: string, expected: string): void {
    if (!ok) this.fail(name, expected);
  }

  /** A positive integer; `dflt` when absent or null, required when there is no default. */
  int(name: string, dflt?: number): number {
    const v = this.json[name] ?? dflt;
    if (!Number.isSafeInteger(v) || (v as number) < 1) this.fail(name, 'a positive integer');
    return v as number;
  }

  /** A positive finite number, required. */
  num(name: string): number {
    const v = this.json[name];
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) this.fail(name, 'a positive number');
    return v;
  }

  bool(name: string, dflt: boolean): boolean {
    const v = this.json[name] ?? dflt;
    if (typeof v !== 'boolean') this.fail(name, 'true or false');
    return v;
  }

  str(name: string, dflt: string): string {
    const v = this.json[name] ?? dflt;
    if (typeof v !== 'string') this.fail(name, 'a string');
    return v;
  }
}
