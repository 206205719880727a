#include "report.h"

#include <math.h>
#include <time.h>

namespace gpucheck {

std::string json_quote(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += (char)c;
    else if (c == '\n') o += "\\n";
    else if (c < 0x20) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else o += (char)c;
  }
  return o + "\"";
}

std::string json_number(double v) {
  if (!isfinite(v)) return "null";
  char buf[32];
  snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void Report::begin(const Target& t) {
  const DeviceInfo& d = t.info();
  if (d.emulated) {
    fprintf(out_, "gpu-check on EMULATED: %s\n", d.name.c_str());
    fprintf(out_, "  results are the kernels' own; times are this CPU running them one thread after another, not a GPU's\n");
  } else {
    fprintf(out_, "gpu-check on DEVICE %s (compute %s, %d SMs, %.1f GiB; CUDA runtime %d.%d, driver %d.%d)\n",
            d.name.c_str(), d.compute_capability.c_str(), d.multiprocessors, d.memory_bytes / 1073741824.0,
            d.runtime_version / 1000, d.runtime_version % 1000 / 10, d.driver_version / 1000, d.driver_version % 1000 / 10);
  }
  fprintf(out_, "%3s  %-9s %-38s %-6s %s\n", "#", "group", "check", "result", "measured");
  fflush(out_);
}

void Report::add(CheckResult r) {
  rows_.push_back(std::move(r));
  const CheckResult& c = rows_.back();
  fprintf(out_, "%3d  %-9s %-38s %-6s %s\n", (int)rows_.size(), c.group.c_str(), c.name.c_str(), c.passed ? "PASS" : "FAIL",
          c.summary.c_str());
  fflush(out_);
}

void Report::add_error(const std::string& group, const std::string& what) {
  CheckResult r;
  r.group = group;
  r.name = "(did not finish)";
  r.criterion = "runs to the end without an error";
  r.summary = "error: " + what;
  add(std::move(r));
}

int Report::failed() const {
  int n = 0;
  for (const CheckResult& r : rows_) n += !r.passed;
  return n;
}

std::string Report::last_line(const Target& t) const {
  return "gpu-check: " + std::to_string(checks()) + " checks, " + std::to_string(failed()) + " failed (" + t.label() + ")";
}

std::string Report::json(const Target& t, const std::string& options_json) const {
  const DeviceInfo& d = t.info();
  char when[32];
  time_t now = time(nullptr);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  std::string o = "{\n";
  o += "  \"kit\": \"ebserve gpu-check\",\n";
  o += "  \"format\": 1,\n";
  o += "  \"finished_at\": " + json_quote(when) + ",\n";
  o += "  \"target\": " + json_quote(d.emulated ? "EMULATED" : "DEVICE") + ",\n";
  o += "  \"device\": {\"emulated\": " + std::string(d.emulated ? "true" : "false") + ", \"name\": " + json_quote(d.name) +
       ", \"compute_capability\": " + json_quote(d.compute_capability) + ", \"memory_bytes\": " +
       json_number((double)d.memory_bytes) + ", \"multiprocessors\": " + std::to_string(d.multiprocessors) +
       ", \"cuda_runtime_version\": " + std::to_string(d.runtime_version) +
       ", \"cuda_driver_version\": " + std::to_string(d.driver_version) + "},\n";
  o += "  \"anchor\": \"cuSZp2 decompresses ~510 GB/s on an A100 (its paper); decode figures here are output bytes per second\",\n";
  o += "  \"options\": " + options_json + ",\n";
  o += "  \"checks\": [\n";
  for (size_t i = 0; i < rows_.size(); i++) {
    const CheckResult& c = rows_[i];
    o += "    {\"group\": " + json_quote(c.group) + ", \"name\": " + json_quote(c.name) + ", \"passed\": " +
         (c.passed ? "true" : "false") + ",\n     \"criterion\": " + json_quote(c.criterion) +
         ",\n     \"summary\": " + json_quote(c.summary) + ",\n     \"figures\": {";
    for (size_t j = 0; j < c.figures.size(); j++)
      o += (j ? ", " : "") + json_quote(c.figures[j].first) + ": " + json_number(c.figures[j].second);
    o += "}}" + std::string(i + 1 < rows_.size() ? "," : "") + "\n";
  }
  o += "  ],\n";
  o += "  \"summary\": {\"checks\": " + std::to_string(checks()) + ", \"failed\": " + std::to_string(failed()) + "},\n";
  o += "  \"last_line\": " + json_quote(last_line(t)) + "\n";
  o += "}\n";
  return o;
}

}  // namespace gpucheck
