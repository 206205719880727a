// expert_cpu: the CPU expert engine. One MoE layer's routed experts, SwiGLU, computed in native
// code on every core: for each token, Σ_j weight_j · down(silu(gate·x) ⊙ up·x) over its chosen
// experts. A matrix is either dense f32 (decoded weights, as the device cache keeps them) or a
// compressed stream read in place: the fused path decodes each 32-value block inside the dot
// product and never writes the weights anywhere, so a token reads the compressed bytes instead of
// f32 weights (how quantized CPU inference wins on memory bandwidth).
//
// Matrices are [rows, cols] row-major, the checkpoints' [out, in]: gate and up [ff, d], down
// [d, ff]. The fused path needs cols % 32 == 0, so every codec block lies inside one row.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <functional>
#include <vector>

#include "expert_kernels.h"
#include "stream_format.h"

namespace eb {

// A compressed matrix made ready for the fused path: the validated stream at rung k and, per
// row, where its first block's words start in each rung and its first escape. Built once per
// stream (a pass over the rate bytes, 1 byte per 32 values); the stream's buffers must outlive it.
struct FusedMatrix {
  StreamView view;
  int k = 0;
  int rows = 0, cols = 0;
  std::vector<uint64_t> row_word;   // [row * (k + 1) + j]: byte offset within rung j's block words
  std::vector<uint64_t> row_escape; // [row]: index of the first escape at or after the row's start
  uint64_t bytes = 0;               // bytes a full pass reads: rate bytes, escapes, rungs 0..k's words
  FusedView v{};                    // the above as the kernels read it

