// decoder_addon: the Node face of decoder_cpu.h.
//   decoderNew(spec) → handle. spec (src/model/native-forward.ts builds it) holds the config
//     numbers and every dense weight as a Float32Array; the handle keeps spec alive, so its arrays
//     must not be replaced.
//   decoderBegin(handle, tokens, segments, out, threads) → step. segments: [{ count, pos0,
//     allLogits, keys, values }] (keys/values: one Float32Array per layer, the sequence's cache);
//     out: { hidden, ids, weights, predicted }, the arrays each layer call writes (kept alive by
//     the step). Embeds the tokens and writes layer 0's predicted routing.
//   decoderLayer(step, l, moe | null) → Promise<void>: adds the previous layer's experts' output,
//     then layer l up to its router (decoder_cpu.h step_layer). Small calls run on the calling
//     thread (a worker hand-off, ~85 µs, would cost more than the work); others on a libuv worker.
//   decoderLogits(step, moe) → Promise<{ logits, seconds }>: the last layer's experts added, then
//     each sequence's logits, in order; seconds is the time the step spent in native code.
//   residentExperts(layers, d, ff, threads) → handle: every layer's experts ([gate, up, down] per
//     expert, as expertLayerAsync takes them), read once; the handle keeps `layers` alive.
//   decoderRun(step, resident, routing) → Promise<{ logits, seconds, expertSeconds }>: the whole
//     step, every layer and its experts then the logits, in one worker call (no return to
//     JavaScript between layers); routing: { ids, weights } of at least layers·T·K values, each
//     layer's routing written at l·T·K. seconds: the decoder's own time, expertSeconds the experts'.
// Argument errors are TypeError / RangeError naming the argument; a bad sequence throws before
// anything is written.
#include <napi.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "decoder_cpu.h"
#include "expert_addon.h"
#include "napi_util.h"

