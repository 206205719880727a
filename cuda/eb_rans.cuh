// eb_rans.cuh — the entropy coder's per-value quantizer and its 32-lane interleaved rANS core
// (stream mode 1, "entropy"; src/codec/FORMAT.md, "Entropy-coded rungs").
//
// The same quantized values as the fixed-length coder (cuda/eb_block.cuh), coded differently:
// value i of a 32-value block is lane i of a 32-lane interleaved rANS coder, so one decode step of
// all 32 lanes yields one block — a warp's 32 threads on a GPU, a loop the compiler can unroll
// and interleave on a CPU (32 independent state chains hide the multiply and table latency).
// The lanes share one stream of u16 words: in a step, lanes that run low read the next words in
// lane order (Giesen's interleaving; on a GPU a ballot + popc gives each lane its word).
//
//   state x: u32 in [L, 2^32), L = 2^16; words u16; probabilities in 1/4096 (EB_RANS_SCALE_BITS 12)
//   alphabet: bytes. symbol = (u << 1) | sign, u = the value's magnitude m >> c, u < 128
//
// Nothing here allocates or throws; callers validate tables and lengths first (stream_format.cc).
#pragma once
#include <stdint.h>

#include "eb_block.cuh"

#define EB_RANS_LANES 32
#define EB_RANS_SCALE_BITS 12
#define EB_RANS_M (1u << EB_RANS_SCALE_BITS)
#define EB_RANS_L (1u << 16)
#define EB_RANS_SYMBOLS 256
#define EB_RANS_MAX_U 127u  // u = m >> c above this is kept as an escape
// Layout constants the GPU decode needs (stream_format.h's kChunkBlocks and
// kEntropyDescriptorBytes; cuda/eb_rans_plan.h checks they agree): blocks per segment, and where
// rung 0's frequency table starts.
#define EB_RANS_SEG_BLOCKS 2048
#define EB_RANS_TABLE_AT 8

// Quantizes one block value by value (no block rate: every value reconstructs at its bucket's
// centre, so values do not depend on each other) and checks every rung with the decoder's own
// arithmetic. Out: mag[32] (|q|, 0 for escapes), *sign, *esc as in eb_quantize_block.
EB_HD void eb_quantize_values(const float* x, float inv2eb, float ebf, const uint8_t* cut, int R,
                              uint32_t* mag, uint32_t* sign, uint32_t* esc) {
  const float qmax = (float)((1u << EB_MAX_RATE) - 1u);
  uint32_t s = 0, e = 0;
  for (int i = 0; i < EB_BLOCK; i++) {
    float q = rintf(x[i] * inv2eb);
    bool ok = fabsf(q) <= qmax;  // NaN fails too
    q = ok ? q : 0.0f;
    mag[i] = (uint32_t)(int32_t)fabsf(q);
    s |= (uint32_t)(q < 0.0f) << i;
    e |= (uint32_t)(!ok) << i;
  }
  uint32_t fail = 0;
  for (int k = 0; k < R; k++) {
    int p = cut[k];
    double bound = (double)ebf * (double)(1u << p);
    for (int i = 0; i < EB_BLOCK; i++) {
      float xh = eb_reconstruct(mag[i] >> p, (s >> i) & 1u, p, 1, ebf);
      fail |= (uint32_t)(!(fabs((double)x[i] - (double)xh) <= bound)) << i;
    }
  }
  e |= fail;
  for (int i = 0; i < EB_BLOCK; i++)
    if ((e >> i) & 1u) mag[i] = 0;
  *sign = s & ~e;
  *esc = e;
}

// One decode-table slot: the symbol, freq − 1 and slot − cum, packed (8 + 12 + 12 bits).
EB_HD uint32_t eb_rans_slot(uint32_t sym, uint32_t freq, uint32_t bias) {
  return sym | ((freq - 1u) << 8) | (bias << 20);
}

// Fills symbol s's slots dec[cum .. cum + freq): cum is the frequencies of the symbols below s.
// The GPU kernel (cuda/eb_rans_kernels.cuh) gives each thread its symbols; the CPU loops.
EB_HD void eb_rans_fill_symbol(uint32_t s, uint32_t freq, uint32_t cum, uint32_t* dec) {
  for (uint32_t j = 0; j < freq; j++) dec[cum + j] = eb_rans_slot(s, freq, j);
}

// Fills dec[4096] from freq[0..S) (validated: they sum to 4096).
EB_HD void eb_rans_build_decode(const uint16_t* freq, int S, uint32_t* dec) {
  uint32_t cum = 0;
  for (int s = 0; s < S; s++) {
    eb_rans_fill_symbol((uint32_t)s, freq[s], cum, dec);
    cum += freq[s];
  }
}

// One lane's decode step: returns the symbol and advances the state (before renormalization).
EB_HD uint32_t eb_rans_step(uint32_t* x, const uint32_t* dec) {
  uint32_t e = dec[*x & (EB_RANS_M - 1u)];
  uint32_t freq = ((e >> 8) & 0xfffu) + 1u, bias = e >> 20;
  *x = freq * (*x >> EB_RANS_SCALE_BITS) + bias;
  return e & 0xffu;
}

// A lane's renormalization after its step: a state that fell below L takes the next u16 word.
// Which word is the interleaving's business (the lanes below it that also ran low go first).
EB_HD bool eb_rans_needs_word(uint32_t x) { return x < EB_RANS_L; }
EB_HD uint32_t eb_rans_take_word(uint32_t x, uint32_t word) { return (x << 16) | word; }

// The value a lane decodes to at rung k: magnitude bits m above p = cut[k] (the symbol's u at
// c - p, then the raw and refinement planes below it), sign from the symbol's low bit; every value
// at its bucket's centre (FORMAT.md), escapes patched afterwards.
EB_HD float eb_rans_value(uint32_t mhi, uint32_t sym, int p, float ebf) { return eb_reconstruct(mhi, sym & 1u, p, 1, ebf); }
