// expert_addon: the Node face of the CPU expert engine (expert_cpu.h). Its functions:
//   fusedMatrix(head, rungs | null, k, rows, cols, verify) → { handle, bytes, rows, cols, k }
//     validates a compressed matrix once and indexes its rows for the fused path; the result keeps
//     the stream's buffers alive for as long as it lives;
//   expertLayerAsync(experts, slotExpert, slotWeight, hidden, T, k, d, ff, threads) → Promise<Float32Array>
//     one layer's routed experts on a libuv worker (the event loop goes on meanwhile), where
//     experts[i] = [gate, up, down], each a Float32Array (dense f32, checkpoint layout), a
//     Uint16Array (dense bf16 bits) or a fusedMatrix result; expertLayerSync does the same on the
//     calling thread;
//   fusedMatrixDecode(fused) → Float32Array, the weights exactly as the fused path computes with;
//   symbolMatrix(fused, maxPatchShare, bits = 8, int8Activations = false) → { symbols, bytes, rows,
//     cols, patches, bits, int8Activations } | null: the fused matrix's rung as 8- or 4-bit symbols
//     (expert_cpu.h SymbolMatrix), null when more than maxPatchShare of its values do not fit; it
//     owns its arrays (the fused matrix may go); int8Activations: its products quantize the
//     activations (the integer product), where its form allows;
//   symbolMatrixDecode(symbols) → Float32Array, the weights its product multiplies with;
//   setFusedDecoder("gfni" | "plane loop") → whether the CPU can (the tests run both);
//   setIntDot("vnni" | "generic") → the same for the integer product's dot;
//   matrixProduct(matrix, rows, cols, x, n) → Float32Array [n, rows]: one product, for the tests.
// Argument errors are TypeError / RangeError naming the argument; stream errors are CodecErrors.
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "expert_addon.h"
#include "napi_util.h"

namespace eb {
namespace {

// A FusedMatrix and the JS buffers it points into.
struct FusedHolder {
  FusedHolder(const FusedMatrix& fm, std::vector<Napi::ObjectReference>&& k) : m(fm), keep(std::move(k)) {}
  FusedMatrix m;
  std::vector<Napi::ObjectReference> keep;
};

Napi::Value FusedMatrixNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    std::vector<Napi::ObjectReference> keep;
    Bytes head = bytes_of(info[0], "stream");
    keep.push_back(Napi::Persistent(info[0].As<Napi::Object>()));
    int k = info[2].As<Napi::Number>().Int32Value();
    int rows = info[3].As<Napi::Number>().Int32Value(), cols = info[4].As<Napi::Number>().Int32Value();
    bool verify = info[5].ToBoolean();
    StreamView s;
    if (info[1].IsArray()) {
      s = parse_split_stream(head, info[1].As<Napi::Array>(), verify, keep);
    } else {
      s = parse_stream(head.data, head.len, verify);
    }
    if (k < 0) k = s.available - 1;
    auto holder = std::make_unique<FusedHolder>(prepare_fused(s, k, rows, cols), std::move(keep));
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", (double)holder->m.bytes);
    o.Set("rows", rows);
    o.Set("cols", cols);
    o.Set("k", k);
    o.Set("handle", Napi::External<FusedHolder>::New(env, holder.release(), [](Napi::Env, FusedHolder* h) { delete h; }));
    return o;
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
}

const FusedMatrix* fused_of(const Napi::Value& v) {
  if (!v.IsObject()) return nullptr;
  Napi::Value h = v.As<Napi::Object>().Get("handle");
  if (!h.IsExternal()) return nullptr;
  return &h.As<Napi::External<FusedHolder>>().Data()->m;
}

const SymbolMatrix* symbols_arg(const Napi::Value& v) {
  if (!v.IsObject()) return nullptr;
  Napi::Value h = v.As<Napi::Object>().Get("symbols");
  if (!h.IsExternal()) return nullptr;
  return h.As<Napi::External<SymbolMatrix>>().Data();
}


template <typename A>
A typed_of(Napi::Env env, const Napi::Value& v, napi_typedarray_type t, size_t n, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != t)
    throw Napi::TypeError::New(env, std::string(what) + " has the wrong type");
  A a = v.As<A>();
  if (a.ElementLength() != n)
    throw Napi::RangeError::New(env, std::string(what) + " has " + std::to_string(a.ElementLength()) + " values, expected " + std::to_string(n));
  return a;
}

