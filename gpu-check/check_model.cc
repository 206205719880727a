// check_model.cc — one decode step of the embedded model (models/ebserve-moe-8x, Mixtral-style)
// with its experts computed on the target, against the CPU native forward.
//
// Both runs use the native forward (src/native/decoder_cpu.cc) for embeddings, attention, norms,
// routers and the LM head — the host's part in the product, whatever engine computes experts —
// and differ only in their experts. Every expert matrix is compressed once on the CPU (a 2-rung
// ladder at 0.1σ / 0.05σ of the tensor, from its checkpoint bf16) and read at rung 1:
//   reference: eb::decode's weights, multiplied by the CPU expert engine (eb::expert_layer);
//   target:    each routed expert fetched through the offload pipeline (pinned rungs → copy
//              stream → decode kernels → its device buffer), then the FFN kernels on the compute
//              stream, outputs combined with the router's weights in slot order as the engine does.
// A 16-token prompt, then one decode step of the reference's greedy next token; each run keeps its
// own KV cache. Passing: every logit of both steps within 1e-4 (absolute) of the reference's.
#include <string.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/eb_pipeline.h"
#include "../src/native/codec_cpu.h"
#include "../src/native/decoder_cpu.h"
#include "../src/native/expert_cpu.h"
#include "checks.h"
#include "json.h"
#include "safetensors.h"
#include "util.h"

namespace gpucheck {

namespace {

// The model: its shapes, its dense weights as the native forward reads them, and every expert
// matrix as a compressed stream with the CPU decoder's weights beside it.
struct Model {
  eb::DecoderModel m;
  int L = 0, ff = 0;
  std::vector<std::vector<float>> dense;              // storage behind m's pointers
  std::vector<float> cos, sin;
  std::vector<std::vector<uint8_t>> stream;           // [(l·E + e)·3 + matrix], matrix: gate, up, down
  std::vector<std::vector<float>> decoded;            // eb::decode's weights of each stream, at rung 1
  uint64_t compressed_bytes = 0;

  const float* keep(std::vector<float> v) {
    dense.push_back(std::move(v));
    return dense.back().data();
  }
};

double config_number(const Json& c, const char* key) {
  const Json* v = c.get(key);
  if (!v || v->kind != Json::Number) throw std::runtime_error(std::string("config.json: ") + key + " must be a number");
  return v->number;
}

Model load(const std::string& dir, int threads) {
  std::ifstream f(dir + "/config.json");
  if (!f) throw std::runtime_error(dir + "/config.json: cannot open it (run from the repository root, or pass --model DIR)");
  const Json c = parse_json(std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()));
  const Json* type = c.get("model_type");
  if (!type || type->string != "mixtral")
    throw std::runtime_error(dir + "/config.json: the kit reads Mixtral-style checkpoints (the embedded model's); model_type is " +
                             (type ? type->string : std::string("missing")));
  Model md;
  eb::DecoderModel& m = md.m;
  m.d = (int)config_number(c, "hidden_size");
  m.H = (int)config_number(c, "num_attention_heads");
  m.KV = (int)config_number(c, "num_key_value_heads");
  m.hd = c.get("head_dim") && c.get("head_dim")->kind == Json::Number ? (int)c.get("head_dim")->number : m.d / m.H;
  m.V = (int)config_number(c, "vocab_size");
  m.E = (int)config_number(c, "num_local_experts");
  m.top_k = (int)config_number(c, "num_experts_per_tok");
  m.max_pos = (int)config_number(c, "max_position_embeddings");
  m.eps = (float)config_number(c, "rms_norm_eps");
  m.norm_topk = true;  // Mixtral renormalises its top-k weights
  md.L = (int)config_number(c, "num_hidden_layers");
  md.ff = (int)config_number(c, "intermediate_size");
  const double theta = config_number(c, "rope_theta");
  const int64_t d = m.d, ff = md.ff, qw = (int64_t)m.H * m.hd, kw = (int64_t)m.KV * m.hd;

