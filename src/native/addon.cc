// addon.cc — the Node face of the native codec (node-addon-api). Thin: it turns JS values into
// pointers and lengths, runs the codec (on the calling thread for the *Sync functions, on a libuv
// worker thread for the async ones, which return Promises), and turns CodecError into a JS Error
// with `code` set. src/codec/native.ts is the only TypeScript file that loads it.
#include <napi.h>

#include <string.h>
#ifdef __GLIBC__  // defined by the C library headers above
#include <malloc.h>
#endif

#include <memory>
#include <string>
#include <vector>

#include "codec_cpu.h"
#include "codec_entropy.h"
#include "crc32c.h"
#include "cuda_bridge.h"
#include "decode_stream.h"
#include "direct_file.h"
#include "emulated_codec.h"
#include "emulated_pipeline.h"
#include "expert_addon.h"
#include "expert_cpu.h"
#include "napi_util.h"
#include "parallel.h"

namespace {

using eb::CodecError;

using eb::Bytes;
using eb::bytes_of;
using eb::codec_error;
using eb::CompressArgs;
using eb::compress_args;
using eb::dtype_of;
using eb::threads_of;
using eb::to_buffer;

// Arguments of decompress*: (head, rungs[] | null, k, outDtype, out | null, verify, threads).
// With rungs null, head is the whole stream.
struct DecompressArgs {
  Bytes head;
  std::vector<const uint8_t*> rung;
  std::vector<size_t> rung_len;
  bool split = false;
  int k = -1;
  eb::DType out_dtype = eb::DType::F32;
  Bytes out;
  bool have_out = false;
  bool verify = true;
  int threads = 1;

  eb::StreamView parse() const {
    // The CPU decoder reads either coder.
    return split ? eb::parse_parts(head.data, head.len, rung.data(), rung_len.data(), (int)rung.size(), verify, threads,
                                   eb::Readable::AnyCoder)
                 : eb::parse_stream(head.data, head.len, verify, threads, eb::Readable::AnyCoder);
  }
};

// The stream arguments (head, rungs[] | null) every reader takes.
void read_stream_args(const Napi::Value& head, const Napi::Value& rungs, DecompressArgs& a) {
  a.head = bytes_of(head, "stream");
  if (!rungs.IsArray()) return;
  a.split = true;
  auto arr = rungs.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Bytes b = bytes_of(arr.Get(i), "rung");
    a.rung.push_back(b.data);
    a.rung_len.push_back(b.len);
  }
}

DecompressArgs decompress_args(const Napi::CallbackInfo& info) {
  DecompressArgs a;
  read_stream_args(info[0], info[1], a);
  a.k = info[2].As<Napi::Number>().Int32Value();
  a.out_dtype = dtype_of(info[3]);
  if (info[4].IsTypedArray() || info[4].IsArrayBuffer()) {
    a.out = bytes_of(info[4], "out");
    a.have_out = true;
  }
  a.verify = info[5].ToBoolean();
  a.threads = threads_of(info[6]);
  return a;
}

// compress*'s 7th argument: the coder (0 fixed, 1 entropy; default fixed).
CompressArgs compress_args_with_coder(const Napi::CallbackInfo& info) {
  CompressArgs a = compress_args(info);
  if (info.Length() > 6 && !info[6].IsUndefined()) {
    int coder = info[6].As<Napi::Number>().Int32Value();
    if (coder != eb::kModeFixed && coder != eb::kModeEntropy)
      throw CodecError("BAD_MODE", "coder " + std::to_string(coder) + " (expected 0 fixed or 1 entropy)");
    a.p.coder = (uint8_t)coder;
  }
  return a;
}

// Decodes into a.out (which must be big enough) and returns the rung decoded.
int run_decode(const DecompressArgs& a, const eb::StreamView& s, uint8_t* out, size_t out_len) {
  int k = a.k < 0 ? s.available - 1 : a.k;
  size_t need = s.h.count * eb::dtype_size(a.out_dtype);
  if (out_len < need)
    throw CodecError("BAD_OUTPUT", "output holds " + std::to_string(out_len) + " bytes; the stream decodes to " + std::to_string(need));
  eb::decode(s, k, a.out_dtype, out, a.threads);
  return k;
}

Napi::Value CompressSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    CompressArgs a = compress_args_with_coder(info);
    return to_buffer(env, eb::encode(a.in.data, a.n, a.p));
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

