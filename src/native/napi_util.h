// napi_util: the argument parsing and error conversion every JS-facing codec entry point shares
// (addon.cc's CPU codec, emulated_codec.cc's kernel emulation, cuda_bridge.cc's CUDA codec), so
// the three take the same arguments and fail the same way.
#pragma once
#include <napi.h>

#include <string>
#include <utility>
#include <vector>

#include "codec_cpu.h"
#include "parallel.h"
#include "stream_format.h"

namespace eb {

struct Bytes {
  uint8_t* data = nullptr;
  size_t len = 0;
};

inline Bytes bytes_of(const Napi::Value& v, const char* what) {
  if (v.IsTypedArray()) {
    auto t = v.As<Napi::TypedArray>();
    return {static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset(), t.ByteLength()};
  }
  if (v.IsArrayBuffer()) {
    auto a = v.As<Napi::ArrayBuffer>();
    return {static_cast<uint8_t*>(a.Data()), a.ByteLength()};
  }
  throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a TypedArray, Buffer or ArrayBuffer");
}

// A CodecError as a JS Error with `code` and `codecError: true` (src/codec/errors.ts maps it).
inline Napi::Error codec_error(Napi::Env env, const CodecError& e) {
  Napi::Error err = Napi::Error::New(env, e.what());
  err.Value().Set("code", Napi::String::New(env, e.code));
  err.Value().Set("codecError", Napi::Boolean::New(env, true));
  return err;
}

inline int threads_of(const Napi::Value& v) {
  int t = v.IsNumber() ? v.As<Napi::Number>().Int32Value() : 0;
  return t > 0 ? t : hardware_threads();
}

inline DType dtype_of(const Napi::Value& v) {
  int d = v.As<Napi::Number>().Int32Value();
  if (d < 0 || d > 2) throw CodecError("BAD_DTYPE", "dtype code " + std::to_string(d) + " (expected 0 f32, 1 f16, 2 bf16)");
  return (DType)d;
}

// Arguments of every compress function: (input, dtype, bound, boundMode, cuts[], threads?)
struct CompressArgs {
  Bytes in;
  size_t n = 0;
  EncodeParams p;
};

inline CompressArgs compress_args(const Napi::CallbackInfo& info) {
  CompressArgs a;
  a.in = bytes_of(info[0], "input");
  a.p.dtype = dtype_of(info[1]);
  a.p.bound = info[2].As<Napi::Number>().DoubleValue();
  int mode = info[3].As<Napi::Number>().Int32Value();
  if (mode < 0 || mode > 2) throw CodecError("BAD_BOUND_MODE", "bound mode code " + std::to_string(mode));
  a.p.mode = (BoundMode)mode;
  auto cuts = info[4].As<Napi::Array>();
  a.p.cut.clear();
  for (uint32_t i = 0; i < cuts.Length(); i++) {
    int c = cuts.Get(i).As<Napi::Number>().Int32Value();
    if (c < 0 || c > 255) throw CodecError("BAD_RUNG", "dropped plane count " + std::to_string(c));
    a.p.cut.push_back((uint8_t)c);
  }
  a.p.threads = threads_of(info[5]);
  size_t el = dtype_size(a.p.dtype);
  if (a.in.len % el) throw CodecError("BAD_INPUT", "input is " + std::to_string(a.in.len) + " bytes, not a whole number of " + std::to_string(el) + "-byte values");
  a.n = a.in.len / el;
  return a;
}

// A stream given as its head and an array of rungs (the offload store's split form), validated;
// every rung is referenced in `keep` so its memory outlives the StreamView that points into it.
inline StreamView parse_split_stream(const Bytes& head, const Napi::Array& rungs, bool verify, std::vector<Napi::ObjectReference>& keep,
                                     Readable readable = Readable::FixedOnly) {
  std::vector<const uint8_t*> rung;
  std::vector<size_t> len;
  for (uint32_t i = 0; i < rungs.Length(); i++) {
    Bytes b = bytes_of(rungs.Get(i), "rung");
    rung.push_back(b.data);
    len.push_back(b.len);
    keep.push_back(Napi::Persistent(rungs.Get(i).As<Napi::Object>()));
  }
  return parse_parts(head.data, head.len, rung.data(), len.data(), (int)rung.size(), verify, 1, readable);
}

// Hands a vector to JS without a copy.
inline Napi::Buffer<uint8_t> to_buffer(Napi::Env env, std::vector<uint8_t>&& v) {
  auto* owned = new std::vector<uint8_t>(std::move(v));
  return Napi::Buffer<uint8_t>::New(env, owned->data(), owned->size(),
                                    [](Napi::Env, uint8_t*, std::vector<uint8_t>* o) { delete o; }, owned);
}

// Arguments of the kernel-path readers: (stream, k (-1: every rung), outDtype). The stream is
// validated with its checksums; k is checked against the stream's rungs.
struct DecodeArgs {
  StreamView s;
  int k = 0;
  DType dtype = DType::F32;
};

inline DecodeArgs decode_args(const Napi::CallbackInfo& info, Readable readable = Readable::FixedOnly) {
  DecodeArgs a;
  Bytes st = bytes_of(info[0], "stream");
  a.k = info[1].As<Napi::Number>().Int32Value();
  a.dtype = dtype_of(info[2]);
  a.s = parse_stream(st.data, st.len, true, 1, readable);
  if (a.k < 0) a.k = a.s.available - 1;
  if (a.k >= a.s.available)
    throw CodecError("BAD_RUNGS", "cannot decode rung " + std::to_string(a.k) + " from " + std::to_string(a.s.available) + " rungs");
  return a;
}

// An AsyncWorker that settles a Promise: run() on a libuv thread, a CodecError (or any exception)
// becomes a rejection with `code`. Keeps the JS values whose memory run() reads or writes (every
// object argument of the call) alive until it is done.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const Napi::CallbackInfo& info)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {
    for (size_t i = 0; i < info.Length(); i++)
      if (info[i].IsObject()) keep_.push_back(Napi::Persistent(info[i].As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      run();
    } catch (const CodecError& e) {
      code_ = e.code;
      SetError(e.what());
    } catch (const std::exception& e) {
      code_ = "INTERNAL";
      SetError(e.what());
    }
  }
  void OnError(const Napi::Error& e) override {
    Napi::Error err = codec_error(Env(), CodecError(code_, e.Message()));
    deferred_.Reject(err.Value());
  }
  virtual void run() = 0;
  Napi::Promise::Deferred deferred_;
  std::string code_;

 private:
  std::vector<Napi::ObjectReference> keep_;
};

}  // namespace eb
