// check_expert.cc — the expert FFN kernels (cuda/eb_expert_kernels.cuh) against the CPU expert
// engine (eb::expert_layer, src/native/expert_cpu.cc), on one expert of shape d × ff.
//
// Shapes (checkpoint layout, as the decode kernels write them): gate, up [ff, d], down [d, ff],
// back to back in one device buffer like the CUDA engine's; x [n, d] tokens; y [n, d].
// Weights N(0, 0.02), tokens N(0, 1). Passing: max |y_dev − y_cpu| / max |y_cpu| ≤ 1e-5 (f32;
// the two sum in different orders, so bit equality is not expected). Figures: the kernels' GB/s
// of weights (3·d·ff·4 bytes per call; a decode step reads every weight once) against the
// device's memcpy of the same bytes, at n = 1 (a decode step) and n = 16 (a batch).
#include <string>
#include <vector>

#include "../src/native/expert_cpu.h"
#include "checks.h"
#include "util.h"

namespace gpucheck {

void check_expert(Target& t, const Options& o, Report& report) {
  Runtime& rt = t.rt();
  const int d = o.d, ff = o.ff, threads = o.threads > 0 ? o.threads : eb::hardware_threads();
  const size_t w = (size_t)d * ff, weight_bytes = 3 * w * sizeof(float);
  const std::vector<float> weights = gaussian(3 * w, 0.02f, o.seed + 100);
  Stream s = rt.stream_create("compute");
  DeviceArray<float> d_w(rt, 3 * w), d_copy(rt, 3 * w);
  upload(rt, s, d_w.p, weights.data(), weight_bytes);
  const double memcpy_gbps = gbps(weight_bytes, seconds_per_run(rt, s, o.reps, [&] { t.copy_d2d_async(d_copy.p, d_w.p, weight_bytes, s); }));

  eb::ExpertWeights cpu_expert;
  cpu_expert.gate.dense = weights.data();
  cpu_expert.up.dense = weights.data() + w;
  cpu_expert.down.dense = weights.data() + 2 * w;

  for (int n : {1, 16}) {
    CheckResult r;
    r.group = "expert";
    r.name = "FFN " + std::to_string(d) + "x" + std::to_string(ff) + ", " + std::to_string(n) + (n == 1 ? " token" : " tokens");
    r.criterion = "max|y_dev - y_cpu| / max|y_cpu| <= 1e-5 against eb::expert_layer (f32)";
    const std::vector<float> x = gaussian((size_t)n * d, 1.0f, o.seed + 200 + n);

    const std::vector<float> want = cpu_expert_ffn(cpu_expert, x.data(), n, d, ff, threads);

    DeviceArray<float> d_x(rt, (size_t)n * d), d_h(rt, (size_t)n * ff), d_y(rt, (size_t)n * d);
    upload(rt, s, d_x.p, x.data(), d_x.bytes());
    auto ffn = [&] { rt.expert_ffn(d_w.p, d_w.p + w, d_w.p + 2 * w, d_x.p, n, d, ff, d_h.p, d_y.p, s); };
    const double secs = seconds_per_run(rt, s, o.reps, ffn);
    std::vector<float> got((size_t)n * d);
    download(rt, s, got.data(), d_y.p, d_y.bytes());

    const double err = scaled_error(got.data(), want.data(), got.size());
    const double weights_gbps = gbps(weight_bytes, secs);
    r.passed = err <= 1e-5;
    char buf[256];
    snprintf(buf, sizeof buf, "scaled error %.2g; %.3g ms, weights %.3g GB/s = %.0f%% of memcpy %.3g GB/s", err, secs * 1e3,
             weights_gbps, 100 * weights_gbps / memcpy_gbps, memcpy_gbps);
    r.summary = buf;
    r.figures = {{"d", (double)d},
                 {"ff", (double)ff},
                 {"tokens", (double)n},
                 {"scaled_error", err},
                 {"seconds", secs},
                 {"weights_gbps", weights_gbps},
                 {"memcpy_d2d_gbps", memcpy_gbps},
                 {"weights_over_memcpy", weights_gbps / memcpy_gbps}};
    report.add(std::move(r));
  }
  rt.stream_destroy(s);
}

}  // namespace gpucheck
