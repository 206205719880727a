#include "decoder_cpu.h"

#include <math.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

#include "clones.h"
#include "expert_kernels.h"

namespace eb {
namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Adds the time from construction to destruction to a step's seconds.
struct Timed {
  Step& s;
  double t0 = now();
  ~Timed() { s.seconds += now() - t0; }
};

// y[T, rows] = x[T, cols] · W^T for W [rows, cols]; bias added when given.
void linear(const MatrixRef& w, const float* bias, int rows, int cols, const float* x, int T, float* y, int threads) {
  matrix_rows_parallel(w, rows, cols, x, cols, T, y, rows, threads);
  if (bias)
    for (int t = 0; t < T; t++)
      for (int r = 0; r < rows; r++) y[(size_t)t * rows + r] += bias[r];
}

// The sum of a[i]·b[i] for i < n: 16 lanes in two accumulators (even and odd chunks), ek_hsum's
// fixed tree, then the last n % 16 terms one by one. A fixed order whatever the batch, so a
// token's results do not depend on the tokens beside it; a scalar sum's chain of dependent adds
// cost ~4 cycles a term, and attention's scores are most of a long context's step.
EB_AI float dot(const float* a, const float* b, int n) {
  v16f s0 = {}, s1 = {};
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = ek_fma(ek_loadf(a + i), ek_loadf(b + i), s0);
    s1 = ek_fma(ek_loadf(a + i + 16), ek_loadf(b + i + 16), s1);
  }
  if (i + 16 <= n) {
    s0 = ek_fma(ek_loadf(a + i), ek_loadf(b + i), s0);
    i += 16;
  }
  float s = ek_hsum(s0, s1);
  for (; i < n; i++) s = __builtin_fmaf(a[i], b[i], s);
  return s;
}

// x · rsqrt(mean(x²) + ε) · w, per row of n values (the model's rmsNorm).
EB_CLONES void rms_norm(const float* x, const float* w, int T, int n, float eps, float* y) {
  for (int t = 0; t < T; t++) {
    const float* a = x + (size_t)t * n;
    const float inv = 1.0f / sqrtf(dot(a, a, n) / (float)n + eps);
    for (int i = 0; i < n; i++) y[(size_t)t * n + i] = a[i] * inv * w[i];
  }
}

// One query head's attention over `seen` cached positions: out[hd] = softmax(q·K^T · scale) · V,
// K and V rows `stride` floats apart. `p` holds seen rounded up to 16 floats. The scores' maximum
// is subtracted before e^x (ek_exp, 16 lanes), the exponentials summed in lanes and by a fixed
// tree; the weighted sum of V rows runs over the head's values in 16-lane chunks.
EB_CLONES void attend(const float* q, const float* keys, const float* vals, int stride, int hd, int seen, float scale, float* p,
                      float* out) {
  float mx = -INFINITY;
  for (int j = 0; j < seen; j++) {
    p[j] = dot(q, keys + (size_t)j * stride, hd) * scale;
    mx = p[j] > mx ? p[j] : mx;
  }
  v16f z = {};
  for (int j = 0; j < seen; j += 16) {
    v16f e = ek_exp(ek_loadf(p + j) - mx);
    for (int i = seen - j; i < 16; i++) e[i] = 0;  // the last chunk's lanes past `seen`
    memcpy(p + j, &e, sizeof e);
    z += e;
  }
  const float inv = 1.0f / ek_hsum(z, v16f{});
  // The weighted sum in four accumulators (positions j mod 4, added pairwise at the end): one
  // accumulator's chain of dependent FMAs would cost ~4 cycles a position.
  int c = 0;
  for (; c + 16 <= hd; c += 16) {
    const float* v = vals + c;
    v16f a0 = {}, a1 = {}, a2 = {}, a3 = {};
    int j = 0;
    for (; j + 4 <= seen; j += 4) {
      a0 = ek_fma(v16f{} + p[j], ek_loadf(v + (size_t)j * stride), a0);
      a1 = ek_fma(v16f{} + p[j + 1], ek_loadf(v + (size_t)(j + 1) * stride), a1);
      a2 = ek_fma(v16f{} + p[j + 2], ek_loadf(v + (size_t)(j + 2) * stride), a2);
      a3 = ek_fma(v16f{} + p[j + 3], ek_loadf(v + (size_t)(j + 3) * stride), a3);
    }
    if (j < seen) a0 = ek_fma(v16f{} + p[j], ek_loadf(v + (size_t)j * stride), a0);
    if (j + 1 < seen) a1 = ek_fma(v16f{} + p[j + 1], ek_loadf(v + (size_t)(j + 1) * stride), a1);
    if (j + 2 < seen) a2 = ek_fma(v16f{} + p[j + 2], ek_loadf(v + (size_t)(j + 2) * stride), a2);
    v16f o = ((a0 + a1) + (a2 + a3)) * inv;
    memcpy(out + c, &o, sizeof o);
  }
  for (; c < hd; c++) {  // a head size that is not a multiple of 16: its last values one by one
    float a = 0;
    for (int j = 0; j < seen; j++) a = __builtin_fmaf(p[j], vals[(size_t)j * stride + c], a);
    out[c] = a * inv;
  }
}

