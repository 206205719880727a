#include "decoder_cpu.h"

#include <math.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

namespace eb {
namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// y[T, rows] = x[T, cols] · W^T for W [rows, cols]; bias added when given.
void linear(const float* w, const float* bias, int rows, int cols, const float* x, int T, float* y, int threads) {
  matrix_rows_parallel(MatrixRef{w, nullptr}, rows, cols, x, cols, T, y, rows, threads);
  if (bias)
    for (int t = 0; t < T; t++)
      for (int r = 0; r < rows; r++) y[(size_t)t * rows + r] += bias[r];
}

// x · rsqrt(mean(x²) + ε) · w, per row of n values (the model's rmsNorm).
void rms_norm(const float* x, const float* w, int T, int n, float eps, float* y) {
  for (int t = 0; t < T; t++) {
    const float* a = x + (size_t)t * n;
    float ss = 0;
    for (int i = 0; i < n; i++) ss += a[i] * a[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) y[(size_t)t * n + i] = a[i] * inv * w[i];
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

}  // namespace

void decoder_forward(const DecoderModel& m, ForwardCall& c) {
  const int d = m.d, T = c.T, H = m.H, KV = m.KV, hd = m.hd, kw = KV * hd, E = m.E, K = m.top_k;
  if (T < 1) throw std::invalid_argument("forward needs at least one token");
  if (c.pos0 < 0 || c.pos0 + T > m.max_pos)
    throw std::invalid_argument("context is " + std::to_string(m.max_pos) + " positions; " + std::to_string(c.pos0 + T) + " asked");
  if ((int)c.keys.size() != (int)m.layers.size() || (int)c.values.size() != (int)m.layers.size())
    throw std::invalid_argument("the cache has " + std::to_string(c.keys.size()) + " layers, the model " + std::to_string(m.layers.size()));
  for (int t = 0; t < T; t++)
    if (c.tokens[t] < 0 || c.tokens[t] >= m.V)
      throw std::invalid_argument("token " + std::to_string(c.tokens[t]) + " outside the vocabulary of " + std::to_string(m.V));
  double t_start = now(), expert = 0;
  std::vector<float> x((size_t)T * d), h((size_t)T * d), q((size_t)T * H * hd), k((size_t)T * kw), v((size_t)T * kw);
  std::vector<float> ctx((size_t)T * H * hd), o((size_t)T * d), rl((size_t)T * E), moe((size_t)T * d);
  for (int t = 0; t < T; t++) memcpy(&x[(size_t)t * d], m.embed + (size_t)c.tokens[t] * d, sizeof(float) * d);
  const int S = c.pos0 + T, G = H / KV;
  std::vector<float> p(S);
  const float scale = 1.0f / sqrtf((float)hd);
  for (size_t l = 0; l < m.layers.size(); l++) {
    const DecoderLayer& L = m.layers[l];
    rms_norm(x.data(), L.input_norm, T, d, m.eps, h.data());
    linear(L.wq, L.bq, H * hd, d, h.data(), T, q.data(), c.threads);
    linear(L.wk, L.bk, kw, d, h.data(), T, k.data(), c.threads);
    linear(L.wv, L.bv, kw, d, h.data(), T, v.data(), c.threads);
    rotate(q.data(), T, H, hd, c.pos0, m.cos, m.sin);
    rotate(k.data(), T, KV, hd, c.pos0, m.cos, m.sin);
    memcpy(c.keys[l] + (size_t)c.pos0 * kw, k.data(), sizeof(float) * T * kw);
    memcpy(c.values[l] + (size_t)c.pos0 * kw, v.data(), sizeof(float) * T * kw);
    const float* keys = c.keys[l];
    const float* vals = c.values[l];
    // Causal attention: position pos0 + t sees positions 0 .. pos0 + t; query head h reads KV head h / G.
    for (int t = 0; t < T; t++) {
      const int seen = c.pos0 + t + 1;
      for (int hh = 0; hh < H; hh++) {
        const float* qv = &q[((size_t)t * H + hh) * hd];
        const int g = hh / G;
        for (int s = 0; s < seen; s++) {
          const float* kv = keys + (size_t)s * kw + g * hd;
          float dot = 0;
          for (int i = 0; i < hd; i++) dot += qv[i] * kv[i];
          p[s] = dot * scale;
        }
        softmax(p.data(), seen);
        float* out = &ctx[((size_t)t * H + hh) * hd];
        for (int i = 0; i < hd; i++) out[i] = 0;
        for (int s = 0; s < seen; s++) {
          const float* vv = vals + (size_t)s * kw + g * hd;
          for (int i = 0; i < hd; i++) out[i] += p[s] * vv[i];
        }
      }
    }
    linear(L.wo, nullptr, d, H * hd, ctx.data(), T, o.data(), c.threads);
    for (size_t i = 0; i < x.size(); i++) x[i] += o[i];
    rms_norm(x.data(), L.post_norm, T, d, m.eps, h.data());
    // Router: softmax over experts, the top k by probability (ties to the lower index).
    linear(L.router, nullptr, E, d, h.data(), T, rl.data(), c.threads);
    int32_t* ids = c.route_ids + (size_t)l * T * K;
    float* w = c.route_weights + (size_t)l * T * K;
    for (int t = 0; t < T; t++) {
      float* pr = &rl[(size_t)t * E];
      softmax(pr, E);
      float sum = 0;
      for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
          bool taken = false;
          for (int i = 0; i < j; i++) taken |= ids[t * K + i] == e;
          if (!taken && (best < 0 || pr[e] > pr[best])) best = e;
        }
        ids[t * K + j] = best;
        w[t * K + j] = pr[best];
        sum += pr[best];
      }
      if (m.norm_topk)
        for (int j = 0; j < K; j++) w[t * K + j] /= sum;
    }
    LayerCall call;
    call.d = d;
    call.ff = m.ff;
    call.T = T;
    call.k = K;
    call.hidden = h.data();
    call.slot_expert = ids;
    call.slot_weight = w;
    call.experts = L.experts.data();
    call.num_experts = (int)L.experts.size();
    call.out = moe.data();
    call.threads = c.threads;
    call.back_to_back = true;
    double e0 = now();
    expert_layer(call);
    expert += now() - e0;
    for (size_t i = 0; i < x.size(); i++) x[i] += moe[i];
  }
  const int rows = c.all_logits ? T : 1;
  const float* last = x.data() + (size_t)(T - rows) * d;
  rms_norm(last, m.norm, rows, d, m.eps, h.data());
  linear(m.lm_head, nullptr, m.V, d, h.data(), rows, c.logits, c.threads);
  c.expert_seconds = expert;
  c.other_seconds = now() - t_start - expert;
}

}  // namespace eb
