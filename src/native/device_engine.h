// device_engine: the CUDA expert engine's host side, one object per served model, the same code
// for the emulated device (emulated_pipeline.cc) and the GPU (cuda_bridge.cc), so the shared
// engine suite checks on the CPU exactly what a GPU would be asked to do.
//
// It keeps up to `capacity` experts' weights in device buffers (LRU). An expert that is missing
// is fetched through the offload pipeline (cuda/eb_pipeline.h): its compressed rungs cross from
// pinned memory on the COPY stream, the decode kernels write its weights straight into its device
// buffer on the DECOMPRESS stream. A layer call then, for each routed expert, makes COMPUTE wait
// for that expert's `ready` event, uploads its tokens, runs the gate·up and down kernels
// (cuda/eb_expert_kernels.cuh) and reads the outputs back; the host waits for COMPUTE once.
//
// Prefetch is what overlaps layers: the model calls prefetch(l + 1, predicted experts) before
// layer l computes, those fetches are enqueued at once, and the copy and decompress engines run
// them while COMPUTE runs layer l's kernels. A buffer handed from an evicted expert to a new one
// is decoded into only after the compute work already queued on it (enqueue_fetch's
// out_last_user), so a running kernel never sees its weights change.
#pragma once
#include <string.h>

#include <list>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../cuda/eb_pipeline.h"
#include "pipeline_driver.h"

namespace eb {

struct DeviceExpertSpec {
  FetchSpec gate, up, down;
};

struct DeviceLayerResult {
  std::vector<float> out;            // [T, d]
  std::vector<FetchReport> reports;  // per matrix this call (or an earlier prefetch) fetched and this call used
  std::vector<int> fetched_experts;  // the expert key of each report, in order (gate, up, down each)
  int hits = 0, misses = 0;          // routed experts already fetched (by prefetch or an earlier call) or not
};

template <class RT>
class DeviceEngine {
 public:
  using Stream = typename RT::Stream;
  using Ticket = typename ExpertPipeline<RT>::Ticket;

  DeviceEngine(RT& rt, int d, int ff, int capacity) : rt_(rt), d_(d), ff_(ff), capacity_(capacity < 1 ? 1 : capacity) {
    if (d < 1 || ff < 1) throw std::invalid_argument("an expert needs d, ff ≥ 1");
    pipe_ = std::make_unique<ExpertPipeline<RT>>(rt_);
    compute_ = rt_.stream_create("compute");
  }

  ~DeviceEngine() {
    try {
      rt_.stream_synchronize(compute_);
    } catch (...) {
    }
    for (auto& [key, e] : entries_) drop(e);
    pipe_.reset();  // waits for what it still has queued, before the buffers go
    for (auto& [key, e] : entries_) rt_.device_free(e.weights);
    scratch_.free(rt_);
    rt_.stream_destroy(compute_);
  }
  DeviceEngine(const DeviceEngine&) = delete;
  DeviceEngine& operator=(const DeviceEngine&) = delete;

  // Starts fetching expert `key` unless it is on the device or on its way. Never waits.
  void prefetch(int key, const DeviceExpertSpec& spec) { ensure(key, spec, -1); }

