// eb_cuda.h — the codec on a CUDA device: the kernels of cuda/eb_kernels.cuh, CUB's prefix sums,
// and the host steps of cuda/eb_plan.h, so a GPU builds the CPU codec's streams byte for byte and
// decodes straight into a device buffer. Built into build/cuda/libebcuda.a by the Makefile when
// nvcc is found; the addon reaches it through src/native/cuda_bridge.cc.
#pragma once
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

#include "../src/native/codec_cpu.h"
#include "../src/native/stream_format.h"

namespace eb {
namespace cuda {

// What the CUDA runtime says about this machine. Never throws: a machine without a driver gets
// available = false and the runtime's error (cudaErrorInsufficientDriver, 35, on CPU-only hosts).
struct Probe {
  bool available = false;
  int devices = 0;
  int runtime_version = 0;  // e.g. 13000 for CUDA 13.0
  int driver_version = 0;   // 0 when no driver is installed
  std::string error;        // set when !available
};
Probe probe();

// One device's codec. Owns its scratch (rate bytes, per-block counts and their prefix sums, CUB's
// temporary storage, the payload and compressed-bytes buffers), allocated on first use and grown
// only when a larger tensor arrives, so steady-state calls allocate nothing.
// Not thread-safe, and calls share the scratch: issue them from one thread, on one stream (or
// order the streams yourself). Growing the scratch waits for the device to go idle first.
class Context {
 public:
  // Throws std::runtime_error("no usable CUDA device: <the runtime's error>") without a GPU.
  explicit Context(int device = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Compresses n values of p.dtype at device pointer d_in into a stream (in host memory),
  // identical to eb::encode's. Waits for `stream`. Throws CodecError like eb::encode.
  // rel and sigma bounds need the tensor's moments: they are computed on the host by the CPU
  // codec's own code (eb::resolve_bound) after a copy back, so `eb` is bit-identical to its.
  std::vector<uint8_t> compress(const void* d_in, size_t n, const EncodeParams& p, cudaStream_t stream);

  // Decodes rungs 0..k of a stream validated on the host (eb::parse_stream / parse_parts) into
  // d_out (count values of out_dtype, device memory). Only enqueues work on `stream`, the copies
  // of the compressed bytes included, and returns without waiting. Rung bytes in pageable memory
  // may be reused once this returns; pinned ones must live until the stream reaches this work.
  // Either coder: fixed-length streams through the block kernels (cuda/eb_kernels.cuh),
  // entropy-coded ones through the warp-per-segment rANS kernel (cuda/eb_rans_kernels.cuh); an
  // entropy-coded decode waits for `stream` before it returns, to answer BAD_LANES for damaged
  // lanes the way the CPU decoder does.
  void decompress(const StreamView& s, int k, DType out_dtype, void* d_out, cudaStream_t stream);

  // The same decode from rungs that are already on the device (tier B: the offload pipeline of
  // cuda/eb_pipeline.h copies them there on its own copy stream): d_rung[j] holds rung j's bytes
  // (j ≤ k), 4-byte aligned. `s` is the stream as validated on the host; only its header and
  // offsets are used, none of its host bytes. Only enqueues kernels on `stream`; whatever wrote
  // the device rungs must be ordered before it (an event the stream waits on).
  void decompress_resident(const StreamView& s, const uint8_t* const* d_rung, int k, DType out_dtype, void* d_out,
                           cudaStream_t stream);

  // Host-memory conveniences for tests, benchmarks and the CLI: copy in, run on the context's
  // own stream, copy out, wait.
  std::vector<uint8_t> compress_host(const void* h_in, size_t n, const EncodeParams& p);
  void decompress_to_host(const StreamView& s, int k, DType out_dtype, void* h_out);

  int device() const { return device_; }

 private:
  struct Buf {
    void* p = nullptr;
    size_t cap = 0;
  };
  void* grow(Buf& b, size_t bytes);
  void exclusive_sums(const uint32_t* in, uint32_t* out, int rows, uint64_t pitch, cudaStream_t stream);
  void decompress_entropy(const StreamView& s, const uint8_t* const* d_rung, int k, DType out_dtype, void* d_out,
                          cudaStream_t stream);

  int device_;
  cudaStream_t own_stream_ = nullptr;
  Buf rates_, counts_, offs_, temp_, payload_, comp_, input_, output_, status_;
};

}  // namespace cuda
}  // namespace eb