namespace eb {
namespace {

struct DecoderHolder {
  DecoderModel m;
  Napi::ObjectReference spec;
};

int int_of(const Napi::Object& o, const char* k) {
  Napi::Value v = o.Get(k);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("decoder spec: ") + k + " must be a number");
  return v.As<Napi::Number>().Int32Value();
}

const float* f32_of(const Napi::Object& o, const char* k, size_t n, bool optional = false) {
  Napi::Value v = o.Get(k);
  if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(o.Env(), std::string("decoder spec: ") + k + " must be a Float32Array");
  auto a = v.As<Napi::Float32Array>();
  if (a.ElementLength() != n)
    throw Napi::RangeError::New(o.Env(), std::string("decoder spec: ") + k + " has " + std::to_string(a.ElementLength()) + " values, expected " + std::to_string(n));
  return a.Data();
}

// A [rows, cols] weight: a Float32Array, a Uint16Array of bf16 bits (rows of whole 32-value
// blocks), or a symbolMatrix (the dense weights held as symbols).
MatrixRef spec_matrix_of(const Napi::Object& o, const char* k, size_t rows, size_t cols) {
  return matrix_of(o.Env(), o.Get(k), (int)rows, (int)cols, std::string("decoder spec: ") + k);
}

Napi::Value DecoderNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "decoderNew(spec) needs the spec object");
  Napi::Object s = info[0].As<Napi::Object>();
  auto h = std::make_unique<DecoderHolder>();
  DecoderModel& m = h->m;
  m.d = int_of(s, "d");
  m.H = int_of(s, "heads");
  m.KV = int_of(s, "kvHeads");
  m.hd = int_of(s, "headDim");
  m.V = int_of(s, "vocab");
  m.E = int_of(s, "experts");
  m.top_k = int_of(s, "topK");
  m.max_pos = int_of(s, "maxPositions");
  m.eps = (float)s.Get("eps").As<Napi::Number>().DoubleValue();
  m.norm_topk = s.Get("normTopk").ToBoolean();
  const std::string qk = s.Has("qkNorm") ? s.Get("qkNorm").ToString().Utf8Value() : "none";
  if (qk == "full") m.qk_norm = QkNorm::full;
  else if (qk == "head") m.qk_norm = QkNorm::head;
  else if (qk != "none") throw Napi::RangeError::New(env, "decoder spec: qkNorm is none, full or head, got " + qk);
  if (m.d < 1 || m.H < 1 || m.KV < 1 || m.H % m.KV || m.hd < 2 || m.hd % 2 || m.E < 1 || m.top_k < 1 || m.top_k > m.E)
    throw Napi::RangeError::New(env, "decoder spec: the shapes do not form a model");
  m.embed = spec_matrix_of(s, "embed", m.V, m.d);
  if (m.embed.fused || m.embed.symbols) throw Napi::TypeError::New(env, "decoder spec: embed must be a Float32Array or a Uint16Array of bf16 bits (its rows are looked up)");
  m.norm = f32_of(s, "norm", m.d);
  m.lm_head = spec_matrix_of(s, "lmHead", m.V, m.d);
  m.cos = f32_of(s, "cos", (size_t)m.max_pos * m.hd);
  m.sin = f32_of(s, "sin", (size_t)m.max_pos * m.hd);
  Napi::Value lv = s.Get("layers");
  if (!lv.IsArray()) throw Napi::TypeError::New(env, "decoder spec: layers must be an array");
  auto layers = lv.As<Napi::Array>();
  const size_t qw = (size_t)m.H * m.hd, kw = (size_t)m.KV * m.hd;
  for (uint32_t l = 0; l < layers.Length(); l++) {
    Napi::Object o = layers.Get(l).As<Napi::Object>();
    DecoderLayer L;
    L.input_norm = f32_of(o, "inputNorm", m.d);
    L.post_norm = f32_of(o, "postNorm", m.d);
    L.wq = spec_matrix_of(o, "q", qw, m.d);
    L.wk = spec_matrix_of(o, "k", kw, m.d);
    L.wv = spec_matrix_of(o, "v", kw, m.d);
    L.wo = spec_matrix_of(o, "o", m.d, qw);
    L.bq = f32_of(o, "qBias", qw, true);
    L.bk = f32_of(o, "kBias", kw, true);
    L.bv = f32_of(o, "vBias", kw, true);
    if (m.qk_norm != QkNorm::none) {
      const bool head = m.qk_norm == QkNorm::head;
      L.q_norm = f32_of(o, "qNorm", head ? m.hd : qw);
      L.k_norm = f32_of(o, "kNorm", head ? m.hd : kw);
    }
    L.router = spec_matrix_of(o, "router", m.E, m.d);
    m.layers.push_back(L);
  }
  if (m.layers.empty()) throw Napi::RangeError::New(env, "decoder spec: the model has no layers");
  h->spec = Napi::Persistent(s);
  return Napi::External<DecoderHolder>::New(env, h.release(), [](Napi::Env, DecoderHolder* p) { delete p; });
}

// A step and the JS arrays it writes into; one call at a time.
struct StepHolder {
  const DecoderModel* m = nullptr;
  Step s;
  std::vector<Napi::ObjectReference> keep;
  bool busy = false;
};

// Multiply-adds under which a layer call runs on the calling thread (as the expert engine's).
constexpr double kSyncMacs = 1 << 24;

StepHolder& step_of(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a decoder step");
  StepHolder& h = *v.As<Napi::External<StepHolder>>().Data();
  if (h.busy) throw Napi::Error::New(v.Env(), "the step's previous call has not finished");
  return h;
}

template <class E>
E* array_of(Napi::Env env, Napi::Object o, const char* k, size_t n, napi_typedarray_type type, std::vector<Napi::ObjectReference>& keep) {
  using A = Napi::TypedArrayOf<E>;
  Napi::Value v = o.Get(k);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type || v.As<A>().ElementLength() < n)
    throw Napi::TypeError::New(env, std::string("step arrays: ") + k + " must be a " + (type == napi_int32_array ? "Int32Array" : "Float32Array") + " of at least " + std::to_string(n) + " values");
  keep.push_back(Napi::Persistent(v.As<Napi::Object>()));
  return v.As<A>().Data();
}

