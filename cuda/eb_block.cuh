// eb_block.cuh — the per-block encode and decode of the fixed-length bit-plane codec.
//
// One 32-value block is quantized once at the finest bound and written as a rate byte, a sign
// word and bit-planes split across the rungs of a precision ladder (src/codec/FORMAT.md says
// where every word goes). This header is the only place that logic lives: the CPU codec
// (src/native/codec_cpu.cc), the CUDA kernels (cuda/eb_kernels.cuh) and their host emulation all
// include it, so the three produce the same bytes and the same values by construction.
//
// Shapes: a block is EB_BLOCK = 32 values; `cut[0..R)` are the rungs' dropped-plane counts p_k,
// strictly decreasing, cut[R-1] == 0. Nothing here allocates, throws or touches memory beyond
// what its arguments say; callers validate streams before they call the decode side.
#pragma once
#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__CUDACC__)
#define EB_HD __host__ __device__ __forceinline__
#else
#define EB_HD static inline
#endif

#define EB_BLOCK 32
#define EB_MAX_RATE 22   // |q| < 2^22, so n = (m' << (p+1)) + 2^p - 1 < 2^24 is exact in f32
#define EB_MAX_CUT 21
#define EB_MAX_RUNGS 16

// Bit length of v (0 for 0).
EB_HD int eb_bitlen(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return 32 - __clz(v);
#else
  return v ? 32 - __builtin_clz(v) : 0;
#endif
}

// Words block of rate r puts into rung j (the sign word counts in rung 0).
EB_HD uint32_t eb_rung_words(int r, int j, const uint8_t* cut) {
  int hi = j == 0 ? r : (r < cut[j - 1] ? r : cut[j - 1]);
  int lo = cut[j];
  uint32_t planes = hi > lo ? (uint32_t)(hi - lo) : 0u;
  return planes + ((j == 0 && r > 0) ? 1u : 0u);
}

// The reconstruction of a value with magnitude bits m' = m >> p above p dropped planes: the centre
// of its bucket of fine bins, as an f32. `nonzero_block` is rate > 0. Encoder and decoder both
// call this, so the bound the encoder checks is the bound the decoder delivers.
EB_HD float eb_reconstruct(uint32_t m_hi, uint32_t neg, int p, int nonzero_block, float ebf) {
  uint32_t n = (m_hi << (p + 1)) + ((1u << p) - 1u);
  float v = nonzero_block ? (float)(int32_t)n * ebf : 0.0f;
  return neg ? -v : v;
}

// Quantizes one block and settles its escapes.
//   x[0..32) the values as f32, a last partial block zero-filled by the caller (zeros never
//   escape; the loops run over all 32 lanes so they vectorize);
//   inv2eb = f32(0.5/eb), ebf = f32 eb, cut[0..R) the ladder.
// Out: mag[32] (|q|, 0 for escapes), *sign (bit i set when q_i < 0), *esc (bit i set when value i
// is kept verbatim). Returns the block's rate.
// Every non-escaped value is checked at every rung with the decoder's own arithmetic; a failure
// escapes it, which may lower the rate and change the block's other reconstructions, so the check
// repeats until nothing fails (at most 33 rounds; almost always one).
EB_HD int eb_quantize_block(const float* x, float inv2eb, float ebf, const uint8_t* cut,
                            int R, uint32_t* mag, uint32_t* sign, uint32_t* esc) {
  const float qmax = (float)((1u << EB_MAX_RATE) - 1u);
  uint32_t s = 0, e = 0, mx = 0;
  for (int i = 0; i < EB_BLOCK; i++) {
    float q = rintf(x[i] * inv2eb);
    // NaN fails the comparison, so non-finite and out-of-range values both escape here.
    bool ok = fabsf(q) <= qmax;
    q = ok ? q : 0.0f;
    uint32_t m = (uint32_t)(int32_t)fabsf(q);
    mag[i] = m;
    s |= (uint32_t)(q < 0.0f) << i;
    e |= (uint32_t)(!ok) << i;
    mx |= m;  // the OR has the bit length of the max, and vectorizes where a max does not
  }
  int rate = eb_bitlen(mx);
  for (int round = 0; round <= EB_BLOCK; round++) {
    uint32_t fail = 0;
    for (int k = 0; k < R; k++) {
      int p = cut[k];
      double bound = (double)ebf * (double)(1u << p);
      for (int i = 0; i < EB_BLOCK; i++) {
        float xh = eb_reconstruct(mag[i] >> p, (s >> i) & 1u, p, rate > 0, ebf);
        double d = fabs((double)x[i] - (double)xh);
        fail |= (uint32_t)(!(d <= bound)) << i;
      }
    }
    fail &= ~e;
    if (!fail) break;
    e |= fail;
    s &= ~fail;
    mx = 0;
    for (int i = 0; i < EB_BLOCK; i++) {
      if ((fail >> i) & 1u) mag[i] = 0;
      mx |= mag[i];
    }
    rate = eb_bitlen(mx);
  }
  *sign = s;
  *esc = e;
  return rate;
}

