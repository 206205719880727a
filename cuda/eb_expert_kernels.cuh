// eb_expert_kernels.cuh — the CUDA engine's expert FFN (SwiGLU) kernels. Our own, since this
// toolkit has no cuBLAS: an expert's gate, up and down matrices are in device memory in
// checkpoint layout ([out, in] row-major, as the decode kernels write them), and the n tokens
// routed to it are x [n, d]:
//   ebx_gate_up_kernel  h[t, f] = silu(gate[f, :] · x[t, :]) · (up[f, :] · x[t, :])
//   ebx_down_kernel     y[t, o] = down[o, :] · h[t, :]
// One thread per output value, a plain loop over the inner dimension, grid-stride: no shared
// memory, no __syncthreads, no talk between threads, so cuda/emulate.h runs these very bodies on
// the CPU and the shared engine suite checks them there. (A tiled kernel that stages x in shared
// memory would be faster on a GPU, and is not expressible in that emulation.)
// Included by cuda/eb_offload.cu (nvcc) and src/native/emulated_expert.cc (host C++).
#pragma once
#include <math.h>
#include <stdint.h>

#define EBX_THREADS 128
static inline unsigned ebx_grid_blocks(uint64_t items) {
  uint64_t b = (items + EBX_THREADS - 1) / EBX_THREADS;
  return (unsigned)(b > 65535 ? 65535 : (b ? b : 1));
}

#if defined(__CUDACC__)
namespace eb_gpu {
#else
namespace eb_emu {
#endif

__global__ void ebx_gate_up_kernel(const float* gate, const float* up, const float* x, int n, int d, int ff, float* h) {
  uint64_t total = (uint64_t)n * ff;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
    int t = (int)(i / ff), f = (int)(i % ff);
    const float* g = gate + (uint64_t)f * d;
    const float* u = up + (uint64_t)f * d;
    const float* xt = x + (uint64_t)t * d;
    float a = 0.0f, b = 0.0f;
    for (int c = 0; c < d; c++) {
      a += g[c] * xt[c];
      b += u[c] * xt[c];
    }
    h[i] = a / (1.0f + expf(-a)) * b;
  }
}

__global__ void ebx_down_kernel(const float* down, const float* h, int n, int d, int ff, float* y) {
  uint64_t total = (uint64_t)n * d;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
    int t = (int)(i / d), o = (int)(i % d);
    const float* w = down + (uint64_t)o * ff;
    const float* ht = h + (uint64_t)t * ff;
    float a = 0.0f;
    for (int f = 0; f < ff; f++) a += w[f] * ht[f];
    y[i] = a;
  }
}

}  // namespace
