/**
 * The model shapes `ebserve synth` can make: each one's config.json exactly as the real model
 * publishes it on the Hugging Face hub (same keys, same values, same order), so a synthetic folder
 * differs from the real one only in its weights and its tokenizer. Sources, read for this file:
 *   olmoe-1b-7b    allenai/OLMoE-1B-7B-0924's config.json (the -Instruct copy, same architecture
 *                  fields; transformers 4.45.0.dev0): 16 layers, 64 experts, top-8, d 2048
 *   qwen3-30b-a3b  Qwen/Qwen3-30B-A3B's config.json (transformers 4.51.0): 48 layers, 128 experts,
 *                  top-8, d 2048, head_dim 128, 32 query / 4 KV heads
 *   mixtral-8x7b   mistralai/Mixtral-8x7B-v0.1's config.json (transformers 4.36.0.dev0): 32 layers,
 *                  8 experts, top-2, d 4096, 32 query / 8 KV heads
 * The totals these imply (6.92 B, 30.5 B, 46.7 B parameters) are the published ones; the tests
 * check that against the tensor list.
 *
 * `initializer_range` is the σ of every weight: transformers' _init_weights draws Linear and
 * Embedding weights from N(0, initializer_range) and sets RMSNorm weights to 1.
 *
 * @example
 * synthConfig('olmoe-1b-7b', { layers: 2 })  // the real config with num_hidden_layers: 2
 */

/** The shapes synth knows, by the name the command line takes. */
export const SHAPES = ['olmoe-1b-7b', 'qwen3-30b-a3b', 'mixtral-8x7b'] as const;
export type ShapeName = (typeof SHAPES)[number];

/** A config.json as written: plain JSON values, key order kept. */
export type ConfigJson = Record<string, unknown>;

const REAL_CONFIGS: Record<ShapeName, ConfigJson> = {
  'olmoe-1b-7b': {
    architectures: ['OlmoeForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    clip_qkv: null,
    eos_token_id: 50279,
    hidden_act: 'silu',
    hidden_size: 2048,
    initializer_range: 0.02,
    intermediate_size: 1024,
    max_position_embeddings: 4096,
    model_type: 'olmoe',
    norm_topk_prob: false,
    num_attention_heads: 16,
    num_experts: 64,
    num_experts_per_tok: 8,
    num_hidden_layers: 16,
    num_key_value_heads: 16,
    output_router_logits: false,
    pad_token_id: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: null,
    rope_theta: 10000.0,
    router_aux_loss_coef: 0.01,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.45.0.dev0',
    use_cache: true,
    vocab_size: 50304,
  },
  'qwen3-30b-a3b': {
    architectures: ['Qwen3MoeForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 151643,
    decoder_sparse_step: 1,
    eos_token_id: 151645,
    head_dim: 128,
    hidden_act: 'silu',
    hidden_size: 2048,
    initializer_range: 0.02,
    intermediate_size: 6144,
    max_position_embeddings: 40960,
    max_window_layers: 48,
    mlp_only_layers: [],
    model_type: 'qwen3_moe',
    moe_intermediate_size: 768,
    norm_topk_prob: true,
    num_attention_heads: 32,
    num_experts: 128,
    num_experts_per_tok: 8,
    num_hidden_layers: 48,
    num_key_value_heads: 4,
    output_router_logits: false,
    rms_norm_eps: 1e-6,
    rope_scaling: null,
    rope_theta: 1000000.0,
    router_aux_loss_coef: 0.001,
    sliding_window: null,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.51.0',
    use_cache: true,
    use_sliding_window: false,
    vocab_size: 151936,
  },
  'mixtral-8x7b': {
    architectures: ['MixtralForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: 4096,
    initializer_range: 0.02,
    intermediate_size: 14336,
    max_position_embeddings: 32768,
    model_type: 'mixtral',
    num_attention_heads: 32,
    num_experts_per_tok: 2,
    num_hidden_layers: 32,
    num_key_value_heads: 8,
    num_local_experts: 8,
    output_router_logits: false,
    rms_norm_eps: 1e-5,
    rope_theta: 1000000.0,
    router_aux_loss_coef: 0.02,
    sliding_window: null,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.36.0.dev0',
    use_cache: true,
    vocab_size: 32000,
  },
};

/** The real model's depth (num_hidden_layers), the most --layers may ask for. */
export function shapeDepth(shape: ShapeName): number {
  return REAL_CONFIGS[shape].num_hidden_layers as number;
}

export interface SynthConfigOptions {
  /** Cut the depth to this many layers (default: the real depth). */
  layers?: number;
  /**
   * TEST ONLY: divide every width (hidden, expert and dense intermediate sizes, head_dim, vocab)
   * by this factor, keeping depth, heads, experts and top-k, so the tests can run the whole writer
   * and calibration in seconds. A folder made with it is not the named model's shape.
   */
  testShrink?: number;
}

/**
 * The config.json of `shape`: the real one, with num_hidden_layers cut to `layers` (and for
 * Qwen3's max_window_layers, which counts layers, cut likewise).
 */
export function synthConfig(shape: ShapeName, opts: SynthConfigOptions = {}): ConfigJson {
  const real = REAL_CONFIGS[shape];
  const out: ConfigJson = structuredClone(real);
  const layers = opts.layers ?? (real.num_hidden_layers as number);
  out.num_hidden_layers = layers;
  if ('max_window_layers' in out) out.max_window_layers = Math.min(out.max_window_layers as number, layers);
  const f = opts.testShrink ?? 1;
  if (f !== 1) {
    for (const key of ['hidden_size', 'intermediate_size', 'moe_intermediate_size', 'head_dim', 'vocab_size']) {
      if (typeof out[key] !== 'number') continue;
      const v = (out[key] as number) / f;
      if (!Number.isInteger(v)) throw new RangeError(`test shrink ${f} does not divide ${key} (${String(out[key])})`);
      out[key] = v;
    }
    // Token ids named by the config must stay inside the shrunk vocabulary.
    for (const key of ['bos_token_id', 'eos_token_id', 'pad_token_id']) {
      if (typeof out[key] === 'number') out[key] = Math.min(out[key] as number, (out.vocab_size as number) - 1);
    }
  }
  return out;
}

/** The σ every linear and embedding weight is drawn with (the config's initializer_range). */
export function initStd(config: ConfigJson): number {
  return config.initializer_range as number;
}