// The bit-plane of `level`: bit i is bit `level` of mag[i].
EB_HD uint32_t eb_plane(const uint32_t* mag, int level) {
  uint32_t w = 0;
  for (int i = 0; i < EB_BLOCK; i++) w |= ((mag[i] >> level) & 1u) << i;
  return w;
}

// Writes a block's words into every rung. out[j] points at the block's first word in rung j;
// words are stored little-endian through the caller's `store` (a plain u32 store on aligned
// device memory, a memcpy on host buffers of unknown alignment).
template <typename Store>
EB_HD void eb_write_block(const uint32_t* mag, uint32_t sign, int rate, const uint8_t* cut, int R,
                          uint8_t* const* out, Store store) {
  if (rate == 0) return;
  for (int j = 0; j < R; j++) {
    uint8_t* o = out[j];
    if (j == 0) { store(o, sign); o += 4; }
    int hi = j == 0 ? rate : (rate < cut[j - 1] ? rate : cut[j - 1]);
    for (int level = hi - 1; level >= cut[j]; level--) { store(o, eb_plane(mag, level)); o += 4; }
  }
}

// Reads a block's magnitude bits above cut[k] from rungs 0..k; returns the sign word.
// in[j] points at the block's first word in rung j; `load` reads a little-endian u32.
template <typename Load>
EB_HD uint32_t eb_read_block(int rate, const uint8_t* cut, int k, const uint8_t* const* in,
                             uint32_t* mhi, Load load) {
  for (int i = 0; i < EB_BLOCK; i++) mhi[i] = 0;
  if (rate == 0) return 0;
  uint32_t sign = load(in[0]);
  int p = cut[k];
  for (int j = 0; j <= k; j++) {
    const uint8_t* c = in[j] + (j == 0 ? 4 : 0);
    int hi = j == 0 ? rate : (rate < cut[j - 1] ? rate : cut[j - 1]);
    for (int level = hi - 1; level >= cut[j]; level--) {
      uint32_t w = load(c);
      c += 4;
      int sh = level - p;
      for (int i = 0; i < EB_BLOCK; i++) mhi[i] |= ((w >> i) & 1u) << sh;
    }
  }
  return sign;
}

EB_HD uint32_t eb_f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

EB_HD float eb_u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// f32 -> bf16 / f16 bits, round to nearest even; NaN stays NaN (quiet), Inf stays Inf.
EB_HD uint16_t eb_f32_to_bf16(float f) {
  uint32_t u = eb_f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

EB_HD uint16_t eb_f32_to_f16(float f) {
  uint32_t u = eb_f2u(f);
  uint32_t sgn = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sgn | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return (uint16_t)(sgn | 0x7c00u);  // rounds to >= 65520: Inf
  if (a < 0x38800000u) {                                     // below f16's smallest normal
    if (a < 0x33000000u) return (uint16_t)sgn;               // below half the smallest subnormal
    uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    int shift = 126 - (int)(a >> 23);                        // 14..24
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sgn | h);
  }
  uint32_t h = ((a - 0x38000000u) >> 13);
  uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sgn | h);
}

EB_HD float eb_bf16_to_f32(uint16_t h) {
  return eb_u2f((uint32_t)h << 16);
}

EB_HD float eb_f16_to_f32(uint16_t h) {
  uint32_t sgn = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
  if (e == 0x1f) u = sgn | 0x7f800000u | (m << 13);
  else if (e) u = sgn | ((e + 112u) << 23) | (m << 13);
  else if (!m) u = sgn;
  else {  // subnormal: normalize
    int sh = 0;
    while (!(m & 0x400u)) { m <<= 1; sh++; }
    u = sgn | ((uint32_t)(113 - sh) << 23) | ((m & 0x3ffu) << 13);
  }
  return eb_u2f(u);
}
