// emulated_codec: runs the CUDA codec's kernel sequence on the CPU — the kernels' own bodies
// (cuda/eb_kernels.cuh) under cuda/emulate.h, and plain loops where the GPU path calls CUB's
// exclusive sum — so the tests check on any machine that the kernels build the CPU codec's
// streams byte for byte and decode to its values. The host steps around the kernels are
// cuda/eb_plan.h (cuda/eb_rans_plan.h for the entropy coder's kernel, whose warps run as fibers
// under cuda/emulate_warp.h), the same ones cuda/eb_cuda.cu uses. Slow by design (one emulated
// thread at a time); it exists for correctness, not speed.
#include "emulated_codec.h"

#include <string.h>

#include <string>
#include <vector>

#include "../../cuda/eb_plan.h"
#include "../../cuda/eb_rans_plan.h"
#include "codec_cpu.h"
#include "napi_util.h"
#include "stream_format.h"
// Last: the emulation headers define CUDA's keywords away (and run warps as fibers that meet at
// their collectives), then the kernels compile as host C++.
#include "../../cuda/emulate.h"
#include "../../cuda/emulate_warp.h"
#include "../../cuda/eb_kernels.cuh"
#include "../../cuda/eb_rans_kernels.cuh"

namespace eb {
namespace {

using namespace eb_emu;

// CUB's ExclusiveSum over each of `rows` count rows (u32, wrapping like the GPU's).
void exclusive_sums(const uint32_t* in, uint32_t* out, int rows, uint64_t pitch) {
  for (int r = 0; r < rows; r++) {
    uint32_t sum = 0;
    for (uint64_t i = 0; i < pitch; i++) {
      out[r * pitch + i] = sum;
      sum += in[r * pitch + i];
    }
  }
}

// The kernel sequence of Context::compress in cuda/eb_cuda.cu, with host vectors as device memory.
std::vector<uint8_t> emulated_encode(const void* in, size_t n, const EncodeParams& p) {
  check_encode(n, p);
  Header h = begin_header(n, p, resolve_bound(in, n, p));
  const int R = h.rungs;
  const EbLadder L = eb_ladder(h.cut, R);
  const float inv2eb = (float)(0.5 / h.eb), ebf = (float)h.eb;
  const uint64_t nb = h.blocks(), pitch = nb + 1;

  std::vector<uint8_t> rates(nb);
  std::vector<uint32_t> counts((R + 1) * pitch), offs((R + 1) * pitch);
  eb_emulate_launch(eb_grid_blocks(nb + 1), EB_THREADS, [&] {
    eb_scan_kernel(in, (int)h.dtype, n, nb, inv2eb, ebf, L, rates.data(), counts.data(), pitch);
  });
  exclusive_sums(counts.data(), offs.data(), R + 1, pitch);
  uint32_t totals[EB_MAX_RUNGS + 1];
  for (int j = 0; j <= R; j++) totals[j] = offs[j * pitch + nb];
  lay_out(h, totals);

  std::vector<uint8_t> out(h.head_bytes() + h.payload_bytes, 0);  // zeros: the rate padding
  uint8_t* payload = out.data() + h.head_bytes();
  if (nb) memcpy(payload, rates.data(), nb);
  EbRungPtrs words;
  for (int j = 0; j < R; j++) words.p[j] = payload + block_words_at(h, j);
  eb_emulate_launch(eb_grid_blocks(nb), EB_THREADS, [&] {
    eb_write_kernel(in, (int)h.dtype, n, nb, inv2eb, ebf, L, offs.data(), pitch, words, payload + pad4(nb));
  });
  finish_stream(h, out.data());
  return out;
}

// Context::decompress_resident's sequence for an entropy-coded stream: the warp-per-segment decode
// kernel (its warps emulated as fibers), the escape patch, then the kernel's per-segment verdict.
void emulated_decode_entropy(const StreamView& s, const uint8_t* const* rung, int k, DType dt, void* out) {
  const uint64_t segs = rans_segments(s.h);
  if (!segs) return;
  std::vector<uint32_t> status(segs, 0xFFFFFFFFu);  // what fresh device memory might hold
  const EbRansArgs a = rans_decode_args(s, rung, k, dt, out, status.data());
  eb_emulate_launch_warps(eb_rans_grid_blocks(segs), EB_RANS_THREADS, [&] { eb_rans_decode_kernel(a); });
  eb_emulate_launch(eb_grid_blocks(s.h.escapes), EB_THREADS, [&] {
    eb_patch_kernel(rung[0] + rans_escapes_at(s), s.h.escapes, out, (int)dt);
  });
  rans_check_lanes(status.data(), segs);
}

}  // namespace

// The kernel sequence of Context::decompress_resident: rungs 0..k of a validated stream, rung j
// read at rung[j], into out. Rung 0 starts with the rate bytes, their padding and the escapes.
void emulated_decode_rungs(const StreamView& s, const uint8_t* const* rung, int k, DType dt, void* out) {
  if (k < 0 || k >= s.available)
    throw CodecError("BAD_RUNGS", "cannot decode rung " + std::to_string(k) + " from " +
                                      std::to_string(s.available) + " rungs");
  if (s.h.mode == kModeEntropy) return emulated_decode_entropy(s, rung, k, dt, out);
  const Header& h = s.h;
  const EbLadder L = eb_ladder(h.cut, h.rungs);
  const uint64_t nb = h.blocks(), pitch = nb + 1;
  const int rows = k + 1;
  const uint8_t* rates = rung[0];

  std::vector<uint32_t> counts(rows * pitch), offs(rows * pitch);
  eb_emulate_launch(eb_grid_blocks(nb + 1), EB_THREADS, [&] {
    eb_rate_words_kernel(rates, nb, L, rows, counts.data(), pitch);
  });
  exclusive_sums(counts.data(), offs.data(), rows, pitch);
  EbRungSrc words;
  for (int j = 0; j < rows; j++) words.p[j] = rung[j] + (j == 0 ? s.words0_offset : 0);
  eb_emulate_launch(eb_grid_blocks(nb), EB_THREADS, [&] {
    eb_decode_kernel(rates, h.count, nb, L, k, (float)h.eb, words, offs.data(), pitch, out, (int)dt);
  });
  eb_emulate_launch(eb_grid_blocks(h.escapes), EB_THREADS, [&] {
    eb_patch_kernel(rates + pad4(nb), h.escapes, out, (int)dt);
  });
}

namespace {

// The kernel sequence of Context::decompress: the rungs where the validated stream has them.
void emulated_decode(const StreamView& s, int k, DType dt, void* out) { emulated_decode_rungs(s, s.rung, k, dt, out); }

// emulatedCompress(input, dtype, bound, boundMode, cuts[]) → stream
Napi::Value EmulatedCompress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    CompressArgs a = compress_args(info);
    return to_buffer(env, emulated_encode(a.in.data, a.n, a.p));
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

// emulatedDecompress(stream, k (-1: every rung), outDtype) → values; the stream is verified first.
// Either coder: fixed-length streams through the block kernels, entropy-coded through the rANS one.
Napi::Value EmulatedDecompress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    DecodeArgs a = decode_args(info, Readable::AnyCoder);
    const StreamView& s = a.s;
    auto out = Napi::Buffer<uint8_t>::New(env, s.h.count * dtype_size(a.dtype));
    emulated_decode(s, a.k, a.dtype, out.Data());
    return out;
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

}  // namespace

void register_emulated(Napi::Env env, Napi::Object exports) {
  exports.Set("emulatedCompress", Napi::Function::New(env, EmulatedCompress));
  exports.Set("emulatedDecompress", Napi::Function::New(env, EmulatedDecompress));
}

}  // namespace eb
