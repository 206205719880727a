// codec_cpu: the CPU codec. Wires the stages: bound resolution (abs / rel / sigma → eb), the
// per-block quantizer and bit-plane writer of cuda/eb_block.cuh, and the stream layout of
// stream_format.h. Work is split in chunks of kChunkBlocks blocks over `threads` threads.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <vector>

#include "stream_format.h"

namespace eb {

struct EncodeParams {
  DType dtype = DType::F32;
  double bound = 0;                    // the finest rung's bound, in `mode`'s unit
  BoundMode mode = BoundMode::Abs;
  std::vector<uint8_t> cut = {0};      // planes each rung leaves out, coarse to fine, last 0
  int threads = 1;
  uint8_t coder = kModeFixed;          // kModeFixed (bit-planes) or kModeEntropy (rANS lanes)
};

// The absolute bound `eb` a tensor gets under `p` (an f32 value; FORMAT.md, "Bound modes").
// Throws CodecError BAD_BOUND for a bound that is not usable.
double resolve_bound(const void* in, size_t n, const EncodeParams& p);

// Compresses n values of p.dtype at `in` into a stream.
std::vector<uint8_t> encode(const void* in, size_t n, const EncodeParams& p);

// Decodes rungs 0..k of a validated stream into `out` (n values of out_dtype), either coder.
// An entropy-coded stream whose lanes do not end where its encoder started them (damage the
// checksums did not see, or were not asked to) throws CodecError BAD_LANES; `out` is then
// unspecified.
void decode(const StreamView& s, int k, DType out_dtype, void* out, int threads);

// Entropy in bits per value of the quantized symbols q = rint(x / 2eb) (the limit any coder of
// those symbols meets); non-finite values are counted as one symbol. For benchmarks.
double quantized_entropy_bits(const void* in, size_t n, DType dtype, double eb);

// Which vector instruction set the codec's loops were dispatched to on this CPU.
const char* simd_level();

}  // namespace eb
