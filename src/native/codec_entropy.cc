#include "codec_entropy.h"

#include <math.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "../../cuda/eb_rans.cuh"
#include "codec_values.h"
#include "crc32c.h"
#include "parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() and trip these on their own code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "clones.h"

namespace eb {
namespace {

constexpr uint64_t kSegValues = (uint64_t)kChunkBlocks * EB_BLOCK;

inline void put32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
inline uint32_t get32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
inline uint16_t get16(const uint8_t* p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

// Pass 1's tallies of v = m >> p_0 over the non-escaped values, from which the raw-plane count t
// is chosen: `octave[b]` counts values of bit length b, `low[v]` each v below 4096 exactly.
struct Tally {
  uint64_t octave[EB_MAX_RATE + 2] = {0};
  std::vector<uint64_t> low = std::vector<uint64_t>(4096, 0);
  void merge(const Tally& o) {
    for (int b = 0; b <= EB_MAX_RATE + 1; b++) octave[b] += o.octave[b];
    for (int v = 0; v < 4096; v++) low[v] += o.low[v];
  }
};

// Estimated bits of rung 0 when t raw planes are stored below the coded part: the coded symbols'
// entropy (sign left out: it costs the same for every t), t bits per coded value, 64 per value
// whose u would exceed 127 and so becomes an escape. Exact from `low` while the coded values are
// all below 4096 (t ≤ 5); above, octaves past 4096 are taken as spread evenly, which is close for
// the wide distributions that need such a t.
double rung0_bits(const Tally& T, int t) {
  uint64_t esc = 0, in = 0;
  for (int b = 8 + t; b <= EB_MAX_RATE + 1; b++) esc += T.octave[b];
  std::vector<double> cnt(128, 0.0);
  for (int v = 0; v < 4096; v++)
    if ((v >> t) <= 127) cnt[v >> t] += (double)T.low[v];
  std::vector<std::pair<double, double>> spread;  // (count per bin, bins)
  for (int b = 13; b <= 7 + t && b <= EB_MAX_RATE + 1; b++) {
    // Octave b's values [2^(b-1), 2^b) fall in 2^(b-1-t) bins of u, or all in u = 0 once t ≥ b.
    const double bins = b - 1 - t >= 0 ? (double)(1u << (b - 1 - t)) : 1.0;
    if (T.octave[b]) spread.push_back({(double)T.octave[b] / bins, bins});
  }
  for (double c : cnt) in += (uint64_t)c;
  for (auto& s : spread) in += (uint64_t)llround(s.first * s.second);
  if (!in) return 64.0 * (double)esc;
  double N = (double)in, bits = 0;
  for (double c : cnt)
    if (c > 0) bits += c * log2(N / c);
  for (auto& s : spread) bits += s.second * s.first * log2(N / s.first);
  return bits + N * t + 64.0 * (double)esc;
}

// Counts → frequencies summing to 4096, every used symbol at least 1 (rANS cannot code a symbol
// of frequency 0). Rounding is repaired on the largest frequencies, where it costs least.
int normalize(const uint64_t* count, uint16_t* freq) {
  uint64_t total = 0;
  int S = 0;
  for (int s = 0; s < EB_RANS_SYMBOLS; s++) {
    total += count[s];
    if (count[s]) S = s + 1;
  }
  if (!total) return 0;
  int64_t sum = 0;
  for (int s = 0; s < S; s++) {
    freq[s] = count[s] ? (uint16_t)std::max<uint64_t>(1, (uint64_t)llround((double)count[s] * EB_RANS_M / (double)total)) : 0;
    sum += freq[s];
  }
  while (sum != EB_RANS_M) {
    int big = 0;
    for (int s = 1; s < S; s++)
      if (freq[s] > freq[big]) big = s;
    if (sum < EB_RANS_M) {
      freq[big] += (uint16_t)(EB_RANS_M - sum);
      sum = EB_RANS_M;
    } else {
      int64_t take = std::min<int64_t>(sum - EB_RANS_M, (int64_t)freq[big] - 1);
      if (take <= 0) take = 0;
      // At most 256 symbols share 4096 slots, so a frequency above 16 always exists while the sum
      // is over; take a little from each largest in turn to keep the model close to the counts.
      take = std::min<int64_t>(take, std::max<int64_t>(1, freq[big] / 8));
      freq[big] -= (uint16_t)take;
      sum -= take;
    }
  }
  return S;
}

// The encoder's view of one segment: symbols of values [v0, v1), encoded last to first so the
// decoder reads forward. Returns the u16 words in reading order; `state` gets the final states.
std::vector<uint16_t> encode_segment(const uint8_t* sym, uint64_t v0, uint64_t v1, const uint16_t* freq,
                                     const uint16_t* cum, uint32_t* state) {
  std::vector<uint16_t> words;
  words.reserve((v1 - v0) / 2 + 16);
  for (int j = 0; j < EB_RANS_LANES; j++) state[j] = EB_RANS_L;
  uint64_t nblocks = (v1 - v0 + EB_BLOCK - 1) / EB_BLOCK;
  for (uint64_t b = nblocks; b-- > 0;) {
    uint64_t start = v0 + b * EB_BLOCK;
    int rem = (int)std::min<uint64_t>(EB_BLOCK, v1 - start);
    for (int j = rem - 1; j >= 0; j--) {
      uint32_t s = sym[start + j];
      uint32_t f = freq[s];
      uint64_t x = state[j];
      if (x >= ((uint64_t)f << (32 - EB_RANS_SCALE_BITS))) {
        words.push_back((uint16_t)(x & 0xffffu));
        x >>= 16;
      }
      state[j] = (uint32_t)(((x / f) << EB_RANS_SCALE_BITS) + (x % f) + cum[s]);
    }
  }
  std::reverse(words.begin(), words.end());
  return words;
}

}  // namespace

std::vector<uint8_t> encode_entropy(const void* in, size_t n, const EncodeParams& p, Header h) {
  h.mode = kModeEntropy;
  const int R = h.rungs;
  const int p0 = h.cut[0];
  const float inv2eb = (float)(0.5 / h.eb), ebf = (float)h.eb;
  const uint64_t nb = h.blocks();
  const int segs = (int)((nb + kChunkBlocks - 1) / kChunkBlocks);
  const int threads = std::max(1, std::min(p.threads, std::max(segs, 1)));

  // Pass 1: quantize and check every value at every rung; tally v = m >> p_0.
  std::vector<uint32_t> mag(nb * EB_BLOCK);
  std::vector<uint32_t> sign(nb), esc(nb);
  std::vector<Tally> tally(segs);
  parallel_for(segs, threads, [&](int g) {
    alignas(64) float x[EB_BLOCK];
    uint64_t b1 = std::min<uint64_t>(nb, (uint64_t)(g + 1) * kChunkBlocks);
    Tally& T = tally[g];
    for (uint64_t b = (uint64_t)g * kChunkBlocks; b < b1; b++) {
      uint64_t start = b * EB_BLOCK;
      int cnt = (int)std::min<uint64_t>(EB_BLOCK, n - start);
      load_block(in, p.dtype, start, cnt, x);
      uint32_t* m = &mag[start];
      eb_quantize_values(x, inv2eb, ebf, h.cut, R, m, &sign[b], &esc[b]);
      for (int i = 0; i < cnt; i++) {
        if ((esc[b] >> i) & 1u) continue;
        uint32_t v = m[i] >> p0;
        T.octave[eb_bitlen(v)]++;
        if (v < 4096) T.low[v]++;
      }
    }
  });
  Tally all;
  for (auto& T : tally) all.merge(T);
  std::vector<Tally>().swap(tally);
  int t = 0;
  double best = rung0_bits(all, 0);
  for (int c = 1; p0 + c <= EB_MAX_RATE; c++) {
    double bits = rung0_bits(all, c);
    if (bits < best) best = bits, t = c;
  }
  const int c = p0 + t;

  // Pass 2: symbols, escapes (the checks' and those whose u would not fit a byte's symbol), and
  // the raw planes: t in rung 0, the refinements in rungs 1..R-1, each block's most significant
  // plane first, escaped values' bits all zero.
  std::vector<uint8_t> sym(n);
  std::vector<std::vector<std::pair<uint32_t, uint32_t>>> escs(segs);
  std::vector<std::vector<uint64_t>> count(segs, std::vector<uint64_t>(EB_RANS_SYMBOLS, 0));
  int planes[EB_MAX_RUNGS];
  planes[0] = t;
  for (int j = 1; j < R; j++) planes[j] = h.cut[j - 1] - h.cut[j];
  std::vector<std::vector<uint8_t>> raw(R);
  for (int j = 0; j < R; j++) raw[j].assign(4 * nb * planes[j], 0);
  parallel_for(segs, threads, [&](int g) {
    alignas(64) float x[EB_BLOCK];
    uint64_t b1 = std::min<uint64_t>(nb, (uint64_t)(g + 1) * kChunkBlocks);
    uint64_t* cnt = count[g].data();
    for (uint64_t b = (uint64_t)g * kChunkBlocks; b < b1; b++) {
      uint64_t start = b * EB_BLOCK;
      int vals = (int)std::min<uint64_t>(EB_BLOCK, n - start);
      uint32_t* m = &mag[start];
      uint32_t e = esc[b];
      for (int i = 0; i < vals; i++)
        if ((m[i] >> c) > EB_RANS_MAX_U) e |= 1u << i;
      if (e) {
        load_block(in, p.dtype, start, vals, x);
        for (uint32_t w = e; w;) {
          int i = __builtin_ctz(w);
          w &= w - 1;
          m[i] = 0;
          escs[g].emplace_back((uint32_t)(start + i), eb_f2u(x[i]));
        }
      }
      uint32_t s = sign[b] & ~e;
      for (int i = 0; i < vals; i++) {
        uint8_t y = (uint8_t)(((m[i] >> c) << 1) | ((s >> i) & 1u));
        sym[start + i] = y;
        cnt[y]++;
      }
      int hi = c;
      for (int j = 0; j < R; j++) {
        uint8_t* o = raw[j].data() + 4 * b * planes[j];
        for (int level = hi - 1, l = 0; l < planes[j]; level--, l++) put32(o + 4 * l, eb_plane(m, level));
        hi -= planes[j];
      }
    }
  });
  std::vector<uint32_t>().swap(mag);

  uint64_t total_count[EB_RANS_SYMBOLS] = {0};
  for (auto& cg : count)
    for (int s = 0; s < EB_RANS_SYMBOLS; s++) total_count[s] += cg[s];
  uint16_t freq[EB_RANS_SYMBOLS] = {0}, cum[EB_RANS_SYMBOLS] = {0};
  const int S = normalize(total_count, freq);
  for (int s = 1; s < EB_RANS_SYMBOLS; s++) cum[s] = (uint16_t)(cum[s - 1] + freq[s - 1]);

  // Pass 3: every segment's lanes.
  std::vector<std::vector<uint16_t>> words(segs);
  std::vector<uint32_t> states((size_t)segs * EB_RANS_LANES);
  parallel_for(segs, threads, [&](int g) {
    uint64_t v0 = (uint64_t)g * kSegValues, v1 = std::min<uint64_t>(n, v0 + kSegValues);
    words[g] = encode_segment(sym.data(), v0, v1, freq, cum, &states[(size_t)g * EB_RANS_LANES]);
  });

  // Layout (FORMAT.md): rung 0 = descriptor, table, escapes, segment table, segments, raw planes.
  for (auto& e : escs) h.escapes += e.size();
  uint64_t seg_bytes = 0;
  for (auto& w : words) seg_bytes += 4 * EB_RANS_LANES + pad4(2 * w.size());
  uint64_t table0 = kEntropyDescriptorBytes + pad4(2 * (uint64_t)S);
  h.rung_bytes[0] = table0 + 8 * h.escapes + 4 * (uint64_t)segs + seg_bytes + raw[0].size();
  for (int j = 1; j < R; j++) h.rung_bytes[j] = raw[j].size();
  uint64_t at = 0;
  for (int j = 0; j < R; j++) {
    h.rung_offset[j] = at;
    at += h.rung_bytes[j];
  }
  h.payload_bytes = at;
  std::vector<uint8_t> out(h.head_bytes() + h.payload_bytes, 0);
  uint8_t* r0 = out.data() + h.head_bytes();
  r0[0] = (uint8_t)t;
  r0[1] = EB_RANS_SCALE_BITS;
  const uint16_t symbols = (uint16_t)S;
  memcpy(r0 + 2, &symbols, 2);
  put32(r0 + 4, (uint32_t)segs);
  memcpy(r0 + kEntropyDescriptorBytes, freq, 2 * (size_t)S);
  uint8_t* o = r0 + table0;
  for (auto& eg : escs)
    for (auto& e : eg) {
      put32(o, e.first);
      put32(o + 4, e.second);
      o += 8;
    }
  for (int g = 0; g < segs; g++) put32(o + 4 * g, (uint32_t)words[g].size());
  o += 4 * (uint64_t)segs;
  for (int g = 0; g < segs; g++) {
    memcpy(o, &states[(size_t)g * EB_RANS_LANES], 4 * EB_RANS_LANES);
    if (!words[g].empty()) memcpy(o + 4 * EB_RANS_LANES, words[g].data(), 2 * words[g].size());
    o += 4 * EB_RANS_LANES + pad4(2 * words[g].size());
  }
  if (!raw[0].empty()) memcpy(o, raw[0].data(), raw[0].size());
  for (int j = 1; j < R; j++)
    if (!raw[j].empty()) memcpy(r0 + h.rung_offset[j], raw[j].data(), raw[j].size());
  for (int j = 0; j < R; j++) h.rung_crc[j] = crc32c_parallel(r0 + h.rung_offset[j], h.rung_bytes[j], p.threads);
  write_head(h, out.data());
  return out;
}

namespace {

#if defined(__x86_64__)
// AVX-512 (F only): 16 lanes a vector, two vectors a block. The table lookup is a gather; the
// lanes that ran low take the next words in lane order with one expand (vpexpandd), which is
// exactly the interleaving's order (lane j's word is the popcount of the lanes below it). Only
// while 16 words remain (the expand loads 16); the last few take the checked scalar path.
__attribute__((target("avx512f"))) void step_block_avx512(uint32_t* x, const uint32_t* dec, const uint8_t* w,
                                                         uint64_t& pos, uint64_t nw, uint32_t* sym) {
  const __m512i mask12 = _mm512_set1_epi32(EB_RANS_M - 1), lo = _mm512_set1_epi32(EB_RANS_L);
  for (int half = 0; half < 2; half++) {
    __m512i X = _mm512_loadu_si512(x + 16 * half);
    __m512i e = _mm512_i32gather_epi32(_mm512_and_si512(X, mask12), dec, 4);
    _mm512_storeu_si512(sym + 16 * half, _mm512_and_si512(e, _mm512_set1_epi32(0xff)));
    __m512i freq = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(e, 8), _mm512_set1_epi32(0xfff)), _mm512_set1_epi32(1));
    X = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(X, EB_RANS_SCALE_BITS)), _mm512_srli_epi32(e, 20));
    __mmask16 low = _mm512_cmplt_epu32_mask(X, lo);
    if (pos + 16 <= nw) {
      __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(w + 2 * pos)));
      X = _mm512_mask_or_epi32(X, low, _mm512_slli_epi32(X, 16), _mm512_maskz_expand_epi32(low, words));
      pos += (uint64_t)__builtin_popcount((unsigned)low);
      _mm512_storeu_si512(x + 16 * half, X);
    } else {
      _mm512_storeu_si512(x + 16 * half, X);
      for (int j = 16 * half; j < 16 * half + 16; j++) {
        uint32_t need = eb_rans_needs_word(x[j]);
        uint32_t word = pos < nw ? get16(w + 2 * pos) : 0u;
        x[j] = need ? eb_rans_take_word(x[j], word) : x[j];
        pos += need;
      }
    }
  }
}
bool have_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}
#endif

