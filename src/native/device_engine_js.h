// device_engine_js: the JS arguments and results of the CUDA engine's functions (device_engine.h),
// shared by the emulated device (emulated_pipeline.cc) and the GPU (cuda_bridge.cc).
#pragma once
#include <string.h>

#include <memory>
#include <vector>

#include "device_engine.h"
#include "pipeline_driver.h"

namespace eb {

// experts[{gate, up, down}] with each matrix {head, rungs, k?} (fetch_specs' shape).
inline std::vector<DeviceExpertSpec> device_expert_specs(const Napi::Value& v) {
  Napi::Env env = v.Env();
  if (!v.IsArray()) throw Napi::TypeError::New(env, "experts must be an array of {gate, up, down}");
  auto arr = v.As<Napi::Array>();
  Napi::Array flat = Napi::Array::New(env, arr.Length() * 3);
  for (uint32_t e = 0; e < arr.Length(); e++) {
    if (!arr.Get(e).IsObject()) throw Napi::TypeError::New(env, "expert " + std::to_string(e) + " must be {gate, up, down}");
    auto o = arr.Get(e).As<Napi::Object>();
    flat.Set(3 * e, o.Get("gate"));
    flat.Set(3 * e + 1, o.Get("up"));
    flat.Set(3 * e + 2, o.Get("down"));
  }
  std::vector<FetchSpec> f = fetch_specs(flat);
  std::vector<DeviceExpertSpec> out;
  for (size_t e = 0; e < arr.Length(); e++) out.push_back({f[3 * e], f[3 * e + 1], f[3 * e + 2]});
  return out;
}

// A layer call's routing arguments, from info[first]: (slotExpert Int32Array, slotWeight
// Float32Array, hidden Float32Array, T, k, d, ff), checked against each other.
struct LayerArgs {
  const int32_t* ids;
  const float* weights;
  const float* hidden;
  int T, k, d, ff;
};

inline LayerArgs layer_args(const Napi::CallbackInfo& info, int first) {
  Napi::Env env = info.Env();
  LayerArgs a;
  a.T = info[first + 3].As<Napi::Number>().Int32Value();
  a.k = info[first + 4].As<Napi::Number>().Int32Value();
  a.d = info[first + 5].As<Napi::Number>().Int32Value();
  a.ff = info[first + 6].As<Napi::Number>().Int32Value();
  if (a.T < 0 || a.k < 1 || a.d < 1 || a.ff < 1) throw Napi::RangeError::New(env, "T ≥ 0, k, d and ff ≥ 1 are required");
  auto typed = [&](int i, napi_typedarray_type t, size_t n, const char* what) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != t)
      throw Napi::TypeError::New(env, std::string(what) + " has the wrong type");
    auto x = info[i].As<Napi::TypedArray>();
    if (x.ElementLength() != n)
      throw Napi::RangeError::New(env, std::string(what) + " has " + std::to_string(x.ElementLength()) + " values, expected " + std::to_string(n));
    return static_cast<uint8_t*>(x.ArrayBuffer().Data()) + x.ByteOffset();
  };
  a.ids = reinterpret_cast<const int32_t*>(typed(first, napi_int32_array, (size_t)a.T * a.k, "slotExpert"));
  a.weights = reinterpret_cast<const float*>(typed(first + 1, napi_float32_array, (size_t)a.T * a.k, "slotWeight"));
  a.hidden = reinterpret_cast<const float*>(typed(first + 2, napi_float32_array, (size_t)a.T * a.d, "hidden"));
  return a;
}

// The expert keys of an experts array: its entries' `key` fields.
inline std::vector<int> expert_keys(const Napi::Value& v) {
  std::vector<int> keys;
  auto arr = v.As<Napi::Array>();
  for (uint32_t e = 0; e < arr.Length(); e++) {
    Napi::Value k = arr.Get(e).As<Napi::Object>().Get("key");
    if (!k.IsNumber()) throw Napi::TypeError::New(v.Env(), "expert " + std::to_string(e) + " needs a numeric key");
    keys.push_back(k.As<Napi::Number>().Int32Value());
  }
  return keys;
}

// The engine of a handle argument (an External made by the engine's constructor function).
template <class Holder>
Holder& holder_of(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a device engine handle");
  return *v.As<Napi::External<Holder>>().Data();
}

// {out: Float32Array [T, d], fetches: [{expert, bytes, copies, transferSeconds, decompressSeconds}], hits, misses}
inline Napi::Object device_layer_js(Napi::Env env, DeviceLayerResult&& r) {
  Napi::Object o = Napi::Object::New(env);
  auto out = Napi::Float32Array::New(env, r.out.size());
  if (!r.out.empty()) memcpy(out.Data(), r.out.data(), sizeof(float) * r.out.size());
  o.Set("out", out);
  Napi::Array reps = Napi::Array::New(env, r.reports.size());
  for (size_t i = 0; i < r.reports.size(); i++) {
    Napi::Object f = fetch_report_js(env, r.reports[i]);
    f.Set("expert", r.fetched_experts[i]);
    reps.Set(i, f);
  }
  o.Set("fetches", reps);
  o.Set("hits", r.hits);
  o.Set("misses", r.misses);
  return o;
}

// Runs fn, turning what it throws into JS errors: CodecError with its code, std::invalid_argument
// as a RangeError, anything else as an Error whose message starts with `prefix`.
template <class Fn>
Napi::Value with_js_errors(Napi::Env env, const char* prefix, Fn fn) {
  try {
    return fn();
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::invalid_argument& e) {
    throw Napi::RangeError::New(env, e.what());
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string(prefix) + e.what());
  }
}

// (handle, {key, gate, up, down}): starts the expert's fetch on the engine; never waits.
template <class Holder>
Napi::Value engine_prefetch_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Holder& h = holder_of<Holder>(info[0]);
  Napi::Array one = Napi::Array::New(env, 1);
  one.Set(0u, info[1]);
  h.engine.prefetch(expert_keys(one)[0], device_expert_specs(one)[0]);
  return env.Undefined();
}

// (handle, experts [{key, gate, up, down}], slotExpert, slotWeight, hidden, T, k, d, ff) → device_layer_js.
template <class Holder>
Napi::Value engine_layer_js(const Napi::CallbackInfo& info) {
  Holder& h = holder_of<Holder>(info[0]);
  std::vector<DeviceExpertSpec> specs = device_expert_specs(info[1]);
  std::vector<int> keys = expert_keys(info[1]);
  LayerArgs a = layer_args(info, 2);
  if (a.d != h.engine.d() || a.ff != h.engine.ff())
    throw Napi::RangeError::New(info.Env(), "the engine holds experts of d " + std::to_string(h.engine.d()) + ", ff " + std::to_string(h.engine.ff()));
  return device_layer_js(info.Env(), h.engine.layer(keys, specs, a.hidden, a.ids, a.weights, a.T, a.k));
}

}  // namespace eb
