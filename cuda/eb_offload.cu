// eb_offload.cu — the CUDA runtime of the expert offload pipeline (cuda/eb_offload.h says what it
// is for). Thin on purpose: every ordering decision lives in cuda/eb_pipeline.h, which the tests
// run on an emulated device; what is here is the one-to-one mapping of its calls onto the CUDA
// runtime API, and the reasons for the flags chosen.
#include "eb_offload.h"
#include "eb_expert_kernels.cuh"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace eb {
namespace cuda {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) +
                             ", error " + std::to_string((int)e) + ")");
}
#define EB_CUDA(call) check((call), #call)

}  // namespace

CudaRuntime::CudaRuntime(Context& ctx) : ctx_(ctx) { EB_CUDA(cudaSetDevice(ctx_.device())); }

// Non-blocking: a blocking stream would also wait for (and hold up) anything anyone queues on
// the legacy default stream, tying the copy engine to unrelated work.
cudaStream_t CudaRuntime::stream_create(const char*) {
  cudaStream_t s = nullptr;
  EB_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}
// Work still queued completes; the runtime releases the stream after it.
void CudaRuntime::stream_destroy(cudaStream_t s) {
  if (s) cudaStreamDestroy(s);
}

// Timing left on (no cudaEventDisableTiming): the pipeline reads copy and decode times from them.
cudaEvent_t CudaRuntime::event_create() {
  cudaEvent_t e = nullptr;
  EB_CUDA(cudaEventCreateWithFlags(&e, cudaEventDefault));
  return e;
}
void CudaRuntime::event_destroy(cudaEvent_t e) {
  if (e) cudaEventDestroy(e);
}

// Page-locked, so cudaMemcpyAsync from it is a DMA the copy engine runs on its own, overlapping
// the host and the other streams (from pageable memory the driver stages it and it does not).
void* CudaRuntime::host_alloc_pinned(size_t n) {
  void* p = nullptr;
  EB_CUDA(cudaHostAlloc(&p, n ? n : 1, cudaHostAllocDefault));
  return p;
}
void CudaRuntime::host_free_pinned(void* p) {
  if (p) cudaFreeHost(p);
}

// cudaMalloc aligns to at least 256 bytes: the decode kernels' 4-byte word loads need 4.
void* CudaRuntime::device_alloc(size_t n) {
  void* p = nullptr;
  EB_CUDA(cudaMalloc(&p, n ? n : 1));
  return p;
}
void CudaRuntime::device_free(void* p) {
  if (p) cudaFree(p);
}

void CudaRuntime::copy_h2d_async(void* dst, const void* src, size_t n, cudaStream_t s) {
  EB_CUDA(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, s));
}
void CudaRuntime::copy_d2h_async(void* dst, const void* src, size_t n, cudaStream_t s) {
  EB_CUDA(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, s));
}

void CudaRuntime::record(cudaEvent_t e, cudaStream_t s) { EB_CUDA(cudaEventRecord(e, s)); }
// Binds to the event's latest record at the time of the call (later records do not affect it):
// the property ExpertPipeline::release relies on when it pools events.
void CudaRuntime::wait(cudaStream_t s, cudaEvent_t e) { EB_CUDA(cudaStreamWaitEvent(s, e, 0)); }
void CudaRuntime::event_synchronize(cudaEvent_t e) { EB_CUDA(cudaEventSynchronize(e)); }
void CudaRuntime::stream_synchronize(cudaStream_t s) { EB_CUDA(cudaStreamSynchronize(s)); }

// GPU timestamps, resolution about half a microsecond; both events must have completed.
double CudaRuntime::elapsed_seconds(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  EB_CUDA(cudaEventElapsedTime(&ms, a, b));
  return ms * 1e-3;
}

void CudaRuntime::expert_ffn(const float* gate, const float* up, const float* down, const float* x, int n, int d, int ff,
                             float* h, float* y, cudaStream_t st) {
  if (n <= 0) return;
  eb_gpu::ebx_gate_up_kernel<<<ebx_grid_blocks((uint64_t)n * ff), EBX_THREADS, 0, st>>>(gate, up, x, n, d, ff, h);
  EB_CUDA(cudaGetLastError());
  eb_gpu::ebx_down_kernel<<<ebx_grid_blocks((uint64_t)n * d), EBX_THREADS, 0, st>>>(down, h, n, d, ff, y);
  EB_CUDA(cudaGetLastError());
}

void CudaRuntime::decode_resident(const StreamView& s, const uint8_t* const* d_rung, int k, DType dt, void* d_out,
                                  cudaStream_t st) {
  ctx_.decompress_resident(s, d_rung, k, dt, d_out, st);
}

}  // namespace cuda

// The pipeline's code compiled here, by nvcc, against the real runtime.
template class PinnedArena<cuda::CudaRuntime>;
template class ExpertPipeline<cuda::CudaRuntime>;

}  // namespace eb
