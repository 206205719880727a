#include "codec_cpu.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <utility>

#include "codec_entropy.h"
#include "codec_values.h"
#include "crc32c.h"
#include "parallel.h"

#include "clones.h"

namespace eb {
namespace {

using Escape = std::pair<uint32_t, uint32_t>;  // (index, f32 bits)

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
inline void store_u32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }

struct Quantizer {
  float inv2eb, ebf;
  const uint8_t* cut;
  int R;
};

Quantizer make_quantizer(double eb, const uint8_t* cut, int R) {
  return Quantizer{(float)(0.5 / eb), (float)eb, cut, R};
}

// What one chunk encodes to, kept until every chunk is done and the rungs' sizes are known.
struct ChunkOut {
  std::vector<uint8_t> rung[EB_MAX_RUNGS];
  std::vector<Escape> esc;
};

// Encodes blocks [b0, b1): rate bytes into `rates`, each rung's words into `o`. One pass: the words
// go to a scratch sized for the worst case (every block at the highest rate), then into `o` at
// their exact size, which costs far less than quantizing everything a second time.
EB_CLONES void encode_chunk(const void* in, DType dt, uint64_t count, uint64_t b0, uint64_t b1,
                            const Quantizer& q, uint8_t* rates, ChunkOut& o,
                            std::vector<uint8_t>* scratch) {
  alignas(64) float xbuf[EB_BLOCK];
  alignas(64) uint32_t mag[EB_BLOCK];
  uint32_t sign, e;
  uint8_t* at[EB_MAX_RUNGS];
  for (int j = 0; j < q.R; j++) {
    scratch[j].resize((b1 - b0) * 4 * (EB_MAX_RATE + 1));
    at[j] = scratch[j].data();
  }
  auto store = [](uint8_t* p, uint32_t v) { store_u32(p, v); };
  for (uint64_t b = b0; b < b1; b++) {
    uint64_t start = b * EB_BLOCK;
    int n = (int)std::min<uint64_t>(EB_BLOCK, count - start);
    // Full f32 blocks are read in place: copying them to the stack first measured slower.
    const float* x = xbuf;
    if (dt == DType::F32 && n == EB_BLOCK) x = static_cast<const float*>(in) + start;
    else load_block(in, dt, start, n, xbuf);
    int r = eb_quantize_block(x, q.inv2eb, q.ebf, q.cut, q.R, mag, &sign, &e);
    rates[b] = (uint8_t)r;
    eb_write_block(mag, sign, r, q.cut, q.R, at, store);
    for (int j = 0; j < q.R; j++) at[j] += 4 * eb_rung_words(r, j, q.cut);
    while (e) {
      int i = __builtin_ctz(e);
      e &= e - 1;
      o.esc.emplace_back((uint32_t)(start + i), eb_f2u(x[i]));
    }
  }
  for (int j = 0; j < q.R; j++) o.rung[j].assign(scratch[j].data(), at[j]);
}

EB_CLONES void decode_chunk(const StreamView& s, int k, DType dt, void* out, uint64_t chunk) {
  const Header& h = s.h;
  uint64_t nb = h.blocks();
  uint64_t b0 = chunk * kChunkBlocks, b1 = std::min<uint64_t>(nb, b0 + kChunkBlocks);
  const uint8_t* in[EB_MAX_RUNGS];
  for (int j = 0; j <= k; j++)
    in[j] = s.rung[j] + (j == 0 ? s.words0_offset : 0) + s.chunk_offset[chunk * h.rungs + j];
  uint32_t words_of_rate[EB_MAX_RATE + 1][EB_MAX_RUNGS];
  for (int r = 0; r <= EB_MAX_RATE; r++)
    for (int j = 0; j <= k; j++) words_of_rate[r][j] = 4 * eb_rung_words(r, j, h.cut);
  const float ebf = (float)h.eb;
  const int p = h.cut[k];
  auto load = [](const uint8_t* c) { return load_u32(c); };
  alignas(64) uint32_t mhi[EB_BLOCK];
  alignas(64) float v[EB_BLOCK];
  for (uint64_t b = b0; b < b1; b++) {
    int r = s.rates[b];
    uint32_t sign = eb_read_block(r, h.cut, k, in, mhi, load);
    for (int j = 0; j <= k; j++) in[j] += words_of_rate[r][j];
    uint64_t start = b * EB_BLOCK;
    // Full blocks reconstruct straight into the output: staging them in a stack array and copying
    // it out measured 2-3x slower, depending on where the stack happened to sit.
    if (start + EB_BLOCK <= h.count && dt == DType::F32) {
      float* o = static_cast<float*>(out) + start;
      for (int i = 0; i < EB_BLOCK; i++) o[i] = eb_reconstruct(mhi[i], (sign >> i) & 1u, p, r > 0, ebf);
    } else if (start + EB_BLOCK <= h.count && dt == DType::BF16) {
      uint16_t* o = static_cast<uint16_t*>(out) + start;
      for (int i = 0; i < EB_BLOCK; i++) o[i] = eb_f32_to_bf16(eb_reconstruct(mhi[i], (sign >> i) & 1u, p, r > 0, ebf));
    } else {
      for (int i = 0; i < EB_BLOCK; i++) v[i] = eb_reconstruct(mhi[i], (sign >> i) & 1u, p, r > 0, ebf);
      store_values(v, (int)std::min<uint64_t>(EB_BLOCK, h.count - start), dt, out, start);
    }
  }
  // Escapes of this chunk's values: exact, whatever the rung.
  patch_escapes(s.escapes, h.escapes, b0 * EB_BLOCK, b1 * EB_BLOCK, dt, out);
}

struct Moments {
  uint64_t n = 0;
  double mean = 0, m2 = 0, lo = INFINITY, hi = -INFINITY;
  void merge(const Moments& o) {  // Chan et al.'s parallel update
    if (!o.n) return;
    double d = o.mean - mean;
    uint64_t t = n + o.n;
    mean += d * (double)o.n / (double)t;
    m2 += o.m2 + d * d * (double)n * (double)o.n / (double)t;
    n = t;
    lo = std::min(lo, o.lo);
    hi = std::max(hi, o.hi);
  }
};

Moments moments(const void* in, size_t n, DType dt, int threads) {
  uint64_t nb = (n + EB_BLOCK - 1) / EB_BLOCK;
  int chunks = (int)((nb + kChunkBlocks - 1) / kChunkBlocks);
  std::vector<Moments> part(chunks);
  parallel_for(chunks, threads, [&](int c) {
    // Two passes over the chunk (mean, then squared deviations): exact enough in f64 and cheap,
    // since a chunk (64 Ki values) is still in cache for the second pass.
    uint64_t v0 = (uint64_t)c * kChunkBlocks * EB_BLOCK;
    uint64_t v1 = std::min<uint64_t>(n, v0 + (uint64_t)kChunkBlocks * EB_BLOCK);
    std::vector<float> x(std::max<uint64_t>(v1 - v0, EB_BLOCK));
    load_block(in, dt, v0, (int)(v1 - v0), x.data());
    Moments& m = part[c];
    double sum = 0;
    x.resize(v1 - v0);
    for (float f : x)
      if (isfinite(f)) {
        m.n++;
        sum += f;
        m.lo = std::min(m.lo, (double)f);
        m.hi = std::max(m.hi, (double)f);
      }
    if (!m.n) return;
    m.mean = sum / (double)m.n;
    for (float f : x)
      if (isfinite(f)) m.m2 += ((double)f - m.mean) * ((double)f - m.mean);
  });
  Moments all;
  for (auto& m : part) all.merge(m);
  return all;
}

}  // namespace

