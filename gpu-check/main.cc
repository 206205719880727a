// gpu-check — proves ebserve's CUDA path on whatever GPU is at hand, in one command and a few
// minutes: the codec's decode kernels, the expert FFN kernels, the offload pipeline and one
// decode step of the embedded model, each against the project's CPU reference, with its figure.
//
//   make gpu-check            nvcc build of build/gpu-check, run on CUDA device 0
//   make gpu-check-emulated   g++ build of build/gpu-check-emulated: the same checks, the kernels'
//                             bodies run on the CPU under cuda/emulate.h (what CI runs)
//   build/gpu-check --help    the flags (sizes, where the JSON goes)
//
// Output: a table (one row per check, printed as it finishes), a JSON file, and the last line
// `gpu-check: N checks, M failed (EMULATED)` or `(DEVICE <name>)`. Exit status 0 when nothing
// failed, 1 when a check failed, 2 when it could not run (no CUDA device, bad flags).
// gpu-check/README.md says what each figure means.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <exception>
#include <fstream>
#include <string>

#include "checks.h"
#include "report.h"
#include "target.h"

using namespace gpucheck;

namespace {

#if defined(GPU_CHECK_CUDA)
const bool kEmulated = false;
const char* kProgram = "build/gpu-check";
const char* kDefaultJson = "build/gpu-check.json";
#else
const bool kEmulated = true;
const char* kProgram = "build/gpu-check-emulated";
const char* kDefaultJson = "build/gpu-check-emulated.json";
#endif

void usage(FILE* out) {
  fprintf(out,
          "usage: %s [--small] [--mib N] [--expert D,FF] [--fetches N] [--reps N] [--threads N]\n"
          "       [--seed N] [--model DIR] [--json PATH]\n"
          "  --mib N        MiB of N(0, 0.02) f32 weights per codec case (default %s)\n"
          "  --expert D,FF  expert shape for the FFN and pipeline checks (default %s)\n"
          "  --fetches N    expert fetches in the pipeline check (default %s)\n"
          "  --reps N       timed runs per figure, after a warm-up (default %s)\n"
          "  --threads N    CPU threads for the references (default: all)\n"
          "  --small        a quick run: --mib 1 --expert 128,256 --fetches 4 --reps 2\n"
          "  --model DIR    the embedded model (default models/ebserve-moe-8x; run from the repository root)\n"
          "  --json PATH    where the JSON goes (default %s)\n",
          kProgram, kEmulated ? "4" : "256", kEmulated ? "512,1024" : "4096,14336 (a Mixtral-8x7B expert)",
          kEmulated ? "6" : "8", kEmulated ? "2" : "10", kDefaultJson);
}

[[noreturn]] void bad_flag(const std::string& why) {
  fprintf(stderr, "gpu-check: %s\n", why.c_str());
  usage(stderr);
  exit(2);
}

double positive(const char* flag, const char* v) {
  char* end = nullptr;
  double x = strtod(v, &end);
  if (end == v || *end || !(x > 0)) bad_flag(std::string(flag) + " needs a positive number, got '" + v + "'");
  return x;
}

Options parse(int argc, char** argv) {
  Options o;
  if (kEmulated) {  // the emulation runs one GPU thread after another: small by default
    o.mib = 4;
    o.d = 512;
    o.ff = 1024;
    o.fetches = 6;
    o.reps = 2;
  }
  o.json_path = kDefaultJson;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) bad_flag(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") usage(stdout), exit(0);
    else if (a == "--small") o.mib = 1, o.d = 128, o.ff = 256, o.fetches = 4, o.reps = 2;
    else if (a == "--mib") o.mib = positive("--mib", value());
    else if (a == "--fetches") o.fetches = (int)positive("--fetches", value());
    else if (a == "--reps") o.reps = (int)positive("--reps", value());
    else if (a == "--threads") o.threads = (int)positive("--threads", value());
    else if (a == "--seed") o.seed = (uint64_t)positive("--seed", value());
    else if (a == "--model") o.model_dir = value();
    else if (a == "--json") o.json_path = value();
    else if (a == "--expert") {
      const char* v = value();
      if (sscanf(v, "%d,%d", &o.d, &o.ff) != 2 || o.d < 1 || o.ff < 1) bad_flag(std::string("--expert needs D,FF, got '") + v + "'");
    } else bad_flag("unknown flag " + a);
  }
  if (o.mib * 1048576.0 / 4 > 4294967295.0) bad_flag("--mib: a stream holds at most 2^32 - 1 values (16 GiB of f32)");
  return o;
}

std::string options_json(const Options& o) {
  return "{\"mib\": " + json_number(o.mib) + ", \"d\": " + std::to_string(o.d) + ", \"ff\": " + std::to_string(o.ff) +
         ", \"fetches\": " + std::to_string(o.fetches) + ", \"reps\": " + std::to_string(o.reps) +
         ", \"threads\": " + std::to_string(o.threads) + ", \"seed\": " + std::to_string(o.seed) +
         ", \"model\": " + json_quote(o.model_dir) + "}";
}

bool write_file(const std::string& path, const std::string& text) {
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    std::string cmd = "mkdir -p '" + path.substr(0, slash) + "'";
    if (system(cmd.c_str()) != 0) return false;
  }
  std::ofstream f(path);
  f << text;
  return (bool)f;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::unique_ptr<Target> target;
  try {
    target = std::make_unique<Target>();
  } catch (const std::exception& e) {
    fprintf(stderr, "gpu-check: cannot run on a CUDA device here: %s\n", e.what());
    fprintf(stderr, "gpu-check: to run the same checks with the kernels emulated on this CPU: make gpu-check-emulated\n");
    return 2;
  }
  Target& t = *target;
  Report report(stdout);
  report.begin(t);
  struct Group {
    const char* name;
    void (*run)(Target&, const Options&, Report&);
  };
  for (const Group& g : {Group{"codec", check_codec}, Group{"expert", check_expert}, Group{"pipeline", check_pipeline},
                         Group{"model", check_model}}) {
    try {
      g.run(t, o, report);
    } catch (const std::exception& e) {
      report.add_error(g.name, e.what());
    }
  }
  const std::string last = report.last_line(t);
  if (!write_file(o.json_path, report.json(t, options_json(o)))) {
    fprintf(stderr, "gpu-check: cannot write %s\n", o.json_path.c_str());
    printf("%s\n", last.c_str());
    return report.failed() ? 1 : 2;
  }
  printf("results: %s\n", o.json_path.c_str());
  printf("%s\n", last.c_str());
  return report.failed() ? 1 : 0;
}
