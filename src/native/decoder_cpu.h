// decoder_cpu: a whole forward pass of a MoE transformer in native code, for the CPU engine. The
// TensorFlow.js model (src/model/transformer.ts) is the reference and stays the path for every
// architecture; this one covers decoder layers of RMSNorm → GQA self-attention with rotary
// positions (optional q/k/v biases) → RMSNorm → top-k router → routed SwiGLU experts
// (expert_cpu.h, dense or fused), which is Mixtral's layer. Why: at the embedded model's size a
// decode step is ~100 small tensor ops per layer, and their dispatch costs ten times the
// arithmetic; here one call does a whole step on a worker thread.
//
// Weights are f32 in checkpoint layout ([out, in] row-major); the KV cache is the caller's
// (src/model/kv-cache.ts: per layer [maxPositions, kvHeads · headDim]), written in place.
#pragma once
#include <stdint.h>

#include <vector>

#include "expert_cpu.h"

namespace eb {

struct DecoderLayer {
  const float *input_norm, *post_norm;
  const float *wq, *wk, *wv, *wo;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;
  const float* router;                // [E, d]
  std::vector<ExpertWeights> experts;  // [E]
};

struct DecoderModel {
  int d = 0, H = 0, KV = 0, hd = 0, ff = 0, V = 0, E = 0, top_k = 0, max_pos = 0;
  float eps = 1e-5f;
  bool norm_topk = true;
  const float* embed = nullptr;    // [V, d]
  const float* norm = nullptr;     // [d]
  const float* lm_head = nullptr;  // [V, d]
  const float *cos = nullptr, *sin = nullptr;  // [max_pos, hd]
  std::vector<DecoderLayer> layers;
};

struct ForwardCall {
  const int32_t* tokens = nullptr;
  int T = 0;
  int pos0 = 0;  // positions already in the cache
  bool all_logits = false;
  std::vector<float*> keys, values;  // per layer, the cache's arrays
  float* logits = nullptr;           // [T or 1, V]
  int32_t* route_ids = nullptr;      // [layers, T, top_k]
  float* route_weights = nullptr;    // [layers, T, top_k]
  int threads = 1;
  // Out: seconds spent in the routed experts, and in everything else.
  double expert_seconds = 0, other_seconds = 0;
};

// Throws std::invalid_argument for a token outside the vocabulary or a context overflow.
void decoder_forward(const DecoderModel& m, ForwardCall& c);

}  // namespace eb
