// eb_rans_kernels.cuh — the CUDA decode kernel of the entropy coder (stream mode 1, format v2;
// src/codec/FORMAT.md, "Entropy-coded rungs"). Its CPU reference is decode_entropy in
// src/native/codec_entropy.cc; both take every step of the arithmetic from cuda/eb_rans.cuh.
//
// Included by cuda/eb_cuda.cu (real CUDA) and, under cuda/emulate.h + cuda/emulate_warp.h, by
// src/native/emulated_codec.cc and gpu-check/target_emulated.cc, so the tests run this exact body
// on the CPU.
//
// Shape: one warp per segment (2048 blocks of 32 values), lane i = rANS lane i = value i of every
// block, as the format was laid out for. A step of the warp decodes one block: each lane looks its
// state up in the decode table, then the lanes that ran low take the segment's next u16 words in
// lane order — a ballot says which lanes need one, the population count of the ballot below a lane
// is its word's position, and of the whole ballot how far the warp's word cursor moves (the words
// come from a ring in shared memory the warp fills ~20 steps ahead, below). Then each
// lane adds its value's raw planes (rung 0's and the refinement rungs', one u32 per plane and
// block, bit i for lane i) and stores its value. EB_RANS_WARPS segments share a thread block and
// its 16 KiB decode table in shared memory, built from the stream's frequency table by the block
// itself (a thread per symbol), so the kernel reads nothing but the rungs' device bytes and the
// scalars the host's validated view gives it.
//
// Damage the checksums did not catch cannot make the kernel read outside the rungs: the validator
// (stream_format.cc) checks every table, count and length first, and a lane's word read past its
// segment's words reads 0 instead. What it can do is leave the lanes somewhere other than where
// the encoder started them: each warp writes status[g] = 0 when its lanes end at 2^16 having read
// exactly their words, 1 otherwise, and the host answers BAD_LANES like the CPU decoder.
//
// Escaped values decode as symbol 0 here and are overwritten by eb_patch_kernel afterwards.
#pragma once
#include <stdint.h>

#include "eb_kernels.cuh"
#include "eb_rans.cuh"
#include "eb_rans_plan.h"

