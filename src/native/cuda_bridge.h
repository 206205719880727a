// cuda_bridge: what the addon knows of CUDA. Built with EBSERVE_WITH_CUDA (the Makefile found
// nvcc), it asks the runtime for devices; a machine without a driver answers with an error code
// (35 on these machines), which becomes `{built: true, available: false, error}`, never a crash.
// Built without, it says so.
#pragma once
#include <napi.h>

namespace eb {
// {built, available, devices?, runtimeVersion?, driverVersion?, error?}
Napi::Value cuda_probe(Napi::Env env);
// Adds the CUDA codec's functions and the offload pipeline's cudaPipelineRun to `exports` when
// built with CUDA (they throw when no GPU).
void register_cuda(Napi::Env env, Napi::Object exports);
}  // namespace eb
