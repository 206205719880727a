#include "safetensors.h"

#include <string.h>

#include <fstream>
#include <iterator>
#include <stdexcept>

#include "../cuda/eb_block.cuh"
#include "json.h"

namespace gpucheck {

namespace {

size_t dtype_bytes(const std::string& dt) {
  if (dt == "F64" || dt == "I64" || dt == "U64") return 8;
  if (dt == "F32" || dt == "I32" || dt == "U32") return 4;
  if (dt == "F16" || dt == "BF16" || dt == "I16" || dt == "U16") return 2;
  if (dt == "I8" || dt == "U8" || dt == "BOOL" || dt == "F8_E4M3" || dt == "F8_E5M2") return 1;
  return 0;
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

}  // namespace

SafeTensors::SafeTensors(const std::string& path) : path_(path) {
  auto fail = [&](const std::string& what) { throw std::runtime_error(path + ": " + what); };
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open it");
  file_.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (file_.size() < 8) fail("shorter than a safetensors header length");
  uint64_t n;
  memcpy(&n, file_.data(), 8);
  if (n > file_.size() - 8) fail("header length " + std::to_string(n) + " runs past the file");
  const Json header = parse_json(std::string(file_.begin() + 8, file_.begin() + 8 + n));
  if (header.kind != Json::Object) fail("header is not a JSON object");
  const uint8_t* data = file_.data() + 8 + n;
  const size_t data_bytes = file_.size() - 8 - n;
  for (const auto& [name, v] : header.object) {
    if (name == "__metadata__") continue;
    const Json *dt = v.get("dtype"), *shape = v.get("shape"), *off = v.get("data_offsets");
    if (!dt || dt->kind != Json::String || !shape || shape->kind != Json::Array || !off || off->kind != Json::Array ||
        off->array.size() != 2)
      fail(name + ": needs dtype, shape and data_offsets [begin, end]");
    Tensor t;
    t.dtype = dt->string;
    uint64_t count = 1;
    for (const Json& d : shape->array) {
      if (d.kind != Json::Number || d.number < 0) fail(name + ": bad shape");
      t.shape.push_back((int64_t)d.number);
      count *= (uint64_t)d.number;
    }
    const double b = off->array[0].number, e = off->array[1].number;
    if (!(b >= 0 && e >= b && e <= (double)data_bytes)) fail(name + ": data_offsets outside the file");
    t.data = data + (size_t)b;
    t.bytes = (size_t)(e - b);
    const size_t each = dtype_bytes(t.dtype);
    if (each && count * each != t.bytes)
      fail(name + ": " + std::to_string(t.bytes) + " bytes for " + std::to_string(count) + " " + t.dtype + " values");
    tensors_[name] = t;
  }
}

const SafeTensors::Tensor& SafeTensors::at(const std::string& name, const std::vector<int64_t>& shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error(path_ + ": no tensor " + name);
  if (it->second.shape != shape)
    throw std::runtime_error(path_ + ": " + name + " is " + shape_text(it->second.shape) + ", expected " + shape_text(shape));
  return it->second;
}

std::vector<float> SafeTensors::f32(const std::string& name, const std::vector<int64_t>& shape) const {
  const Tensor& t = at(name, shape);
  std::vector<float> out(t.bytes / (t.dtype == "F32" ? 4 : 2));
  if (t.dtype == "F32") {
    memcpy(out.data(), t.data, t.bytes);
  } else if (t.dtype == "BF16" || t.dtype == "F16") {
    for (size_t i = 0; i < out.size(); i++) {
      uint16_t h;
      memcpy(&h, t.data + 2 * i, 2);
      out[i] = t.dtype == "BF16" ? eb_bf16_to_f32(h) : eb_f16_to_f32(h);
    }
  } else {
    throw std::runtime_error(path_ + ": " + name + " is " + t.dtype + "; only F32, F16 and BF16 are read");
  }
  return out;
}

}  // namespace gpucheck
