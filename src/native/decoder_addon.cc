// decoder_addon: the Node face of decoder_cpu.h.
//   decoderNew(spec) → handle. spec (src/model/native-forward.ts builds it) holds the config
//     numbers and every weight as a Float32Array, experts as [gate, up, down] of Float32Arrays or
//     fusedMatrix results; the handle keeps spec alive, so its arrays must not be replaced.
//   decoderForwardAsync(handle, tokens, pos0, allLogits, keys[], values[], threads)
//     → Promise<{ logits, ids, weights, expertSeconds, otherSeconds }>, on a libuv worker; the
//     cache arrays are written in place.
#include <napi.h>

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
  m.ff = int_of(s, "ff");
  m.V = int_of(s, "vocab");
  m.E = int_of(s, "experts");
  m.top_k = int_of(s, "topK");
  m.max_pos = int_of(s, "maxPositions");
  m.eps = (float)s.Get("eps").As<Napi::Number>().DoubleValue();
  m.norm_topk = s.Get("normTopk").ToBoolean();
  if (m.d < 1 || m.H < 1 || m.KV < 1 || m.H % m.KV || m.hd < 2 || m.hd % 2 || m.E < 1 || m.top_k < 1 || m.top_k > m.E)
    throw Napi::RangeError::New(env, "decoder spec: the shapes do not form a model");
  m.embed = f32_of(s, "embed", (size_t)m.V * m.d);
  m.norm = f32_of(s, "norm", m.d);
  m.lm_head = f32_of(s, "lmHead", (size_t)m.V * m.d);
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
    L.wq = f32_of(o, "q", qw * m.d);
    L.wk = f32_of(o, "k", kw * m.d);
    L.wv = f32_of(o, "v", kw * m.d);
    L.wo = f32_of(o, "o", (size_t)m.d * qw);
    L.bq = f32_of(o, "qBias", qw, true);
    L.bk = f32_of(o, "kBias", kw, true);
    L.bv = f32_of(o, "vBias", kw, true);
    L.router = f32_of(o, "router", (size_t)m.E * m.d);
    Napi::Value ev = o.Get("experts");
    if (!ev.IsArray() || ev.As<Napi::Array>().Length() != (uint32_t)m.E)
      throw Napi::TypeError::New(env, "decoder spec: layer " + std::to_string(l) + " needs " + std::to_string(m.E) + " experts");
    auto ex = ev.As<Napi::Array>();
    for (uint32_t e = 0; e < ex.Length(); e++)
      L.experts.push_back(expert_weights_of(env, ex.Get(e), m.d, m.ff, "layer " + std::to_string(l) + " expert " + std::to_string(e)));
    m.layers.push_back(std::move(L));
  }
  h->spec = Napi::Persistent(s);
  return Napi::External<DecoderHolder>::New(env, h.release(), [](Napi::Env, DecoderHolder* p) { delete p; });
}

class ForwardWorker : public PromiseWorker {
 public:
  ForwardWorker(Napi::Env env, const Napi::CallbackInfo& info, const DecoderModel& m, ForwardCall c, Napi::Object result)
      : PromiseWorker(env, info), m_(m), c_(std::move(c)), result_(Napi::Persistent(result)) {}
  void run() override { decoder_forward(m_, c_); }
  void OnOK() override {
    Napi::Object r = result_.Value();
    r.Set("expertSeconds", c_.expert_seconds);
    r.Set("otherSeconds", c_.other_seconds);
    deferred_.Resolve(r);
  }

 private:
  const DecoderModel& m_;
  ForwardCall c_;
  Napi::ObjectReference result_;
};

Napi::Value DecoderForwardAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred_error = [&](const Napi::Error& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  };
  try {
    if (!info[0].IsExternal()) throw Napi::TypeError::New(env, "expected a decoder handle");
    const DecoderModel& m = info[0].As<Napi::External<DecoderHolder>>().Data()->m;
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Napi::TypeError::New(env, "tokens must be an Int32Array");
    auto tokens = info[1].As<Napi::Int32Array>();
    ForwardCall c;
    c.tokens = tokens.Data();
    c.T = (int)tokens.ElementLength();
    c.pos0 = info[2].As<Napi::Number>().Int32Value();
    c.all_logits = info[3].ToBoolean();
    c.threads = threads_of(info[6]);
    const size_t kw = (size_t)m.KV * m.hd;
    for (int which = 0; which < 2; which++) {
      Napi::Value av = info[4 + which];
      if (!av.IsArray() || av.As<Napi::Array>().Length() != m.layers.size())
        throw Napi::TypeError::New(env, std::string(which ? "values" : "keys") + " must be an array of one Float32Array per layer");
      auto a = av.As<Napi::Array>();
      for (uint32_t l = 0; l < a.Length(); l++) {
        Napi::Value x = a.Get(l);
        if (!x.IsTypedArray() || x.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
            x.As<Napi::Float32Array>().ElementLength() < (size_t)m.max_pos * kw)
          throw Napi::RangeError::New(env, "the cache's layer " + std::to_string(l) + " does not hold " + std::to_string(m.max_pos) + " positions");
        (which ? c.values : c.keys).push_back(x.As<Napi::Float32Array>().Data());
      }
    }
    if (c.T < 1 || c.pos0 < 0 || c.pos0 + c.T > m.max_pos)
      throw Napi::RangeError::New(env, "context is " + std::to_string(m.max_pos) + " positions; " + std::to_string(c.pos0 + c.T) + " asked");
    for (int t = 0; t < c.T; t++)
      if (c.tokens[t] < 0 || c.tokens[t] >= m.V)
        throw Napi::RangeError::New(env, "token " + std::to_string(c.tokens[t]) + " outside the vocabulary of " + std::to_string(m.V));
    Napi::Object r = Napi::Object::New(env);
    auto logits = Napi::Float32Array::New(env, (size_t)(c.all_logits ? c.T : 1) * m.V);
    auto ids = Napi::Int32Array::New(env, m.layers.size() * c.T * m.top_k);
    auto weights = Napi::Float32Array::New(env, m.layers.size() * c.T * m.top_k);
    r.Set("logits", logits);
    r.Set("ids", ids);
    r.Set("weights", weights);
    c.logits = logits.Data();
    c.route_ids = ids.Data();
    c.route_weights = weights.Data();
    auto* w = new ForwardWorker(env, info, m, std::move(c), r);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  } catch (const Napi::Error& e) {
    return deferred_error(e);
  }
}

}  // namespace

void register_decoder(Napi::Env env, Napi::Object exports) {
  exports.Set("decoderNew", Napi::Function::New(env, DecoderNew));
  exports.Set("decoderForwardAsync", Napi::Function::New(env, DecoderForwardAsync));
}

}  // namespace eb