double resolve_bound(const void* in, size_t n, const EncodeParams& p) {
  if (!(p.bound > 0) || !isfinite(p.bound))
    throw CodecError("BAD_BOUND", "error bound must be a positive finite number, got " + std::to_string(p.bound));
  double eb;
  if (p.mode == BoundMode::Abs || n == 0) {
    eb = p.mode == BoundMode::Abs ? p.bound : 1.0;
  } else {
    Moments m = moments(in, n, p.dtype, p.threads);
    double spread = m.n == 0 ? 0 : p.mode == BoundMode::Rel ? m.hi - m.lo : sqrt(m.m2 / (double)m.n);
    eb = spread > 0 ? p.bound * spread : (double)FLT_MIN;
    if (eb < (double)FLT_MIN) eb = (double)FLT_MIN;  // a tiny spread: keep eb a normal f32
  }
  double f = floor_to_f32(eb);
  if (!(f > 0) || !isnormal((float)f))
    throw CodecError("BAD_BOUND", "error bound " + std::to_string(eb) + " is not a normal f32 value");
  if (!isfinite((float)ldexp(f, p.cut[0])))
    throw CodecError("BAD_BOUND", "the loosest rung's bound overflows f32");
  return f;
}

std::vector<uint8_t> encode(const void* in, size_t n, const EncodeParams& p) {
  if (n > kMaxCount) throw CodecError("BAD_COUNT", "a stream holds at most 2^32-1 values, got " + std::to_string(n));
  int R = (int)p.cut.size();
  if (R < 1 || R > EB_MAX_RUNGS) throw CodecError("BAD_RUNGS", "a ladder has 1..16 rungs, got " + std::to_string(R));
  for (int j = 0; j < R; j++) {
    if (p.cut[j] > EB_MAX_CUT || (j > 0 && p.cut[j] >= p.cut[j - 1]) || (j == R - 1 && p.cut[j] != 0))
      throw CodecError("BAD_RUNG", "ladder rungs must drop strictly fewer planes each, at most 21, the last none");
  }
  Header h;
  h.dtype = p.dtype;
  h.count = n;
  h.rungs = (uint8_t)R;
  h.bound_mode = p.mode;
  h.bound_param = p.bound;
  std::copy(p.cut.begin(), p.cut.end(), h.cut);
  h.eb = resolve_bound(in, n, p);
  if (p.coder == kModeEntropy) return encode_entropy(in, n, p, h);
  if (p.coder != kModeFixed) throw CodecError("BAD_MODE", "coder " + std::to_string(p.coder) + " (0 fixed, 1 entropy)");
  Quantizer q = make_quantizer(h.eb, h.cut, R);

  uint64_t nb = h.blocks();
  int chunks = (int)((nb + kChunkBlocks - 1) / kChunkBlocks);
  std::vector<uint8_t> rates(pad4(nb), 0);
  std::vector<ChunkOut> parts(chunks);
  {
    int threads = std::max(1, std::min(p.threads, chunks));
    std::vector<std::vector<std::vector<uint8_t>>> scratch(threads, std::vector<std::vector<uint8_t>>(R));
    std::atomic<int> next{0};
    parallel_for(threads, threads, [&](int t) {
      for (int c; (c = next.fetch_add(1)) < chunks;) {
        uint64_t b0 = (uint64_t)c * kChunkBlocks;
        encode_chunk(in, p.dtype, n, b0, std::min<uint64_t>(nb, b0 + kChunkBlocks), q, rates.data(),
                     parts[c], scratch[t].data());
      }
    });
  }

  // Sizes and offsets, then every chunk's words copied to its place in each rung.
  uint64_t total[EB_MAX_RUNGS] = {0};
  std::vector<uint64_t> start((size_t)chunks * R);
  for (int c = 0; c < chunks; c++) {
    h.escapes += parts[c].esc.size();
    for (int j = 0; j < R; j++) {
      start[(size_t)c * R + j] = total[j];
      total[j] += parts[c].rung[j].size();
    }
  }
  uint64_t fixed0 = pad4(nb) + 8 * h.escapes;
  uint64_t at = 0;
  for (int j = 0; j < R; j++) {
    h.rung_offset[j] = at;
    h.rung_bytes[j] = total[j] + (j == 0 ? fixed0 : 0);
    at += h.rung_bytes[j];
  }
  h.payload_bytes = at;

  std::vector<uint8_t> out(h.head_bytes() + h.payload_bytes);
  uint8_t* payload = out.data() + h.head_bytes();
  memcpy(payload, rates.data(), rates.size());
  uint8_t* ep = payload + pad4(nb);
  for (auto& part : parts)
    for (auto& e : part.esc) {
      store_u32(ep, e.first);
      store_u32(ep + 4, e.second);
      ep += 8;
    }
  parallel_for(chunks, p.threads, [&](int c) {
    for (int j = 0; j < R; j++) {
      auto& words = parts[c].rung[j];
      if (!words.empty())
        memcpy(payload + h.rung_offset[j] + (j == 0 ? fixed0 : 0) + start[(size_t)c * R + j], words.data(), words.size());
      std::vector<uint8_t>().swap(words);
    }
  });
  for (int j = 0; j < R; j++) h.rung_crc[j] = crc32c_parallel(payload + h.rung_offset[j], h.rung_bytes[j], p.threads);
  write_head(h, out.data());
  return out;
}

