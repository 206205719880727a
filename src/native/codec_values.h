// codec_values: moving values between the caller's buffers (f32, f16, bf16) and the f32 blocks the
// coders work on, and patching escaped values back in. Shared by both coders (codec_cpu.cc,
// codec_entropy.cc) so they read and write values the same way.
#pragma once
#include <stdint.h>
#include <string.h>

#include <algorithm>

#include "stream_format.h"

namespace eb {

// Values [start, start + n) of the input, as f32 (f16 and bf16 convert exactly); when n < 32 the
// rest of the block is zero-filled (the padding FORMAT.md describes).
inline void load_block(const void* in, DType dt, uint64_t start, int n, float* x) {
  for (int i = n; i < EB_BLOCK; i++) x[i] = 0.0f;
  if (dt == DType::F32) {
    memcpy(x, static_cast<const float*>(in) + start, sizeof(float) * n);
  } else {
    const uint16_t* h = static_cast<const uint16_t*>(in) + start;
    if (dt == DType::BF16)
      for (int i = 0; i < n; i++) x[i] = eb_bf16_to_f32(h[i]);
    else
      for (int i = 0; i < n; i++) x[i] = eb_f16_to_f32(h[i]);
  }
}

inline void store_values(const float* v, int n, DType dt, void* out, uint64_t start) {
  if (dt == DType::F32) {
    memcpy(static_cast<float*>(out) + start, v, sizeof(float) * n);
  } else {
    uint16_t* o = static_cast<uint16_t*>(out) + start;
    if (dt == DType::BF16)
      for (int i = 0; i < n; i++) o[i] = eb_f32_to_bf16(v[i]);
    else
      for (int i = 0; i < n; i++) o[i] = eb_f32_to_f16(v[i]);
  }
}

// Writes the escaped values with indices in [lo, hi) (validated, strictly increasing) exactly.
inline void patch_escapes(const uint8_t* escapes, uint64_t count, uint64_t lo, uint64_t hi, DType dt, void* out) {
  auto idx_of = [&](uint64_t e) {
    uint32_t v;
    memcpy(&v, escapes + 8 * e, 4);
    return v;
  };
  uint64_t a = 0, z = count;
  while (a < z) {
    uint64_t mid = (a + z) / 2;
    if (idx_of(mid) < lo) a = mid + 1; else z = mid;
  }
  for (uint64_t e = a; e < count; e++) {
    uint32_t idx = idx_of(e);
    if (idx >= hi) break;
    uint32_t bits;
    memcpy(&bits, escapes + 8 * e + 4, 4);
    float f = eb_u2f(bits);
    store_values(&f, 1, dt, out, idx);
  }
}

}  // namespace eb
