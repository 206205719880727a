// eb_rans_plan.h — the host steps around the entropy decode kernel (cuda/eb_rans_kernels.cuh),
// shared by the CUDA host code (cuda/eb_cuda.cu) and its emulations (src/native/emulated_codec.cc,
// gpu-check/target_emulated.cc): the kernel's arguments from a stream validated on the host, its
// launch shape, and the answer to its per-segment status (BAD_LANES, with the CPU decoder's words).
// Host-only C++ (plain structs the kernel takes by value).
#pragma once
#include <stdint.h>

#include <string>

#include "../src/native/stream_format.h"
#include "eb_rans.cuh"

static_assert(EB_RANS_SEG_BLOCKS == eb::kChunkBlocks, "a segment is a chunk of blocks");
static_assert(EB_RANS_TABLE_AT == eb::kEntropyDescriptorBytes, "the frequency table follows the descriptor");

// Segments (warps) per thread block. Four share one decode table (16 KiB of shared memory; with
// their word rings 18 KiB a block, 40 registers a thread on sm_90), so an SM holds up to 12
// blocks (48 warps) and the table is built once per four segments.
#define EB_RANS_WARPS 4
#define EB_RANS_THREADS (EB_RANS_WARPS * 32)
// u16 words each warp stages in shared memory ahead of its lanes (cuda/eb_rans_kernels.cuh).
#define EB_RANS_RING 256

// The kernel's view of a validated v2 stream. Offsets are within rung 0.
struct EbRansArgs {
  const uint8_t* rung0;                  // rung 0's bytes on the device, 4-byte aligned
  const uint8_t* rung[EB_MAX_RUNGS];     // rung j's bytes (j = 1..k): refinement planes
  uint64_t count, blocks, segments;
  uint64_t seg_table_at;                 // u32 words per segment
  uint64_t seg0_at;                      // where segment 0 starts
  uint64_t raw0_at;                      // rung 0's raw planes (t u32 per block)
  int symbols;                           // S, the frequency table's length
  int t, c, k, p;                        // raw planes in rung 0, coded shift, rung decoded, cut[k]
  uint8_t cut[EB_MAX_RUNGS];             // the ladder: refinement rung j has cut[j-1] - cut[j] planes
  float ebf;
  void* out;                             // count values of out_dtype
  int out_dtype;
  uint32_t* status;                      // [segments]: 0 the lanes ended as encoded, 1 not
};

inline unsigned eb_rans_grid_blocks(uint64_t segments) {
  return (unsigned)((segments + EB_RANS_WARPS - 1) / EB_RANS_WARPS);
}

namespace eb {

inline uint64_t rans_segments(const Header& h) { return (h.blocks() + kChunkBlocks - 1) / kChunkBlocks; }

// Arguments for rungs 0..k of `s` (validated, mode 1; k checked by the caller), rung j's bytes at
// d_rung[j] (the stream's own or device copies), into out (s.h.count values of dt).
inline EbRansArgs rans_decode_args(const StreamView& s, const uint8_t* const* d_rung, int k, DType dt, void* out,
                                   uint32_t* status) {
  const Header& h = s.h;
  const EntropyLayout& L = s.entropy;
  EbRansArgs a{};
  a.rung0 = d_rung[0];
  for (int j = 1; j <= k; j++) a.rung[j] = d_rung[j];
  a.count = h.count;
  a.blocks = h.blocks();
  a.segments = rans_segments(h);
  a.seg_table_at = a.segments ? (uint64_t)(L.seg_words - s.rung[0]) : 0;
  a.seg0_at = a.segments ? L.seg_at[0] : 0;
  a.raw0_at = a.segments ? L.seg_at[a.segments] : 0;
  a.symbols = L.symbols;
  a.t = L.raw_planes;
  a.c = L.coded_shift(h);
  a.k = k;
  a.p = h.cut[k];
  for (int j = 0; j < h.rungs; j++) a.cut[j] = h.cut[j];
  a.ebf = (float)h.eb;
  a.out = out;
  a.out_dtype = (int)dt;
  a.status = status;
  return a;
}

// Where rung 0's escapes are (after the descriptor and the frequency table), for eb_patch_kernel.
inline uint64_t rans_escapes_at(const StreamView& s) { return (uint64_t)(s.escapes - s.rung[0]); }

// The kernel's verdict per segment, answered as the CPU decoder answers it.
inline void rans_check_lanes(const uint32_t* status, uint64_t segments) {
  for (uint64_t g = 0; g < segments; g++)
    if (status[g])
      throw CodecError("BAD_LANES", "segment " + std::to_string(g) +
                                        ": the rANS lanes do not end where the encoder started them "
                                        "(the rung 0 bytes are damaged)");
}

}  // namespace eb