// Decodes segment g: its 32 lanes step block by block; each block's symbols, raw planes and
// refinement planes give the magnitudes above p = cut[k]. Returns false when the lanes do not end
// in the encoder's starting state having read exactly their words (a damaged segment); reads never
// pass the segment's words, whatever the damage.
EB_CLONES bool decode_segment(const StreamView& s, int k, DType dt, void* out, uint64_t g, const uint32_t* dec,
                              const float* lut, bool simd) {
  const Header& h = s.h;
  const EntropyLayout& L = s.entropy;
  const uint8_t* seg = s.rung[0] + L.seg_at[g];
  const uint64_t nw = get32(L.seg_words + 4 * g);
  const uint8_t* w = seg + 4 * EB_RANS_LANES;
  uint32_t x[EB_RANS_LANES];
  for (int j = 0; j < EB_RANS_LANES; j++) x[j] = get32(seg + 4 * j);
  uint64_t pos = 0;
  const int p = h.cut[k], c = L.coded_shift(h), t = L.raw_planes;
  const bool planes = c > p;  // anything besides the symbol to read
  const float ebf = (float)h.eb;
  const uint64_t nb = h.blocks();
  const uint64_t b0 = g * kChunkBlocks, b1 = std::min<uint64_t>(nb, b0 + kChunkBlocks);
  alignas(64) uint32_t sym[EB_BLOCK];
  alignas(64) uint32_t mhi[EB_BLOCK];
  alignas(64) float v[EB_BLOCK];
  for (uint64_t b = b0; b < b1; b++) {
    const uint64_t start = b * EB_BLOCK;
    const int rem = (int)std::min<uint64_t>(EB_BLOCK, h.count - start);
#if defined(__x86_64__)
    if (rem == EB_BLOCK && simd) {
      step_block_avx512(x, dec, w, pos, nw, sym);
    } else
#endif
    {
      for (int j = 0; j < EB_BLOCK; j++) sym[j] = 0;
      for (int j = 0; j < rem; j++) sym[j] = eb_rans_step(&x[j], dec);
      // Lanes that ran low read the next words, in lane order.
      for (int j = 0; j < rem; j++) {
        uint32_t need = eb_rans_needs_word(x[j]);
        uint32_t word = pos < nw ? get16(w + 2 * pos) : 0u;
        x[j] = need ? eb_rans_take_word(x[j], word) : x[j];
        pos += need;
      }
    }
    if (!planes) {
      for (int i = 0; i < EB_BLOCK; i++) v[i] = lut[sym[i]];
    } else {
      for (int i = 0; i < EB_BLOCK; i++) mhi[i] = (sym[i] >> 1) << (c - p);
      // Raw planes of rung 0 (levels c-1 .. p_0), then each refinement rung's, down to p.
      const uint8_t* r = L.raw0 + 4 * b * t;
      int level = c - 1;
      for (int l = 0; l < t && level >= p; l++, level--) {
        uint32_t word = get32(r + 4 * l);
        for (int i = 0; i < EB_BLOCK; i++) mhi[i] |= ((word >> i) & 1u) << (level - p);
      }
      for (int j = 1; j <= k; j++) {
        int np = h.cut[j - 1] - h.cut[j];
        const uint8_t* rj = s.rung[j] + 4 * b * np;
        for (int l = 0; l < np; l++, level--) {
          uint32_t word = get32(rj + 4 * l);
          for (int i = 0; i < EB_BLOCK; i++) mhi[i] |= ((word >> i) & 1u) << (level - p);
        }
      }
      for (int i = 0; i < EB_BLOCK; i++) v[i] = eb_rans_value(mhi[i], sym[i], p, ebf);
    }
    if (rem == EB_BLOCK && dt == DType::F32) memcpy(static_cast<float*>(out) + start, v, sizeof v);
    else store_values(v, rem, dt, out, start);
  }
  patch_escapes(s.escapes, h.escapes, b0 * EB_BLOCK, b1 * EB_BLOCK, dt, out);
  bool ok = pos == nw;
  for (int j = 0; j < EB_RANS_LANES; j++) ok &= x[j] == EB_RANS_L;
  return ok;
}

}  // namespace