// A LayerCall and the experts it points at.
struct ParsedCall {
  std::vector<ExpertWeights> experts;
  LayerCall c;
  // The call, pointing at this object's experts (wherever the object has moved to).
  LayerCall& call() {
    c.experts = experts.data();
    c.num_experts = (int)experts.size();
    return c;
  }
};

// (experts, slotExpert, slotWeight, hidden, T, k, d, ff, threads) → a call writing into *out.
ParsedCall layer_call(const Napi::CallbackInfo& info, Napi::Float32Array* out) {
  Napi::Env env = info.Env();
  ParsedCall p;
  LayerCall& c = p.c;
  c.T = info[4].As<Napi::Number>().Int32Value();
  c.k = info[5].As<Napi::Number>().Int32Value();
  c.d = info[6].As<Napi::Number>().Int32Value();
  c.ff = info[7].As<Napi::Number>().Int32Value();
  c.threads = threads_of(info[8]);
  if (c.T < 0 || c.k < 1 || c.d < 1 || c.ff < 1) throw Napi::RangeError::New(env, "T ≥ 0, k, d and ff ≥ 1 are required");
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "experts must be an array of [gate, up, down]");
  auto experts = info[0].As<Napi::Array>();
  for (uint32_t e = 0; e < experts.Length(); e++)
    p.experts.push_back(expert_weights_of(env, experts.Get(e), c.d, c.ff, "expert " + std::to_string(e)));
  size_t S = (size_t)c.T * c.k;
  auto ids = typed_of<Napi::Int32Array>(env, info[1], napi_int32_array, S, "slotExpert");
  for (size_t s = 0; s < S; s++)
    if (ids[s] < 0 || (uint32_t)ids[s] >= experts.Length())
      throw Napi::RangeError::New(env, "slot " + std::to_string(s) + " names expert " + std::to_string(ids[s]) + " of " + std::to_string(experts.Length()));
  c.slot_expert = ids.Data();
  c.slot_weight = typed_of<Napi::Float32Array>(env, info[2], napi_float32_array, S, "slotWeight").Data();
  c.hidden = typed_of<Napi::Float32Array>(env, info[3], napi_float32_array, (size_t)c.T * c.d, "hidden").Data();
  *out = Napi::Float32Array::New(env, (size_t)c.T * c.d);
  c.out = out->Data();
  return p;
}

Napi::Value ExpertLayerSync(const Napi::CallbackInfo& info) {
  Napi::Float32Array out;
  ParsedCall p = layer_call(info, &out);
  expert_layer(p.call());
  return out;
}

class LayerWorker : public PromiseWorker {
 public:
  LayerWorker(Napi::Env env, const Napi::CallbackInfo& info, ParsedCall p, Napi::Float32Array out)
      : PromiseWorker(env, info), p_(std::move(p)), out_(Napi::Persistent(out)) {}
  void run() override { expert_layer(p_.call()); }
  void OnOK() override { deferred_.Resolve(out_.Value()); }

 private:
  ParsedCall p_;
  Napi::Reference<Napi::Float32Array> out_;
};

Napi::Value ExpertLayerAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Float32Array out;
  ParsedCall parsed;
  try {
    parsed = layer_call(info, &out);
  } catch (const Napi::Error& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  }
  // The matrices' memory stays alive with info's objects (the experts array holds them).
  auto* w = new LayerWorker(env, info, std::move(parsed), out);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// A matrix's weights as its product multiplies with them, row by row into a Float32Array.
