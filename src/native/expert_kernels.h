// expert_kernels.h — the inner products of the CPU expert engine, written once and compiled in three
// translation units: expert_cpu.cc (for AVX-512, AVX2 and the baseline, picked at load time),
// expert_cpu_gfni.cc (for CPUs with GFNI and AVX-512 VBMI, whose bit-matrix instructions turn a
// block's bit-planes into its magnitudes in a few instructions instead of a loop over planes) and
// expert_cpu_vnni.cc (the integer product's dot for CPUs with AVX-512 VNNI).
// decoder_cpu.cc takes its vector helpers (e^x, the fixed-order lane sum) for attention.
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

// Values of a token's activations that share one scale in the integer product (eight 32-value
// blocks; llama.cpp's Q8_K groups as many).
constexpr int EK_XGROUP = 256;

// Patches the integer product loads at a time (one v8f; ek_int_patch_sums).
constexpr int EK_PATCH_LANES = 8;

// A token's activations as the integer product takes them (ek_quantize_x).
struct QuantX {
  const int8_t* q;  // [cols]
  const float* d;   // [ceil(cols / EK_XGROUP)]: each group's scale
  float sd;
};

// A symbol matrix as the integer product reads it (SymbolMatrix::ints in expert_cpu.h; the
// arithmetic under "The integer product" below).
struct IntSymbols {
  const uint8_t* q;
  const uint32_t* row_patch;
  const uint32_t* patch_col;
  const float* patch_value;
  int cols, bits, p;
  float ebf, k1, k0;
  float table[16];  // 4 bits: nibble u's weight (Symbol4Src's table)
  uint8_t ints[16];  // 4 bits at 0 < p ≤ 3: nibble u's integer 2^(p+1)·u − 2·(u >> 3) (a one-dot form)
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

// a·b + c rounded once, lane by lane: one FMA instruction where the clone's target has FMA (the
// build turns off contraction, which the codec's arithmetic needs; the products want FMA's
// throughput, and every CPU path multiplies through here, so they agree bit for bit).
EB_AI v16f ek_fma(v16f a, v16f b, v16f c) {
  v16f r;
#pragma GCC unroll 16
  for (int i = 0; i < 16; i++) r[i] = __builtin_fmaf(a[i], b[i], c[i]);
  return r;
}

typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));

// The lanes' sum as a fixed tree (halves added pairwise), the same for every path, so equal
// weights give equal bits; a tree is a few shuffles, where a lane-by-lane sum costs more than a
// whole short row's products.
EB_AI float ek_hsum_v8(v8f s8) {
  v4f s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}
