// report.h — one row per check: printed as it finishes (the table), then written as JSON, then
// the last line `gpu-check: N checks, M failed (EMULATED)` or `(DEVICE <name>)`.
#pragma once
#include <stdio.h>

#include <string>
#include <utility>
#include <vector>

#include "target.h"

namespace gpucheck {

struct CheckResult {
  std::string group;      // codec, expert, pipeline, model
  std::string name;       // what ran, e.g. "decode f32, eb 1e-3"
  std::string criterion;  // what passing means, e.g. "bit-exact vs eb::decode; |x - x'| <= eb"
  bool passed = false;
  std::string summary;    // the figures in words, or why it failed
  std::vector<std::pair<std::string, double>> figures;  // for the JSON: key (unit in the name), value
};

class Report {
 public:
  explicit Report(FILE* out) : out_(out) {}
  // Prints the table's heading (the target, and what its figures are).
  void begin(const Target& t);
  // Prints the row and keeps it.
  void add(CheckResult r);
  // A failed row for a check group that threw before it could report (a CUDA error, a bad file).
  void add_error(const std::string& group, const std::string& what);

  int checks() const { return (int)rows_.size(); }
  int failed() const;
  // `gpu-check: N checks, M failed (EMULATED)` or `(DEVICE <name>)`.
  std::string last_line(const Target& t) const;
  // The whole run as JSON: target, options (already JSON), every row, the counts, the last line.
  std::string json(const Target& t, const std::string& options_json) const;

 private:
  FILE* out_;
  std::vector<CheckResult> rows_;
};

// A JSON string literal of s.
std::string json_quote(const std::string& s);
// A JSON number (null for NaN and infinities, which JSON has no literal for).
std::string json_number(double v);

}  // namespace gpucheck
