// pipeline_driver: what the addon's pipeline functions do with a list of expert fetches, the
// same for the emulated runtime (emulated_pipeline.cc) and the real one (cuda_bridge.cc), so the
// test that runs the emulation checks the very host code a GPU would run.
//
// For each fetch, in order: a pinned arena of its rungs, enqueue_fetch into an output slot's
// device buffer, wait_ready on the compute stream, and a "compute" op that reads the weights back
// to the host (what an expert GEMM would be; reading them back is what lets the caller check
// them, into pinned memory: a copy to pageable memory would block the host until it is done and
// so serialize the loop). Only after every fetch is enqueued does the host ask for times, so the runtime is free
// to overlap them. Fetches may share output slots: then a fetch decodes over the previous one's
// weights and must wait for the compute work still reading them (enqueue_fetch's out_last_user).
// The device runtime needs no GPU to be tested: with the emulated one this is all host memory.
#pragma once
#include <napi.h>

#include <string.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "../../cuda/eb_pipeline.h"
#include "napi_util.h"
#include "stream_format.h"

namespace eb {

struct FetchSpec {
  Bytes head;
  std::vector<Bytes> rungs;
  int k = -1;  // -1: the last rung given
  DType out = DType::F32;
};

struct FetchReport {
  uint64_t bytes = 0;
  int copies = 0;
  double transfer_seconds = 0, decompress_seconds = 0;
};

struct RunResult {
  std::vector<std::vector<uint8_t>> outputs;  // decoded values per fetch, out dtype bytes
  std::vector<FetchReport> reports;
  size_t rung_buffers = 0;  // device rung buffers the pipeline allocated (the rest were reused)
};

// fetches: [{head, rungs: [...], k?, outDtype?}] as splitRungs gives head and rungs.
inline std::vector<FetchSpec> fetch_specs(const Napi::Value& v) {
  Napi::Env env = v.Env();
  if (!v.IsArray()) throw Napi::TypeError::New(env, "fetches must be an array");
  auto arr = v.As<Napi::Array>();
  std::vector<FetchSpec> out;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value e = arr.Get(i);
    if (!e.IsObject()) throw Napi::TypeError::New(env, "fetch " + std::to_string(i) + " must be an object");
    auto o = e.As<Napi::Object>();
    FetchSpec f;
    f.head = bytes_of(o.Get("head"), "head");
    Napi::Value rungs = o.Get("rungs");
    if (!rungs.IsArray()) throw Napi::TypeError::New(env, "fetch " + std::to_string(i) + ": rungs must be an array");
    auto ra = rungs.As<Napi::Array>();
    for (uint32_t j = 0; j < ra.Length(); j++) f.rungs.push_back(bytes_of(ra.Get(j), "rung"));
    if (o.Has("k") && !o.Get("k").IsUndefined()) f.k = o.Get("k").As<Napi::Number>().Int32Value();
    if (o.Has("outDtype") && !o.Get("outDtype").IsUndefined()) f.out = dtype_of(o.Get("outDtype"));
    out.push_back(std::move(f));
  }
  return out;
}