// Hugging Face's rotary embedding on [T, heads, hd] at positions pos0.. : x·cos + rotate_half(x)·sin.
void rotate(float* x, int T, int heads, int hd, int pos0, const float* cos, const float* sin) {
  const int half = hd / 2;
  std::vector<float> tmp(hd);
  for (int t = 0; t < T; t++) {
    const float* c = cos + (size_t)(pos0 + t) * hd;
    const float* s = sin + (size_t)(pos0 + t) * hd;
    for (int h = 0; h < heads; h++) {
      float* v = x + ((size_t)t * heads + h) * hd;
      for (int i = 0; i < half; i++) {
        tmp[i] = v[i] * c[i] - v[i + half] * s[i];
        tmp[i + half] = v[i + half] * c[i + half] + v[i] * s[i + half];
      }
      memcpy(v, tmp.data(), sizeof(float) * hd);
    }
  }
}

void softmax(float* x, int n) {
  float mx = x[0];
  for (int i = 1; i < n; i++) mx = std::max(mx, x[i]);
  float z = 0;
  for (int i = 0; i < n; i++) z += (x[i] = expf(x[i] - mx));
  for (int i = 0; i < n; i++) x[i] /= z;
}

void add(float* x, const float* y, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] += y[i];
}

// Layer L's routing of the residual stream x [T, d]: its post-attention norm (into `normed`), the
// router, softmax, the top k by probability (ties to the lower index), renormalised when the model
// says so. `weights` may be null (a prediction needs only the ids).
void route(const DecoderModel& m, const DecoderLayer& L, const float* x, int T, float* normed, int32_t* ids, float* weights, int threads) {
  const int d = m.d, E = m.E, K = m.top_k;
  rms_norm(x, L.post_norm, T, d, m.eps, normed);
  std::vector<float> logits((size_t)T * E);
  linear(L.router, nullptr, E, d, normed, T, logits.data(), threads);
  for (int t = 0; t < T; t++) {
    float* pr = &logits[(size_t)t * E];
    softmax(pr, E);
    int32_t* id = ids + (size_t)t * K;
    float sum = 0;
    for (int j = 0; j < K; j++) {
      int best = -1;
      for (int e = 0; e < E; e++) {
        bool taken = false;
        for (int i = 0; i < j; i++) taken |= id[i] == e;
        if (!taken && (best < 0 || pr[e] > pr[best])) best = e;
      }
      id[j] = best;
      sum += pr[best];
      if (weights) weights[(size_t)t * K + j] = pr[best];
    }
    if (weights && m.norm_topk)
      for (int j = 0; j < K; j++) weights[(size_t)t * K + j] /= sum;
  }
}

}  // namespace

void step_begin(const DecoderModel& m, Step& s, const int32_t* tokens) {
  Timed timed{s};
  const int d = m.d;
  if (s.segs.empty()) throw std::invalid_argument("a step needs at least one sequence");
  int T = 0;
  for (size_t i = 0; i < s.segs.size(); i++) {
    const Segment& g = s.segs[i];
    const std::string which = "sequence " + std::to_string(i) + ": ";
    if (g.first != T || g.count < 1) throw std::invalid_argument(which + "needs at least one token, right after the previous sequence's");
    if (g.pos0 < 0 || g.pos0 + g.count > m.max_pos)
      throw std::invalid_argument(which + "context is " + std::to_string(m.max_pos) + " positions; " + std::to_string(g.pos0 + g.count) + " asked");
    if (g.keys.size() != m.layers.size() || g.values.size() != m.layers.size())
      throw std::invalid_argument(which + "the cache has " + std::to_string(g.keys.size()) + " layers, the model " + std::to_string(m.layers.size()));
    T += g.count;
  }
  if (T != s.T) throw std::invalid_argument("the sequences hold " + std::to_string(T) + " tokens, the step " + std::to_string(s.T));
  for (int t = 0; t < T; t++)
    if (tokens[t] < 0 || tokens[t] >= m.V)
      throw std::invalid_argument("token " + std::to_string(tokens[t]) + " outside the vocabulary of " + std::to_string(m.V));
  s.x.resize((size_t)T * d);
  for (int t = 0; t < T; t++) {
    float* x = &s.x[(size_t)t * d];
    if (m.embed.bf16) {
      const uint16_t* row = m.embed.bf16 + (size_t)tokens[t] * d;
      for (int i = 0; i < d; i++) {
        const uint32_t bits = (uint32_t)row[i] << 16;
        memcpy(&x[i], &bits, sizeof(float));
      }
    } else {
      memcpy(x, m.embed.dense + (size_t)tokens[t] * d, sizeof(float) * d);
    }
  }
  // Layer 0 has no layer before it to overlap: its router on the embeddings predicts it while
  // its attention runs (measured on the embedded model: 277 of its 280 experts in a decode run).
  route(m, m.layers[0], s.x.data(), T, s.hidden, s.predicted, nullptr, s.threads);
}