  // One layer: keys[i] / specs[i] name the i-th distinct expert, slot_expert indexes them.
  DeviceLayerResult layer(const std::vector<int>& keys, const std::vector<DeviceExpertSpec>& specs, const float* hidden,
                          const int32_t* slot_expert, const float* slot_weight, int T, int k) {
    const int E = (int)keys.size(), S = T * k, d = d_, ff = ff_;
    std::vector<std::vector<int>> slots(E);
    for (int s = 0; s < S; s++) {
      int e = slot_expert[s];
      if (e < 0 || e >= E) throw std::invalid_argument("slot " + std::to_string(s) + " names expert " + std::to_string(e) + " of " + std::to_string(E));
      slots[e].push_back(s);
    }
    DeviceLayerResult res;
    ++call_;
    std::vector<Entry*> used(E, nullptr);
    for (int e = 0; e < E; e++) {
      if (slots[e].empty()) continue;
      bool had = entries_.count(keys[e]) > 0;
      (had ? res.hits : res.misses)++;
      used[e] = &ensure(keys[e], specs[e], call_);
    }
    // Scratch for every routed token: inputs and outputs in pinned memory, their device copies and
    // the hidden activations. Grown only here, when COMPUTE is idle (the last call drained it).
    size_t rows = 0;
    for (int e = 0; e < E; e++) rows += used[e] ? slots[e].size() : 0;
    scratch_.reserve(rt_, rows, d, ff);
    std::vector<float*> y_host(E, nullptr);
    size_t row = 0;
    for (int e = 0; e < E; e++) {
      if (!used[e]) continue;
      Entry& en = *used[e];
      const int n = (int)slots[e].size();
      for (int m = 0; m < 3; m++)
        if (en.pending[m]) pipe_->wait_ready(en.ticket[m], compute_);
      float* xh = scratch_.x_host + row * d;
      for (int i = 0; i < n; i++) memcpy(xh + (size_t)i * d, hidden + (size_t)(slots[e][i] / k) * d, sizeof(float) * d);
      float* xd = scratch_.x_dev + row * d;
      float* hd = scratch_.h_dev + row * ff;
      float* yd = scratch_.y_dev + row * d;
      y_host[e] = scratch_.y_host + row * d;
      row += n;
      const size_t w = (size_t)d * ff;
      rt_.tag(keys[e]);
      rt_.copy_h2d_async(xd, xh, sizeof(float) * n * d, compute_);
      rt_.expert_ffn(en.weights, en.weights + w, en.weights + 2 * w, xd, n, d, ff, hd, yd, compute_);
      rt_.copy_d2h_async(y_host[e], yd, sizeof(float) * n * d, compute_);
    }
    // Figures of the fetches this layer used, then their tickets go back to the pipeline.
    for (int e = 0; e < E; e++) {
      if (!used[e]) continue;
      Entry& en = *used[e];
      for (int m = 0; m < 3; m++) {
        if (!en.pending[m]) continue;
        FetchReport r;
        r.bytes = pipe_->bytes(en.ticket[m]);
        r.copies = pipe_->copies(en.ticket[m]);
        r.transfer_seconds = pipe_->transfer_seconds(en.ticket[m]);
        r.decompress_seconds = pipe_->decompress_seconds(en.ticket[m]);
        pipe_->release(en.ticket[m]);
        en.pending[m] = false;
        res.reports.push_back(r);
        res.fetched_experts.push_back(keys[e]);
      }
    }
    rt_.stream_synchronize(compute_);
    res.out.assign((size_t)T * d, 0.0f);
    std::vector<int> seen(E, 0);
    for (int s = 0; s < S; s++) {
      int e = slot_expert[s];
      const float* y = y_host[e] + (size_t)seen[e]++ * d;
      float* o = res.out.data() + (size_t)(s / k) * d;
      for (int i = 0; i < d; i++) o[i] += slot_weight[s] * y[i];
    }
    return res;
  }

  int resident() const { return (int)entries_.size(); }
  int d() const { return d_; }
  int ff() const { return ff_; }

 private:
  struct Entry {
    float* weights = nullptr;  // gate, up, down back to back: 3 · d · ff floats
    std::unique_ptr<PinnedArena<RT>> arena[3];
    Ticket ticket[3];
    bool pending[3] = {false, false, false};  // a fetch not yet released
    uint64_t in_call = 0;                     // the layer call using it (not evictable during it)
    std::list<int>::iterator lru;
  };