Napi::Value DecoderBegin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsExternal()) throw Napi::TypeError::New(env, "expected a decoder handle");
  const DecoderModel& m = info[0].As<Napi::External<DecoderHolder>>().Data()->m;
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(env, "tokens must be an Int32Array");
  if (!info[2].IsArray()) throw Napi::TypeError::New(env, "segments must be an array");
  if (!info[3].IsObject()) throw Napi::TypeError::New(env, "the step's arrays must be an object");
  auto tokens = info[1].As<Napi::Int32Array>();
  auto h = std::make_unique<StepHolder>();
  h->m = &m;
  Step& s = h->s;
  s.T = (int)tokens.ElementLength();
  s.threads = threads_of(info[4]);
  h->keep.push_back(Napi::Persistent(info[0].As<Napi::Object>()));
  h->keep.push_back(Napi::Persistent(tokens.As<Napi::Object>()));
  const size_t kw = (size_t)m.KV * m.hd;
  auto segs = info[2].As<Napi::Array>();
  int first = 0;
  for (uint32_t i = 0; i < segs.Length(); i++) {
    if (!segs.Get(i).IsObject()) throw Napi::TypeError::New(env, "segment " + std::to_string(i) + " must be an object");
    Napi::Object o = segs.Get(i).As<Napi::Object>();
    Segment g;
    g.first = first;
    g.count = int_of(o, "count");
    g.pos0 = int_of(o, "pos0");
    g.all_logits = o.Get("allLogits").ToBoolean();
    first += g.count;
    for (int which = 0; which < 2; which++) {
      Napi::Value av = o.Get(which ? "values" : "keys");
      if (!av.IsArray() || av.As<Napi::Array>().Length() != m.layers.size())
        throw Napi::TypeError::New(env, "segment " + std::to_string(i) + ": " + (which ? "values" : "keys") + " must be an array of one Float32Array per layer");
      auto a = av.As<Napi::Array>();
      for (uint32_t l = 0; l < a.Length(); l++) {
        Napi::Value x = a.Get(l);
        if (!x.IsTypedArray() || x.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
            x.As<Napi::Float32Array>().ElementLength() < (size_t)m.max_pos * kw)
          throw Napi::RangeError::New(env, "segment " + std::to_string(i) + ": the cache's layer " + std::to_string(l) + " does not hold " + std::to_string(m.max_pos) + " positions");
        h->keep.push_back(Napi::Persistent(x.As<Napi::Object>()));
        (which ? g.values : g.keys).push_back(x.As<Napi::Float32Array>().Data());
      }
    }
    s.segs.push_back(std::move(g));
  }
  Napi::Object out = info[3].As<Napi::Object>();
  const size_t T = (size_t)std::max(0, s.T), K = (size_t)m.top_k;
  s.hidden = array_of<float>(env, out, "hidden", T * m.d, napi_float32_array, h->keep);
  s.ids = array_of<int32_t>(env, out, "ids", T * K, napi_int32_array, h->keep);
  s.weights = array_of<float>(env, out, "weights", T * K, napi_float32_array, h->keep);
  s.predicted = array_of<int32_t>(env, out, "predicted", T * K, napi_int32_array, h->keep);
  try {
    step_begin(m, s, tokens.Data());
  } catch (const std::invalid_argument& e) {
    throw Napi::RangeError::New(env, e.what());
  }
  return Napi::External<StepHolder>::New(env, h.release(), [](Napi::Env, StepHolder* p) { delete p; });
}

// Runs `work` on a libuv worker, or here when it is small; settles the promise either way.
class StepWorker : public PromiseWorker {
 public:
  // The step's handle (an External, which PromiseWorker does not keep) stays referenced until the
  // work is done: the caller may drop its last use of the step while this call runs.
  StepWorker(Napi::Env env, const Napi::CallbackInfo& info, StepHolder& h, std::function<void()> work)
      : PromiseWorker(env, info), h_(h), step_(Napi::Reference<Napi::Value>::New(info[0], 1)), work_(std::move(work)) {}
  void run() override { work_(); }
  void OnOK() override {
    h_.busy = false;
    deferred_.Resolve(result ? result() : Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    h_.busy = false;
    PromiseWorker::OnError(e);
  }
  std::function<Napi::Value()> result;

 private:
  StepHolder& h_;
  Napi::Reference<Napi::Value> step_;
  std::function<void()> work_;
};

Napi::Value run_step_call(const Napi::CallbackInfo& info, StepHolder& h, bool small, std::function<void()> work, std::function<Napi::Value()> result) {
  Napi::Env env = info.Env();
  if (small) {
    auto d = Napi::Promise::Deferred::New(env);
    try {
      work();
    } catch (const std::exception& e) {
      d.Reject(Napi::Error::New(env, e.what()).Value());
      return d.Promise();
    }
    d.Resolve(result ? result() : env.Undefined());
    return d.Promise();
  }
  h.busy = true;
  auto* w = new StepWorker(env, info, h, std::move(work));
  w->result = std::move(result);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

const float* moe_of(const Napi::Value& v, const Step& s, int d) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array || v.As<Napi::Float32Array>().ElementLength() != (size_t)s.T * d)
    throw Napi::TypeError::New(v.Env(), "the experts' output must be a Float32Array of " + std::to_string((size_t)s.T * d) + " values");
  return v.As<Napi::Float32Array>().Data();
}

