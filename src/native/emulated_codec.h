// emulated_codec: the CUDA kernels' own bodies (cuda/eb_kernels.cuh) compiled as host C++ under
// cuda/emulate.h and run on the CPU, so the tests check the kernels' logic on a machine without a
// GPU: their streams must be byte-identical to the CPU codec's and their values identical.
#pragma once
#include <napi.h>

namespace eb {
// Adds emulatedCompress(input, dtype, bound, boundMode, cuts[]) and
// emulatedDecompress(stream, k, outDtype) to `exports`.
void register_emulated(Napi::Env env, Napi::Object exports);
}  // namespace eb
