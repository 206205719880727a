// emulated_codec: the CUDA kernels' own bodies (cuda/eb_kernels.cuh) compiled as host C++ under
// cuda/emulate.h and run on the CPU, so the tests check the kernels' logic on a machine without a
// GPU: their streams must be byte-identical to the CPU codec's and their values identical.
#pragma once
#include <napi.h>
#include <stdint.h>

#include "stream_format.h"

namespace eb {
// The CUDA decode (Context::decompress_resident) emulated, either coder (the entropy coder's
// warps as fibers, cuda/emulate_warp.h): rungs 0..k of a validated stream `s`,
// rung j's bytes read at rung[j] (which need not be s.rung[j]: the offload pipeline's emulation
// passes its emulated device copies), into `out` (s.h.count values of dt). Throws CodecError
// BAD_RUNGS for a k the stream does not have, BAD_LANES for an entropy-coded stream whose lanes
// do not end where the encoder started them.
void emulated_decode_rungs(const StreamView& s, const uint8_t* const* rung, int k, DType dt, void* out);

// Adds emulatedCompress(input, dtype, bound, boundMode, cuts[]) and
// emulatedDecompress(stream, k, outDtype) to `exports`.
void register_emulated(Napi::Env env, Napi::Object exports);
}  // namespace eb
