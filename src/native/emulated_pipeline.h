// emulated_pipeline: the expert offload pipeline (cuda/eb_pipeline.h: copy stream → decompress
// stream → compute stream, ordered by events) run on an emulated device in host memory, with a
// seeded scheduler and a trace, so its ordering and its results are tested without a GPU.
#pragma once
#include <napi.h>

namespace eb {
// Adds emulatedPipelineRun(fetches, options) to `exports` (emulated_pipeline.cc says what it returns).
void register_emulated_pipeline(Napi::Env env, Napi::Object exports);
}  // namespace eb
