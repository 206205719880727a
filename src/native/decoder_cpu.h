// decoder_cpu: a MoE transformer's forward step in native code, layer by layer, for a batch of
// sequences. The TensorFlow.js model (src/model/transformer.ts) is the reference and the path for
// every architecture; this one covers decoder layers of RMSNorm → GQA self-attention with rotary
// positions (optional q/k/v biases; optional query/key RMSNorms, over the whole projection as
// OLMoE's or per head as Qwen3-MoE's) → RMSNorm → top-k router → routed SwiGLU experts, which is
// Mixtral's layer and, with the norms, OLMoE's and Qwen3-MoE's. Why native: at the embedded model's size a decode step is ~100 small tensor ops
// per layer, and their dispatch costs ten times the arithmetic.
//
// The routed experts are not computed here: a step stops after each layer's router, the caller
// (src/model/native-forward.ts) hands the layer's hidden states and routing to its ExpertEngine —
// the offload engine fetching through the device cache, or the CPU engine's resident experts — and
// passes the experts' output into the next layer's call. So one forward serves every engine.
//
// A step holds B sequences ("segments"), each with its own new tokens, positions and KV cache; the
// projections, norms and router run once over all T tokens of the step (one product, every
// sequence's rows), attention per segment over its own cache. A token's results do not depend on
// which other tokens share its step: every product computes each token's row on its own.
//
// Shapes: T = tokens of the step, d hidden, H query heads, KV key/value heads, hd head dim,
// E experts, K experts per token, V vocabulary. Weights are f32 in checkpoint layout ([out, in]
// row-major); a KV cache is the caller's (src/model/kv-cache.ts: per layer [maxPositions, KV·hd]),
// written in place.
#pragma once
#include <stdint.h>

#include <vector>

#include "expert_cpu.h"

namespace eb {

// The projections, routers and LM head are MatrixRefs: f32, a bf16 checkpoint's own bits (read by
// the bf16 product: the same results at half the bytes), or symbols at a tight per-tensor bound
// (src/model/native-forward.ts: a byte a value, and the integer product where asked).
struct DecoderLayer {
  const float *input_norm, *post_norm;
  MatrixRef wq, wk, wv, wo;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;
  // Query/key RMSNorms after the projections (and biases), before the rotation: [H·hd] and
  // [KV·hd] over each token's whole projection (QkNorm::full), or [hd] over each head (::head).
  const float *q_norm = nullptr, *k_norm = nullptr;
  MatrixRef router;  // [E, d]
};

enum class QkNorm { none, full, head };

struct DecoderModel {
  int d = 0, H = 0, KV = 0, hd = 0, V = 0, E = 0, top_k = 0, max_pos = 0;
  float eps = 1e-5f;
  bool norm_topk = true;
  QkNorm qk_norm = QkNorm::none;
  MatrixRef embed;                 // [V, d]: f32, or bf16 bits widened row by row at lookup
  const float* norm = nullptr;     // [d]
  MatrixRef lm_head;               // [V, d]
  const float *cos = nullptr, *sin = nullptr;  // [max_pos, hd]
  std::vector<DecoderLayer> layers;
};

// One sequence of a step: tokens [first, first + count) of the step at positions pos0.., its cache.
struct Segment {
  int first = 0, count = 0, pos0 = 0;
  bool all_logits = false;           // logits of every new position, not only the last
  std::vector<float*> keys, values;  // per layer
};

// A step under way. The caller's arrays (hidden, ids, weights, predicted) are written by each
// layer call and read by the caller between calls.
struct Step {
  int T = 0;
  std::vector<Segment> segs;
  std::vector<float> x;  // [T, d] the residual stream
  float* hidden = nullptr;      // [T, d] layer l's post-attention norm: what its experts take
  int32_t* ids = nullptr;       // [T, K] layer l's routing
  float* weights = nullptr;     // [T, K]
  int32_t* predicted = nullptr; // [T, K] the next layer's router on the current residual stream
  int threads = 1;
  double seconds = 0;  // time spent in this step's calls
};

// Checks the segments against the model (tokens in the vocabulary, positions inside the context,
// one cache per layer) and starts the step: embeddings, and layer 0's predicted routing.
// Throws std::invalid_argument naming what is wrong, before anything is written.
void step_begin(const DecoderModel& m, Step& s, const int32_t* tokens);

// x += moe (the previous layer's experts, [T, d]; null for layer 0), then layer l's attention
// (writing the segments' caches at their positions), post-attention norm into hidden, and the
// router into ids/weights; predicted gets layer l + 1's routing of the residual stream (when
// there is a layer l + 1).
void step_layer(const DecoderModel& m, Step& s, int l, const float* moe);

// x += moe (the last layer's experts), then the final norm and LM head: logits of each segment's
// last position, or of all its positions when it asked, in segment order into `logits`.
void step_logits(const DecoderModel& m, Step& s, const float* moe, float* logits);

// Rows of logits step_logits writes.
int step_logit_rows(const Step& s);

// Multiply-adds of one layer call (projections, router and attention): callers run small calls
// on their own thread rather than hand them to a worker.
double step_layer_macs(const DecoderModel& m, const Step& s);

}  // namespace eb
