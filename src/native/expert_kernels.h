// expert_kernels.h — the inner products of the CPU expert engine, written once and compiled in two
// translation units: expert_cpu.cc (for AVX-512, AVX2 and the baseline, picked at load time) and
// expert_cpu_gfni.cc (for CPUs with GFNI and AVX-512 VBMI, whose bit-matrix instructions turn a
// block's bit-planes into its magnitudes in a few instructions instead of a loop over planes).
//
// Everything here has internal linkage and uses no C++ library templates: the GFNI unit is built
// under `#pragma GCC target`, and a library function instantiated there could be the copy the
// linker keeps for the whole addon, with instructions an older CPU lacks.
//
// The fused path rebuilds each weight with eb_reconstruct's arithmetic (src/codec/FORMAT.md), so
// its weights are bit for bit the decoder's, and both paths sum products in the same order: a
// fused product equals the dense product of the decoded matrix exactly (the tests check bits).
#pragma once
#include <stdint.h>
#include <string.h>

#include "../../cuda/eb_block.cuh"

#define EB_AI inline __attribute__((always_inline))
// Vector values only cross always_inline calls, so GCC's note about 64-byte vector ABIs is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace eb {

// A prepared compressed matrix as plain pointers (FusedMatrix in expert_cpu.h owns the arrays).
struct FusedView {
  const uint8_t* rung[EB_MAX_RUNGS];  // each rung's block words (rung 0: after rates and escapes)
  const uint8_t* rates;
  const uint8_t* escapes;
  uint64_t escape_count;
  const uint64_t* row_word;    // [row * (k + 1) + j]
  const uint64_t* row_escape;  // [row]
  uint32_t words[EB_MAX_RATE + 1][EB_MAX_RUNGS];  // [rate][j]: bytes a block of that rate has in rung j
  uint8_t cut[EB_MAX_RUNGS];
  int k, rows, cols;
  float ebf;
};

// words[r][j] for rungs 0..k of a ladder `cut`.
inline void ek_block_words(const uint8_t* cut, int k, uint32_t (*words)[EB_MAX_RUNGS]) {
  for (int r = 0; r <= EB_MAX_RATE; r++)
    for (int j = 0; j <= k; j++) words[r][j] = 4 * eb_rung_words(r, j, cut);
}

namespace {

// 16 lanes: one AVX-512 register, two AVX2 ones, four SSE ones; a block of 32 values is two.
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));

EB_AI v16f ek_loadf(const float* p) {
  v16f v;
  memcpy(&v, p, sizeof v);
  return v;
}
EB_AI uint32_t ek_u32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