using Worker = eb::PromiseWorker;

class CompressWorker : public Worker {
 public:
  CompressWorker(Napi::Env env, const Napi::CallbackInfo& info, CompressArgs a) : Worker(env, info), a_(std::move(a)) {}
  void run() override { result_ = eb::encode(a_.in.data, a_.n, a_.p); }
  void OnOK() override { deferred_.Resolve(to_buffer(Env(), std::move(result_))); }

 private:
  CompressArgs a_;
  std::vector<uint8_t> result_;
};

Napi::Value CompressAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    auto* w = new CompressWorker(env, info, compress_args_with_coder(info));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

Napi::Value DecompressSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    DecompressArgs a = decompress_args(info);
    eb::StreamView s = a.parse();
    if (a.have_out) {
      run_decode(a, s, a.out.data, a.out.len);
      return info[4];
    }
    size_t need = s.h.count * eb::dtype_size(a.out_dtype);
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, need);
    run_decode(a, s, out.Data(), need);
    return out;
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

class DecompressWorker : public Worker {
 public:
  DecompressWorker(Napi::Env env, const Napi::CallbackInfo& info, DecompressArgs a, eb::StreamView s,
                   Napi::Value out)
      : Worker(env, info), a_(std::move(a)), s_(std::move(s)), out_(Napi::Persistent(out.As<Napi::Object>())) {}
  void run() override { run_decode(a_, s_, dst_.data, dst_.len); }
  void OnOK() override { deferred_.Resolve(out_.Value()); }
  Bytes dst_;

 private:
  DecompressArgs a_;
  eb::StreamView s_;
  Napi::ObjectReference out_;
};

Napi::Value DecompressAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    DecompressArgs a = decompress_args(info);
    // Validation is O(blocks / 32) of the work and gives its error synchronously as a rejection.
    eb::StreamView s = a.parse();
    Napi::Value out;
    Bytes dst;
    if (a.have_out) {
      out = info[4];
      dst = a.out;
    } else {
      size_t need = s.h.count * eb::dtype_size(a.out_dtype);
      auto buf = Napi::Buffer<uint8_t>::New(env, need);
      out = buf;
      dst = {buf.Data(), need};
    }
    auto* w = new DecompressWorker(env, info, std::move(a), std::move(s), out);
    w->dst_ = dst;
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  } catch (const CodecError& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(codec_error(env, e).Value());
    return d.Promise();
  }
}

// inspect(head, rungs | null, verify) → header fields, the rung table and a rate histogram.
Napi::Value Inspect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    DecompressArgs a;
    read_stream_args(info[0], info[1], a);
    a.verify = info[2].ToBoolean();
    eb::StreamView s = a.parse();
    const eb::Header& h = s.h;
    Napi::Object o = Napi::Object::New(env);
    o.Set("version", (int)h.version);
    o.Set("dtype", (int)h.dtype);
    o.Set("mode", (int)h.mode);
    o.Set("count", (double)h.count);
    o.Set("eb", h.eb);
    o.Set("boundMode", (int)h.bound_mode);
    o.Set("boundParam", h.bound_param);
    o.Set("escapes", (double)h.escapes);
    o.Set("headBytes", (double)h.head_bytes());
    o.Set("payloadBytes", (double)h.payload_bytes);
    o.Set("availableRungs", s.available);
    Napi::Array rungs = Napi::Array::New(env, h.rungs);
    for (int j = 0; j < h.rungs; j++) {
      Napi::Object r = Napi::Object::New(env);
      r.Set("droppedPlanes", (int)h.cut[j]);
      r.Set("bound", ldexp(h.eb, h.cut[j]));
      r.Set("offset", (double)h.rung_offset[j]);
      r.Set("bytes", (double)h.rung_bytes[j]);
      r.Set("crc32c", (double)h.rung_crc[j]);
      rungs.Set(j, r);
    }
    o.Set("rungs", rungs);
    if (h.mode == eb::kModeEntropy) {
      // The symbols' statistics: the frequency table the lanes code with, and where rung 0's bytes go.
      eb::EntropyStats st = eb::entropy_stats(s);
      Napi::Object sy = Napi::Object::New(env);
      sy.Set("symbols", st.symbols);
      sy.Set("rawPlanes", st.raw_planes);
      sy.Set("codedShift", st.coded_shift);
      sy.Set("tableBits", st.table_bits);
      sy.Set("codedBytes", st.coded_bytes);
      sy.Set("rawBytes", st.raw_bytes);
      sy.Set("tableBytes", st.table_bytes);
      Napi::Array fa = Napi::Array::New(env, st.symbols);
      for (int y = 0; y < st.symbols; y++) fa.Set(y, (int)s.entropy.freq[y]);
      sy.Set("frequencies", fa);
      o.Set("symbolStats", sy);
      o.Set("rateHistogram", Napi::Array::New(env, 0));
    } else {
      std::vector<double> hist(EB_MAX_RATE + 1, 0);
      for (uint64_t b = 0; b < h.blocks(); b++) hist[s.rates[b]]++;
      Napi::Array ha = Napi::Array::New(env, hist.size());
      for (size_t r = 0; r < hist.size(); r++) ha.Set(r, hist[r]);
      o.Set("rateHistogram", ha);
    }
    return o;
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

