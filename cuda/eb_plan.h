// eb_plan.h — the host steps around the codec's kernels, shared by the CUDA host code
// (cuda/eb_cuda.cu) and its CPU emulation (src/native/emulated_codec.cc), so the two lay streams
// out the same way: check the parameters (the CPU codec's checks, codes and messages), lay the
// stream out once the kernels have counted words and escapes, and finish it (CRCs, header).
// Host-only; the stream layout itself is src/codec/FORMAT.md and src/native/stream_format.h.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <algorithm>
#include <string>

#include "../src/native/codec_cpu.h"
#include "../src/native/crc32c.h"
#include "../src/native/stream_format.h"

namespace eb {

// What eb::encode checks before it reads the input, with the same CodecErrors.
inline void check_encode(size_t n, const EncodeParams& p) {
  if (n > kMaxCount) throw CodecError("BAD_COUNT", "a stream holds at most 2^32-1 values, got " + std::to_string(n));
  int R = (int)p.cut.size();
  if (R < 1 || R > EB_MAX_RUNGS) throw CodecError("BAD_RUNGS", "a ladder has 1..16 rungs, got " + std::to_string(R));
  for (int j = 0; j < R; j++)
    if (p.cut[j] > EB_MAX_CUT || (j > 0 && p.cut[j] >= p.cut[j - 1]) || (j == R - 1 && p.cut[j] != 0))
      throw CodecError("BAD_RUNG", "ladder rungs must drop strictly fewer planes each, at most 21, the last none");
}

// The header of a stream of n values under `p` with finest bound `eb`, before anything is counted.
inline Header begin_header(size_t n, const EncodeParams& p, double eb) {
  Header h;
  h.dtype = p.dtype;
  h.count = n;
  h.rungs = (uint8_t)p.cut.size();
  h.bound_mode = p.mode;
  h.bound_param = p.bound;
  h.eb = eb;
  std::copy(p.cut.begin(), p.cut.end(), h.cut);
  return h;
}

// Sizes and offsets of every rung, from the counts' totals: totals[j] words of rung j (j < R),
// totals[R] escapes.
inline void lay_out(Header& h, const uint32_t* totals) {
  h.escapes = totals[h.rungs];
  uint64_t at = 0;
  for (int j = 0; j < h.rungs; j++) {
    h.rung_offset[j] = at;
    h.rung_bytes[j] = 4 * (uint64_t)totals[j] + (j == 0 ? pad4(h.blocks()) + 8 * h.escapes : 0);
    at += h.rung_bytes[j];
  }
  h.payload_bytes = at;
}

// Where rung j's block words start, from the start of the payload (rung 0 has its rate bytes and
// escapes first).
inline uint64_t block_words_at(const Header& h, int j) {
  return h.rung_offset[j] + (j == 0 ? pad4(h.blocks()) + 8 * h.escapes : 0);
}

// With the payload in place after the head (out + head_bytes()), checksums every rung and writes
// the header and rung table.
inline void finish_stream(Header& h, uint8_t* out) {
  const uint8_t* payload = out + h.head_bytes();
  for (int j = 0; j < h.rungs; j++) h.rung_crc[j] = crc32c(0, payload + h.rung_offset[j], h.rung_bytes[j]);
  write_head(h, out);
}

}  // namespace eb
