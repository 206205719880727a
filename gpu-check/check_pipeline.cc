// check_pipeline.cc — the offload pipeline (cuda/eb_pipeline.h) the way the CUDA engine drives it:
// an expert's compressed rungs cross from pinned host memory on the COPY stream, the decode
// kernels write its weights into a device buffer on the DECOMPRESS stream, and the FFN kernels
// use them on the COMPUTE stream, ordered only by the pipeline's events.
//
// Three distinct experts (d × ff, N(0, 0.02), a 2-rung ladder at 1e-3 / 5e-4, fetched at rung 1)
// are fetched `fetches` times in turn into two weight buffers (fetch i: expert i % 3, buffer
// i % 2), so every fetch overwrites weights the compute stream used one fetch before, and a
// missing wait would show as another expert's output. Fetch i + 1 is enqueued before fetch i's
// FFN, as a prefetch is: its copy and decode may overlap that FFN.
// Passing: every fetch's FFN output within 1e-5 (scaled) of the CPU engine's on the CPU decoder's
// weights, and the weights left in both buffers bit-exact the CPU decoder's.
// Figures: wall time of the pipelined run against the sum of its parts (copies, decodes, FFNs,
// each timed by its stream's events): the overlap factor (1 = none; 3 = all three engines busy
// at once); the link's GB/s (compressed bytes over copy time).
#include <string.h>

#include <memory>
#include <string>
#include <vector>

#include "../cuda/eb_pipeline.h"
#include "../src/native/codec_cpu.h"
#include "../src/native/expert_cpu.h"
#include "checks.h"
#include "util.h"