Napi::Value EntropyBits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    Bytes in = bytes_of(info[0], "input");
    eb::DType dt = dtype_of(info[1]);
    double bound = info[2].As<Napi::Number>().DoubleValue();
    return Napi::Number::New(env, eb::quantized_entropy_bits(in.data, in.len / eb::dtype_size(dt), dt, bound));
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

// widen(src, dtype, out): stored f32 / f16 / bf16 values into the Float32Array out (as many values
// as src holds). The offload store's exact level decodes through it: as a JavaScript loop the
// widening of one expert took longer than the rest of a miss.
Napi::Value Widen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    Bytes in = bytes_of(info[0], "input");
    eb::DType dt = dtype_of(info[1]);
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(env, "out must be a Float32Array");
    auto out = info[2].As<Napi::Float32Array>();
    const size_t el = eb::dtype_size(dt), n = in.len / el;
    if (in.len % el || out.ElementLength() != n)
      throw Napi::RangeError::New(env, std::to_string(in.len) + " bytes are not " + std::to_string(out.ElementLength()) + " values of " + std::to_string(el) + " bytes");
    float* o = out.Data();
    if (dt == eb::DType::F32) {
      memcpy(o, in.data, in.len);
    } else {
      for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, in.data + 2 * i, 2);  // the bytes need not be aligned
        o[i] = dt == eb::DType::BF16 ? eb_bf16_to_f32(h) : eb_f16_to_f32(h);
      }
    }
    return out;
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Bytes b = bytes_of(info[0], "data");
  int threads = info[1].IsNumber() ? threads_of(info[1]) : 1;
  return Napi::Number::New(info.Env(), eb::crc32c_parallel(b.data, b.len, threads));
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("simd", eb::simd_level());
  o.Set("fusedDecoder", eb::fused_decoder());
  o.Set("intDot", eb::int_dot());
  o.Set("threads", eb::hardware_threads());
  o.Set("cuda", eb::cuda_probe(env));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
#ifdef __GLIBC__
  // Blocks of 1 MiB and more (experts read from the disk, decoded, freed; their JS buffers) are
  // mapped on their own and unmapped when freed. glibc's default raises this threshold to the
  // size of each large block freed (up to 32 MiB), after which such blocks come from per-thread
  // arenas that keep the freed memory: serving a 2-layer OLMoE shape with the controller on,
  // that held 2.6 GB beyond everything alive (RSS 5.2 GB against 2.6 GB with the threshold fixed),
  // at the same tokens/s.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
  exports.Set("compressSync", Napi::Function::New(env, CompressSync));
  exports.Set("compressAsync", Napi::Function::New(env, CompressAsync));
  exports.Set("decompressSync", Napi::Function::New(env, DecompressSync));
  exports.Set("decompressAsync", Napi::Function::New(env, DecompressAsync));
  exports.Set("inspect", Napi::Function::New(env, Inspect));
  exports.Set("entropyBits", Napi::Function::New(env, EntropyBits));
  exports.Set("crc32c", Napi::Function::New(env, Crc32c));
  exports.Set("widen", Napi::Function::New(env, Widen));
  exports.Set("info", Napi::Function::New(env, Info));
  eb::register_decode_stream(env, exports);
  eb::register_emulated(env, exports);
  eb::register_emulated_pipeline(env, exports);
  eb::register_cuda(env, exports);
  eb::register_expert_engine(env, exports);
  eb::register_decoder(env, exports);
  eb::register_direct_file(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(ebserve_native, Init)
