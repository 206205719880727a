// target_emulated.cc — the kit's Target on the host CPU: EmulatedRuntime (emulated_runtime.h says
// what it is and what it cannot show) and the device description the report prints.
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/eb_rans_plan.h"
#include "../src/native/emulated_expert.h"
#include "../src/native/stream_format.h"
#include "target.h"
// Last: the emulation headers define CUDA's keywords away (and run the entropy kernel's warps as
// fibers that meet at their collectives), then the kernels compile as host C++.
#include "../cuda/emulate.h"
#include "../cuda/emulate_warp.h"
#include "../cuda/eb_kernels.cuh"
#include "../cuda/eb_rans_kernels.cuh"

namespace gpucheck {

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void* aligned(size_t n, int fill) {
  size_t bytes = ((n ? n : 1) + 255) & ~size_t(255);  // cudaMalloc's 256-byte alignment
  void* p = aligned_alloc(256, bytes);
  if (!p) throw std::bad_alloc();
  memset(p, fill, bytes);
  return p;
}

// The CPU's model name, for the report ("host CPU" when /proc/cpuinfo does not say).
std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      size_t c = line.find(':');
      if (c != std::string::npos && c + 2 <= line.size()) return line.substr(c + 2);
    }
  return "host CPU";
}
}  // namespace

EmulatedRuntime::Stream EmulatedRuntime::stream_create(const char*) { return ++streams_; }

EmulatedRuntime::Event EmulatedRuntime::event_create() {
  event_time_.push_back(0.0);
  return (Event)event_time_.size();
}

void* EmulatedRuntime::host_alloc_pinned(size_t n) { return aligned(n, 0); }
void EmulatedRuntime::host_free_pinned(void* p) { free(p); }
void* EmulatedRuntime::device_alloc(size_t n) { return aligned(n, 0xFF); }
void EmulatedRuntime::device_free(void* p) { free(p); }

void EmulatedRuntime::copy_h2d_async(void* dst, const void* src, size_t n, Stream) { memcpy(dst, src, n); }
void EmulatedRuntime::copy_d2h_async(void* dst, const void* src, size_t n, Stream) { memcpy(dst, src, n); }
void EmulatedRuntime::copy_d2d_async(void* dst, const void* src, size_t n, Stream) { memcpy(dst, src, n); }

void EmulatedRuntime::record(Event e, Stream) { event_time_.at(e - 1) = now(); }
double EmulatedRuntime::elapsed_seconds(Event a, Event b) { return event_time_.at(b - 1) - event_time_.at(a - 1); }

void EmulatedRuntime::decode_resident(const eb::StreamView& s, const uint8_t* const* d_rung, int k, eb::DType dt,
                                      void* d_out, Stream) {
  using namespace eb_emu;
  if (k < 0 || k >= s.available)
    throw eb::CodecError("BAD_RUNGS", "cannot decode rung " + std::to_string(k) + " from " + std::to_string(s.available) +
                                          " rungs");
  const eb::Header& h = s.h;
  if (h.mode == eb::kModeEntropy) {
    // Entropy-coded: the warp-per-segment rANS kernel, the escape patch, the lanes' verdict.
    const uint64_t segs = eb::rans_segments(h);
    if (!segs) return;
    std::vector<uint32_t> status(segs, 0xFFFFFFFFu);
    const EbRansArgs a = eb::rans_decode_args(s, d_rung, k, dt, d_out, status.data());
    eb_emulate_launch_warps(eb_rans_grid_blocks(segs), EB_RANS_THREADS, [&] { eb_rans_decode_kernel(a); });
    eb_emulate_launch(eb_grid_blocks(h.escapes), EB_THREADS,
                      [&] { eb_patch_kernel(d_rung[0] + eb::rans_escapes_at(s), h.escapes, d_out, (int)dt); });
    eb::rans_check_lanes(status.data(), segs);
    return;
  }
  const EbLadder L = eb_ladder(h.cut, h.rungs);
  const uint64_t nb = h.blocks(), pitch = nb + 1;
  const int rows = k + 1;
  const uint8_t* rates = d_rung[0];  // rung 0: rate bytes, their padding, the escapes, then words
  std::vector<uint32_t> counts(rows * pitch), offs(rows * pitch);
  eb_emulate_launch(eb_grid_blocks(nb + 1), EB_THREADS,
                    [&] { eb_rate_words_kernel(rates, nb, L, rows, counts.data(), pitch); });
  // Where the GPU runs CUB's DeviceScan::ExclusiveSum over each row (u32, wrapping alike).
  for (int r = 0; r < rows; r++) {
    uint32_t sum = 0;
    for (uint64_t i = 0; i < pitch; i++) {
      offs[r * pitch + i] = sum;
      sum += counts[r * pitch + i];
    }
  }
  EbRungSrc words;
  for (int j = 0; j < rows; j++) words.p[j] = d_rung[j] + (j == 0 ? s.words0_offset : 0);
  eb_emulate_launch(eb_grid_blocks(nb), EB_THREADS, [&] {
    eb_decode_kernel(rates, h.count, nb, L, k, (float)h.eb, words, offs.data(), pitch, d_out, (int)dt);
  });
  eb_emulate_launch(eb_grid_blocks(h.escapes), EB_THREADS,
                    [&] { eb_patch_kernel(rates + eb::pad4(nb), h.escapes, d_out, (int)dt); });
}

void EmulatedRuntime::expert_ffn(const float* gate, const float* up, const float* down, const float* x, int n, int d,
                                 int ff, float* h, float* y, Stream) {
  if (n > 0) eb::emulated_expert_ffn(gate, up, down, x, n, d, ff, h, y);
}

struct Target::Impl {
  EmulatedRuntime rt;
  DeviceInfo info;
};

Target::Target() : impl_(new Impl) {
  impl_->info.emulated = true;
  impl_->info.name = cpu_name() + ", CUDA kernel bodies under cuda/emulate.h";
}
Target::~Target() = default;
Runtime& Target::rt() { return impl_->rt; }
const DeviceInfo& Target::info() const { return impl_->info; }
std::string Target::label() const { return "EMULATED"; }
void Target::copy_d2d_async(void* dst, const void* src, size_t n, Stream s) { impl_->rt.copy_d2d_async(dst, src, n, s); }

}  // namespace gpucheck