// Runs the fetches through an ExpertPipeline on `rt`; fetch i decodes into slot i % slots. With
// in_flight > 0 at most that many fetches are outstanding (a prefetch window): the oldest is
// finished and released before the next is enqueued. Throws what the pipeline throws (CodecError for a bad stream or level), having waited for
// whatever it had already enqueued.
template <class RT>
RunResult run_fetches(RT& rt, const std::vector<FetchSpec>& specs, int slots, int in_flight = 0) {
  using Stream = typename RT::Stream;
  const int n = (int)specs.size();
  if (slots < 1 || slots > n) slots = n;
  RunResult res;
  res.outputs.resize(n);
  res.reports.resize(n);

  // Declared in this order so that unwinding (a bad fetch half way) destroys the pipeline first,
  // which waits for its queued fetches, then the arenas they copy from, then the output slots
  // after the compute stream has drained, then the compute stream.
  struct Device {
    RT& rt;
    Stream compute = Stream();
    std::vector<void*> slot, staging;  // device output slots; pinned readback per fetch
    explicit Device(RT& r) : rt(r) {}
    ~Device() {
      try {
        if (!(compute == Stream())) rt.stream_synchronize(compute);
      } catch (...) {
        // The runtime's failure was already thrown to the caller; still free what we hold.
      }
      for (void* p : slot) rt.device_free(p);
      for (void* p : staging) rt.host_free_pinned(p);
      if (!(compute == Stream())) rt.stream_destroy(compute);
    }
  } dev(rt);
  dev.compute = rt.stream_create("compute");

  std::vector<std::unique_ptr<PinnedArena<RT>>> arenas;
  std::vector<size_t> need(n), cap(slots, 4);
  for (int i = 0; i < n; i++) {
    const FetchSpec& f = specs[i];
    std::vector<const uint8_t*> ptr;
    std::vector<size_t> len;
    for (const Bytes& b : f.rungs) {
      ptr.push_back(b.data);
      len.push_back(b.len);
    }
    arenas.push_back(std::make_unique<PinnedArena<RT>>(rt, f.head.data, f.head.len, ptr.data(), len.data(), (int)ptr.size()));
    need[i] = arenas[i]->view().h.count * dtype_size(f.out);
    cap[i % slots] = std::max(cap[i % slots], need[i]);
    res.outputs[i].resize(need[i]);
    dev.staging.push_back(rt.host_alloc_pinned(std::max<size_t>(need[i], 4)));
  }
  for (int s = 0; s < slots; s++) dev.slot.push_back(rt.device_alloc(cap[s]));

  ExpertPipeline<RT> pipe(rt);
  std::vector<typename ExpertPipeline<RT>::Ticket> tickets;
  // Reads a fetch's figures (blocking until it is done) and releases it, so that its device
  // rungs and events return to the pipeline's pools for the fetches enqueued after it.
  auto finish = [&](int i) {
    FetchReport& r = res.reports[i];
    r.bytes = pipe.bytes(tickets[i]);
    r.copies = pipe.copies(tickets[i]);
    r.transfer_seconds = pipe.transfer_seconds(tickets[i]);
    r.decompress_seconds = pipe.decompress_seconds(tickets[i]);
    pipe.release(tickets[i]);
  };
  int finished = 0;
  for (int i = 0; i < n; i++) {
    if (in_flight > 0 && i - finished >= in_flight) finish(finished++);
    const FetchSpec& f = specs[i];
    int k = f.k == -1 ? arenas[i]->view().available - 1 : f.k;  // other negatives: BAD_RUNGS
    void* out = dev.slot[i % slots];
    rt.tag(i);
    // A slot used before holds weights the compute stream may still be reading.
    tickets.push_back(pipe.enqueue_fetch(*arenas[i], k, f.out, out, cap[i % slots], i >= slots ? &dev.compute : nullptr));
    pipe.wait_ready(tickets[i], dev.compute);
    rt.tag(i);
    if (need[i]) rt.copy_d2h_async(dev.staging[i], out, need[i], dev.compute);
  }
  while (finished < n) finish(finished++);
  rt.stream_synchronize(dev.compute);
  for (int i = 0; i < n; i++)
    if (need[i]) memcpy(res.outputs[i].data(), dev.staging[i], need[i]);
  res.rung_buffers = pipe.buffers_allocated();
  return res;
}

// {bytes, copies, transferSeconds, decompressSeconds}
inline Napi::Object fetch_report_js(Napi::Env env, const FetchReport& r) {
  Napi::Object f = Napi::Object::New(env);
  f.Set("bytes", (double)r.bytes);
  f.Set("copies", r.copies);
  f.Set("transferSeconds", r.transfer_seconds);
  f.Set("decompressSeconds", r.decompress_seconds);
  return f;
}

// {outputs: Buffer[], fetches: [{bytes, copies, transferSeconds, decompressSeconds}], rungBuffers}
inline Napi::Object run_result_js(Napi::Env env, RunResult&& r) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Array outs = Napi::Array::New(env, r.outputs.size());
  for (size_t i = 0; i < r.outputs.size(); i++)
    outs.Set(i, r.outputs[i].empty() ? Napi::Buffer<uint8_t>::New(env, 0) : to_buffer(env, std::move(r.outputs[i])));
  o.Set("outputs", outs);
  Napi::Array reps = Napi::Array::New(env, r.reports.size());
  for (size_t i = 0; i < r.reports.size(); i++) reps.Set(i, fetch_report_js(env, r.reports[i]));
  o.Set("fetches", reps);
  o.Set("rungBuffers", (double)r.rung_buffers);
  return o;
}

}  // namespace eb