void step_layer(const DecoderModel& m, Step& s, int l, const float* moe) {
  Timed timed{s};
  const int d = m.d, T = s.T, H = m.H, KV = m.KV, hd = m.hd, kw = KV * hd, G = H / KV;
  const DecoderLayer& L = m.layers[l];
  if (moe) add(s.x.data(), moe, s.x.size());
  std::vector<float> h((size_t)T * d), q((size_t)T * H * hd), k((size_t)T * kw), v((size_t)T * kw), ctx((size_t)T * H * hd), o((size_t)T * d);
  rms_norm(s.x.data(), L.input_norm, T, d, m.eps, h.data());
  linear(L.wq, L.bq, H * hd, d, h.data(), T, q.data(), s.threads);
  linear(L.wk, L.bk, kw, d, h.data(), T, k.data(), s.threads);
  linear(L.wv, L.bv, kw, d, h.data(), T, v.data(), s.threads);
  // In place: rms_norm reads a row's values before it writes them.
  if (m.qk_norm == QkNorm::full) {
    rms_norm(q.data(), L.q_norm, T, H * hd, m.eps, q.data());
    rms_norm(k.data(), L.k_norm, T, kw, m.eps, k.data());
  } else if (m.qk_norm == QkNorm::head) {
    rms_norm(q.data(), L.q_norm, T * H, hd, m.eps, q.data());
    rms_norm(k.data(), L.k_norm, T * KV, hd, m.eps, k.data());
  }
  const float scale = 1.0f / sqrtf((float)hd);
  for (const Segment& g : s.segs) {
    float* qg = &q[(size_t)g.first * H * hd];
    float* kg = &k[(size_t)g.first * kw];
    rotate(qg, g.count, H, hd, g.pos0, m.cos, m.sin);
    rotate(kg, g.count, KV, hd, g.pos0, m.cos, m.sin);
    memcpy(g.keys[l] + (size_t)g.pos0 * kw, kg, sizeof(float) * g.count * kw);
    memcpy(g.values[l] + (size_t)g.pos0 * kw, &v[(size_t)g.first * kw], sizeof(float) * g.count * kw);
    const float* keys = g.keys[l];
    const float* vals = g.values[l];
    const int seen = g.pos0 + g.count;
    // Causal attention over this sequence's own cache: position pos0 + t sees 0 .. pos0 + t;
    // query head h reads KV head h / G. One task a (position, head); on the pool once the cache
    // read is large (a long context: each position's keys and values, every layer).
    const size_t cache_bytes = (size_t)seen * kw * 2 * sizeof(float);
    run_tasks(g.count * H, cache_bytes >= kParallelBytes ? s.threads : 1, [&](int task) {
      const int t = task / H, hh = task % H;
      thread_local std::vector<float> p;
      p.resize((size_t)(seen + 15) / 16 * 16);
      attend(&qg[((size_t)t * H + hh) * hd], keys + (hh / G) * hd, vals + (hh / G) * hd, kw, hd, g.pos0 + t + 1, scale, p.data(),
             &ctx[((size_t)(g.first + t) * H + hh) * hd]);
    });
  }
  linear(L.wo, nullptr, d, H * hd, ctx.data(), T, o.data(), s.threads);
  add(s.x.data(), o.data(), s.x.size());
  route(m, L, s.x.data(), T, s.hidden, s.ids, s.weights, s.threads);
  // The next layer's router on this residual stream predicts its experts, so their fetch can
  // overlap this layer's experts (its own norm's output goes to a scratch row, not `hidden`).
  if (l + 1 < (int)m.layers.size()) route(m, m.layers[l + 1], s.x.data(), T, h.data(), s.predicted, nullptr, s.threads);
}

int step_logit_rows(const Step& s) {
  int rows = 0;
  for (const Segment& g : s.segs) rows += g.all_logits ? g.count : 1;
  return rows;
}

void step_logits(const DecoderModel& m, Step& s, const float* moe, float* logits) {
  Timed timed{s};
  const int d = m.d;
  if (moe) add(s.x.data(), moe, s.x.size());
  // The rows that need logits, gathered: each segment's last position, or all of them.
  const int rows = step_logit_rows(s);
  std::vector<float> last((size_t)rows * d), h((size_t)rows * d);
  int r = 0;
  for (const Segment& g : s.segs) {
    const int from = g.all_logits ? g.first : g.first + g.count - 1, n = g.all_logits ? g.count : 1;
    memcpy(&last[(size_t)r * d], &s.x[(size_t)from * d], sizeof(float) * n * d);
    r += n;
  }
  rms_norm(last.data(), m.norm, rows, d, m.eps, h.data());
  linear(m.lm_head, nullptr, m.V, d, h.data(), rows, logits, s.threads);
}

double step_layer_macs(const DecoderModel& m, const Step& s) {
  const double d = m.d, qw = (double)m.H * m.hd, kw = (double)m.KV * m.hd;
  double attn = 0;
  for (const Segment& g : s.segs) attn += (double)g.count * (g.pos0 + g.count) * 2 * qw;
  return s.T * d * (2 * qw + 2 * kw + 2.0 * m.E) + attn;
}

}  // namespace eb