#if defined(__CUDACC__)
namespace eb_gpu {
#else
namespace eb_emu {
#endif

__device__ static inline uint32_t ebr_load_u16(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint16_t*>(p);
#else
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
#endif
}

// Decodes rungs 0..k of every segment: launch eb_rans_grid_blocks(segments) blocks of
// EB_RANS_THREADS threads. Shapes: a.out[count]; a.status[segments].
__global__ void eb_rans_decode_kernel(EbRansArgs a) {
  __shared__ uint32_t dec[EB_RANS_M];
  const uint32_t FULL = 0xffffffffu;
  const int lane = (int)(threadIdx.x & 31u), warp = (int)(threadIdx.x >> 5);

  // The decode table: thread s fills symbol s's slots (every block builds its own copy).
  const uint8_t* freq = a.rung0 + EB_RANS_TABLE_AT;
  for (int s = (int)threadIdx.x; s < a.symbols; s += EB_RANS_THREADS) {
    uint32_t cum = 0;
    for (int j = 0; j < s; j++) cum += ebr_load_u16(freq + 2 * j);
    eb_rans_fill_symbol((uint32_t)s, ebr_load_u16(freq + 2 * s), cum, dec);
  }
  __syncthreads();

  const uint64_t g = (uint64_t)blockIdx.x * EB_RANS_WARPS + (uint64_t)warp;
  if (g >= a.segments) return;  // the whole warp: no collective follows for it

  // Where segment g starts: the bytes of the segments before it, summed across the warp.
  const uint8_t* words_of = a.rung0 + a.seg_table_at;
  unsigned long long before = 0;
  for (uint64_t j = (uint64_t)lane; j < g; j += 32)
    before += 4 * EB_RANS_LANES + ((2 * (uint64_t)ebk_load_u32(words_of + 4 * j) + 3) & ~3ull);
  for (int m = 16; m > 0; m >>= 1) before += __shfl_xor_sync(FULL, before, m);
  const uint8_t* seg = a.rung0 + a.seg0_at + before;
  const uint32_t nw = ebk_load_u32(words_of + 4 * g);
  const uint8_t* w = seg + 4 * EB_RANS_LANES;
  uint32_t x = ebk_load_u32(seg + 4 * lane);
  uint32_t pos = 0;  // the warp's word cursor (every lane holds the same)

  // The segment's words go through a ring in shared memory, a half (128 words) at a time, loaded
  // ~20 steps before they are read: a step's state then waits on shared memory, not on a global
  // load (every step would otherwise stall a full memory latency, since some lane of 32 almost
  // always runs low). The ring holds words [lo, lo + 256); pos < lo + 128 at every step's start
  // and a step reads at most 32 words, so what it reads is there. Words past the segment's end
  // are staged as 0: what the CPU decoder reads there.
  __shared__ uint16_t rings[EB_RANS_WARPS][EB_RANS_RING];
  uint16_t* ring = rings[warp];
  for (uint32_t i = (uint32_t)lane; i < EB_RANS_RING; i += 32)
    ring[i] = (uint16_t)(i < nw ? ebr_load_u16(w + 2 * (uint64_t)i) : 0u);
  __syncwarp();
  uint32_t lo = 0;

  const int p = a.p, c = a.c, t = a.t;
  const uint64_t b0 = g * EB_RANS_SEG_BLOCKS;
  const uint64_t b1 = b0 + EB_RANS_SEG_BLOCKS < a.blocks ? b0 + EB_RANS_SEG_BLOCKS : a.blocks;
  const uint32_t below = (1u << lane) - 1u;
  for (uint64_t b = b0; b < b1; b++) {
    const uint64_t start = b * EB_BLOCK;
    const bool active = (uint64_t)lane < a.count - start;  // the last block may be short
    uint32_t sym = active ? eb_rans_step(&x, dec) : 0u;
    const bool need = active && eb_rans_needs_word(x);
    const uint32_t ran_low = __ballot_sync(FULL, need);
    if (need) x = eb_rans_take_word(x, ring[(pos + (uint32_t)__popc(ran_low & below)) % EB_RANS_RING]);
    pos += (uint32_t)__popc(ran_low);
    if (pos >= lo + EB_RANS_RING / 2) {  // the same for every lane: the half [lo, lo + 128) is read
      __syncwarp();
      for (uint32_t i = (uint32_t)lane; i < EB_RANS_RING / 2; i += 32) {
        const uint32_t at = lo + EB_RANS_RING + i;
        ring[at % EB_RANS_RING] = (uint16_t)(at < nw ? ebr_load_u16(w + 2 * (uint64_t)at) : 0u);
      }
      lo += EB_RANS_RING / 2;
      __syncwarp();
    }

    // Magnitude bits above p: the symbol's u, then rung 0's raw planes (levels c-1 .. p_0), then
    // each refinement rung's down to p; the CPU reference's order exactly.
    uint32_t mhi = (sym >> 1) << (c - p);
    int level = c - 1;
    const uint8_t* r = a.rung0 + a.raw0_at + 4 * b * (uint64_t)t;
    for (int l = 0; l < t && level >= p; l++, level--)
      mhi |= ((ebk_load_u32(r + 4 * l) >> lane) & 1u) << (level - p);
    for (int j = 1; j <= a.k; j++) {
      const int np = a.cut[j - 1] - a.cut[j];
      const uint8_t* rj = a.rung[j] + 4 * b * (uint64_t)np;
      for (int l = 0; l < np; l++, level--)
        mhi |= ((ebk_load_u32(rj + 4 * l) >> lane) & 1u) << (level - p);
    }
    if (active) ebk_store_value(a.out, a.out_dtype, start + (uint64_t)lane, eb_rans_value(mhi, sym, p, a.ebf));
  }
  const bool home = __ballot_sync(FULL, x == EB_RANS_L) == FULL;
  if (lane == 0) a.status[g] = home && pos == nw ? 0u : 1u;
}

}  // namespace eb_gpu / eb_emu
