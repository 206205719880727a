// The integer product (expert_kernels.h, "The integer product") for CPUs with AVX-512 VNNI: a
// block's 32 u8 × s8 products summed four to an int32 lane by one vpdpbusd, the same integers as
// the generic path's int16 products, so both give the same bits. See expert_kernels.h for why this
// unit includes no C++ library header.
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "expert_kernels.h"

namespace eb {
namespace {

struct VnniDot {
  static constexpr bool kTable = true;
  // u's bytes (each < 16) looked up in the 16-byte table, one vpshufb over the four 128-bit lanes.
  static EB_AI v64b table(const uint8_t* t, v64b u) {
    return (v64b)_mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)t)), (__m512i)u);
  }
  static EB_AI v16i dot(v64b u, v64c x) { return (v16i)_mm512_dpbusd_epi32(_mm512_setzero_si512(), (__m512i)u, (__m512i)x); }
  static EB_AI v16i dot_add(v16i acc, v64b u, v64c x) { return (v16i)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)u, (__m512i)x); }
  // x[col[i]] for 8 lanes: one vgatherdps (a patch's x, ek_int_patch_sums)
  static EB_AI v8f gather(const float* x, v8u col) { return (v8f)_mm256_i32gather_ps(x, (__m256i)col, 4); }
};

}  // namespace

void int_rows_vnni(const IntSymbols& m, int r0, int r1, const float* x, int ldx, const QuantX* xs, int n, float* y, int ldy) {
  ek_int_rows<VnniDot>(m, r0, r1, x, ldx, xs, n, y, ldy);
}

}  // namespace eb