template <class M>
Napi::Value weights_of(Napi::Env env, const M* m, const char* expected, void (*row)(const M&, int, float*)) {
  if (!m) throw Napi::TypeError::New(env, expected);
  auto out = Napi::Float32Array::New(env, (size_t)m->rows * m->cols);
  for (int r = 0; r < m->rows; r++) row(*m, r, out.Data() + (size_t)r * m->cols);
  return out;
}

Napi::Value FusedMatrixDecode(const Napi::CallbackInfo& info) {
  return weights_of(info.Env(), fused_of(info[0]), "expected a fusedMatrix", decode_fused_row);
}

Napi::Value SymbolMatrixNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const FusedMatrix* f = fused_of(info[0]);
  if (!f) throw Napi::TypeError::New(env, "expected a fusedMatrix");
  const double share = info[1].As<Napi::Number>().DoubleValue();
  if (!(share >= 0 && share <= 1)) throw Napi::RangeError::New(env, "maxPatchShare must be in 0..1, got " + std::to_string(share));
  const int bits = info[2].IsUndefined() ? 8 : info[2].As<Napi::Number>().Int32Value();
  if (bits != 8 && bits != 4) throw Napi::RangeError::New(env, "bits must be 8 or 4, got " + info[2].ToString().Utf8Value());
  const bool int8_x = info.Length() > 3 && info[3].ToBoolean().Value();
  auto m = std::make_unique<SymbolMatrix>();
  if (!symbols_of(*f, share, bits, int8_x, *m)) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("bytes", (double)m->bytes());
  o.Set("rows", m->rows);
  o.Set("cols", m->cols);
  o.Set("patches", (double)m->patches());
  o.Set("bits", bits);
  o.Set("int8Activations", m->int8_x);
  // The arrays are native memory: V8 is told of them, so that a tier A turning over symbol
  // matrices collects the dropped ones as soon as their bytes count.
  const int64_t held = (int64_t)m->bytes();
  Napi::MemoryManagement::AdjustExternalMemory(env, held);
  o.Set("symbols", Napi::External<SymbolMatrix>::New(env, m.release(), [held](Napi::Env e, SymbolMatrix* p) {
    Napi::MemoryManagement::AdjustExternalMemory(e, -held);
    delete p;
  }));
  return o;
}

Napi::Value SymbolMatrixDecode(const Napi::CallbackInfo& info) {
  return weights_of(info.Env(), symbols_arg(info[0]), "expected a symbolMatrix", decode_symbol_row);
}

// setFusedDecoder("gfni" | "plane loop") → whether the CPU can use it (it is then used).
Napi::Value SetFusedDecoder(const Napi::CallbackInfo& info) {
  std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name != "gfni" && name != "plane loop") throw Napi::RangeError::New(info.Env(), "fused decoder is \"gfni\" or \"plane loop\", got " + name);
  return Napi::Boolean::New(info.Env(), set_fused_decoder(name == "gfni"));
}

// matrixProduct(matrix, rows, cols, x, n) → Float32Array [n, rows]: y[t, r] = Σ_c M[r, c]·x[t, c],
// one product as the engine runs it (for the tests: a layer's nonlinearity hides a product's bits).
Napi::Value MatrixProduct(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int rows = info[1].As<Napi::Number>().Int32Value(), cols = info[2].As<Napi::Number>().Int32Value();
  const int n = info[4].As<Napi::Number>().Int32Value();
  if (rows <= 0 || cols <= 0 || n <= 0) throw Napi::RangeError::New(env, "rows, cols and n must be positive");
  const MatrixRef m = matrix_of(env, info[0], rows, cols, "matrix");
  if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
      info[3].As<Napi::Float32Array>().ElementLength() != (size_t)n * cols)
    throw Napi::TypeError::New(env, "x must be a Float32Array of n × cols values");
  auto y = Napi::Float32Array::New(env, (size_t)n * rows);
  matrix_rows(m, cols, 0, rows, info[3].As<Napi::Float32Array>().Data(), cols, n, y.Data(), rows);
  return y;
}