Napi::Value DecoderLayerCall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  StepHolder& h = step_of(info[0]);
  const DecoderModel& m = *h.m;
  int l = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : -1;
  if (l < 0 || l >= (int)m.layers.size()) throw Napi::RangeError::New(env, "layer " + std::to_string(l) + " is not one of the model's " + std::to_string(m.layers.size()));
  const float* moe = moe_of(info[2], h.s, m.d);
  if ((l > 0) != (moe != nullptr)) throw Napi::TypeError::New(env, l ? "layer " + std::to_string(l) + " needs the previous layer's experts' output" : "layer 0 has no previous layer");
  return run_step_call(info, h, step_layer_macs(m, h.s) < kSyncMacs, [&m, &h, l, moe] { step_layer(m, h.s, l, moe); }, nullptr);
}

Napi::Value DecoderLogits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  StepHolder& h = step_of(info[0]);
  const DecoderModel& m = *h.m;
  const float* moe = moe_of(info[1], h.s, m.d);
  if (!moe) throw Napi::TypeError::New(env, "the logits need the last layer's experts' output");
  auto logits = Napi::Float32Array::New(env, (size_t)step_logit_rows(h.s) * m.V);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(logits.As<Napi::Object>()));
  float* out = logits.Data();
  const double macs = (double)step_logit_rows(h.s) * m.V * m.d;
  return run_step_call(info, h, macs < kSyncMacs, [&m, &h, moe, out] { step_logits(m, h.s, moe, out); }, [&h, ref, env] {
    Napi::Object r = Napi::Object::New(env);
    r.Set("logits", ref->Value());
    r.Set("seconds", h.s.seconds);
    return r.As<Napi::Value>();
  });
}

// Every layer's experts, all resident (the CPU engine's), read once so that a step can run whole.
struct ResidentHolder {
  int d = 0, ff = 0, threads = 1;
  std::vector<std::vector<ExpertWeights>> layers;
  Napi::ObjectReference keep;
};

Napi::Value ResidentExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "residentExperts: layers must be an array of arrays of [gate, up, down]");
  auto h = std::make_unique<ResidentHolder>();
  h->d = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 0;
  h->ff = info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 0;
  h->threads = threads_of(info[3]);
  if (h->d < 1 || h->ff < 1) throw Napi::RangeError::New(env, "residentExperts: d and ff must be ≥ 1");
  auto layers = info[0].As<Napi::Array>();
  for (uint32_t l = 0; l < layers.Length(); l++) {
    if (!layers.Get(l).IsArray()) throw Napi::TypeError::New(env, "residentExperts: layer " + std::to_string(l) + " must be an array of experts");
    auto row = layers.Get(l).As<Napi::Array>();
    std::vector<ExpertWeights> experts;
    for (uint32_t e = 0; e < row.Length(); e++)
      experts.push_back(expert_weights_of(env, row.Get(e), h->d, h->ff, "layer " + std::to_string(l) + " expert " + std::to_string(e)));
    h->layers.push_back(std::move(experts));
  }
  h->keep = Napi::Persistent(info[0].As<Napi::Object>());
  return Napi::External<ResidentHolder>::New(env, h.release(), [](Napi::Env, ResidentHolder* p) { delete p; });
}