  const SafeTensors st(dir + "/model.safetensors");
  m.embed.dense = md.keep(st.f32("model.embed_tokens.weight", {m.V, d}));
  m.norm = md.keep(st.f32("model.norm.weight", {d}));
  const Json* tie = c.get("tie_word_embeddings");
  m.lm_head.dense = tie && tie->boolean ? m.embed.dense : md.keep(st.f32("lm_head.weight", {m.V, d}));
  // Hugging Face's rotary tables: cos and sin of position · θ^(−2i/hd), both halves alike.
  md.cos.resize((size_t)m.max_pos * m.hd);
  md.sin.resize(md.cos.size());
  for (int p = 0; p < m.max_pos; p++)
    for (int i = 0; i < m.hd / 2; i++) {
      double angle = p * pow(theta, -2.0 * i / m.hd);
      md.cos[(size_t)p * m.hd + i] = md.cos[(size_t)p * m.hd + i + m.hd / 2] = (float)cos(angle);
      md.sin[(size_t)p * m.hd + i] = md.sin[(size_t)p * m.hd + i + m.hd / 2] = (float)sin(angle);
    }
  m.cos = md.cos.data();
  m.sin = md.sin.data();

  for (int l = 0; l < md.L; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    eb::DecoderLayer layer;
    layer.input_norm = md.keep(st.f32(p + "input_layernorm.weight", {d}));
    layer.post_norm = md.keep(st.f32(p + "post_attention_layernorm.weight", {d}));
    layer.wq.dense = md.keep(st.f32(p + "self_attn.q_proj.weight", {qw, d}));
    layer.wk.dense = md.keep(st.f32(p + "self_attn.k_proj.weight", {kw, d}));
    layer.wv.dense = md.keep(st.f32(p + "self_attn.v_proj.weight", {kw, d}));
    layer.wo.dense = md.keep(st.f32(p + "self_attn.o_proj.weight", {d, qw}));
    if (st.has(p + "self_attn.q_proj.bias")) layer.bq = md.keep(st.f32(p + "self_attn.q_proj.bias", {qw}));
    if (st.has(p + "self_attn.k_proj.bias")) layer.bk = md.keep(st.f32(p + "self_attn.k_proj.bias", {kw}));
    if (st.has(p + "self_attn.v_proj.bias")) layer.bv = md.keep(st.f32(p + "self_attn.v_proj.bias", {kw}));
    layer.router.dense = md.keep(st.f32(p + "block_sparse_moe.gate.weight", {m.E, d}));
    m.layers.push_back(layer);

    for (int e = 0; e < m.E; e++) {
      const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      // Mixtral's names: w1 = gate, w3 = up ([ff, d]); w2 = down ([d, ff]).
      const SafeTensors::Tensor* mats[3] = {&st.at(x + "w1.weight", {ff, d}), &st.at(x + "w3.weight", {ff, d}),
                                            &st.at(x + "w2.weight", {d, ff})};
      for (const SafeTensors::Tensor* t : mats) {
        eb::EncodeParams ep;
        ep.dtype = t->dtype == "BF16" ? eb::DType::BF16 : t->dtype == "F16" ? eb::DType::F16 : eb::DType::F32;
        if (t->dtype != "BF16" && t->dtype != "F16" && t->dtype != "F32") throw std::runtime_error("expert weights are " + t->dtype);
        ep.bound = 0.05;
        ep.mode = eb::BoundMode::Sigma;
        ep.cut = {1, 0};
        ep.threads = threads;
        md.stream.push_back(eb::encode(t->data, (size_t)(d * ff), ep));
        const eb::StreamView v = eb::parse_stream(md.stream.back().data(), md.stream.back().size(), true, threads);
        md.decoded.emplace_back((size_t)(d * ff));
        eb::decode(v, 1, eb::DType::F32, md.decoded.back().data(), threads);
        md.compressed_bytes += md.stream.back().size();
      }
    }
  }
  return md;
}

struct Cache {
  std::vector<std::vector<float>> keys, values;  // per layer [max_pos, KV·hd]
  Cache(const eb::DecoderModel& m) {
    for (size_t l = 0; l < m.layers.size(); l++) {
      keys.emplace_back((size_t)m.max_pos * m.KV * m.hd);
      values.emplace_back((size_t)m.max_pos * m.KV * m.hd);
    }
  }
};

// One step of `tokens` at positions pos0.. with the native forward; experts(l, step, moe) writes
// layer l's expert output [T, d] into moe. Returns the logits of the last position [V].
template <class Experts>
std::vector<float> forward(const eb::DecoderModel& m, Cache& cache, const std::vector<int32_t>& tokens, int pos0, Experts&& experts) {
  const int T = (int)tokens.size(), K = m.top_k;
  eb::Step s;
  s.T = T;
  eb::Segment g;
  g.first = 0;
  g.count = T;
  g.pos0 = pos0;
  for (size_t l = 0; l < m.layers.size(); l++) {
    g.keys.push_back(cache.keys[l].data());
    g.values.push_back(cache.values[l].data());
  }
  s.segs = {g};
  std::vector<float> hidden((size_t)T * m.d), weights((size_t)T * K), moe((size_t)T * m.d), logits(m.V);
  std::vector<int32_t> ids((size_t)T * K), predicted((size_t)T * K);
  s.hidden = hidden.data();
  s.ids = ids.data();
  s.weights = weights.data();
  s.predicted = predicted.data();
  eb::step_begin(m, s, tokens.data());
  for (int l = 0; l < (int)m.layers.size(); l++) {
    eb::step_layer(m, s, l, l ? moe.data() : nullptr);
    experts(l, s, moe.data());
  }
  eb::step_logits(m, s, moe.data(), logits.data());
  return logits;
}

// The target's experts: each routed expert's three matrices fetched through the offload pipeline
// into that expert's device buffer, then the FFN kernels on the compute stream.
class TargetExperts {
 public:
  TargetExperts(Runtime& rt, const Model& md, int max_rows) : rt_(rt), md_(md), d_(md.m.d), ff_(md.ff), pipe_(rt) {
    const size_t w = (size_t)d_ * ff_;
    for (int e = 0; e < md.m.E; e++) buf_.push_back(std::make_unique<DeviceArray<float>>(rt, 3 * w));
    used_.assign(md.m.E, false);
    x_host_ = std::make_unique<PinnedArray<float>>(rt, (size_t)max_rows * d_);
    y_host_ = std::make_unique<PinnedArray<float>>(rt, (size_t)max_rows * d_);
    x_ = std::make_unique<DeviceArray<float>>(rt, (size_t)max_rows * d_);
    h_ = std::make_unique<DeviceArray<float>>(rt, (size_t)max_rows * ff_);
    y_ = std::make_unique<DeviceArray<float>>(rt, (size_t)max_rows * d_);
    compute_ = rt.stream_create("compute");
    // Every expert's rungs in pinned memory, validated once, as the store keeps them.
    for (const std::vector<uint8_t>& s : md.stream) {
      const eb::StreamView v = eb::parse_stream(s.data(), s.size(), false);
      const uint8_t* rungs[EB_MAX_RUNGS];
      size_t lens[EB_MAX_RUNGS];
      for (int j = 0; j < v.h.rungs; j++) {
        rungs[j] = s.data() + v.h.head_bytes() + v.h.rung_offset[j];
        lens[j] = v.h.rung_bytes[j];
      }
      arena_.push_back(std::make_unique<eb::PinnedArena<Runtime>>(rt, s.data(), v.h.head_bytes(), rungs, lens, v.h.rungs));
    }
  }
  ~TargetExperts() {
    try {
      rt_.stream_synchronize(compute_);  // the pinned rows and buffers below must outlive its work
    } catch (...) {
      // A destructor must not throw; the error already reached the check that ran.
    }
    rt_.stream_destroy(compute_);
  }

