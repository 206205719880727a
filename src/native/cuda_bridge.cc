#include "cuda_bridge.h"

#ifdef EBSERVE_WITH_CUDA
#include "../../cuda/eb_cuda.h"
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
#endif

}  // namespace eb