void decode(const StreamView& s, int k, DType out_dtype, void* out, int threads) {
  if (k < 0 || k >= s.available)
    throw CodecError("BAD_RUNGS", "cannot decode rung " + std::to_string(k) + " from " +
                                      std::to_string(s.available) + " rungs");
  if (s.h.mode == kModeEntropy) return decode_entropy(s, k, out_dtype, out, threads);
  int chunks = (int)((s.h.blocks() + kChunkBlocks - 1) / kChunkBlocks);
  parallel_for(chunks, threads, [&](int c) { decode_chunk(s, k, out_dtype, out, (uint64_t)c); });
}

double quantized_entropy_bits(const void* in, size_t n, DType dtype, double eb) {
  if (n == 0) return 0;
  const int64_t span = (int64_t)1 << EB_MAX_RATE;
  std::vector<uint32_t> hist(2 * span + 1, 0);
  uint64_t other = 0;
  float inv2eb = (float)(0.5 / floor_to_f32(eb));
  alignas(64) float x[EB_BLOCK];
  for (size_t start = 0; start < n; start += EB_BLOCK) {
    int cnt = (int)std::min<size_t>(EB_BLOCK, n - start);
    load_block(in, dtype, start, cnt, x);
    for (int i = 0; i < cnt; i++) {
      float q = rintf(x[i] * inv2eb);
      if (fabsf(q) < (float)span) hist[(int64_t)q + span]++; else other++;
    }
  }
  double bits = 0;
  auto add = [&](double c) { if (c > 0) bits -= c / (double)n * log2(c / (double)n); };
  for (uint32_t c : hist) add(c);
  add((double)other);
  return bits;
}

const char* simd_level() {
#if defined(__x86_64__) && !defined(EB_NO_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2)";
  return "x86-64 baseline";
#else
  return "portable C++";
#endif
}

}  // namespace eb
