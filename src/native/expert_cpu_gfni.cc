// The fused product for CPUs with GFNI and AVX-512 (VBMI, VL, BW): a block's planes (at most 8)
// become its 32 magnitudes by one 8×8 bit-matrix transpose per 8 values (vgf2p8affineqb) instead
// of a shift-and-or per plane, whichever rungs the planes lie in. Blocks with more planes take the
// plane loop. See expert_kernels.h for why this unit includes no C++ library header.
#pragma GCC target("avx2,fma,bmi,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,gfni")
// GCC 12 warns about the _mm*_undefined_* values inside its own intrinsics headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "expert_kernels.h"

namespace eb {
namespace {

struct GfniPlanes {
  PlaneLoop loop;  // blocks with more than 8 planes
  __m512i centre;
  __m512 e;
  __m256i gather, unit;
  int p;
  // Per rate r and rung j: which of the 8 plane words U[0..8) rung j's planes fill (mask) and
  // where to load them from, in bytes from the block's first word in rung j (load). The planes
  // of m >> p go most significant first and end at U[7]: rung 0's highest, then rung 1's, ...
  uint8_t mask[EB_MAX_RATE + 1][EB_MAX_RUNGS];
  int8_t load[EB_MAX_RATE + 1][EB_MAX_RUNGS];
  GfniPlanes(const FusedView& f) : loop(f), p(f.cut[f.k]) {
    centre = _mm512_set1_epi32((int)((1u << p) - 1u));
    e = _mm512_set1_ps(f.ebf);
    // Qword b gathers byte b of every plane word U[n] (values 8b..8b+7), byte n from U[n].
    gather = _mm256_setr_epi8(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29, 2, 6, 10, 14, 18, 22, 26, 30, 3,
                              7, 11, 15, 19, 23, 27, 31);
    unit = _mm256_set1_epi64x(0x8040201008040201LL);
    for (int r = 0; r <= EB_MAX_RATE; r++) {
      const int P = r - p;
      for (int j = 0; j <= f.k; j++) {
        const int hi = j == 0 ? r : (r < f.cut[j - 1] ? r : f.cut[j - 1]);
        const int planes = hi > f.cut[j] ? hi - f.cut[j] : 0;
        const int at = 8 - P + (r - hi);  // U index of this rung's first (highest) plane
        mask[r][j] = P > 8 || planes == 0 ? 0 : (uint8_t)(((1u << planes) - 1u) << at);
        load[r][j] = (int8_t)((j == 0 ? 4 : 0) - 4 * at);  // rung 0's words start after the sign word
      }
    }
  }
  template <int K>
  EB_AI void weights(const uint8_t* const* in, int r, v16f& w0, v16f& w1) const {
    const int P = r - p;  // planes above p, most significant first
    if (P > 8) return loop.weights<K>(in, r, w0, w1);
    __m256i M = _mm256_setzero_si256();
    if (P > 0) {
      // U[n] = the plane of bit 7 − n of m >> p: 8 − P zero words, then the block's P plane words
      // rung by rung (masked loads: the words around each rung's run are never read).
      __m256i U = _mm256_setzero_si256();
      const int rungs = K ? K : loop.k + 1;
      for (int j = 0; j < rungs; j++) U = _mm256_mask_loadu_epi32(U, (__mmask8)mask[r][j], in[j] + load[r][j]);
      // Row n of each qword's 8×8 bit matrix holds bit 7 − n of eight values; multiplying the
      // unit bytes 1 << i by it transposes it: byte i of the result has bit j = bit i of row
      // 7 − j, so it is the magnitude of value 8b + i.
      M = _mm256_gf2p8affine_epi64_epi8(unit, _mm256_permutexvar_epi8(gather, U), 0);
    }
    // eb_reconstruct: n = (m' << (p + 1)) + 2^p − 1, ±f32(n)·eb; the sign is applied to n (exact
    // below 2^24), which gives the same bits as negating the product.
    __m512i n0 = _mm512_add_epi32(_mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(M)), p + 1), centre);
    __m512i n1 = _mm512_add_epi32(_mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(M, 1)), p + 1), centre);
    uint32_t sign = ek_u32(in[0]);
    n0 = _mm512_mask_sub_epi32(n0, (__mmask16)sign, _mm512_setzero_si512(), n0);
    n1 = _mm512_mask_sub_epi32(n1, (__mmask16)(sign >> 16), _mm512_setzero_si512(), n1);
    w0 = (v16f)_mm512_mul_ps(_mm512_cvtepi32_ps(n0), e);
    w1 = (v16f)_mm512_mul_ps(_mm512_cvtepi32_ps(n1), e);
  }
};

}  // namespace

void fused_rows_gfni(const FusedView& f, int r0, int r1, const float* x, int ldx, int n, float* y, int ldy,
                     float* scratch) {
  ek_fused_rows<GfniPlanes, 6>(f, r0, r1, x, ldx, n, y, ldy, scratch);
}

void fused_decode_row_gfni(const FusedView& f, int r, float* row) { ek_fused_decode_row<GfniPlanes, 6>(f, r, row); }

}  // namespace eb
