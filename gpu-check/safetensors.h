// safetensors.h — reads a .safetensors file: u64 little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the tensors'
// raw little-endian bytes, offsets relative to the end of the header. The whole file is read into
// memory (the embedded model is 13 MB). Every tensor's extent is checked against the file and its
// dtype and shape; errors name the file and the tensor.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <map>
#include <string>
#include <vector>

namespace gpucheck {

class SafeTensors {
 public:
  struct Tensor {
    std::string dtype;  // "F32", "F16", "BF16" (others are listed but not converted)
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    size_t bytes = 0;
  };

  // Throws std::runtime_error naming the file and what is wrong with it.
  explicit SafeTensors(const std::string& path);

  bool has(const std::string& name) const { return tensors_.count(name) > 0; }
  // The tensor `name`, its shape checked against `shape`. Throws naming it when absent or unlike.
  const Tensor& at(const std::string& name, const std::vector<int64_t>& shape) const;
  // The same, converted to f32 (exactly: f16 and bf16 values are all f32 values).
  std::vector<float> f32(const std::string& name, const std::vector<int64_t>& shape) const;

 private:
  std::string path_;
  std::vector<uint8_t> file_;
  std::map<std::string, Tensor> tensors_;
};

}  // namespace gpucheck
