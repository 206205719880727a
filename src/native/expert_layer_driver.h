// expert_layer_driver: one MoE layer's routed experts on a device runtime (cuda/eb_pipeline.h's
// Runtime policy, plus expert_ffn), the same host code for the emulated device
// (emulated_pipeline.cc) and the GPU (cuda_bridge.cc), so the shared engine suite checks on the
// CPU exactly what a GPU would be asked to do:
//
//   for each distinct expert, in first-seen order:
//     its gate, up and down rungs → ExpertPipeline::enqueue_fetch (COPY stream → DECOMPRESS
//     stream, straight into the expert's device weight buffers) → wait_ready on COMPUTE
//     its tokens' hidden rows → COMPUTE (from pinned staging) → gate·up kernel → down kernel →
//     its outputs → pinned staging
//   the host waits for COMPUTE once, then sums the outputs with the router weights, slot by slot.
//
// Every fetch is enqueued before the host waits, so expert e+1's transfer and decode overlap
// expert e's kernels. Arenas (pinned copies of the rungs) are made per call here; a serving store
// keeps them across calls.
#pragma once
#include <string.h>

#include <memory>
#include <vector>

#include "../../cuda/eb_pipeline.h"
#include "pipeline_driver.h"

namespace eb {

struct DeviceExpertSpec {
  FetchSpec gate, up, down;
};

struct DeviceLayerResult {
  std::vector<float> out;             // [T, d]
  std::vector<FetchReport> reports;   // per matrix fetched, gate/up/down of each expert in order
};

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

// The call's other arguments: (experts, slotExpert Int32Array, slotWeight Float32Array, hidden
// Float32Array, T, k, d, ff), checked against each other.
struct LayerArgs {
  const int32_t* ids;
  const float* weights;
  const float* hidden;
  int T, k, d, ff;
};

inline LayerArgs layer_args(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LayerArgs a;
  a.T = info[4].As<Napi::Number>().Int32Value();
  a.k = info[5].As<Napi::Number>().Int32Value();
  a.d = info[6].As<Napi::Number>().Int32Value();
  a.ff = info[7].As<Napi::Number>().Int32Value();
  if (a.T < 0 || a.k < 1 || a.d < 1 || a.ff < 1) throw Napi::RangeError::New(env, "T ≥ 0, k, d and ff ≥ 1 are required");
  auto typed = [&](int i, napi_typedarray_type t, size_t n, const char* what) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != t)
      throw Napi::TypeError::New(env, std::string(what) + " has the wrong type");
    auto x = info[i].As<Napi::TypedArray>();
    if (x.ElementLength() != n)
      throw Napi::RangeError::New(env, std::string(what) + " has " + std::to_string(x.ElementLength()) + " values, expected " + std::to_string(n));
    return static_cast<uint8_t*>(x.ArrayBuffer().Data()) + x.ByteOffset();
  };
  a.ids = reinterpret_cast<const int32_t*>(typed(1, napi_int32_array, (size_t)a.T * a.k, "slotExpert"));
  a.weights = reinterpret_cast<const float*>(typed(2, napi_float32_array, (size_t)a.T * a.k, "slotWeight"));
  a.hidden = reinterpret_cast<const float*>(typed(3, napi_float32_array, (size_t)a.T * a.d, "hidden"));
  return a;
}

// {out: Float32Array [T, d], fetches: [{bytes, copies, transferSeconds, decompressSeconds}]}
inline Napi::Object device_layer_js(Napi::Env env, DeviceLayerResult&& r) {
  Napi::Object o = Napi::Object::New(env);
  auto out = Napi::Float32Array::New(env, r.out.size());
  if (!r.out.empty()) memcpy(out.Data(), r.out.data(), sizeof(float) * r.out.size());
  o.Set("out", out);
  Napi::Array reps = Napi::Array::New(env, r.reports.size());
  for (size_t i = 0; i < r.reports.size(); i++) {
    Napi::Object f = Napi::Object::New(env);
    f.Set("bytes", (double)r.reports[i].bytes);
    f.Set("copies", r.reports[i].copies);
    f.Set("transferSeconds", r.reports[i].transfer_seconds);
    f.Set("decompressSeconds", r.reports[i].decompress_seconds);
    reps.Set(i, f);
  }
  o.Set("fetches", reps);
  return o;
}

