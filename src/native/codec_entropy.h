// codec_entropy: the entropy coder (stream mode 1) on the CPU. The same quantization as the
// fixed-length coder, per value instead of per block (cuda/eb_rans.cuh), then:
//   rung 0: the high part of every magnitude with its sign, u = m >> c (c = p_0 + t), as one
//           byte symbol through 32-lane interleaved rANS, plus t raw bit-planes below it;
//   rung k: the raw bit-planes p_{k-1}-1 .. p_k of every value (the ladder's refinements).
// Layout: src/codec/FORMAT.md, "Entropy-coded rungs".
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <vector>

#include "codec_cpu.h"
#include "stream_format.h"

namespace eb {

// Compresses n values under p (p.coder == kModeEntropy); `h` is the header so far (dtype, count,
// rungs, cuts, bound mode and eb resolved).
std::vector<uint8_t> encode_entropy(const void* in, size_t n, const EncodeParams& p, Header h);

// Decodes rungs 0..k of a validated entropy-coded stream (see decode in codec_cpu.h).
void decode_entropy(const StreamView& s, int k, DType out_dtype, void* out, int threads);

// What inspect shows of an entropy-coded stream's symbols.
struct EntropyStats {
  int symbols = 0;           // the frequency table's length
  int raw_planes = 0;        // t
  int coded_shift = 0;       // c: u = m >> c is what the lanes code
  double table_bits = 0;     // entropy of the normalized frequency table itself, bits per symbol
  double coded_bytes = 0;    // the segments' bytes (lane states and words)
  double raw_bytes = 0;      // rung 0's raw planes
  double table_bytes = 0;    // descriptor, frequency table and segment table
};
EntropyStats entropy_stats(const StreamView& s);

}  // namespace eb
