// emulated_expert: the CUDA engine's expert FFN kernels run on the CPU under the kernel emulation.
#pragma once

namespace eb {
// h [n, ff] = silu(x · gateᵀ) ⊙ (x · upᵀ), then y [n, d] = h · downᵀ: the two kernels of
// cuda/eb_expert_kernels.cuh, launched with the GPU's grid shape.
void emulated_expert_ffn(const float* gate, const float* up, const float* down, const float* x, int n, int d, int ff,
                         float* h, float* y);
}  // namespace eb
