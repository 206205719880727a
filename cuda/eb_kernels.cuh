// eb_kernels.cuh — the CUDA kernels of the fixed-length bit-plane codec (src/codec/FORMAT.md).
//
// Included by cuda/eb_cuda.cu (real CUDA) and by src/native/emulated_codec.cc (host C++ under
// cuda/emulate.h), so the tests run these exact bodies on the CPU. The per-block work is
// cuda/eb_block.cuh, shared with the CPU codec: the kernels only decide which block a thread
// takes and where its words go. One thread per 32-value block (cuSZp's fixed mode): no shared
// memory, no __syncthreads, no talk between threads, which is what makes the emulation faithful.
//
// Encode is two passes around a prefix sum:
//   eb_scan_kernel   → rate byte, per-rung word count and escape count of every block
//   (exclusive sums of each count row: CUB on the GPU, a loop in the emulation)
//   eb_write_kernel  → sign word + planes into every rung, escapes into the escape list
// Decode is:
//   eb_rate_words_kernel → per-rung word count of every block, from the rate bytes
//   (exclusive sums)
//   eb_decode_kernel     → values straight into the output (f32, f16 or bf16)
//   eb_patch_kernel      → escaped values, exact
//
// Count rows: `counts` / `offs` hold rows of `pitch` = nb + 1 u32, row j (j < R) for rung j's
// words, row R (encode only) for escapes. Entry nb of a row is 0, so the row's exclusive sum ends
// with the row's total. u32 is enough: a rung has at most 23 words per block and nb ≤ 2^27, so a
// row sums to at most 3.1e9; escapes number at most n < 2^32.
#pragma once
#include <stdint.h>
#include <string.h>

#include "eb_block.cuh"

// Element type codes, the same as the stream header's dtype field.
#define EB_F32 0
#define EB_F16 1
#define EB_BF16 2

// The ladder, by value in kernel parameters: cut[0..R) are the rungs' dropped-plane counts.
struct EbLadder {
  uint8_t cut[EB_MAX_RUNGS];
  int R;
};

// Where each rung's block words start (after rung 0's rate bytes and escapes): written by the
// encoder, read by the decoder.
struct EbRungPtrs {
  uint8_t* p[EB_MAX_RUNGS];
};
struct EbRungSrc {
  const uint8_t* p[EB_MAX_RUNGS];
};

// Launch shape, the same on the GPU and in the emulation: EB_THREADS threads a block, enough
// blocks for one thread per item (the kernels' grid-stride loops also take smaller grids).
#define EB_THREADS 128
static inline unsigned eb_grid_blocks(uint64_t items) {
  return (unsigned)((items + EB_THREADS - 1) / EB_THREADS);
}

static inline EbLadder eb_ladder(const uint8_t* cut, int R) {
  EbLadder L;
  memset(&L, 0, sizeof L);
  for (int j = 0; j < R; j++) L.cut[j] = cut[j];
  L.R = R;
  return L;
}