namespace gpucheck {

namespace {

// One expert as the store keeps it: each matrix's stream, and the CPU's reference output.
struct StoredExpert {
  std::vector<uint8_t> stream[3];                           // gate, up, down
  std::unique_ptr<eb::PinnedArena<Runtime>> arena[3];        // their rungs in pinned memory
  std::vector<float> decoded;                                // gate, up, down as eb::decode gives them
  std::vector<float> y;                                      // the CPU engine's output for the tokens
};

}  // namespace

void check_pipeline(Target& t, const Options& o, Report& report) {
  Runtime& rt = t.rt();
  const int d = o.d, ff = o.ff, n = 1, experts = 3, buffers = 2, fetches = o.fetches < 2 ? 2 : o.fetches;
  const int threads = o.threads > 0 ? o.threads : eb::hardware_threads();
  const int k = 1;  // the finest of the two rungs
  const size_t w = (size_t)d * ff;
  const std::vector<float> x = gaussian((size_t)n * d, 1.0f, o.seed + 300);

  std::vector<StoredExpert> store(experts);
  for (int e = 0; e < experts; e++) {
    StoredExpert& se = store[e];
    const std::vector<float> weights = gaussian(3 * w, 0.02f, o.seed + 400 + e);
    se.decoded.resize(3 * w);
    for (int m = 0; m < 3; m++) {
      eb::EncodeParams p;
      p.bound = 5e-4;
      p.cut = {1, 0};
      p.threads = threads;
      se.stream[m] = eb::encode(weights.data() + m * w, w, p);
      const eb::StreamView v = eb::parse_stream(se.stream[m].data(), se.stream[m].size(), true, threads);
      eb::decode(v, k, eb::DType::F32, se.decoded.data() + m * w, threads);
      // The rungs cut apart as the store keeps them: head, then each rung on its own.
      const uint8_t* rungs[EB_MAX_RUNGS];
      size_t lens[EB_MAX_RUNGS];
      for (int j = 0; j < v.h.rungs; j++) {
        rungs[j] = se.stream[m].data() + v.h.head_bytes() + v.h.rung_offset[j];
        lens[j] = v.h.rung_bytes[j];
      }
      se.arena[m] = std::make_unique<eb::PinnedArena<Runtime>>(rt, se.stream[m].data(), v.h.head_bytes(), rungs, lens, v.h.rungs);
    }
    eb::ExpertWeights ew;
    ew.gate.dense = se.decoded.data();
    ew.up.dense = se.decoded.data() + w;
    ew.down.dense = se.decoded.data() + 2 * w;
    se.y = cpu_expert_ffn(ew, x.data(), n, d, ff, threads);
  }

  Stream compute = rt.stream_create("compute");
  std::vector<std::unique_ptr<DeviceArray<float>>> slot;
  for (int b = 0; b < buffers; b++) slot.push_back(std::make_unique<DeviceArray<float>>(rt, 3 * w));
  DeviceArray<float> d_x(rt, (size_t)n * d), d_h(rt, (size_t)n * ff), d_y(rt, (size_t)n * d);
  PinnedArray<float> y_host(rt, (size_t)fetches * n * d);
  upload(rt, compute, d_x.p, x.data(), d_x.bytes());
  std::vector<Event> ffn_start(fetches), ffn_end(fetches);
  for (int i = 0; i < fetches; i++) ffn_start[i] = rt.event_create(), ffn_end[i] = rt.event_create();

  using Pipeline = eb::ExpertPipeline<Runtime>;
  Pipeline pipe(rt);
  struct Fetch {
    Pipeline::Ticket ticket[3];
  };
  // One pass of every fetch; returns its wall time. Tickets stay open so their times can be read.
  auto pass = [&](std::vector<Fetch>& f) {
    auto enqueue = [&](int i) {
      float* dst = slot[i % buffers]->p;
      for (int m = 0; m < 3; m++)
        f[i].ticket[m] = pipe.enqueue_fetch(*store[i % experts].arena[m], k, eb::DType::F32, dst + m * w, w * sizeof(float),
                                            // a buffer used before may still be read by queued FFN work
                                            i >= buffers ? &compute : nullptr);
    };
    double t0 = host_now();
    enqueue(0);
    for (int i = 0; i < fetches; i++) {
      if (i + 1 < fetches) enqueue(i + 1);  // the prefetch: before this fetch's FFN is enqueued
      for (int m = 0; m < 3; m++) pipe.wait_ready(f[i].ticket[m], compute);
      const float* wts = slot[i % buffers]->p;
      rt.record(ffn_start[i], compute);
      rt.expert_ffn(wts, wts + w, wts + 2 * w, d_x.p, n, d, ff, d_h.p, d_y.p, compute);
      rt.record(ffn_end[i], compute);
      rt.copy_d2h_async(y_host.p + (size_t)i * n * d, d_y.p, d_y.bytes(), compute);
    }
    rt.stream_synchronize(compute);
    return host_now() - t0;
  };
  // A first pass fills the pipeline's pools of device rung buffers and events (cudaMalloc in
  // the timed pass would stall the streams it measures); the second is the one measured.
  std::vector<Fetch> warm(fetches), run(fetches);
  pass(warm);
  for (Fetch& f : warm)
    for (auto& tk : f.ticket) pipe.release(tk);
  const double wall = pass(run);

  double copy_s = 0, decode_s = 0, ffn_s = 0, link_bytes = 0;
  for (int i = 0; i < fetches; i++) {
    for (auto& tk : run[i].ticket) {
      copy_s += pipe.transfer_seconds(tk);
      decode_s += pipe.decompress_seconds(tk);
      link_bytes += (double)pipe.bytes(tk);
      pipe.release(tk);
    }
    ffn_s += rt.elapsed_seconds(ffn_start[i], ffn_end[i]);
  }

  CheckResult r;
  r.group = "pipeline";
  r.name = "offload " + std::to_string(fetches) + " fetches of " + std::to_string(d) + "x" + std::to_string(ff);
  r.criterion = "every fetch's FFN output within 1e-5 (scaled) of eb::expert_layer on eb::decode's weights; "
                "the weight buffers bit-exact eb::decode's";
  std::string why;
  double worst = 0;
  for (int i = 0; i < fetches && why.empty(); i++) {
    double err = scaled_error(y_host.p + (size_t)i * n * d, store[i % experts].y.data(), (size_t)n * d);
    worst = err > worst ? err : worst;
    if (!(err <= 1e-5)) why = "fetch " + std::to_string(i) + " (expert " + std::to_string(i % experts) + "): scaled error " + std::to_string(err);
  }
  std::vector<float> left(3 * w);
  for (int b = 0; b < buffers && why.empty(); b++) {
    const int last = fetches - 1 - ((fetches - 1 - b) % buffers);  // the last fetch into buffer b
    download(rt, compute, left.data(), slot[b]->p, 3 * w * sizeof(float));
    if (memcmp(left.data(), store[last % experts].decoded.data(), 3 * w * sizeof(float)) != 0)
      why = "buffer " + std::to_string(b) + " does not hold expert " + std::to_string(last % experts) + "'s weights bit for bit";
  }
  const double parts = copy_s + decode_s + ffn_s, overlap = parts / wall, link_gbps = gbps(link_bytes, copy_s);
  r.passed = why.empty();
  char buf[320];
  snprintf(buf, sizeof buf, "%s; wall %.3g ms vs parts %.3g ms (copy %.3g, decode %.3g, FFN %.3g): overlap %.2fx; link %.3g GB/s",
           why.empty() ? "outputs and weights match" : why.c_str(), wall * 1e3, parts * 1e3, copy_s * 1e3, decode_s * 1e3,
           ffn_s * 1e3, overlap, link_gbps);
  r.summary = buf;
  r.figures = {{"fetches", (double)fetches},  {"d", (double)d},          {"ff", (double)ff},
               {"max_scaled_error", worst},   {"wall_seconds", wall},    {"copy_seconds", copy_s},
               {"decode_seconds", decode_s},  {"ffn_seconds", ffn_s},    {"overlap", overlap},
               {"link_bytes", link_bytes},    {"link_gbps", link_gbps}};
  report.add(std::move(r));
  for (int i = 0; i < fetches; i++) rt.event_destroy(ffn_start[i]), rt.event_destroy(ffn_end[i]);
  rt.stream_destroy(compute);
}

}  // namespace gpucheck