  uint64_t fetched_bytes() const { return fetched_bytes_; }
  int fetched_experts() const { return fetched_experts_; }

  void operator()(int l, const eb::Step& s, float* moe) {
    const int T = s.T, K = md_.m.top_k, E = md_.m.E, d = d_, ff = ff_;
    const size_t w = (size_t)d * ff;
    std::vector<std::vector<int>> slots(E);
    for (int i = 0; i < T * K; i++) slots[s.ids[i]].push_back(i);
    // Every routed expert's fetch first, so the copies and decodes of later experts overlap the
    // FFNs of earlier ones; a buffer that held another layer's expert waits for its FFN work.
    std::vector<eb::ExpertPipeline<Runtime>::Ticket> tickets;
    for (int e = 0; e < E; e++) {
      if (slots[e].empty()) continue;
      for (int m = 0; m < 3; m++) {
        tickets.push_back(pipe_.enqueue_fetch(*arena_[((size_t)l * E + e) * 3 + m], 1, eb::DType::F32, buf_[e]->p + m * w,
                                              w * sizeof(float), used_[e] ? &compute_ : nullptr));
        pipe_.wait_ready(tickets.back(), compute_);  // the FFN below waits for the weights, not the host
      }
      used_[e] = true;
      fetched_experts_++;
    }
    std::vector<size_t> first_row(E);
    size_t row = 0;
    for (int e = 0; e < E; e++) {
      if (slots[e].empty()) continue;
      const int n = (int)slots[e].size();
      first_row[e] = row;
      for (int i = 0; i < n; i++) memcpy(x_host_->p + (row + i) * d, s.hidden + (size_t)(slots[e][i] / K) * d, sizeof(float) * d);
      const float* wts = buf_[e]->p;
      rt_.copy_h2d_async(x_->p + row * d, x_host_->p + row * d, sizeof(float) * n * d, compute_);
      rt_.expert_ffn(wts, wts + w, wts + 2 * w, x_->p + row * d, n, d, ff, h_->p + row * ff, y_->p + row * d, compute_);
      rt_.copy_d2h_async(y_host_->p + row * d, y_->p + row * d, sizeof(float) * n * d, compute_);
      row += n;
    }
    for (auto& t : tickets) {
      fetched_bytes_ += pipe_.bytes(t);
      pipe_.release(t);
    }
    rt_.stream_synchronize(compute_);
    // The router's weighted sum, slot by slot in order: the CPU engine's order.
    memset(moe, 0, sizeof(float) * T * d);
    std::vector<int> seen(E, 0);
    for (int i = 0; i < T * K; i++) {
      const int e = s.ids[i];
      const float* y = y_host_->p + (first_row[e] + seen[e]++) * d;
      for (int c = 0; c < d; c++) moe[(size_t)(i / K) * d + c] += s.weights[i] * y[c];
    }
  }

