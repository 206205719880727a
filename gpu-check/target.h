// target.h — what the checks run on: a CUDA device, or its emulation on the host CPU.
//
// The checks are plain C++ written once against `Runtime`, the policy of cuda/eb_pipeline.h
// (streams, events, pinned and device memory, async copies, the codec's decode kernels reading
// device-resident rungs, the expert FFN kernels). Two builds pick its type:
//   make gpu-check           -DGPU_CHECK_CUDA: eb::cuda::CudaRuntime (cuda/eb_offload.cu) on a
//                            real device, its kernels compiled by nvcc for sm_80 / sm_90;
//   make gpu-check-emulated  EmulatedRuntime (emulated_runtime.h): the same kernel bodies compiled
//                            as host C++ under cuda/emulate.h, device memory in host memory.
// Target adds the few things the checks need beside the pipeline's policy: what the device is
// called, and a device-to-device copy (the memcpy every bandwidth figure is measured against).
#pragma once
#include <stddef.h>

#include <memory>
#include <string>

#if defined(GPU_CHECK_CUDA)
#include "../cuda/eb_offload.h"
#else
#include "emulated_runtime.h"
#endif

namespace gpucheck {

#if defined(GPU_CHECK_CUDA)
using Runtime = eb::cuda::CudaRuntime;
#else
using Runtime = EmulatedRuntime;
#endif
using Stream = Runtime::Stream;
using Event = Runtime::Event;

struct DeviceInfo {
  bool emulated = true;
  std::string name;            // "NVIDIA H200", or what the emulation runs on
  std::string compute_capability;  // "9.0"; empty when emulated
  size_t memory_bytes = 0;     // the device's global memory; 0 when emulated
  int multiprocessors = 0;
  int runtime_version = 0, driver_version = 0;  // CUDA's, e.g. 13000; 0 when emulated
};

class Target {
 public:
  // Opens device 0 (or the emulation). Throws std::runtime_error saying why when there is no
  // usable CUDA device (the runtime's own error: cudaErrorInsufficientDriver without a driver).
  Target();
  ~Target();
  Target(const Target&) = delete;
  Target& operator=(const Target&) = delete;

  Runtime& rt();
  const DeviceInfo& info() const;
  // "EMULATED" or "DEVICE <name>": how the last line and the JSON name this run.
  std::string label() const;
  // Enqueues a device-to-device copy of n bytes on s (cudaMemcpyAsync, DeviceToDevice).
  void copy_d2d_async(void* dst, const void* src, size_t n, Stream s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gpucheck