Napi::Value DecoderRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  StepHolder& h = step_of(info[0]);
  const DecoderModel& m = *h.m;
  if (!info[1].IsExternal()) throw Napi::TypeError::New(env, "decoderRun: expected residentExperts' handle");
  const ResidentHolder& r = *info[1].As<Napi::External<ResidentHolder>>().Data();
  const size_t L = m.layers.size(), T = (size_t)std::max(0, h.s.T), K = (size_t)m.top_k;
  if (r.layers.size() != L || r.d != m.d) throw Napi::RangeError::New(env, "decoderRun: the resident experts are not this model's (" + std::to_string(r.layers.size()) + " layers, d " + std::to_string(r.d) + ")");
  for (size_t l = 0; l < L; l++)
    if (r.layers[l].size() != (size_t)m.E) throw Napi::RangeError::New(env, "decoderRun: layer " + std::to_string(l) + " has " + std::to_string(r.layers[l].size()) + " resident experts, the model " + std::to_string(m.E));
  if (!info[2].IsObject()) throw Napi::TypeError::New(env, "decoderRun: routing must be { ids, weights }");
  Napi::Object routing = info[2].As<Napi::Object>();
  std::vector<Napi::ObjectReference> keep;
  int32_t* ids = array_of<int32_t>(env, routing, "ids", L * T * K, napi_int32_array, keep);
  float* weights = array_of<float>(env, routing, "weights", L * T * K, napi_float32_array, keep);
  auto logits = Napi::Float32Array::New(env, (size_t)step_logit_rows(h.s) * m.V);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(logits.As<Napi::Object>()));
  auto expert_seconds = std::make_shared<double>(0);
  // The resident experts' handle (an External, which the worker does not keep) stays referenced
  // until the call is done, with the result's closure.
  auto resident = std::make_shared<Napi::Reference<Napi::Value>>(Napi::Reference<Napi::Value>::New(info[1], 1));
  float* out = logits.Data();
  // Small steps (a small model's decode) on the calling thread, as each layer's call would be.
  const double macs = (step_layer_macs(m, h.s) + 3.0 * r.d * r.ff * (double)(T * K)) * (double)L + (double)step_logit_rows(h.s) * m.V * m.d;
  return run_step_call(info, h, macs < kSyncMacs, [&m, &h, &r, ids, weights, out, expert_seconds, T, K] {
    Step& s = h.s;
    std::vector<float> moe(T * m.d);
    for (size_t l = 0; l < m.layers.size(); l++) {
      step_layer(m, s, (int)l, l ? moe.data() : nullptr);
      std::copy(s.ids, s.ids + T * K, ids + l * T * K);
      std::copy(s.weights, s.weights + T * K, weights + l * T * K);
      const auto t0 = std::chrono::steady_clock::now();
      LayerCall c;
      c.d = r.d;
      c.ff = r.ff;
      c.T = (int)T;
      c.k = (int)K;
      c.hidden = s.hidden;
      c.slot_expert = s.ids;
      c.slot_weight = s.weights;
      c.experts = r.layers[l].data();
      c.num_experts = (int)r.layers[l].size();
      c.out = moe.data();
      c.threads = r.threads;
      expert_layer(c);
      *expert_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    step_logits(m, s, moe.data(), out);
  }, [&h, ref, expert_seconds, resident, env] {
    Napi::Object o = Napi::Object::New(env);
    o.Set("logits", ref->Value());
    o.Set("seconds", h.s.seconds);
    o.Set("expertSeconds", *expert_seconds);
    return o.As<Napi::Value>();
  });
}

}  // namespace

void register_decoder(Napi::Env env, Napi::Object exports) {
  exports.Set("decoderNew", Napi::Function::New(env, DecoderNew));
  exports.Set("decoderBegin", Napi::Function::New(env, DecoderBegin));
  exports.Set("decoderLayer", Napi::Function::New(env, DecoderLayerCall));
  exports.Set("decoderLogits", Napi::Function::New(env, DecoderLogits));
  exports.Set("residentExperts", Napi::Function::New(env, ResidentExperts));
  exports.Set("decoderRun", Napi::Function::New(env, DecoderRun));
}

}  // namespace eb
