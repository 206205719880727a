#include "cuda_bridge.h"

#ifdef EBSERVE_WITH_CUDA
#include <memory>
#include <mutex>
#include <stdexcept>

#include "../../cuda/eb_cuda.h"
#include "../../cuda/eb_offload.h"
#include "napi_util.h"
#include "device_engine_js.h"
#include "pipeline_driver.h"
#endif

namespace eb {

#ifndef EBSERVE_WITH_CUDA
Napi::Value cuda_probe(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("built", false);
  o.Set("available", false);
  o.Set("error", "this addon was built without nvcc, so it has no CUDA code");
  return o;
}
void register_cuda(Napi::Env, Napi::Object) {}
#else

Napi::Value cuda_probe(Napi::Env env) {
  cuda::Probe p = cuda::probe();
  Napi::Object o = Napi::Object::New(env);
  o.Set("built", true);
  o.Set("available", p.available);
  if (p.available) o.Set("devices", p.devices);
  o.Set("runtimeVersion", p.runtime_version);
  o.Set("driverVersion", p.driver_version);
  if (!p.available) o.Set("error", p.error);
  return o;
}

namespace {

// One context for the process, made on first use (so loading the addon never touches a device).
// A failed attempt is not cached: the next call asks the runtime again.
std::mutex context_mutex;
std::unique_ptr<cuda::Context> context;

cuda::Context& the_context() {
  if (!context) context = std::make_unique<cuda::Context>(0);
  return *context;
}

// cudaCompress(input (host bytes), dtype, bound, boundMode, cuts[]) → stream
Napi::Value CudaCompress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    CompressArgs a = compress_args(info);
    std::lock_guard<std::mutex> lock(context_mutex);
    return to_buffer(env, the_context().compress_host(a.in.data, a.n, a.p));
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(env, e.what());
  }
}

// cudaDecompress(stream, k (-1: every rung), outDtype) → values; the stream is verified first.
Napi::Value CudaDecompress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    DecodeArgs a = decode_args(info);
    const StreamView& s = a.s;
    std::lock_guard<std::mutex> lock(context_mutex);
    cuda::Context& ctx = the_context();
    auto out = Napi::Buffer<uint8_t>::New(env, s.h.count * dtype_size(a.dtype));
    ctx.decompress_to_host(s, a.k, a.dtype, out.Data());
    return out;
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(env, e.what());
  }
}

// cudaPipelineRun(fetches, {outputSlots?, inFlight?}) → {outputs, fetches, rungBuffers}: the fetches through the offload
// pipeline (cuda/eb_pipeline.h) on the GPU, by the same driver the emulated pipeline's test runs.
Napi::Value CudaPipelineRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    std::vector<FetchSpec> specs = fetch_specs(info[0]);
    int slots = 0, in_flight = 0;
    if (info[1].IsObject()) {
      auto o = info[1].As<Napi::Object>();
      if (o.Has("outputSlots")) slots = o.Get("outputSlots").As<Napi::Number>().Int32Value();
      if (o.Has("inFlight")) in_flight = o.Get("inFlight").As<Napi::Number>().Int32Value();
    }
    std::lock_guard<std::mutex> lock(context_mutex);
    cuda::CudaRuntime rt(the_context());
    return run_result_js(env, run_fetches(rt, specs, slots, in_flight));
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

// The CUDA engine (device_engine.h) on the GPU, kept across layer calls.
struct CudaEngine {
  cuda::CudaRuntime rt;
  DeviceEngine<cuda::CudaRuntime> engine;
  CudaEngine(int d, int ff, int capacity) : rt(the_context()), engine(rt, d, ff, capacity) {}
};

// The engine's calls share the one CUDA context, so they take its lock.
template <class Fn>
Napi::Value cuda_call(Napi::Env env, Fn fn) {
  return with_js_errors(env, "", [&]() -> Napi::Value {
    std::lock_guard<std::mutex> lock(context_mutex);
    return fn();
  });
}

// cudaEngineNew(d, ff, capacity) → handle; throws "no usable CUDA device: …" without a GPU.
Napi::Value CudaEngineNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return cuda_call(env, [&]() -> Napi::Value {
    auto* h = new CudaEngine(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(), info[2].As<Napi::Number>().Int32Value());
    return Napi::External<CudaEngine>::New(env, h, [](Napi::Env, CudaEngine* p) {
      std::lock_guard<std::mutex> lock(context_mutex);
      delete p;
    });
  });
}

// cudaEnginePrefetch(handle, {key, gate, up, down}) and cudaEngineLayer(handle, experts, slotExpert,
// slotWeight, hidden, T, k, d, ff) → {out, fetches, hits, misses}: as the emulated engine's.
Napi::Value CudaEnginePrefetch(const Napi::CallbackInfo& info) {
  return cuda_call(info.Env(), [&] { return engine_prefetch_js<CudaEngine>(info); });
}

Napi::Value CudaEngineLayer(const Napi::CallbackInfo& info) {
  return cuda_call(info.Env(), [&] { return engine_layer_js<CudaEngine>(info); });
}

}  // namespace

void register_cuda(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaEngineNew", Napi::Function::New(env, CudaEngineNew));
  exports.Set("cudaEnginePrefetch", Napi::Function::New(env, CudaEnginePrefetch));
  exports.Set("cudaEngineLayer", Napi::Function::New(env, CudaEngineLayer));
  exports.Set("cudaCompress", Napi::Function::New(env, CudaCompress));
  exports.Set("cudaDecompress", Napi::Function::New(env, CudaDecompress));
  exports.Set("cudaPipelineRun", Napi::Function::New(env, CudaPipelineRun));
}
#endif

}  // namespace eb