void decode_entropy(const StreamView& s, int k, DType out_dtype, void* out, int threads) {
  const Header& h = s.h;
  const EntropyLayout& L = s.entropy;
  const int segs = (int)((h.blocks() + kChunkBlocks - 1) / kChunkBlocks);
  if (!segs) return;
  std::vector<uint32_t> table(EB_RANS_M);
  eb_rans_build_decode(L.freq, L.symbols, table.data());
  // Every symbol's value when no plane is read (rung 0 with t = 0): one lookup per value.
  float lut[EB_RANS_SYMBOLS];
  const int p = h.cut[k], c = L.coded_shift(h);
  for (uint32_t y = 0; y < EB_RANS_SYMBOLS; y++) lut[y] = eb_rans_value((y >> 1) << (c - p), y, p, (float)h.eb);
  std::vector<uint8_t> ok(segs, 1);
#if defined(__x86_64__)
  static const bool simd = have_avx512();
#else
  const bool simd = false;
#endif
  parallel_for(segs, threads, [&](int g) { ok[g] = decode_segment(s, k, out_dtype, out, (uint64_t)g, table.data(), lut, simd); });
  for (int g = 0; g < segs; g++)
    if (!ok[g])
      throw CodecError("BAD_LANES", "segment " + std::to_string(g) +
                                        ": the rANS lanes do not end where the encoder started them (the rung 0 bytes are damaged)");
}

EntropyStats entropy_stats(const StreamView& s) {
  EntropyStats st;
  const EntropyLayout& L = s.entropy;
  st.symbols = L.symbols;
  st.raw_planes = L.raw_planes;
  st.coded_shift = L.coded_shift(s.h);
  for (int y = 0; y < L.symbols; y++)
    if (L.freq[y]) {
      double q = (double)L.freq[y] / EB_RANS_M;
      st.table_bits -= q * log2(q);
    }
  uint64_t segs = L.seg_at.empty() ? 0 : L.seg_at.size() - 1;
  st.coded_bytes = segs ? (double)(L.seg_at[segs] - L.seg_at[0]) : 0;
  st.raw_bytes = 4.0 * (double)s.h.blocks() * L.raw_planes;
  st.table_bytes = (double)(kEntropyDescriptorBytes + pad4(2 * (uint64_t)L.symbols) + 4 * segs);
  return st;
}

}  // namespace eb
