/**
 * What the model runtime knows of a checkpoint, whatever its naming scheme: the normalised
 * configuration (from config.json) and the tensors, read lazily.
 */
import type { TensorDtype } from '../codec/halfs-array.js';

/** The architectures whose config.json and tensor names the loader reads. */
export type Architecture = 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'olmoe';

export interface ModelConfig {
  arch: Architecture;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Routed experts per layer, and how many each token uses. */
  numExperts: number;
  topK: number;
  /** Renormalise the top-k router weights to sum to 1 (Mixtral: always; Qwen/OLMoE: norm_topk_prob). */
  normTopkProb: boolean;
  /** Width of one routed expert's SwiGLU hidden layer. */
  expertFfnSize: number;
  /** Qwen2-MoE's shared expert (with its sigmoid gate), 0 when absent. */
  sharedExpertFfnSize: number;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositions: number;
  tieWordEmbeddings: boolean;
  /** Biases on q/k/v projections (Qwen2-MoE). */
  attentionBias: boolean;
  /** RMSNorm on queries and keys: 'head' per head over headDim (Qwen3), 'full' over the whole projection (OLMoE), or none. */
  qkNorm: 'none' | 'head' | 'full';
  /** Tokenizer: a tokenizer.json beside the checkpoint, or raw bytes (token id = byte). */
  tokenizer: 'bytes' | 'tokenizer.json';
  /** Token ids that end a generation when sampled (config.json's eos_token_id, one or a list; none: absent). */
  eosTokenIds?: number[];
}

/** The element types a checkpoint tensor may have. */
export type { TensorDtype };

/** One tensor of a checkpoint: its layout and where its bytes are. */
export interface TensorInfo {
  name: string;
  dtype: TensorDtype;
  shape: number[];
  file: string;
  /** Byte range within the file. */
  offset: number;
  byteLength: number;
}

/** Which matrix of a SwiGLU expert: gate (w1), up (w3), down (w2). */
export type ExpertMatrix = 'gate' | 'up' | 'down';
