// eb_offload.h — the CUDA runtime under the expert offload pipeline of cuda/eb_pipeline.h: real
// streams, events, pinned host memory, cudaMemcpyAsync, and the codec's decode kernels reading
// rungs already on the device (Context::decompress_resident). Defined in cuda/eb_offload.cu,
// compiled by nvcc into build/cuda/libebcuda.a, which also instantiates the pipeline on it; the
// addon's CUDA bridge (src/native/cuda_bridge.cc) drives it. The same pipeline runs on an
// emulated device in the tests (src/native/emulated_pipeline.cc), since CI has no GPU.
#pragma once
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "eb_cuda.h"
#include "eb_pipeline.h"

namespace eb {
namespace cuda {

// The Runtime policy of eb_pipeline.h on one device. Calls throw std::runtime_error("CUDA …")
// on a runtime error, except the free and destroy calls, which run in destructors and ignore
// errors. Not thread-safe, like the Context whose scratch its decodes share: one host thread,
// and every decode on one stream (the pipeline's decompress stream).
class CudaRuntime {
 public:
  using Stream = cudaStream_t;
  using Event = cudaEvent_t;

  // Makes ctx's device current on this thread; every later call works on it.
  explicit CudaRuntime(Context& ctx);

  Stream stream_create(const char* name);
  void stream_destroy(Stream s);
  Event event_create();
  void event_destroy(Event e);
  void* host_alloc_pinned(size_t n);
  void host_free_pinned(void* p);
  void* device_alloc(size_t n);
  void device_free(void* p);
  void copy_h2d_async(void* dst, const void* src, size_t n, Stream s);
  void copy_d2h_async(void* dst, const void* src, size_t n, Stream s);
  void record(Event e, Stream s);
  void wait(Stream s, Event e);
  void event_synchronize(Event e);
  void stream_synchronize(Stream s);
  double elapsed_seconds(Event a, Event b);
  void decode_resident(const StreamView& s, const uint8_t* const* d_rung, int k, DType dt, void* d_out, Stream st);
  // The expert FFN kernels (cuda/eb_expert_kernels.cuh) on st: h = silu(x·gateᵀ) ⊙ (x·upᵀ), y = h·downᵀ.
  void expert_ffn(const float* gate, const float* up, const float* down, const float* x, int n, int d, int ff, float* h,
                  float* y, Stream st);
  // Nothing to do here; an NVTX range would name the fetch in Nsight, but the toolkit's NVTX is
  // not linked into the addon.
  void tag(int) {}

 private:
  Context& ctx_;
};

}  // namespace cuda

// Instantiated once, by nvcc, in cuda/eb_offload.cu.
extern template class PinnedArena<cuda::CudaRuntime>;
extern template class ExpertPipeline<cuda::CudaRuntime>;

}  // namespace eb
