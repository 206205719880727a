// emulated_runtime.h — the device the kit runs on when there is no GPU (make gpu-check-emulated,
// and CI on every commit): the Runtime policy of cuda/eb_pipeline.h in host memory.
//
// Every "async" call runs to completion when it is enqueued, on the calling thread. That is one
// schedule a GPU could legally pick (a stream only ever waits for records enqueued before the
// wait), so results are what a device must produce; what it cannot show is overlap, so every
// time it reports is this CPU's time for work done one piece after another. The kernels are the
// CUDA kernels' own bodies (cuda/eb_kernels.cuh, cuda/eb_expert_kernels.cuh) compiled as host C++
// under cuda/emulate.h, in target_emulated.cc. The project's tests check the pipeline's ordering
// under a scheduler that interleaves streams (src/native/emulated_pipeline.cc); this runtime
// exists to run the kit's checks, not to test ordering.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <vector>

#include "../src/native/stream_format.h"

namespace gpucheck {

class EmulatedRuntime {
 public:
  using Stream = int;  // ids from 1: Stream{} and Event{} (0) are never real ones
  using Event = int;

  Stream stream_create(const char* name);
  void stream_destroy(Stream) {}
  Event event_create();
  void event_destroy(Event) {}
  void* host_alloc_pinned(size_t n);
  void host_free_pinned(void* p);
  // Fresh device memory is 0xFF bytes (NaN as f32), so weights read before they are written show.
  void* device_alloc(size_t n);
  void device_free(void* p);
  void copy_h2d_async(void* dst, const void* src, size_t n, Stream);
  void copy_d2h_async(void* dst, const void* src, size_t n, Stream);
  void copy_d2d_async(void* dst, const void* src, size_t n, Stream);
  // The host clock when the stream reaches the record: now, since everything before it is done.
  void record(Event e, Stream);
  void wait(Stream, Event) {}
  void event_synchronize(Event) {}
  void stream_synchronize(Stream) {}
  double elapsed_seconds(Event a, Event b);
  // Context::decompress_resident's kernel sequence: rate words, exclusive sums, decode, patch
  // (fixed-length streams); rANS decode, patch, the lanes' verdict (entropy-coded ones).
  void decode_resident(const eb::StreamView& s, const uint8_t* const* d_rung, int k, eb::DType dt, void* d_out, Stream);
  // The expert FFN kernels: h = silu(x·gateᵀ) ⊙ (x·upᵀ), y = h·downᵀ (emulated_expert.cc).
  void expert_ffn(const float* gate, const float* up, const float* down, const float* x, int n, int d, int ff, float* h,
                  float* y, Stream);
  void tag(int) {}

 private:
  int streams_ = 0;
  std::vector<double> event_time_;
};

}  // namespace gpucheck