// setIntDot("vnni" | "generic") → whether the CPU can use it (it is then used).
Napi::Value SetIntDot(const Napi::CallbackInfo& info) {
  std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name != "vnni" && name != "generic") throw Napi::RangeError::New(info.Env(), "integer dot is \"vnni\" or \"generic\", got " + name);
  return Napi::Boolean::New(info.Env(), set_int_dot(name == "vnni"));
}

}  // namespace

// A matrix argument: a Float32Array (f32), a Uint16Array (bf16 bits), a fusedMatrix or a
// symbolMatrix of rows × cols.
MatrixRef matrix_of(Napi::Env env, const Napi::Value& v, int rows, int cols, const std::string& what) {
  MatrixRef m;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array) {
    auto a = v.As<Napi::Float32Array>();
    if (a.ElementLength() != (size_t)rows * cols)
      throw Napi::RangeError::New(env, what + " has " + std::to_string(a.ElementLength()) + " values, expected " +
                                           std::to_string(rows) + "×" + std::to_string(cols));
    m.dense = a.Data();
  } else if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array) {
    auto a = v.As<Napi::Uint16Array>();
    if (a.ElementLength() != (size_t)rows * cols)
      throw Napi::RangeError::New(env, what + " has " + std::to_string(a.ElementLength()) + " bf16 values, expected " +
                                           std::to_string(rows) + "×" + std::to_string(cols));
    if (cols % 32) throw Napi::RangeError::New(env, what + ": bf16 weights need rows of whole 32-value blocks, got " + std::to_string(cols));
    m.bf16 = a.Data();
  } else if (const FusedMatrix* f = fused_of(v)) {
    if (f->rows != rows || f->cols != cols)
      throw Napi::RangeError::New(env, what + " is " + std::to_string(f->rows) + "×" + std::to_string(f->cols) +
                                           ", expected " + std::to_string(rows) + "×" + std::to_string(cols));
    m.fused = f;
  } else if (const SymbolMatrix* q = symbols_arg(v)) {
    if (q->rows != rows || q->cols != cols)
      throw Napi::RangeError::New(env, what + " is " + std::to_string(q->rows) + "×" + std::to_string(q->cols) +
                                           ", expected " + std::to_string(rows) + "×" + std::to_string(cols));
    m.symbols = q;
  } else {
    throw Napi::TypeError::New(env, what + " must be a Float32Array (f32), a Uint16Array (bf16 bits), a fusedMatrix or a symbolMatrix");
  }
  return m;
}

ExpertWeights expert_weights_of(Napi::Env env, const Napi::Value& v, int d, int ff, const std::string& what) {
  if (!v.IsArray() || v.As<Napi::Array>().Length() != 3) throw Napi::TypeError::New(env, what + " must be [gate, up, down]");
  auto m = v.As<Napi::Array>();
  return {matrix_of(env, m.Get(0u), ff, d, what + " gate"), matrix_of(env, m.Get(1u), ff, d, what + " up"),
          matrix_of(env, m.Get(2u), d, ff, what + " down")};
}

void register_expert_engine(Napi::Env env, Napi::Object exports) {
  exports.Set("fusedMatrix", Napi::Function::New(env, FusedMatrixNew));
  exports.Set("fusedMatrixDecode", Napi::Function::New(env, FusedMatrixDecode));
  exports.Set("symbolMatrix", Napi::Function::New(env, SymbolMatrixNew));
  exports.Set("symbolMatrixDecode", Napi::Function::New(env, SymbolMatrixDecode));
  exports.Set("expertLayerSync", Napi::Function::New(env, ExpertLayerSync));
  exports.Set("expertLayerAsync", Napi::Function::New(env, ExpertLayerAsync));
  exports.Set("setFusedDecoder", Napi::Function::New(env, SetFusedDecoder));
  exports.Set("setIntDot", Napi::Function::New(env, SetIntDot));
  exports.Set("matrixProduct", Napi::Function::New(env, MatrixProduct));
}

}  // namespace eb
