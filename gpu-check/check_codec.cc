// check_codec.cc — the codec's decode kernels on the target against the CPU decoder.
//
// Data: n = mib · 2^20 / 4 f32 values of N(0, 0.02), what expert weights look like (DESIGN.md).
// Each case compresses them on the CPU (eb::encode, the store's encoder), puts the stream's
// payload in device memory as the offload pipeline leaves it there, and decodes it with the
// device's decode sequence (Context::decompress_resident). Fixed-length streams: rate-words
// kernel, CUB exclusive sums, decode kernel, escape patch. Entropy-coded (v2) streams: the
// warp-per-segment rANS kernel (cuda/eb_rans_kernels.cuh), escape patch, the lanes' verdict.
// Passing means the device's output bytes equal eb::decode's at every rung and output dtype asked,
// and every f32 value is within its rung's bound.
// Figures: the compression ratio; decode GB/s (output bytes per second, the way cuSZp counts its
// ~510 GB/s on an A100) and the device's own device-to-device memcpy of the same bytes.
#include <float.h>
#include <string.h>

#include <string>
#include <vector>

#include "../src/native/codec_cpu.h"
#include "../src/native/stream_format.h"
#include "checks.h"
#include "util.h"

namespace gpucheck {

namespace {

struct Case {
  const char* name;
  uint8_t coder;              // eb::kModeFixed or eb::kModeEntropy
  double eb;                  // the finest rung's absolute bound
  std::vector<uint8_t> cut;   // the ladder: planes each rung leaves out
  std::vector<eb::DType> outs;
};

const char* dtype_name(eb::DType d) { return d == eb::DType::F32 ? "f32" : d == eb::DType::F16 ? "f16" : "bf16"; }

std::string fmt(const char* f, double v) {
  char buf[64];
  snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

void check_codec(Target& t, const Options& o, Report& report) {
  Runtime& rt = t.rt();
  const int threads = o.threads > 0 ? o.threads : eb::hardware_threads();
  const size_t n = (size_t)(o.mib * 1048576.0 / 4) < 32 ? 32 : (size_t)(o.mib * 1048576.0 / 4);
  const size_t bytes = n * 4;
  std::vector<float> x = gaussian(n, 0.02f, o.seed);
  // A few values the quantizer cannot take (non-finite, beyond its range) are kept verbatim as
  // escapes: they exercise the escape-patch kernel, which Gaussian weights alone never reach.
  const float specials[] = {NAN, INFINITY, -INFINITY, 1e30f, -3e29f, 0.5f * FLT_MAX, 7.0f, -7.0f};
  for (size_t j = 0; j < sizeof specials / sizeof *specials; j++) x[(j * 2654435761u + 12345u) % n] = specials[j];
  const std::string size = fmt("%g MiB", o.mib);

  Stream s = rt.stream_create("codec");
  DeviceArray<uint8_t> d_out(rt, bytes), d_copy(rt, bytes);
  // The yardstick: this device copying the bytes a decode writes, device to device.
  const double memcpy_s = seconds_per_run(rt, s, o.reps, [&] { t.copy_d2d_async(d_copy.p, d_out.p, bytes, s); });
  const double memcpy_gbps = gbps(bytes, memcpy_s);

  const std::vector<Case> cases = {
      {"decode eb 1e-2", eb::kModeFixed, 1e-2, {0}, {eb::DType::F32}},
      {"decode eb 1e-3", eb::kModeFixed, 1e-3, {0}, {eb::DType::F32, eb::DType::F16, eb::DType::BF16}},
      {"decode eb 1e-4", eb::kModeFixed, 1e-4, {0}, {eb::DType::F32}},
      {"decode 4 rungs 1e-3..1.25e-4", eb::kModeFixed, 1.25e-4, {3, 2, 1, 0}, {eb::DType::F32}},
      // The entropy coder: symbols only (1e-3), raw planes below them (1e-5: u would not fit a
      // byte), and a ladder whose refinement rungs are raw planes.
      {"entropy eb 1e-3", eb::kModeEntropy, 1e-3, {0}, {eb::DType::F32, eb::DType::F16, eb::DType::BF16}},
      {"entropy eb 1e-5", eb::kModeEntropy, 1e-5, {0}, {eb::DType::F32}},
      {"entropy 4 rungs 1e-3..1.25e-4", eb::kModeEntropy, 1.25e-4, {3, 2, 1, 0}, {eb::DType::F32}},
  };
  for (const Case& c : cases) {
    CheckResult r;
    r.group = "codec";
    r.name = std::string(c.name) + ", " + size;
    r.criterion = "device output == eb::decode's, byte for byte, every rung and dtype; f32 |x - x'| <= the rung's bound";

    eb::EncodeParams p;
    p.dtype = eb::DType::F32;
    p.bound = c.eb;
    p.mode = eb::BoundMode::Abs;
    p.cut = c.cut;
    p.threads = threads;
    p.coder = c.coder;
    const std::vector<uint8_t> stream = eb::encode(x.data(), n, p);
    const eb::StreamView view = eb::parse_stream(stream.data(), stream.size(), true, threads, eb::Readable::AnyCoder);
    const eb::Header& h = view.h;
    const int R = h.rungs;

    // The payload on the device; rung j starts at its offset (every rung is whole 4-byte words).
    DeviceArray<uint8_t> d_payload(rt, h.payload_bytes);
    upload(rt, s, d_payload.p, stream.data() + h.head_bytes(), h.payload_bytes);
    const uint8_t* d_rung[EB_MAX_RUNGS] = {nullptr};
    for (int j = 0; j < R; j++) d_rung[j] = d_payload.p + h.rung_offset[j];
    eb::StreamView dv = view;  // what the device decode is told: the stream's own header
#ifdef GPU_CHECK_WRONG_BOUND
    // A scratch build (-DGPU_CHECK_WRONG_BOUND=f) hands the decode kernels a bound f times the
    // stream's, so they reconstruct on the wrong grid, as a broken kernel would: these rows must
    // then fail. The kit's own test builds it so, to show that they do.
    dv.h.eb *= GPU_CHECK_WRONG_BOUND;
#endif

    std::vector<uint8_t> want(bytes), got(bytes);
    std::string mismatch;
    double worst_over_bound = 0;  // max over rungs of max |x - x'| / eb_k
    for (int k = 0; k < R && mismatch.empty(); k++)
      for (eb::DType dt : c.outs) {
        const size_t out_bytes = n * eb::dtype_size(dt);
        eb::decode(view, k, dt, want.data(), threads);
        rt.decode_resident(dv, d_rung, k, dt, d_out.p, s);
        download(rt, s, got.data(), d_out.p, out_bytes);
        if (memcmp(want.data(), got.data(), out_bytes) != 0) {
          size_t i = 0;
          while (i < out_bytes && want[i] == got[i]) i++;
          const size_t v = i / eb::dtype_size(dt);
          mismatch = std::string(dtype_name(dt)) + " output at rung " + std::to_string(k) + " differs from eb::decode's at value " +
                     std::to_string(v) + " of " + std::to_string(n);
          if (dt == eb::DType::F32)
            mismatch += " (" + fmt("%.9g", reinterpret_cast<const float*>(got.data())[v]) + " for " +
                        fmt("%.9g", reinterpret_cast<const float*>(want.data())[v]) + ")";
          break;
        }
        if (dt == eb::DType::F32) {
          // The bound the encoder guarantees at rung k: eb · 2^cut[k], compared in double as it does.
          const double bound = h.eb * (double)(1u << h.cut[k]);
          const float* y = reinterpret_cast<const float*>(got.data());
          double worst = 0;
          for (size_t i = 0; i < n; i++) {
            if (!isfinite(x[i])) continue;  // escapes: exact, and already equal to eb::decode's bits
            double d = fabs((double)x[i] - (double)y[i]);
            worst = d > worst || d != d ? d : worst;
          }
          if (!(worst <= bound)) {
            mismatch = "rung " + std::to_string(k) + ": max |x - x'| = " + fmt("%.4g", worst) + " exceeds the bound " + fmt("%.4g", bound);
            break;
          }
          worst_over_bound = worst / bound > worst_over_bound ? worst / bound : worst_over_bound;
        }
      }

    // Decode speed at the finest rung, into f32 (the expert buffer's dtype on the device).
    const double decode_s = seconds_per_run(rt, s, o.reps, [&] { rt.decode_resident(dv, d_rung, R - 1, eb::DType::F32, d_out.p, s); });
    const double ratio = (double)bytes / (double)stream.size();
    const double decode_gbps = gbps(bytes, decode_s);
    r.passed = mismatch.empty();
    std::string outs;
    for (eb::DType dt : c.outs) outs += std::string(outs.empty() ? "" : ",") + dtype_name(dt);
    r.summary = (r.passed ? "bit-exact (" + outs + (R > 1 ? ", rungs 0-" + std::to_string(R - 1) : "") + ", " +
                                std::to_string(h.escapes) + " escapes), max|err| " +
                                fmt("%.7g", worst_over_bound) + " eb"
                          : mismatch) +
                "; ratio " + fmt("%.2fx", ratio) + "; decode " + fmt("%.3g GB/s", decode_gbps) + " = " +
                fmt("%.0f%%", 100 * decode_gbps / memcpy_gbps) + " of memcpy " + fmt("%.3g GB/s", memcpy_gbps);
    r.figures = {{"values", (double)n},
                 {"escapes", (double)h.escapes},
                 {"compressed_bytes", (double)stream.size()},
                 {"ratio_vs_f32", ratio},
                 {"max_error_over_bound", worst_over_bound},
                 {"decode_gbps", decode_gbps},
                 {"memcpy_d2d_gbps", memcpy_gbps},
                 {"decode_over_memcpy", decode_gbps / memcpy_gbps}};
    report.add(std::move(r));
  }
  rt.stream_destroy(s);
}

}  // namespace gpucheck