  // The entry of `key`, fetching it (into a free or an evicted expert's buffer) when absent.
  Entry& ensure(int key, const DeviceExpertSpec& spec, int64_t call) {
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      lru_.splice(lru_.end(), lru_, it->second.lru);
      if (call >= 0) it->second.in_call = (uint64_t)call;
      return it->second;
    }
    float* buf = nullptr;
    bool reused = false;
    if ((int)entries_.size() >= capacity_) {
      for (auto v = lru_.begin(); v != lru_.end(); ++v) {
        Entry& old = entries_.at(*v);
        if (old.in_call == call_ && call >= 0) continue;  // in use by this layer call
        drop(old);
        buf = old.weights;
        entries_.erase(*v);
        lru_.erase(v);
        reused = true;
        break;
      }
    }
    const size_t bytes = (size_t)3 * d_ * ff_ * sizeof(float);
    if (!buf) buf = static_cast<float*>(rt_.device_alloc(bytes));
    Entry& en = entries_[key];
    en.weights = buf;
    en.lru = lru_.insert(lru_.end(), key);
    if (call >= 0) en.in_call = (uint64_t)call;
    const FetchSpec* mats[3] = {&spec.gate, &spec.up, &spec.down};
    try {
      for (int m = 0; m < 3; m++) {
        const FetchSpec& f = *mats[m];
        std::vector<const uint8_t*> ptr;
        std::vector<size_t> len;
        for (const Bytes& b : f.rungs) {
          ptr.push_back(b.data);
          len.push_back(b.len);
        }
        en.arena[m] = std::make_unique<PinnedArena<RT>>(rt_, f.head.data, f.head.len, ptr.data(), len.data(), (int)ptr.size());
        const StreamView& v = en.arena[m]->view();
        if (v.h.count != (uint64_t)d_ * ff_)
          throw std::invalid_argument("expert " + std::to_string(key) + " matrix " + std::to_string(m) + " holds " + std::to_string(v.h.count) +
                                      " values, expected " + std::to_string((uint64_t)d_ * ff_));
        rt_.tag(key);
        float* dst = buf + (size_t)m * d_ * ff_;
        en.ticket[m] = pipe_->enqueue_fetch(*en.arena[m], f.k == -1 ? v.available - 1 : f.k, DType::F32, dst, (size_t)d_ * ff_ * 4,
                                            reused ? &compute_ : nullptr);
        en.pending[m] = true;
      }
    } catch (...) {
      drop(en);
      rt_.device_free(buf);
      lru_.erase(en.lru);
      entries_.erase(key);
      throw;
    }
    return en;
  }

  // Lets go of an entry's fetches (waiting for them to be done) and pinned rungs; keeps its buffer.
  void drop(Entry& e) {
    for (int m = 0; m < 3; m++)
      if (e.pending[m]) {
        pipe_->release(e.ticket[m]);
        e.pending[m] = false;
      }
    for (auto& a : e.arena) a.reset();
  }

  // The layer calls' activations, kept across calls (cudaMalloc and cudaFree synchronize the
  // whole device, which would stall the prefetches the engine exists to overlap).
  struct Scratch {
    size_t rows = 0;
    float *x_host = nullptr, *y_host = nullptr, *x_dev = nullptr, *h_dev = nullptr, *y_dev = nullptr;
    void reserve(RT& rt, size_t need, int d, int ff) {
      if (need <= rows) return;
      free(rt);
      rows = need < 16 ? 16 : need;
      x_host = static_cast<float*>(rt.host_alloc_pinned(sizeof(float) * rows * d));
      y_host = static_cast<float*>(rt.host_alloc_pinned(sizeof(float) * rows * d));
      x_dev = static_cast<float*>(rt.device_alloc(sizeof(float) * rows * d));
      h_dev = static_cast<float*>(rt.device_alloc(sizeof(float) * rows * ff));
      y_dev = static_cast<float*>(rt.device_alloc(sizeof(float) * rows * d));
    }
    void free(RT& rt) {
      for (float* p : {x_host, y_host}) if (p) rt.host_free_pinned(p);
      for (float* p : {x_dev, h_dev, y_dev}) if (p) rt.device_free(p);
      x_host = y_host = x_dev = h_dev = y_dev = nullptr;
      rows = 0;
    }
  };

  RT& rt_;
  const int d_, ff_, capacity_;
  std::unique_ptr<ExpertPipeline<RT>> pipe_;
  Stream compute_ = Stream();
  std::map<int, Entry> entries_;
  std::list<int> lru_;
  uint64_t call_ = 0;
  Scratch scratch_;
};

}  // namespace eb