// hidden [T, d]; slot s = t·k + j names slot_expert[s] (an index into experts) with weight
// slot_weight[s]. Throws CodecError for a bad stream or rung (nothing is left enqueued), and
// std::invalid_argument for a matrix of the wrong size.
template <class RT>
DeviceLayerResult run_device_expert_layer(RT& rt, const std::vector<DeviceExpertSpec>& experts, const float* hidden,
                                          const int32_t* slot_expert, const float* slot_weight, int T, int k, int d, int ff) {
  using Stream = typename RT::Stream;
  const int E = (int)experts.size(), S = T * k;
  std::vector<std::vector<int>> slots(E);
  std::vector<int> order;
  for (int s = 0; s < S; s++) {
    int e = slot_expert[s];
    if (e < 0 || e >= E) throw std::invalid_argument("slot " + std::to_string(s) + " names expert " + std::to_string(e) + " of " + std::to_string(E));
    if (slots[e].empty()) order.push_back(e);
    slots[e].push_back(s);
  }
  // Freed in reverse: the pipeline (waiting for its fetches) before the arenas it copies from,
  // the compute stream drained before the buffers its kernels use.
  struct Device {
    RT& rt;
    Stream compute = Stream();
    std::vector<void*> dev, pinned;
    explicit Device(RT& r) : rt(r) {}
    void* d(size_t n) { dev.push_back(rt.device_alloc(n ? n : 4)); return dev.back(); }
    void* h(size_t n) { pinned.push_back(rt.host_alloc_pinned(n ? n : 4)); return pinned.back(); }
    ~Device() {
      try {
        if (!(compute == Stream())) rt.stream_synchronize(compute);
      } catch (...) {
      }
      for (void* p : dev) rt.device_free(p);
      for (void* p : pinned) rt.host_free_pinned(p);
      if (!(compute == Stream())) rt.stream_destroy(compute);
    }
  } dv(rt);
  dv.compute = rt.stream_create("compute");
  std::vector<std::unique_ptr<PinnedArena<RT>>> arenas;
  ExpertPipeline<RT> pipe(rt);
  std::vector<typename ExpertPipeline<RT>::Ticket> tickets;
  std::vector<float*> y_host(E, nullptr);
  for (int e : order) {
    const int n = (int)slots[e].size();
    const FetchSpec* mats[3] = {&experts[e].gate, &experts[e].up, &experts[e].down};
    float* w[3];
    for (int m = 0; m < 3; m++) {
      const FetchSpec& f = *mats[m];
      std::vector<const uint8_t*> ptr;
      std::vector<size_t> len;
      for (const Bytes& b : f.rungs) {
        ptr.push_back(b.data);
        len.push_back(b.len);
      }
      arenas.push_back(std::make_unique<PinnedArena<RT>>(rt, f.head.data, f.head.len, ptr.data(), len.data(), (int)ptr.size()));
      const PinnedArena<RT>& a = *arenas.back();
      if (a.view().h.count != (uint64_t)d * ff)
        throw std::invalid_argument("expert " + std::to_string(e) + " matrix " + std::to_string(m) + " holds " + std::to_string(a.view().h.count) +
                                    " values, expected " + std::to_string((uint64_t)d * ff));
      size_t bytes = (size_t)d * ff * 4;
      w[m] = static_cast<float*>(dv.d(bytes));
      rt.tag(e);
      tickets.push_back(pipe.enqueue_fetch(a, f.k == -1 ? a.view().available - 1 : f.k, DType::F32, w[m], bytes));
      pipe.wait_ready(tickets.back(), dv.compute);
    }
    float* xh = static_cast<float*>(dv.h(sizeof(float) * n * d));
    for (int i = 0; i < n; i++) memcpy(xh + (size_t)i * d, hidden + (size_t)(slots[e][i] / k) * d, sizeof(float) * d);
    float* xd = static_cast<float*>(dv.d(sizeof(float) * n * d));
    float* hd = static_cast<float*>(dv.d(sizeof(float) * n * ff));
    float* yd = static_cast<float*>(dv.d(sizeof(float) * n * d));
    y_host[e] = static_cast<float*>(dv.h(sizeof(float) * n * d));
    rt.tag(e);
    rt.copy_h2d_async(xd, xh, sizeof(float) * n * d, dv.compute);
    rt.expert_ffn(w[0], w[1], w[2], xd, n, d, ff, hd, yd, dv.compute);
    rt.copy_d2h_async(y_host[e], yd, sizeof(float) * n * d, dv.compute);
  }
  DeviceLayerResult res;
  for (auto& t : tickets) {
    FetchReport r;
    r.bytes = pipe.bytes(t);
    r.copies = pipe.copies(t);
    r.transfer_seconds = pipe.transfer_seconds(t);
    r.decompress_seconds = pipe.decompress_seconds(t);
    pipe.release(t);
    res.reports.push_back(r);
  }
  rt.stream_synchronize(dv.compute);
  res.out.assign((size_t)T * d, 0.0f);
  std::vector<int> seen(E, 0);
  for (int s = 0; s < S; s++) {
    int e = slot_expert[s];
    const float* y = y_host[e] + (size_t)seen[e]++ * d;
    float* o = res.out.data() + (size_t)(s / k) * d;
    for (int i = 0; i < d; i++) o[i] += slot_weight[s] * y[i];
  }
  return res;
}

}  // namespace eb