 private:
  Runtime& rt_;
  const Model& md_;
  const int d_, ff_;
  // Declared before the pipeline, so they outlive it: it waits for its queued work as it goes.
  std::vector<std::unique_ptr<eb::PinnedArena<Runtime>>> arena_;
  std::vector<std::unique_ptr<DeviceArray<float>>> buf_;
  std::unique_ptr<PinnedArray<float>> x_host_, y_host_;
  std::unique_ptr<DeviceArray<float>> x_, h_, y_;
  eb::ExpertPipeline<Runtime> pipe_;
  std::vector<bool> used_;
  Stream compute_ = Stream();
  uint64_t fetched_bytes_ = 0;
  int fetched_experts_ = 0;
};

}  // namespace

void check_model(Target& t, const Options& o, Report& report) {
  const int threads = o.threads > 0 ? o.threads : eb::hardware_threads();
  const Model md = load(o.model_dir, threads);
  const eb::DecoderModel& m = md.m;
  const std::string prompt = "The sea was calm";  // byte-level tokens: token id = byte value
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  for (int32_t& tk : tokens) tk %= m.V;
  const int P = (int)tokens.size();

  // The reference: the CPU engine on eb::decode's weights.
  auto cpu_experts = [&](int l, const eb::Step& s, float* moe) {
    std::vector<eb::ExpertWeights> ew(m.E);
    for (int e = 0; e < m.E; e++) {
      const size_t at = ((size_t)l * m.E + e) * 3;
      ew[e].gate.dense = md.decoded[at].data();
      ew[e].up.dense = md.decoded[at + 1].data();
      ew[e].down.dense = md.decoded[at + 2].data();
    }
    eb::LayerCall call;
    call.d = m.d;
    call.ff = md.ff;
    call.T = s.T;
    call.k = m.top_k;
    call.hidden = s.hidden;
    call.slot_expert = s.ids;
    call.slot_weight = s.weights;
    call.experts = ew.data();
    call.num_experts = m.E;
    call.out = moe;
    call.threads = threads;
    eb::expert_layer(call);
  };
  Cache ref_cache(m), dev_cache(m);
  TargetExperts dev_experts(t.rt(), md, P * m.top_k);
  const std::vector<float> ref_prefill = forward(m, ref_cache, tokens, 0, cpu_experts);
  const std::vector<float> dev_prefill = forward(m, dev_cache, tokens, 0, dev_experts);
  int next = 0;
  for (int v = 1; v < m.V; v++)
    if (ref_prefill[v] > ref_prefill[next]) next = v;
  const std::vector<float> ref_decode = forward(m, ref_cache, {next}, P, cpu_experts);
  const std::vector<float> dev_decode = forward(m, dev_cache, {next}, P, dev_experts);

  const double prefill_diff = max_abs_diff(dev_prefill.data(), ref_prefill.data(), m.V);
  const double decode_diff = max_abs_diff(dev_decode.data(), ref_decode.data(), m.V);
  double scale = 0;
  for (float v : ref_decode) scale = fabs(v) > scale ? fabs(v) : scale;
  int dev_top = 0, ref_top = 0;
  for (int v = 1; v < m.V; v++) {
    if (dev_decode[v] > dev_decode[dev_top]) dev_top = v;
    if (ref_decode[v] > ref_decode[ref_top]) ref_top = v;
  }

  CheckResult r;
  r.group = "model";
  r.name = "decode step, " + std::to_string(md.L) + " layers x " + std::to_string(m.E) + " experts";
  r.criterion = "every logit of the prompt step and the decode step within 1e-4 of the CPU native forward's "
                "(eb::expert_layer on eb::decode's weights)";
  r.passed = prefill_diff <= 1e-4 && decode_diff <= 1e-4;
  char buf[320];
  snprintf(buf, sizeof buf, "max|dlogit| prompt %.2g, decode %.2g (logits up to %.3g); top-1 %s; %d expert fetches, %.3g MB over the link",
           prefill_diff, decode_diff, scale, dev_top == ref_top ? "agrees" : "DIFFERS", dev_experts.fetched_experts(),
           dev_experts.fetched_bytes() / 1e6);
  r.summary = buf;
  r.figures = {{"prompt_tokens", (double)P},
               {"max_abs_logit_diff_prompt", prefill_diff},
               {"max_abs_logit_diff_decode", decode_diff},
               {"max_abs_logit", scale},
               {"top1_agrees", dev_top == ref_top ? 1.0 : 0.0},
               {"expert_fetches", (double)dev_experts.fetched_experts()},
               {"fetched_bytes", (double)dev_experts.fetched_bytes()},
               {"model_compressed_expert_bytes", (double)md.compressed_bytes}};
  report.add(std::move(r));
}

}  // namespace gpucheck
