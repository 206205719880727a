// json.h — just enough JSON to read a model's config.json and a safetensors header: objects,
// arrays, strings (escapes, \u as UTF-8), numbers, true/false/null. Throws std::runtime_error
// naming the byte offset of what it could not read.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace gpucheck {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;  // in file order

  // The member `key` of an object, or null when absent (or when this is not an object).
  const Json* get(const std::string& key) const;
};

Json parse_json(const std::string& text);

}  // namespace gpucheck
