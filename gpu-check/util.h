// util.h — what every check file shares: seeded test data, device and pinned buffers that free
// themselves, synchronous copies, event timing, and the error measures the checks compare with.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <chrono>
#include <vector>

#include "../src/native/expert_cpu.h"
#include "../src/native/parallel.h"
#include "target.h"

namespace gpucheck {

inline double host_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// n values of N(0, sigma²), the same for a seed on every machine and thread count: Box–Muller on
// splitmix64, in chunks of 64 Ki values that each start from (seed, chunk).
inline std::vector<float> gaussian(size_t n, float sigma, uint64_t seed) {
  std::vector<float> v(n);
  const size_t chunk = 1 << 16;
  const int chunks = (int)((n + chunk - 1) / chunk);
  eb::parallel_for(chunks, eb::hardware_threads(), [&](int c) {
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + (uint64_t)c * 0xD1B54A32D192ED03ull;
    auto next = [&] {
      uint64_t z = (state += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    size_t lo = (size_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    for (size_t i = lo; i < hi; i += 2) {
      double u1 = ((next() >> 11) + 1) * 0x1.0p-53, u2 = (next() >> 11) * 0x1.0p-53;  // u1 in (0, 1]
      double r = sqrt(-2.0 * log(u1)) * sigma;
      v[i] = (float)(r * cos(2 * M_PI * u2));
      if (i + 1 < hi) v[i + 1] = (float)(r * sin(2 * M_PI * u2));
    }
  });
  return v;
}

// Device memory of `count` T, freed with the runtime that gave it.
template <class T>
struct DeviceArray {
  Runtime& rt;
  T* p;
  size_t count;
  DeviceArray(Runtime& r, size_t n) : rt(r), p(static_cast<T*>(r.device_alloc(sizeof(T) * (n ? n : 1)))), count(n) {}
  ~DeviceArray() { rt.device_free(p); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  size_t bytes() const { return sizeof(T) * count; }
};

// Page-locked host memory of `count` T (async copies from it overlap; from pageable memory not).
template <class T>
struct PinnedArray {
  Runtime& rt;
  T* p;
  size_t count;
  PinnedArray(Runtime& r, size_t n) : rt(r), p(static_cast<T*>(r.host_alloc_pinned(sizeof(T) * (n ? n : 1)))), count(n) {}
  ~PinnedArray() { rt.host_free_pinned(p); }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
};

// Copies that return when the bytes are there (setup and read-back, never timed).
inline void upload(Runtime& rt, Stream s, void* dst, const void* src, size_t n) {
  rt.copy_h2d_async(dst, src, n, s);
  rt.stream_synchronize(s);
}
inline void download(Runtime& rt, Stream s, void* dst, const void* src, size_t n) {
  rt.copy_d2h_async(dst, src, n, s);
  rt.stream_synchronize(s);
}

// Seconds one run of `enqueue` (which enqueues work on s) takes on the device, by events around
// `reps` back-to-back runs after one untimed warm-up run (first-launch costs, cold caches).
template <class F>
double seconds_per_run(Runtime& rt, Stream s, int reps, F&& enqueue) {
  enqueue();
  Event a = rt.event_create(), b = rt.event_create();
  rt.record(a, s);
  for (int r = 0; r < reps; r++) enqueue();
  rt.record(b, s);
  rt.event_synchronize(b);
  double t = rt.elapsed_seconds(a, b) / reps;
  rt.event_destroy(a);
  rt.event_destroy(b);
  return t;
}

// max_i |a_i − b_i| / max_i |b_i|: the error relative to the output's scale (an element-wise
// relative error means nothing where an output is near zero). NaN anywhere gives +inf.
inline double scaled_error(const float* a, const float* b, size_t n) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!(d == d)) return INFINITY;
    worst = d > worst ? d : worst;
    scale = fabs((double)b[i]) > scale ? fabs((double)b[i]) : scale;
  }
  return scale > 0 ? worst / scale : worst;
}

inline double max_abs_diff(const float* a, const float* b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!(d == d)) return INFINITY;
    worst = d > worst ? d : worst;
  }
  return worst;
}

// The CPU engine's output for n tokens x [n, d] all routed to one expert with weight 1 (so each
// row of the result is that expert's FFN of the token, exactly): the reference the device's FFN
// kernels are checked against.
inline std::vector<float> cpu_expert_ffn(const eb::ExpertWeights& expert, const float* x, int n, int d, int ff, int threads) {
  std::vector<int32_t> slot_expert(n, 0);
  std::vector<float> slot_weight(n, 1.0f), out((size_t)n * d);
  eb::LayerCall call;
  call.d = d;
  call.ff = ff;
  call.T = n;
  call.k = 1;
  call.hidden = x;
  call.slot_expert = slot_expert.data();
  call.slot_weight = slot_weight.data();
  call.experts = &expert;
  call.num_experts = 1;
  call.out = out.data();
  call.threads = threads;
  eb::expert_layer(call);
  return out;
}

// Bytes / seconds in GB/s (10⁹ bytes per second).
inline double gbps(double bytes, double seconds) { return seconds > 0 ? bytes / seconds / 1e9 : 0; }

}  // namespace gpucheck
