// emulate.h — lets CUDA kernel bodies compile as host C++ and run on the CPU.
//
// Why: the codec's kernels (cuda/eb_kernels.cuh) must be testable on machines without a GPU. This
// header removes the CUDA qualifiers, supplies dim3 and the built-in index variables, and replaces
// `kernel<<<grid, block>>>(args)` by eb_emulate_launch(grid, block, [&] { kernel(args); }), which
// runs every thread of every block one after the other on the calling thread.
//
// What that rules out in the kernels: shared memory, __syncthreads, warp intrinsics and any
// communication between threads of a launch (a sequential run would not honour it). Our kernels
// are one thread per 32-value data block, like cuSZp's fixed-length mode, so they need none.
// (A kernel that does need them, the entropy coder's warp-per-segment decode, is run by
// cuda/emulate_warp.h, which adds warp collectives and __syncthreads on top of this header.)
//
// Include it only in host-compiled translation units, after every system and library header (it
// defines macros with CUDA's reserved names).
#pragma once
#if defined(__CUDACC__)
#error "cuda/emulate.h is for host compilers; nvcc has the real thing"
#endif
#include <stdint.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

// The built-in variables. thread_local so two host threads may each emulate a launch at once.
inline thread_local uint3 blockIdx;
inline thread_local uint3 threadIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// Runs `body` (which calls the kernel) once per thread of the launch, with the index variables
// set as the GPU would set them. Threads run in order, so results never depend on scheduling.
template <typename Body>
void eb_emulate_launch(dim3 grid, dim3 block, Body&& body) {
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++)
        for (unsigned tz = 0; tz < block.z; tz++)
          for (unsigned ty = 0; ty < block.y; ty++)
            for (unsigned tx = 0; tx < block.x; tx++) {
              blockIdx = uint3{bx, by, bz};
              threadIdx = uint3{tx, ty, tz};
              body();
            }
}