// The two compilations get their own namespace: both end up in one addon, and a __global__
// function's host stub would otherwise clash with the emulation's function of the same name.
#if defined(__CUDACC__)
namespace eb_gpu {
#else
namespace eb_emu {
#endif

// Stream words are 4-byte aligned on the device (cudaMalloc'd buffers, every offset a multiple
// of 4); host buffers come from anywhere, so the emulation goes through memcpy.
__device__ static inline uint32_t ebk_load_u32(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
#endif
}

__device__ static inline void ebk_store_u32(uint8_t* p, uint32_t v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint32_t*>(p) = v;
#else
  memcpy(p, &v, 4);
#endif
}

__device__ static inline int ebk_ctz(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __ffs((int)v) - 1;
#else
  return __builtin_ctz(v);
#endif
}

__device__ static inline uint32_t ebk_popc(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return (uint32_t)__popc(v);
#else
  return (uint32_t)__builtin_popcount(v);
#endif
}

// Block b of the input as 32 f32 values; lanes past n (the last block) are zero, as FORMAT.md
// pads them. f16 and bf16 convert exactly.
__device__ static inline void ebk_load_block(const void* in, int dtype, uint64_t n, uint64_t b, float* x) {
  uint64_t start = b * EB_BLOCK;
  int cnt = n - start < EB_BLOCK ? (int)(n - start) : EB_BLOCK;
  for (int i = 0; i < EB_BLOCK; i++) {
    float v = 0.0f;
    if (i < cnt) {
      if (dtype == EB_F32) v = static_cast<const float*>(in)[start + i];
      else if (dtype == EB_F16) v = eb_f16_to_f32(static_cast<const uint16_t*>(in)[start + i]);
      else v = eb_bf16_to_f32(static_cast<const uint16_t*>(in)[start + i]);
    }
    x[i] = v;
  }
}

// Stores one value at index i of the output, rounded to the output dtype.
__device__ static inline void ebk_store_value(void* out, int dtype, uint64_t i, float v) {
  if (dtype == EB_F32) static_cast<float*>(out)[i] = v;
  else if (dtype == EB_F16) static_cast<uint16_t*>(out)[i] = eb_f32_to_f16(v);
  else static_cast<uint16_t*>(out)[i] = eb_f32_to_bf16(v);
}

#define EBK_FOR_EACH(b, count) \
  for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < (count); b += (uint64_t)blockDim.x * gridDim.x)

// Encode pass 1: what every block will cost, so the write pass knows where its bytes go.
// Shapes: in[n] of `dtype`; rates[nb]; counts[(R + 1) * pitch], pitch = nb + 1 (rows above).
// Thread b < nb quantizes block b; thread nb writes the zero that ends each row.
__global__ void eb_scan_kernel(const void* in, int dtype, uint64_t n, uint64_t nb, float inv2eb, float ebf,
                               EbLadder L, uint8_t* rates, uint32_t* counts, uint64_t pitch) {
  EBK_FOR_EACH(b, nb + 1) {
    if (b == nb) {
      for (int j = 0; j <= L.R; j++) counts[j * pitch + nb] = 0;
      continue;
    }
    float x[EB_BLOCK];
    uint32_t mag[EB_BLOCK], sign, esc;
    ebk_load_block(in, dtype, n, b, x);
    int r = eb_quantize_block(x, inv2eb, ebf, L.cut, L.R, mag, &sign, &esc);
    rates[b] = (uint8_t)r;
    for (int j = 0; j < L.R; j++) counts[j * pitch + b] = eb_rung_words(r, j, L.cut);
    counts[L.R * pitch + b] = ebk_popc(esc);
  }
}

// Encode pass 2: quantizes block b again (the quantizer is deterministic, so it gets the same
// rate, signs and escapes as pass 1: re-computing is cheaper than storing 32 magnitudes a block)
// and writes its words and escapes where the exclusive sums say.
// Shapes: offs[(R + 1) * pitch] the exclusive sums of pass 1's rows; words.p[j] the start of
// rung j's block words; escapes[8 * E], (u32 index, u32 f32 bits), filled in index order because
// blocks are in order and a block writes its lanes in order — the CPU codec's order exactly.
__global__ void eb_write_kernel(const void* in, int dtype, uint64_t n, uint64_t nb, float inv2eb, float ebf,
                                EbLadder L, const uint32_t* offs, uint64_t pitch, EbRungPtrs words,
                                uint8_t* escapes) {
  EBK_FOR_EACH(b, nb) {
    float x[EB_BLOCK];
    uint32_t mag[EB_BLOCK], sign, esc;
    ebk_load_block(in, dtype, n, b, x);
    int r = eb_quantize_block(x, inv2eb, ebf, L.cut, L.R, mag, &sign, &esc);
    uint8_t* at[EB_MAX_RUNGS];
    for (int j = 0; j < L.R; j++) at[j] = words.p[j] + 4 * (uint64_t)offs[j * pitch + b];
    eb_write_block(mag, sign, r, L.cut, L.R, at, [](uint8_t* p, uint32_t v) { ebk_store_u32(p, v); });
    uint8_t* e = escapes + 8 * (uint64_t)offs[L.R * pitch + b];
    while (esc) {
      int i = ebk_ctz(esc);
      esc &= esc - 1;
      ebk_store_u32(e, (uint32_t)(b * EB_BLOCK + i));
      ebk_store_u32(e + 4, eb_f2u(x[i]));
      e += 8;
    }
  }
}

// Decode pass 1: a block's words in each rung follow from its rate byte alone; this writes them
// so an exclusive sum gives every block's offsets.
// Shapes: rates[nb] (validated ≤ 22 on the host); counts[rows * pitch], rows = k + 1 rungs read.
__global__ void eb_rate_words_kernel(const uint8_t* rates, uint64_t nb, EbLadder L, int rows,
                                     uint32_t* counts, uint64_t pitch) {
  EBK_FOR_EACH(b, nb + 1) {
    int r = b < nb ? rates[b] : 0;
    for (int j = 0; j < rows; j++) counts[j * pitch + b] = b < nb ? eb_rung_words(r, j, L.cut) : 0;
  }
}

// Decode pass 2: reconstructs block b from rungs 0..k at eb_k and stores its valid lanes in the
// output dtype, straight into the destination (an expert's weight buffer on the GPU).
// Shapes: rates[nb]; words.p[j] rung j's block words (j ≤ k); offs[(k + 1) * pitch] exclusive
// sums of decode pass 1; out[n] of `out_dtype`. Escaped lanes get +0 here, eb_patch_kernel after.
__global__ void eb_decode_kernel(const uint8_t* rates, uint64_t n, uint64_t nb, EbLadder L, int k, float ebf,
                                 EbRungSrc words, const uint32_t* offs, uint64_t pitch, void* out,
                                 int out_dtype) {
  EBK_FOR_EACH(b, nb) {
    int r = rates[b];
    const uint8_t* in[EB_MAX_RUNGS] = {nullptr};
    for (int j = 0; j <= k; j++) in[j] = words.p[j] + 4 * (uint64_t)offs[j * pitch + b];
    uint32_t mhi[EB_BLOCK];
    uint32_t sign = eb_read_block(r, L.cut, k, in, mhi, [](const uint8_t* p) { return ebk_load_u32(p); });
    int p = L.cut[k];
    uint64_t start = b * EB_BLOCK;
    int cnt = n - start < EB_BLOCK ? (int)(n - start) : EB_BLOCK;
    for (int i = 0; i < cnt; i++)
      ebk_store_value(out, out_dtype, start + i, eb_reconstruct(mhi[i], (sign >> i) & 1u, p, r > 0, ebf));
  }
}

// Decode pass 3: escaped values are stored verbatim and returned exactly at every rung. Runs
// after eb_decode_kernel on the same stream (it overwrites what that wrote at those indices).
// Shapes: escapes[8 * E] (u32 index < n, u32 f32 bits), out[n] of `out_dtype`; one thread each.
__global__ void eb_patch_kernel(const uint8_t* escapes, uint64_t E, void* out, int out_dtype) {
  EBK_FOR_EACH(e, E) {
    uint32_t idx = ebk_load_u32(escapes + 8 * e);
    ebk_store_value(out, out_dtype, idx, eb_u2f(ebk_load_u32(escapes + 8 * e + 4)));
  }
}

#undef EBK_FOR_EACH

}  // namespace eb_gpu / eb_emu