  // Points v at this object's arrays (after construction and after every copy or move).
  void sync_view();
  FusedMatrix() = default;
  FusedMatrix(const FusedMatrix& o) : view(o.view), k(o.k), rows(o.rows), cols(o.cols), row_word(o.row_word), row_escape(o.row_escape), bytes(o.bytes) { sync_view(); }
  FusedMatrix& operator=(const FusedMatrix&) = delete;
};

// Throws CodecError: BAD_RUNGS (k not available), BAD_SHAPE (rows · cols ≠ count, cols % 32 ≠ 0).
FusedMatrix prepare_fused(const StreamView& s, int k, int rows, int cols);

// A rung held as symbols, 8 or 4 bits a value (SymbolSrc and Symbol4Src in expert_kernels.h): a
// fused matrix's weights, each from its symbol and the rung's dropped planes p and bound, or a
// patch (its f32 value, kept aside per row). No decode in the product, against the fused path's
// fewer bytes and a decode per block; 4 bits where the rung is coarse enough, a byte where not.
struct SymbolMatrix {
  int rows = 0, cols = 0, p = 0, bits = 8;
  bool int8_x = false;               // products quantize the activations to 8 bits (IntSymbols)
  float ebf = 0;
  std::vector<int8_t> q;             // [rows * cols] at 8 bits, [rows * cols / 2] nibbles at 4; 0 where a patch is
  std::vector<uint32_t> row_patch;   // [rows + 1]: each row's first patch
  // A patch's column and weight, then EK_PATCH_LANES zeros each: the integer product loads a row's
  // patches that many at a time, past its last one (ek_int_patch_sums).
  std::vector<uint32_t> patch_col;
  std::vector<float> patch_value;
  size_t patches() const { return row_patch.empty() ? 0 : row_patch.back(); }
  size_t bytes() const { return q.size() + 4 * row_patch.size() + 8 * patches(); }
  SymbolSrc src() const { return SymbolSrc{q.data(), row_patch.data(), patch_col.data(), patch_value.data(), cols, p, ebf}; }
  Symbol4Src src4() const {
    return Symbol4Src{(const uint8_t*)q.data(), row_patch.data(), patch_col.data(), patch_value.data(), cols, Symbol4Src::weights_table(p, ebf)};
  }
  IntSymbols ints() const {
    const bool two = bits == 4 && p > 0;
    IntSymbols m{(const uint8_t*)q.data(), row_patch.data(), patch_col.data(), patch_value.data(), cols, bits, p, ebf,
                 two ? 1.0f : 2.0f, bits == 8 ? -256.0f : two ? 1.0f - 15.0f * (float)(1 << p) : -16.0f, {}, {}};
    const v16f table = Symbol4Src::weights_table(p, ebf);
    if (bits == 4) memcpy(m.table, &table, sizeof m.table);
    if (two && p <= 3)
      for (int u = 0; u < 16; u++) m.ints[u] = (uint8_t)((u << (p + 1)) - 2 * (u >> 3));
    return m;
  }
  // Whether the integer product can take this form: 8 bits at p = 0, 4 bits up to p = 14.
  bool int8_x_possible() const { return bits == 8 ? p == 0 : p <= 14; }
};

// The symbols of a fused matrix's weights (its rung's p, its stream's bound), `bits` 8 or 4 a
// value, checked bit for bit against them, with patches for the values no symbol gives. Returns
// false, and leaves `out` unspecified, when patches would exceed max_patch_share of the values (a
// rung too fine for that many bits). With int8_x its products take the integer path where the
// form allows (out.int8_x says whether it does).
bool symbols_of(const FusedMatrix& f, double max_patch_share, int bits, bool int8_x, SymbolMatrix& out);

// Which integer dot product the int8-activation path uses on this CPU: "vnni" or "generic".
const char* int_dot();
// Picks it (false: generic); false when VNNI was asked for and the CPU lacks it.
bool set_int_dot(bool vnni);

// Row r of a symbol matrix into `row` (cols floats): the weights its product multiplies with.
void decode_symbol_row(const SymbolMatrix& m, int r, float* row);

// One matrix of an expert: dense f32 weights, dense bf16 weights (widened in registers; rows of
// whole 32-value blocks), symbols, or a prepared compressed one.
struct MatrixRef {
  const float* dense = nullptr;
  const FusedMatrix* fused = nullptr;
  const uint16_t* bf16 = nullptr;
  const SymbolMatrix* symbols = nullptr;
};

struct ExpertWeights {
  MatrixRef gate, up, down;
};

// One layer call. Slot s = t·k + j is token t's j-th choice: slot_expert[s] indexes `experts`,
// slot_weight[s] is the router's weight. out is [T, d] and is overwritten.
struct LayerCall {
  int d = 0, ff = 0, T = 0, k = 0;
  const float* hidden = nullptr;
  const int32_t* slot_expert = nullptr;
  const float* slot_weight = nullptr;
  const ExpertWeights* experts = nullptr;  // [num_experts], the caller's
  int num_experts = 0;
  float* out = nullptr;
  int threads = 1;
};

// Throws std::invalid_argument on a slot that names no expert or a matrix missing.
void expert_layer(const LayerCall& call);

// Row r of a fused matrix into `row` (cols floats): the weights the fused product multiplies with.
void decode_fused_row(const FusedMatrix& f, int r, float* row);

// Which block decoder the fused path uses on this CPU: "gfni" or "plane loop".
const char* fused_decoder();
// Picks the decoder (false: the plane loop); false when GFNI was asked for and the CPU lacks it.
bool set_fused_decoder(bool gfni);

// y[t·ldy + r] = Σ_c M[r, c] · x[t·ldx + c] for rows [r0, r1) and tokens t < n: the product every
// path shares, exposed for the engine's tests and benchmark.
// xq: the tokens quantized for the integer product (an int8-activation symbol matrix), when the
// caller has them for several calls; null quantizes them here.
void matrix_rows(const MatrixRef& m, int cols, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy, const QuantX* xq = nullptr);

// All `rows` rows, split over the engine's pool when the product is big enough to pay for it.
void matrix_rows_parallel(const MatrixRef& m, int rows, int cols, const float* x, int ldx, int n, float* y, int ldy, int threads);

// Work that reads at least this many bytes is worth a helper even when its arithmetic is small: a
// memory-bound product of few tokens streams faster from two cores (measured on OLMoE's 2048 × 2048
// attention projections as 8-bit symbols, 4 MiB each, 64 a token: the native time of a token went
// from 21.3 to 19.6 ms). Far above the ~50 µs a helper's wake costs.
constexpr size_t kParallelBytes = 2 << 20;

// fn(task) for task in [0, tasks) on the engine's pool, the caller among up to `threads` threads
// (1: the caller alone).
void run_tasks(int tasks, int threads, const std::function<void(int)>& fn);

}  // namespace eb
