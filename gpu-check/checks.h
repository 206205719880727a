// checks.h — the kit's checks, one file each, every one against the project's CPU reference:
//   check_codec.cc     the codec's decode kernels vs the CPU decoder (eb::decode), bit for bit
//   check_expert.cc    the expert FFN kernels vs the CPU expert engine (eb::expert_layer)
//   check_pipeline.cc  the offload pipeline (copy → decompress → compute streams, events)
//   check_model.cc     one decode step of the embedded model vs the CPU native forward
// Each adds its rows to the report; an exception escaping one becomes a failed row (main.cc).
#pragma once
#include <stdint.h>

#include <string>

#include "report.h"
#include "target.h"

namespace gpucheck {

struct Options {
  double mib = 256;       // codec: MiB of f32 N(0, 0.02) weights per case
  int d = 4096, ff = 14336;  // expert shape (FFN and pipeline checks): a Mixtral-8x7B expert
  int fetches = 8;        // pipeline: experts fetched one after another
  int reps = 10;          // timed runs per figure (after one warm-up run)
  int threads = 0;        // CPU reference threads; 0: every hardware thread
  uint64_t seed = 1;      // test data
  std::string model_dir = "models/ebserve-moe-8x";
  std::string json_path;  // where the JSON goes
};

void check_codec(Target& t, const Options& o, Report& report);
void check_expert(Target& t, const Options& o, Report& report);
void check_pipeline(Target& t, const Options& o, Report& report);
void check_model(Target& t, const Options& o, Report& report);

}  // namespace gpucheck
