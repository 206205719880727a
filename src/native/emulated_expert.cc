// emulated_expert: the CUDA engine's FFN kernels (cuda/eb_expert_kernels.cuh) compiled as host
// C++ under cuda/emulate.h, for the emulated device of emulated_pipeline.cc.
#include "emulated_expert.h"

#include <math.h>
#include <stdint.h>

// After every system header: emulate.h defines macros with CUDA's reserved names.
#include "../../cuda/emulate.h"
#include "../../cuda/eb_expert_kernels.cuh"

namespace eb {

void emulated_expert_ffn(const float* gate, const float* up, const float* down, const float* x, int n, int d, int ff,
                         float* h, float* y) {
  eb_emulate_launch(dim3(ebx_grid_blocks((uint64_t)n * ff)), dim3(EBX_THREADS),
                    [&] { eb_emu::ebx_gate_up_kernel(gate, up, x, n, d, ff, h); });
  eb_emulate_launch(dim3(ebx_grid_blocks((uint64_t)n * d)), dim3(EBX_THREADS),
                    [&] { eb_emu::ebx_down_kernel(down, h, n, d, ff, y); });
}

}  // namespace eb