// The lanes' sum as a fixed tree (halves added pairwise), the same for every path, so equal
// weights give equal bits; a tree is a few shuffles, where a lane-by-lane sum costs more than a
// whole short row's products.
EB_AI float ek_hsum(v16f a, v16f b) {
  v16f s = a + b;
  v8f s8 = __builtin_shufflevector(s, s, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(s, s, 8, 9, 10, 11, 12, 13, 14, 15);
  v4f s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// Weights straight from a dense f32 row.
struct DenseSrc {
  const float* m;
  int cols;
  const float* row;
  EB_AI void begin_row(int r) { row = m + (uint64_t)r * cols; }
  EB_AI void block(int b, v16f& w0, v16f& w1) {
    w0 = ek_loadf(row + 32 * b);
    w1 = ek_loadf(row + 32 * b + 16);
  }
};

// bf16 weights widened in registers (exact: a bf16 is the top half of an f32), so an expert kept
// in its checkpoint's bf16 multiplies as its f32 would, bit for bit, from half the bytes. Rows of
// whole 32-value blocks only (the caller checks).
struct Bf16Src {
  const uint16_t* m;
  int cols;
  const uint16_t* row;
  EB_AI void begin_row(int r) { row = m + (uint64_t)r * cols; }
  EB_AI void block(int b, v16f& w0, v16f& w1) {
    typedef uint16_t v16h __attribute__((vector_size(32)));
    v16h h0, h1;
    memcpy(&h0, row + 32 * b, sizeof h0);
    memcpy(&h1, row + 32 * b + 16, sizeof h1);
    v16u u0 = __builtin_convertvector(h0, v16u) << 16, u1 = __builtin_convertvector(h1, v16u) << 16;
    memcpy(&w0, &u0, sizeof w0);
    memcpy(&w1, &u1, sizeof w1);
  }
};

// A block's 32 weights from its words, the generic way: the magnitude bits one plane at a time
// (m = (m << 1) | bit), then eb_reconstruct's arithmetic on 32 lanes. Constructed once per
// matrix (the ladder's constants), called per block of rate r > 0; in[j] points at the block's
// first word in rung j.
struct PlaneLoop {
  const uint8_t* cut;
  int k, p;
  uint32_t centre;
  float ebf;
  v16u lane_lo, lane_hi;
  PlaneLoop(const FusedView& f) : cut(f.cut), k(f.k), p(f.cut[f.k]), centre((1u << f.cut[f.k]) - 1u), ebf(f.ebf) {
    for (int i = 0; i < 16; i++) {
      lane_lo[i] = (uint32_t)i;
      lane_hi[i] = (uint32_t)(i + 16);
    }
  }
  EB_AI void weights(const uint8_t* const* in, int r, v16f& w0, v16f& w1) const {
    v16u m0 = v16u{}, m1 = v16u{};
    for (int j = 0; j <= k; j++) {
      const uint8_t* c = in[j] + (j == 0 ? 4 : 0);
      int hi = j == 0 ? r : (r < cut[j - 1] ? r : cut[j - 1]);
      for (int level = hi - 1; level >= cut[j]; level--, c += 4) {
        v16u w = v16u{} + ek_u32(c);
        m0 = (m0 << 1) | ((w >> lane_lo) & 1u);
        m1 = (m1 << 1) | ((w >> lane_hi) & 1u);
      }
    }
    // m now holds the bits of levels hi-1 .. p: exactly m >> p.
    v16i n0 = (v16i)((m0 << (p + 1)) + centre), n1 = (v16i)((m1 << (p + 1)) + centre);
    v16f v0 = __builtin_convertvector(n0, v16f) * ebf, v1 = __builtin_convertvector(n1, v16f) * ebf;
    v16u sign = v16u{} + ek_u32(in[0]);
    w0 = (v16f)((v16u)v0 ^ (((sign >> lane_lo) & 1u) << 31));
    w1 = (v16f)((v16u)v1 ^ (((sign >> lane_hi) & 1u) << 31));
  }
};

// Weights decoded from a compressed row, one block at a time into two registers, never stored.
// Planes turns a block's words into its weights (PlaneLoop here, a bit-matrix transpose in the
// GFNI unit); escapes are patched in from the stream's escape list. Single: the stream is read
// at rung 0 only (K = 1 rung pointer), which lets the compiler keep everything in registers.
template <class Planes, bool Single>
struct FusedSrc {
  static constexpr int K = Single ? 1 : EB_MAX_RUNGS;
  const FusedView& f;
  const Planes planes;
  const uint8_t* in[K];
  const uint8_t* rates = nullptr;
  uint64_t lo = 0, esc = 0, next_esc = 0;  // the block's first value; the next escape and its value index
  const float* row = nullptr;              // (dense rows only)

  explicit FusedSrc(const FusedView& fv) : f(fv), planes(fv) {}
  EB_AI int rungs() const { return Single ? 1 : f.k + 1; }
  EB_AI void find_escape() { next_esc = esc < f.escape_count ? ek_u32(f.escapes + 8 * esc) : ~(uint64_t)0; }
  EB_AI void begin_row(int r) {
    for (int j = 0; j < rungs(); j++) in[j] = f.rung[j] + f.row_word[(uint64_t)r * rungs() + j];
    rates = f.rates + (uint64_t)r * (f.cols / EB_BLOCK);
    lo = (uint64_t)r * f.cols;
    esc = f.row_escape[r];
    find_escape();
  }
  EB_AI void block(int b, v16f& w0, v16f& w1) {
    int r = rates[b];
    if (r == 0) {
      w0 = v16f{};
      w1 = v16f{};
    } else {
      planes.weights(in, r, w0, w1);
      for (int j = 0; j < rungs(); j++) in[j] += f.words[r][j];
    }
    // Escapes of this block (rare): the exact values over the reconstruction.
    uint64_t hi = lo + EB_BLOCK;
    if (next_esc < hi) {
      alignas(64) float v[32];
      memcpy(v, &w0, 64);
      memcpy(v + 16, &w1, 64);
      for (; next_esc < hi; esc++, find_escape()) memcpy(&v[next_esc - lo], f.escapes + 8 * esc + 4, 4);
      w0 = ek_loadf(v);
      w1 = ek_loadf(v + 16);
    }
    lo = hi;
  }
};

// y[t·ldy + r] for rows [r0, r1) and NT tokens: per row, 32-lane partial sums over the row's
// blocks, then the lanes' fixed-order sum. A dense row's last cols % 32 values (the fused path
// has none) go into the first lanes one by one.
template <int NT, class Src>
EB_AI void ek_rows(Src& src, int cols, int r0, int r1, const float* x, int ldx, float* y, int ldy) {
  const int full = cols / 32, tail = cols % 32;
  for (int r = r0; r < r1; r++) {
    src.begin_row(r);
    v16f a0[NT], a1[NT];
    for (int t = 0; t < NT; t++) a0[t] = a1[t] = v16f{};
    for (int b = 0; b < full; b++) {
      v16f w0, w1;
      src.block(b, w0, w1);
      for (int t = 0; t < NT; t++) {
        const float* xt = x + (uint64_t)t * ldx + 32 * b;
        a0[t] += w0 * ek_loadf(xt);
        a1[t] += w1 * ek_loadf(xt + 16);
      }
    }
    if (tail)
      for (int t = 0; t < NT; t++)
        for (int i = 0; i < tail; i++) a0[t][i] += src.row[32 * full + i] * x[(uint64_t)t * ldx + 32 * full + i];
    for (int t = 0; t < NT; t++) y[(uint64_t)t * ldy + r] = ek_hsum(a0[t], a1[t]);
  }
}

// Tokens in tiles of up to 4: each block is loaded (or decoded) once per tile.
template <class Src>
EB_AI void ek_rows_tiled(Src& src, int cols, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy) {
  for (int t = 0; t < n; t += 4) {
    const float* xt = x + (uint64_t)t * ldx;
    float* yt = y + (uint64_t)t * ldy;
    switch (n - t >= 4 ? 4 : n - t) {
      case 4: ek_rows<4>(src, cols, r0, r1, xt, ldx, yt, ldy); break;
      case 3: ek_rows<3>(src, cols, r0, r1, xt, ldx, yt, ldy); break;
      case 2: ek_rows<2>(src, cols, r0, r1, xt, ldx, yt, ldy); break;
      default: ek_rows<1>(src, cols, r0, r1, xt, ldx, yt, ldy); break;
    }
  }
}

EB_AI void ek_dense_rows(const float* m, int cols, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy) {
  DenseSrc src{m, cols, nullptr};
  ek_rows_tiled(src, cols, r0, r1, x, ldx, n, y, ldy);
}

EB_AI void ek_bf16_rows(const uint16_t* m, int cols, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy) {
  Bf16Src src{m, cols, nullptr};
  ek_rows_tiled(src, cols, r0, r1, x, ldx, n, y, ldy);
}

template <class Src>
EB_AI void ek_decode_row(Src& src, int r, float* row) {
  src.begin_row(r);
  for (int b = 0; b < src.f.cols / 32; b++) {
    v16f w0, w1;
    src.block(b, w0, w1);
    memcpy(row + 32 * b, &w0, 64);
    memcpy(row + 32 * b + 16, &w1, 64);
  }
}

template <class Src>
EB_AI void ek_fused_src_rows(const FusedView& f, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy,
                             float* scratch) {
  Src src(f);
  if (n <= 4) {
    ek_rows_tiled(src, f.cols, r0, r1, x, ldx, n, y, ldy);
    return;
  }
  for (int r = r0; r < r1; r++) {
    ek_decode_row(src, r, scratch);
    ek_dense_rows(scratch, f.cols, 0, 1, x, ldx, n, y + r, ldy);
  }
}

// The fused product. Decode-sized tiles (n ≤ 4) decode each block once, into registers, for every
// token; prefill-sized ones decode a row once into `scratch` (cols floats, cache-resident) and
// multiply it as a dense row: the same values, so the same results.
template <class Planes>
EB_AI void ek_fused_rows(const FusedView& f, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy,
                         float* scratch) {
  if (f.k == 0) ek_fused_src_rows<FusedSrc<Planes, true>>(f, r0, r1, x, ldx, n, y, ldy, scratch);
  else ek_fused_src_rows<FusedSrc<Planes, false>>(f, r0, r1, x, ldx, n, y, ldy, scratch);
}

// Row r of the matrix into `row` (cols floats): the weights the fused product multiplies with.
template <class Planes>
EB_AI void ek_fused_decode_row(const FusedView& f, int r, float* row) {
  if (f.k == 0) {
    FusedSrc<Planes, true> src(f);
    ek_decode_row(src, r, row);
  } else {
    FusedSrc<Planes, false> src(f);
    ek_decode_row(src, r, row);
  }
}

}  // namespace
}  // namespace eb