EB_AI float ek_hsum(v16f a, v16f b) {
  v16f s = a + b;
  return ek_hsum_v8(__builtin_shufflevector(s, s, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(s, s, 8, 9, 10, 11, 12, 13, 14, 15));
}

// ek_hsum of P ≤ 8 pairs at once, out[j] = ek_hsum(a[j], b[j]) bit for bit: the same additions
// (lane i with lane i + 8, then + 4, + 2, + 1), done on the pairs side by side — each level adds
// two registers holding two pairs' halves — instead of one pair's lanes at a time. A decode-sized
// row costs about as much to sum this way as its products.
template <int P>
EB_AI void ek_hsum8(const v16f* a, const v16f* b, float* out) {
  if (P == 1) {  // the same additions, one pair's lanes at a time
    out[0] = ek_hsum(a[0], b[0]);
    return;
  }
  v16f s[8];
  for (int j = 0; j < 8; j++) s[j] = j < P ? a[j] + b[j] : v16f{};
  v16f p[4], q[2];
  for (int j = 0; j < 4; j++)  // [s8 of pair 2j | s8 of pair 2j + 1]
    p[j] = __builtin_shufflevector(s[2 * j], s[2 * j + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(s[2 * j], s[2 * j + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int j = 0; j < 2; j++)  // [s4 of pairs 4j .. 4j + 3]
    q[j] = __builtin_shufflevector(p[2 * j], p[2 * j + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(p[2 * j], p[2 * j + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  // [s4[0] + s4[2], s4[1] + s4[3]] of every pair, then their sum.
  v16f r = __builtin_shufflevector(q[0], q[1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(q[0], q[1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  v8f t = __builtin_shufflevector(r, r, 0, 2, 4, 6, 8, 10, 12, 14) + __builtin_shufflevector(r, r, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int j = 0; j < P; j++) out[j] = t[j];
}

// e^x on 16 lanes: x = k·ln 2 + r with |r| ≤ ln 2 / 2, e^r by Cephes' expf polynomial (relative
// error ~1e-7, as expf's), times 2^k built in the exponent bits; x clamped to where f32 e^x is
// finite and normal. Each lane's result depends on its own value only, so it is the same in any
// chunk of any length.
EB_AI v16f ek_exp(v16f x) {
  const v16f hi = v16f{} + 88.3762626647949f, lo = v16f{} - 87.3365447504f;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  v16f k = x * 1.44269504088896341f + 0.5f;
  v16i ki = __builtin_convertvector(k, v16i);
  ki -= (v16i)(__builtin_convertvector(ki, v16f) > k) & 1;  // floor
  k = __builtin_convertvector(ki, v16f);
  v16f r = x - k * 0.693359375f + k * 2.12194440e-4f;
  v16f p = v16f{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  v16f e = p * (r * r) + r + 1.0f;
  v16i pow2 = (ki + 127) << 23;
  v16f scale;
  memcpy(&scale, &pow2, sizeof scale);
  return e * scale;
}

// h[i] = silu(h[i]) · u[i] = h / (1 + e^−h) · u for i < n, 16 lanes at a time (the last partial
// chunk through a padded register: the same arithmetic for every element).
EB_AI void ek_silu_times(float* h, const float* u, uint64_t n) {
  uint64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    v16f g = ek_loadf(h + i);
    v16f y = g / (1.0f + ek_exp(-g)) * ek_loadf(u + i);
    memcpy(h + i, &y, sizeof y);
  }
  if (i < n) {
    alignas(64) float g[16] = {0}, v[16] = {0};
    memcpy(g, h + i, sizeof(float) * (n - i));
    memcpy(v, u + i, sizeof(float) * (n - i));
    v16f gv = ek_loadf(g);
    v16f y = gv / (1.0f + ek_exp(-gv)) * ek_loadf(v);
    memcpy(h + i, &y, sizeof(float) * (n - i));
  }
}

// Weights straight from a dense f32 row.
struct DenseSrc {
  const float* m;
  int cols;
  const float* row;
  EB_AI void begin_row(int r) { row = m + (uint64_t)r * cols; }
  EB_AI void block(int b, v16f& w0, v16f& w1) {
    __builtin_prefetch(row + 32 * b + 1024);
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
    // 4 KB ahead (every source reads that far ahead of its block): a row's product does little
    // per cache line, so without it the loads wait on memory — measured on 2048 × 1024 matrices
    // streamed from memory on 2 threads, bf16 read 23 GB/s without and 32 GB/s with it.
    __builtin_prefetch(row + 32 * b + 2048);
    memcpy(&h0, row + 32 * b, sizeof h0);
    memcpy(&h1, row + 32 * b + 16, sizeof h1);
    v16u u0 = __builtin_convertvector(h0, v16u) << 16, u1 = __builtin_convertvector(h1, v16u) << 16;
    memcpy(&w0, &u0, sizeof w0);
    memcpy(&w1, &u1, sizeof w1);
  }
};

// Weights held as int8 symbols. A rung's value with p dropped planes is x̂ = ±f32(n)·f32(eb), n =
// 2^p·(2m' + 1) − 1 (src/codec/FORMAT.md). At p = 0 (a stream's finest rung) n = 2m' is even and
// the symbol is t = ±m': f32(t)·(2·eb) is the value, sign included, with the bits of f32(n)·eb
// (doubling eb is exact, so both round the same real product), and 8 bits reach |n| = 254.
// Above it the symbol is t = ±(2m' + 1),
// odd, and n = |t|·2^p − 1; t = 0 stands for +0 (a rate-0 block's values). Either way a block's
// weights are its rung's bit for bit, from 1 byte a value. Values that no symbol gives (escapes,
// and magnitudes past 8 bits) are patches: per row, in column order, written over their lanes as
// the row's blocks pass. Rows of whole 32-value blocks only (the caller checks).
struct SymbolSrc {
  const int8_t* q;
  const uint32_t* row_patch;  // [rows + 1]
  const uint32_t* patch_col;
  const float* patch_value;
  int cols, p;
  float ebf;
  const int8_t* row = nullptr;
  uint32_t e = 0, e_end = 0;
  EB_AI void begin_row(int r) {
    row = q + (uint64_t)r * cols;
    e = row_patch[r];
    e_end = row_patch[r + 1];
  }
  // Sixteen symbols' weights. Above p = 0: n = max(|t|·2^p − 1, 0) in integers (exact, as the
  // decoder's n), f32(n)·eb, then t's sign bit (t = 0 gives +0).
  EB_AI v16f weights(v16i t) const {
    if (p == 0) return __builtin_convertvector(t, v16f) * (ebf + ebf);
    v16i n = ((t < 0 ? -t : t) << p) - 1;
    n = n < 0 ? v16i{} : n;
    return (v16f)((v16i)(__builtin_convertvector(n, v16f) * ebf) | (t & (int32_t)0x80000000));
  }
  // A block's 32 weights from its 32 symbols at `at`. Bytes are widened to 16 bits, then 32: GCC
  // 12 turns a direct int8 → int32 vector conversion into a loop of scalar sign extensions.
  EB_AI void weights32(const int8_t* at, v16f& w0, v16f& w1) const {
    typedef int8_t v32c __attribute__((vector_size(32)));
    typedef int16_t v32s __attribute__((vector_size(64)));
    typedef int16_t v16s __attribute__((vector_size(32)));
    v32c c;
    memcpy(&c, at, sizeof c);
    const v32s s = __builtin_convertvector(c, v32s);
    const v16s lo = __builtin_shufflevector(s, s, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const v16s hi = __builtin_shufflevector(s, s, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
    w0 = weights(__builtin_convertvector(lo, v16i));
    w1 = weights(__builtin_convertvector(hi, v16i));
  }
  EB_AI void block(int b, v16f& w0, v16f& w1) {
    __builtin_prefetch(row + 32 * b + 4096);
    weights32(row + 32 * b, w0, w1);
    for (const uint32_t end = 32u * (uint32_t)(b + 1); e < e_end && patch_col[e] < end; e++) {
      const uint32_t lane = patch_col[e] - 32u * (uint32_t)b;
      if (lane < 16) w0[lane] = patch_value[e];
      else w1[lane - 16] = patch_value[e];
    }
  }
};

// Weights held as 4-bit symbols, two a byte: a block's 32 values in 16 bytes, value i in byte i's
// low nibble and value 16 + i in its high nibble (llama.cpp's Q4_0 order: one mask and one shift
// give each half's 16 lanes). Nibble u is t = u − 8 at p = 0 (t = ±m', so |n| ≤ 16) and the odd
// t = 2(u − 8) + 1 above it (|t| ≤ 15), and its weight is table[u], made by SymbolSrc's own
// arithmetic: a block's weights are one permute a half, whatever p, bit for bit the rung's.
// Values no nibble gives (+0 above p = 0, -0, escapes, magnitudes past 4 bits) are patches, as in
// SymbolSrc. Rows of whole 32-value blocks only.
struct Symbol4Src {
  const uint8_t* q;  // [rows * cols / 2]
  const uint32_t* row_patch;
  const uint32_t* patch_col;
  const float* patch_value;
  int cols;
  v16f table;
  const uint8_t* row = nullptr;
  uint32_t e = 0, e_end = 0;
  // Nibble u's t (SymbolSrc's symbol), for the table and the packer.
  static EB_AI v16i symbols(int p) {
    v16i t;
    for (int u = 0; u < 16; u++) t[u] = p == 0 ? u - 8 : 2 * (u - 8) + 1;
    return t;
  }
  static EB_AI v16f weights_table(int p, float ebf) {
    SymbolSrc s{};
    s.p = p;
    s.ebf = ebf;
    return s.weights(symbols(p));
  }
  EB_AI void begin_row(int r) {
    row = q + (uint64_t)r * (cols / 2);
    e = row_patch[r];
    e_end = row_patch[r + 1];
  }
  EB_AI void block(int b, v16f& w0, v16f& w1) {
    typedef uint8_t v16b __attribute__((vector_size(16)));
    typedef uint16_t v16h __attribute__((vector_size(32)));
    __builtin_prefetch(row + 16 * b + 4096);
    v16b c;
    memcpy(&c, row + 16 * b, sizeof c);
    const v16i u = __builtin_convertvector(__builtin_convertvector(c, v16h), v16i);  // via 16 bits, as SymbolSrc
    w0 = __builtin_shuffle(table, u & 15);
    w1 = __builtin_shuffle(table, u >> 4);
    for (const uint32_t end = 32u * (uint32_t)(b + 1); e < e_end && patch_col[e] < end; e++) {
      const uint32_t lane = patch_col[e] - 32u * (uint32_t)b;
      if (lane < 16) w0[lane] = patch_value[e];
      else w1[lane - 16] = patch_value[e];
    }
  }
};

// A block's 32 weights from its words, the generic way: the magnitude bits one plane at a time
// (m = (m << 1) | bit), then eb_reconstruct's arithmetic on 32 lanes. Constructed once per
// matrix (the ladder's constants), called per block of rate r > 0 with the block's K rungs (K = 0:
// the matrix's own k + 1, known at run time only); in[j] points at the block's first word in rung j.
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
  template <int K>
  EB_AI void weights(const uint8_t* const* in, int r, v16f& w0, v16f& w1) const {
    v16u m0 = v16u{}, m1 = v16u{};
    const int rungs = K ? K : k + 1;
    for (int j = 0; j < rungs; j++) {
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
// GFNI unit); escapes are patched in from the stream's escape list. K: the rungs read, as a
// constant (the ladders in use have a few), so the rung pointers stay in registers and the loops
// over rungs unroll; K = 0 reads the matrix's k + 1 rungs, whatever k is.
template <class Planes, int K>
struct FusedSrc {
  static constexpr int N = K ? K : EB_MAX_RUNGS;
  const FusedView& f;
  const Planes planes;
  const uint8_t* in[N];
  const uint8_t* rates = nullptr;
  uint64_t lo = 0, esc = 0, next_esc = 0;  // the block's first value; the next escape and its value index
  const float* row = nullptr;              // (dense rows only)

  explicit FusedSrc(const FusedView& fv) : f(fv), planes(fv) {}
  EB_AI int rungs() const { return K ? K : f.k + 1; }
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
      planes.template weights<K>(in, r, w0, w1);
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

// Row r's 32-lane partial sums for NT tokens into a0[t] (lanes 0–15 of each block) and a1[t]
// (lanes 16–31), block after block; a dense row's last cols % 32 values (the fused path has none)
// go into the first lanes one by one. Every product sums a row this way, and then adds the lanes
// in ek_hsum's fixed order: equal weights give equal bits whatever the path or the batch.
template <int NT, class Src>
EB_AI void ek_row_sums(Src& src, int cols, int r, const float* x, int ldx, v16f* a0, v16f* a1) {
  const int full = cols / 32, tail = cols % 32;
  src.begin_row(r);
  for (int t = 0; t < NT; t++) a0[t] = a1[t] = v16f{};
  for (int b = 0; b < full; b++) {
    v16f w0, w1;
    src.block(b, w0, w1);
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) {
      const float* xt = x + (uint64_t)t * ldx + 32 * b;
      a0[t] = ek_fma(w0, ek_loadf(xt), a0[t]);
      a1[t] = ek_fma(w1, ek_loadf(xt + 16), a1[t]);
    }
  }
  if (tail)
    for (int t = 0; t < NT; t++)
      for (int i = 0; i < tail; i++) a0[t][i] = __builtin_fmaf(src.row[32 * full + i], x[(uint64_t)t * ldx + 32 * full + i], a0[t][i]);
}

// A tile's token count as a type, so a tile's kernel is instantiated for it.
template <int N>
struct EkTokens {
  static constexpr int n = N;
};

// Tokens in tiles of up to 4, each block loaded (or decoded) once per tile: tile(EkTokens<NT>{},
// x of the tile's first token, y of it, its index) for every tile.
template <class Tile>
EB_AI void ek_token_tiles(const float* x, int ldx, int n, float* y, int ldy, Tile tile) {
  for (int t = 0; t < n; t += 4) {
    const float* xt = x + (uint64_t)t * ldx;
    float* yt = y + (uint64_t)t * ldy;
    switch (n - t >= 4 ? 4 : n - t) {
      case 4: tile(EkTokens<4>{}, xt, yt, t); break;
      case 3: tile(EkTokens<3>{}, xt, yt, t); break;
      case 2: tile(EkTokens<2>{}, xt, yt, t); break;
      default: tile(EkTokens<1>{}, xt, yt, t); break;
    }
  }
}

// Rows [r, r + RB) for NT tokens, from any source (dense, bf16, fused): each row is read start to
// end (one stream: a large matrix is memory-bound, and rows read side by side, 16 KB apart in a
// Mixtral expert, took twice as long on two threads; a fused row decodes in order anyway), its NT
// pairs of accumulators kept (ek_row_sums), and the RB·NT sums taken together by ek_hsum8: each
// one ek_hsum's bits, with a fraction of its shuffles.
template <int NT, int RB, class Src>
EB_AI void ek_rows_multi(Src& src, int cols, int r, const float* x, int ldx, float* y, int ldy) {
  static_assert(NT * RB <= 8, "ek_hsum8 sums 8 pairs");
  v16f a0[RB * NT] = {}, a1[RB * NT] = {};  // (set by ek_row_sums; initialised for GCC's flow analysis)
#pragma GCC unroll 8
  for (int i = 0; i < RB; i++) ek_row_sums<NT>(src, cols, r + i, x, ldx, a0 + i * NT, a1 + i * NT);
  float out[RB * NT];
  ek_hsum8<RB * NT>(a0, a1, out);
  for (int i = 0; i < RB; i++)
    for (int t = 0; t < NT; t++) y[(uint64_t)t * ldy + r + i] = out[i * NT + t];
}

// Rows [r0, r1) for NT tokens: groups of 8 / NT rows, the rest one row at a time.
template <int NT, class Src>
EB_AI void ek_rows_grouped(Src& src, int cols, int r0, int r1, const float* x, int ldx, float* y, int ldy) {
  constexpr int RB = 8 / NT;
  int r = r0;
  for (; r + RB <= r1; r += RB) ek_rows_multi<NT, RB>(src, cols, r, x, ldx, y, ldy);
  for (; r < r1; r++) ek_rows_multi<NT, 1>(src, cols, r, x, ldx, y, ldy);
}

template <class Src>
EB_AI void ek_rows_tiled_grouped(Src& src, int cols, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy) {
  ek_token_tiles(x, ldx, n, y, ldy, [&](auto tokens, const float* xt, float* yt, int) __attribute__((always_inline)) {
    ek_rows_grouped<decltype(tokens)::n>(src, cols, r0, r1, xt, ldx, yt, ldy);
  });
}

EB_AI void ek_dense_rows(const float* m, int cols, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy) {
  DenseSrc src{m, cols, nullptr};
  ek_rows_tiled_grouped(src, cols, r0, r1, x, ldx, n, y, ldy);
}

EB_AI void ek_bf16_rows(const uint16_t* m, int cols, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy) {
  Bf16Src src{m, cols, nullptr};
  ek_rows_tiled_grouped(src, cols, r0, r1, x, ldx, n, y, ldy);
}

template <class Src>
EB_AI void ek_symbol_rows(Src src, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy) {
  ek_rows_tiled_grouped(src, src.cols, r0, r1, x, ldx, n, y, ldy);
}

// ---- The integer product: symbols times activations quantized to 8 bits ----
//
// A symbol matrix's weights are integers times eb, so a row's dot product can run on integers the
// way llama.cpp's Q4_K · Q8_K does: each token's activations quantized per group of EK_XGROUP
// values (d_g = max |x_g| / 127, xq = x · (127 / max |x_g|) rounded to nearest, |xq| ≤ 127), the
// products summed in int32 lanes four at a time (u8 × s8: one VNNI instruction, or the generic
// path's int16 products: the same integers) over a whole group, whose lanes are then scaled by d_g
// into f32 once. The weights stay the rung's exactly; the activations' rounding is the
// approximation (at most d_g / 2 a value), which is why this is a choice (`int8 activations`) and
// not the default product. Groups of 256 rather than Q8_0's 32-value blocks: a block's own
// convert and scale cost as much as its dot, and with 8 tokens a step that was a third of the
// product's instructions; the activations' rounding is ~1.4× coarser (max over 256 values against
// 32 on Gaussian ones), far under the 4-bit weights' own.
//
// Per symbol form, with u the unsigned byte each weight's integer part comes from:
//   8 bits at p = 0:   u = t + 128,  w = eb·2(u − 128)                I_b = Σ u·xq, k1 = 2, k0 = −256
//   4 bits at p = 0:   u = nibble,   w = eb·2(u − 8)                  I_b = Σ u·xq, k1 = 2, k0 = −16
//   4 bits at p > 0:   u = nibble,   w = eb·(2^(p+1)·u − 2h − 15·2^p + 1), h = u >> 3 (t's sign)
//                                       I_b = 2^(p+1)·Σ u·xq − 2·Σ h·xq,  k1 = 1, k0 = 1 − 15·2^p
//                      up to p = 3 that integer, 2^(p+1)·u − 2h ≤ 238, is itself a u8: one byte-table
//                      lookup (vpshufb) per 64 nibbles and one dot instead of two, where the dot
//                      unit has the lookup (Dot::kTable); the same integers either way
// and a row's product is eb·(k1·Σ_g d_g·I_g + k0·sd), sd = Σ_g d_g·Σ xq_g (the same for every
// row: computed once per token), I_g = Σ_{b in g} I_b. Patched lanes hold a symbol like any other;
// each patch adds value·x − w(symbol)·xq·d_g (value·x at p = 0, where a patch's symbol is 0).
// 8 bits above p = 0 (its weights need a second, signed term) and 4 bits past p = 14 keep the f32
// product: a lane of I_g sums 16 values' products, at p = 14 up to 2^15·15·127·16 ≈ 2^30, and
// p = 15 would overflow int32.

typedef uint8_t v32b __attribute__((vector_size(32)));

// x's cols values quantized into q and d (above); returns sd. A group holding a NaN or ±Inf gets
// d_g = NaN and xq = 0: the products it enters are NaN (the f32 product's would not be finite).
EB_AI float ek_quantize_x(const float* x, int cols, int8_t* q, float* d) {
  typedef int16_t v16s __attribute__((vector_size(32)));
  typedef int8_t v16c __attribute__((vector_size(16)));
  float sd = 0;
  for (int g = 0; g * EK_XGROUP < cols; g++) {
    const int c0 = g * EK_XGROUP, c1 = cols - c0 < EK_XGROUP ? cols : c0 + EK_XGROUP;
    v16f m = {};
    for (int c = c0; c < c1; c += 16) {
      const v16f a = ek_loadf(x + c);
      const v16f abs = a < 0 ? -a : a;
      m = m > abs ? m : abs;
      m = (a != a) ? v16f{} + __builtin_inff() : m;  // a NaN lane counts as infinite
    }
    float mx = 0;
    for (int i = 0; i < 16; i++) mx = m[i] > mx ? m[i] : mx;
    const bool finite = mx < __builtin_inff();
    d[g] = finite ? mx / 127.0f : __builtin_nanf("");
    const float inv = finite && mx > 0 ? 127.0f / mx : 0.0f;
    v16i sum = {};
    for (int c = c0; c < c1; c += 16) {
      // Nearest integer (ties to even) by the 1.5·2^23 trick: |x·inv| ≤ 127 (or a hair above,
      // which rounds to 127).
      const v16f r = (ek_loadf(x + c) * inv + 12582912.0f) - 12582912.0f;
      const v16i i = __builtin_convertvector(r, v16i);
      const v16c qc = __builtin_convertvector(__builtin_convertvector(i, v16s), v16c);
      memcpy(q + c, &qc, 16);
      sum += i;
    }
    int s = 0;
    for (int i = 0; i < 16; i++) s += sum[i];
    sd += d[g] * (float)s;
  }
  return sd;
}

typedef uint8_t v64b __attribute__((vector_size(64)));
typedef int8_t v64c __attribute__((vector_size(64)));

// Lane j of the result: Σ_{i<4} u[4j + i]·x[4j + i], exact in int32. The generic way: int16
// products (|u·x| ≤ 255·128), summed in pairs, then pairs of pairs. The VNNI unit's vpdpbusd gives
// the same integers.
struct GenericDot {
  static constexpr bool kTable = false;  // no byte-table lookup: 4 bits above p = 0 take two dots
  static EB_AI v64b table(const uint8_t*, v64b u) { return u; }
  static EB_AI v16i dot_add(v16i acc, v64b u, v64c x) { return acc + dot(u, x); }
  static EB_AI v8f gather(const float* x, v8u col) {
    v8f v;
    for (int i = 0; i < 8; i++) v[i] = x[col[i]];
    return v;
  }
  static EB_AI v16i dot(v64b u, v64c x) {
    typedef int16_t v64s __attribute__((vector_size(128)));
    typedef int16_t v32s __attribute__((vector_size(64)));
    typedef int32_t v32i __attribute__((vector_size(128)));
    const v64s p = __builtin_convertvector(u, v64s) * __builtin_convertvector(x, v64s);
    const v32s e = __builtin_shufflevector(p, p, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44,
                                           46, 48, 50, 52, 54, 56, 58, 60, 62);
    const v32s o = __builtin_shufflevector(p, p, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43, 45,
                                           47, 49, 51, 53, 55, 57, 59, 61, 63);
    const v32i pairs = __builtin_convertvector(e, v32i) + __builtin_convertvector(o, v32i);
    return __builtin_shufflevector(pairs, pairs, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(pairs, pairs, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  }
};

// The weight a stored symbol gives (what a patch's lane added to the integer sums).
EB_AI float ek_int_stored_weight(const IntSymbols& m, int r, uint32_t c) {
  if (m.bits == 8) return (float)(int8_t)m.q[(uint64_t)r * m.cols + c] * (m.ebf + m.ebf);
  const uint8_t byte = m.q[(uint64_t)r * (m.cols / 2) + 16 * (c / 32) + c % 16];
  return m.table[c % 32 < 16 ? byte & 15 : byte >> 4];
}

// Blocks b and b + 1 of a row's bytes as 64 u in value order (with one = true, block b alone and
// 32 zeros after it).
template <int BITS>
EB_AI v64b ek_int_unpack(const uint8_t* row, int b, bool one) {
  if (BITS == 8) {
    v64b u = {};
    memcpy(&u, row + 32 * b, one ? 32 : 64);
    return one ? __builtin_shufflevector(u ^ 0x80, v64b{}, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                         22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77,
                                         78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95)
               : u ^ 0x80;  // t + 128
  }
  v32b c = {};
  memcpy(&c, row + 16 * b, one ? 16 : 32);
  const v32b lo = c & 15, hi = c >> 4;
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
                                 42, 43, 44, 45, 46, 47, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 48, 49, 50,
                                 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63);
}

// What row r's patches add for NT tokens: each patch's value·x, less what its stored symbol put in
// the integer sums (w(symbol)·xq·d_g; nothing at p = 0, where a patch's symbol is 0), summed lane by
// lane 8 patches at a time in the row's order, then as a fixed tree. Per row and in a fixed order,
// so a row's result does not depend on the rows or tokens computed beside it. A row's patches are
// one gather and a few vector operations: the flat loop before it added them one after another
// into y (~11 cycles a patch, a chain through memory), which measured a fifth of the integer
// product's time on OLMoE's shape, whose 8-bit rows (bound at the 1 − 1/256 quantile) hold ~8
// patches. The patch arrays hold EK_PATCH_LANES entries past the last patch (zeros), so a chunk's
// loads stay inside them.
template <class Dot, int NT>
EB_AI void ek_int_patch_sums(const IntSymbols& m, uint32_t r, const float* x, int ldx, const QuantX* xs, float* out) {
  const uint32_t e1 = m.row_patch[r + 1];
  v8f f[NT] = {};
  for (uint32_t e = m.row_patch[r]; e < e1; e += EK_PATCH_LANES) {
    const v8i live = v8i{0, 1, 2, 3, 4, 5, 6, 7} < (int)(e1 - e);
    v8u col;
    memcpy(&col, m.patch_col + e, sizeof col);
    col = live ? col : 0;  // a lane past the row's patches reads x[0] and adds 0
    v8f value;
    memcpy(&value, m.patch_value + e, sizeof value);
    v8f stored = {};
    if (m.p != 0)
      for (int i = 0; i < 8; i++) stored[i] = live[i] ? ek_int_stored_weight(m, (int)r, col[i]) : 0.0f;
    for (int t = 0; t < NT; t++) {
      v8f term = value * Dot::gather(x + (uint64_t)t * ldx, col);
      if (m.p != 0) {
        v8f xd;
        for (int i = 0; i < 8; i++) xd[i] = (float)xs[t].q[col[i]] * xs[t].d[col[i] / EK_XGROUP];
        term = term - stored * xd;
      }
      f[t] += live ? term : 0.0f;
    }
  }
  for (int t = 0; t < NT; t++) out[t] = ek_hsum_v8(f[t]);
}

// Rows [r0, r1) for NT tokens: y[t·ldy + r] = row r · token t, x the tokens' f32 activations (for
// the patches) and xs their quantized ones. Two blocks a step: 64 products into 16 int32 lanes
// (lanes 0–7 block b, 8–15 block b + 1), summed over an activation group, then scaled by d_g into
// f32; each pair of blocks is unpacked once for the tile, and a token's groups alternate between
// two accumulators (one FMA chain would wait on its latency).
// FORM: how a symbol's integer comes from its byte or nibble u (the table above).
enum IntForm { kIntPlain, kIntTable, kIntTwoDots };

template <class Dot, int BITS, int FORM, int NT>
EB_AI void ek_int_rows_tile(const IntSymbols& m, int r0, int r1, const float* x, int ldx, const QuantX* xs, float* y, int ldy) {
  const int blocks = m.cols / 32;
  const uint64_t row_bytes = (uint64_t)m.cols * BITS / 8;
  const bool patched = m.row_patch[r0] != m.row_patch[r1];
  for (int r = r0; r < r1; r++) {
    const uint8_t* row = m.q + r * row_bytes;
    v16f even[NT] = {}, odd[NT] = {};
    // Blocks b, b + 1 (or b alone) into each token's int32 sums I[t] (a constant index in each
    // call: registers).
    auto step = [&](int b, bool one, v16i* I) __attribute__((always_inline)) {
      __builtin_prefetch(row + 4 * BITS * b + 4096);
      const v64b nib = ek_int_unpack<BITS>(row, b, one);
      const v64b u = FORM == kIntTable ? Dot::table(m.ints, nib) : nib;
      const v64b h = nib >> 3;
#pragma GCC unroll 4
      for (int t = 0; t < NT; t++) {
        v64c xq = {};
        memcpy(&xq, xs[t].q + 32 * b, one ? 32 : 64);
        if (FORM == kIntTwoDots) I[t] += (Dot::dot(u, xq) << (m.p + 1)) - (Dot::dot(h, xq) << 1);
        else I[t] = Dot::dot_add(I[t], u, xq);
      }
    };
    // Group g's blocks into I, then its lanes scaled by d_g into acc (groups alternate between even
    // and odd, each a constant array in its call so that both stay in registers).
    auto group = [&](int g, v16f* acc) __attribute__((always_inline)) {
      const int b0 = g * (EK_XGROUP / 32), end = blocks - b0 < EK_XGROUP / 32 ? blocks : b0 + EK_XGROUP / 32;
      v16i I[NT] = {};
      int b = b0;
      for (; b + 2 <= end; b += 2) step(b, false, I);
      if (b < end) step(b, true, I);
#pragma GCC unroll 4
      for (int t = 0; t < NT; t++) acc[t] = ek_fma(__builtin_convertvector(I[t], v16f), v16f{} + xs[t].d[g], acc[t]);
    };
    const int groups = (blocks + EK_XGROUP / 32 - 1) / (EK_XGROUP / 32);
    int g = 0;
    for (; g + 2 <= groups; g += 2) {
      group(g, even);
      group(g + 1, odd);
    }
    if (g < groups) group(g, even);
    float sums[NT];
    ek_hsum8<NT>(even, odd, sums);
    float fix[NT] = {};
    if (patched) ek_int_patch_sums<Dot, NT>(m, (uint32_t)r, x, ldx, xs, fix);
    for (int t = 0; t < NT; t++) y[(uint64_t)t * ldy + r] = m.ebf * (m.k1 * sums[t] + m.k0 * xs[t].sd) + fix[t];
  }
}

// The integer product for n tokens (xs: their quantized activations, made by ek_quantize_x).
// More than 4 tokens take several tiles over the same rows: 32 rows at a time (64 KiB at 8 bits),
// so that the tiles after the first read them from cache, not memory (a task of an LM head's rows
// is megabytes).
template <class Dot, int BITS, int FORM>
EB_AI void ek_int_rows_form(const IntSymbols& m, int r0, int r1, const float* x, int ldx, const QuantX* xs, int n, float* y, int ldy) {
  const int chunk = n > 4 ? 32 : r1 - r0;
  for (int c0 = r0; c0 < r1; c0 += chunk) {
    const int c1 = r1 - c0 < chunk ? r1 : c0 + chunk;
    ek_token_tiles(x, ldx, n, y, ldy, [&](auto tokens, const float* xt, float* yt, int t) __attribute__((always_inline)) {
      ek_int_rows_tile<Dot, BITS, FORM, decltype(tokens)::n>(m, c0, c1, xt, ldx, xs + t, yt, ldy);
    });
  }
}

template <class Dot>
EB_AI void ek_int_rows(const IntSymbols& m, int r0, int r1, const float* x, int ldx, const QuantX* xs, int n, float* y, int ldy) {
  if (m.bits == 8) ek_int_rows_form<Dot, 8, kIntPlain>(m, r0, r1, x, ldx, xs, n, y, ldy);
  else if (m.p == 0) ek_int_rows_form<Dot, 4, kIntPlain>(m, r0, r1, x, ldx, xs, n, y, ldy);
  else if (Dot::kTable && m.p <= 3) ek_int_rows_form<Dot, 4, kIntTable>(m, r0, r1, x, ldx, xs, n, y, ldy);
  else ek_int_rows_form<Dot, 4, kIntTwoDots>(m, r0, r1, x, ldx, xs, n, y, ldy);
}

template <class Src>
EB_AI void ek_decode_row(Src& src, int cols, int r, float* row) {
  src.begin_row(r);
  for (int b = 0; b < cols / 32; b++) {
    v16f w0, w1;
    src.block(b, w0, w1);
    memcpy(row + 32 * b, &w0, 64);
    memcpy(row + 32 * b + 16, &w1, 64);
  }
}

constexpr int EK_SCRATCH_ROWS = 8;

template <class Src>
EB_AI void ek_fused_src_rows(Src& src, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy, float* scratch) {
  const FusedView& f = src.f;
  if (n <= 4) {
    ek_rows_tiled_grouped(src, f.cols, r0, r1, x, ldx, n, y, ldy);
    return;
  }
  for (int r = r0; r < r1; r += EK_SCRATCH_ROWS) {
    const int rows = r1 - r < EK_SCRATCH_ROWS ? r1 - r : EK_SCRATCH_ROWS;
    for (int i = 0; i < rows; i++) ek_decode_row(src, f.cols, r + i, scratch + (uint64_t)i * f.cols);
    ek_dense_rows(scratch, f.cols, 0, rows, x, ldx, n, y + r, ldy);
  }
}

// `body` with the fused source for f's rung count: a constant up to MaxK rungs (the GFNI unit:
// 6, the default ladder's 5 and one more; the plane loop, compiled three times over for its CPU
// targets, gains little from it and takes 1 only, which keeps its compile time), run-time beyond.
template <class Planes, int MaxK, class Body>
EB_AI void ek_with_fused_src(const FusedView& f, Body body) {
  switch (f.k + 1) {
    case 1: return body(FusedSrc<Planes, 1>(f));
    case 2: if (MaxK >= 2) return body(FusedSrc<Planes, MaxK >= 2 ? 2 : 0>(f)); break;
    case 3: if (MaxK >= 3) return body(FusedSrc<Planes, MaxK >= 3 ? 3 : 0>(f)); break;
    case 4: if (MaxK >= 4) return body(FusedSrc<Planes, MaxK >= 4 ? 4 : 0>(f)); break;
    case 5: if (MaxK >= 5) return body(FusedSrc<Planes, MaxK >= 5 ? 5 : 0>(f)); break;
    case 6: if (MaxK >= 6) return body(FusedSrc<Planes, MaxK >= 6 ? 6 : 0>(f)); break;
  }
  body(FusedSrc<Planes, 0>(f));
}

// The fused product. Decode-sized tiles (n ≤ 4) decode each block once, into registers, for every
// token; prefill-sized ones decode EK_SCRATCH_ROWS rows at a time into `scratch` (that many rows of
// cols floats, cache-resident) and multiply them as dense rows: the same values, so the same
// results.
template <class Planes, int MaxK>
EB_AI void ek_fused_rows(const FusedView& f, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy,
                         float* scratch) {
  ek_with_fused_src<Planes, MaxK>(f, [&](auto src) __attribute__((always_inline)) { ek_fused_src_rows(src, r0, r1, x, ldx, n, y, ldy, scratch); });
}

// Row r of the matrix into `row` (cols floats): the weights the fused product multiplies with.
template <class Planes, int MaxK>
EB_AI void ek_fused_decode_row(const FusedView& f, int r, float* row) {
  ek_with_fused_src<Planes, MaxK>(f, [&](auto src) __attribute__((always_inline)) { ek_decode_row(src, f.cols, r, row); });
}

}  // namespace
}  // namespace eb
