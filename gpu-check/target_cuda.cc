// target_cuda.cc — the kit's Target on a CUDA device: the project's own CUDA codec context
// (cuda/eb_cuda.cu) and offload runtime (cuda/eb_offload.cu) on device 0. Host C++ against the
// CUDA runtime API; compiled by nvcc's host compiler in `make gpu-check`.
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "target.h"

namespace gpucheck {

namespace {
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) +
                             ", error " + std::to_string((int)e) + ")");
}

std::string version(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// Says why there is no device, with the versions: a driver older than the runtime is the usual
// reason on a machine that does have a GPU.
eb::cuda::Probe probe_or_throw() {
  eb::cuda::Probe p = eb::cuda::probe();
  if (!p.available)
    throw std::runtime_error("no usable CUDA device: " + p.error + " (CUDA runtime " + version(p.runtime_version) + ", " +
                             (p.driver_version ? "driver " + version(p.driver_version) : std::string("no driver")) + ")");
  return p;
}
}  // namespace

struct Target::Impl {
  eb::cuda::Probe probe = probe_or_throw();
  eb::cuda::Context ctx{0};
  eb::cuda::CudaRuntime rt{ctx};
  DeviceInfo info;
};

Target::Target() : impl_(new Impl) {
  cudaDeviceProp p;
  check(cudaGetDeviceProperties(&p, impl_->ctx.device()), "cudaGetDeviceProperties");
  DeviceInfo& i = impl_->info;
  i.emulated = false;
  i.name = p.name;
  i.compute_capability = std::to_string(p.major) + "." + std::to_string(p.minor);
  i.memory_bytes = p.totalGlobalMem;
  i.multiprocessors = p.multiProcessorCount;
  i.runtime_version = impl_->probe.runtime_version;
  i.driver_version = impl_->probe.driver_version;
}
Target::~Target() = default;
Runtime& Target::rt() { return impl_->rt; }
const DeviceInfo& Target::info() const { return impl_->info; }
std::string Target::label() const { return "DEVICE " + impl_->info.name; }
void Target::copy_d2d_async(void* dst, const void* src, size_t n, Stream s) {
  check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync device-to-device");
}

}  // namespace gpucheck
