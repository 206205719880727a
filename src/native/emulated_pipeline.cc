// emulated_pipeline: the offload pipeline of cuda/eb_pipeline.h on a device that exists only in
// host memory, so its ordering can be tested on machines without a GPU (all of ours, and CI).
//
// The emulated device keeps CUDA's rules and checks them as it goes:
// - a stream is an in-order queue of operations; nothing runs when it is enqueued, only when the
//   host synchronizes (an event, a stream), as on a GPU where enqueuing returns at once;
// - an event is recorded at a point of a stream; a wait makes a stream stop in front of it until
//   the record it saw when the wait was enqueued has executed (cudaStreamWaitEvent's meaning);
// - a scheduler picks which ready stream runs its next operation, at random from a seed, so the
//   tests see many interleavings of the copy, decompress and compute streams, all deterministic;
// - device memory and pinned host memory are host buffers tagged as such: an async copy to the
//   device must come from pinned memory, decodes must read and write device memory, and every
//   operation checks its ranges again when it runs (a buffer freed too early is caught). Fresh
//   device memory is 0xFF bytes (NaN as f32), so weights read before their decode show, and a
//   decode validates the device rungs it reads (checksums) before it decodes them.
// - the decode is the codec's own kernels under the kernel emulation (emulated_decode_rungs,
//   shared with emulated_codec.cc), reading the emulated device copies of the rungs.
// Every operation is written to a trace (sequence number, stream, kind, fetch, bytes, modelled
// start and end) for the tests to check what ran before what.
//
// Times are MODELLED, not measured: each stream has a clock; a copy costs copy_latency +
// bytes / link_bandwidth, a decode output bytes / decode_bandwidth, a wait moves the clock to the
// event's time. Elapsed times between events are differences of those clocks: figures of the
// model (configurable), independent of the scheduler's seed, and never a claim about real
// hardware. Concurrent H2D and D2H copies do not share bandwidth in the model (PCIe is duplex).
#include "emulated_pipeline.h"

#include <math.h>
#include <string.h>

#include <array>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "emulated_codec.h"
#include "emulated_expert.h"
#include "device_engine_js.h"
#include "napi_util.h"
#include "pipeline_driver.h"
#include "stream_format.h"

namespace eb {
namespace {

class EmulatedRuntime {
 public:
  using Stream = int;  // ids from 1, so Stream{} and Event{} (0) are never real
  using Event = int;

  struct Model {
    double link_bandwidth = 24e9;    // bytes/s, one direction of PCIe 4.0 x16 after overheads
    double copy_latency = 5e-6;      // seconds per cudaMemcpyAsync
    double decode_bandwidth = 300e9;  // output bytes/s of the decode kernels
    double ffn_flops = 50e12;         // the expert FFN kernels' arithmetic rate
  };
  struct TraceEntry {
    uint64_t seq;
    Stream stream;
    const char* kind;  // copy_h2d, copy_d2h, decode, record, wait
    int fetch;
    uint64_t bytes;
    double start, end;  // modelled seconds on the stream's clock
  };

  EmulatedRuntime(uint64_t seed, Model m) : rng_(seed), model_(m) {}

  Stream stream_create(const char* name) {
    streams_.push_back(Queue{name, {}, 0.0});
    return (Stream)streams_.size();
  }
  // Like cudaStreamDestroy: work already queued still runs. Destroys run in destructors, so they
  // never throw, and there is nothing to release.
  void stream_destroy(Stream s) {
    if (s < 1 || s > (Stream)streams_.size()) broken("cudaStreamDestroy of an unknown stream");
  }
  Event event_create() {
    events_.emplace_back();
    return (Event)events_.size();
  }
  void event_destroy(Event e) {
    if (e < 1 || e > (Event)events_.size()) broken("cudaEventDestroy of an unknown event");
  }

  void* host_alloc_pinned(size_t n) { return alloc(n, Pinned); }
  void host_free_pinned(void* p) { release(p, Pinned); }
  void* device_alloc(size_t n) { return alloc(n, Device); }
  void device_free(void* p) { release(p, Device); }

  void copy_h2d_async(void* dst, const void* src, size_t n, Stream s) {
    auto checks = [=] {
      need(src, n, Pinned, "cudaMemcpyAsync host-to-device source (an async copy needs pinned memory)");
      need(dst, n, Device, "cudaMemcpyAsync host-to-device destination");
    };
    checks();
    push(s, Op{Op::Work, "copy_h2d", tag_, n, 0, 0, model_.copy_latency + n / model_.link_bandwidth, [=] {
                 checks();
                 memcpy(dst, src, n);
               }});
  }
  // The destination may be pageable (CUDA allows it, blocking); callers that overlap use pinned.
  void copy_d2h_async(void* dst, const void* src, size_t n, Stream s) {
    auto checks = [=] { need(src, n, Device, "cudaMemcpyAsync device-to-host source"); };
    checks();
    push(s, Op{Op::Work, "copy_d2h", tag_, n, 0, 0, model_.copy_latency + n / model_.link_bandwidth, [=] {
                 checks();
                 memcpy(dst, src, n);
               }});
  }

  void record(Event e, Stream s) {
    Ev& ev = event(e);
    ev.times.push_back(NAN);  // NaN until the record executes
    push(s, Op{Op::Record, "record", tag_, 0, e, ev.times.size(), 0, nullptr});
  }
  // A wait binds to the latest record enqueued so far; none yet makes it a no-op, as in CUDA.
  void wait(Stream s, Event e) {
    Ev& ev = event(e);
    if (ev.times.empty()) return;
    push(s, Op{Op::Wait, "wait", tag_, 0, e, ev.times.size(), 0, nullptr});
  }

  void event_synchronize(Event e) {
    Ev& ev = event(e);
    size_t gen = ev.times.size();
    if (gen) run_until([&] { return !isnan(events_[e - 1].times[gen - 1]); });
  }
  void stream_synchronize(Stream s) {
    queue(s);
    run_until([&] { return streams_[s - 1].ops.empty(); });
  }
  // cudaEventElapsedTime refuses events that have not completed (cudaErrorNotReady); so do we,
  // which checks that the pipeline synchronizes before it reads a time.
  double elapsed_seconds(Event a, Event b) {
    double ta = last_time(a), tb = last_time(b);
    if (isnan(ta) || isnan(tb)) fail("elapsed time of an event that has not completed (cudaErrorNotReady)");
    return tb - ta;
  }

  void decode_resident(const StreamView& s, const uint8_t* const* d_rung, int k, DType dt, void* d_out, Stream st) {
    if (k < 0 || k >= s.available)
      throw CodecError("BAD_RUNGS", "cannot decode rung " + std::to_string(k) + " from " +
                                        std::to_string(s.available) + " rungs");
    std::array<const uint8_t*, EB_MAX_RUNGS> rungs{};
    for (int j = 0; j <= k; j++) rungs[j] = d_rung[j];
    size_t out_bytes = s.h.count * dtype_size(dt);
    auto checks = [=, h = s.h] {
      for (int j = 0; j <= k; j++) need(rungs[j], h.rung_bytes[j], Device, "decode kernel input (a device rung)");
      need(d_out, out_bytes, Device, "decode kernel output");
    };
    checks();
    uint64_t in_bytes = s.h.rung_offset[k] + s.h.rung_bytes[k];
    push(st, Op{Op::Work, "decode", tag_, in_bytes, 0, 0, out_bytes / model_.decode_bandwidth, [=, h = s.h] {
                  checks();
                  StreamView dv = resident_view(h, rungs.data(), k);
                  emulated_decode_rungs(dv, dv.rung, k, dt, d_out);
                }});
  }

  // The CUDA engine's two FFN kernels on stream s (cuda/eb_expert_kernels.cuh, emulated).
  void expert_ffn(const float* g, const float* u, const float* dn, const float* x, int n, int d, int ff, float* h, float* y, Stream s) {
    const size_t wb = (size_t)d * ff * 4, xb = (size_t)n * d * 4, hb = (size_t)n * ff * 4;
    auto checks = [=] {
      need(g, wb, Device, "FFN kernel gate weights");
      need(u, wb, Device, "FFN kernel up weights");
      need(dn, wb, Device, "FFN kernel down weights");
      need(x, xb, Device, "FFN kernel input");
      need(h, hb, Device, "FFN kernel hidden");
      need(y, xb, Device, "FFN kernel output");
    };
    checks();
    push(s, Op{Op::Work, "ffn", tag_, 3 * wb, 0, 0, 6.0 * n * d * ff / model_.ffn_flops, [=] {
                 checks();
                 emulated_expert_ffn(g, u, dn, x, n, d, ff, h, y);
               }});
  }

  void tag(int fetch) { tag_ = fetch; }

  const std::vector<TraceEntry>& trace() const { return trace_; }
  const char* stream_name(Stream s) const { return streams_[s - 1].name; }

 private:
  struct Op {
    enum Type { Work, Record, Wait } type;
    const char* kind;
    int fetch;
    uint64_t bytes;
    Event event;  // Record, Wait
    size_t gen;   // which record of `event` (1-based)
    double cost;  // modelled seconds (Work)
    std::function<void()> run;
  };
  struct Queue {
    const char* name;
    std::deque<Op> ops;
    double clock;
  };
  struct Ev {
    std::vector<double> times;  // per record, in enqueue order; NaN until executed
  };
  enum Kind { Pinned, Device };
  struct Alloc {
    std::unique_ptr<uint8_t[]> p;
    size_t n;
    Kind kind;
  };

  // Nothing runs after a broken rule: later calls report the first one instead.
  void broken(const std::string& what) {
    if (!failed_) why_ = what;
    failed_ = true;
  }
  [[noreturn]] void fail(const std::string& what) {
    broken(what);
    throw std::logic_error(what);
  }
  // The decode kernels trust the host's validation of the stream, so on a GPU a decode that
  // runs before its copies land reads garbage. Here the device rungs are validated again as the
  // decode starts, checksums included, so that ordering bug is reported instead of read.
  StreamView resident_view(const Header& h, const uint8_t* const* rungs, int k) {
    std::vector<uint8_t> head(h.head_bytes());
    write_head(h, head.data());
    size_t lens[EB_MAX_RUNGS];
    for (int j = 0; j <= k; j++) lens[j] = h.rung_bytes[j];
    try {
      return parse_parts(head.data(), head.size(), rungs, lens, k + 1, true);
    } catch (const CodecError& e) {
      fail(std::string("a decode read device rungs that do not hold its stream (were its copies waited for?): ") +
           e.what());
    }
  }
  [[noreturn]] void stopped() { throw std::logic_error("the emulated device stopped after an earlier error: " + why_); }
  Queue& queue(Stream s) {
    if (s < 1 || s > (Stream)streams_.size()) fail("unknown stream " + std::to_string(s));
    return streams_[s - 1];
  }
  Ev& event(Event e) {
    if (e < 1 || e > (Event)events_.size()) fail("unknown event " + std::to_string(e));
    return events_[e - 1];
  }
  double last_time(Event e) {
    Ev& ev = event(e);
    return ev.times.empty() ? NAN : ev.times.back();
  }

  void* alloc(size_t n, Kind kind) {
    Alloc a{std::unique_ptr<uint8_t[]>(new uint8_t[n ? n : 1]), n, kind};
    memset(a.p.get(), kind == Device ? 0xFF : 0, n ? n : 1);
    void* p = a.p.get();
    mem_[(uintptr_t)p] = std::move(a);
    return p;
  }
  void release(void* p, Kind kind) {
    if (!p) return;
    auto it = mem_.find((uintptr_t)p);
    // Frees run in destructors, so they never throw: a bad one stops the device instead.
    if (it == mem_.end() || it->second.kind != kind)
      return broken(kind == Device ? "cudaFree of a pointer that is not device memory"
                                   : "cudaFreeHost of a pointer that is not pinned memory");
    mem_.erase(it);
  }
  // [p, p + n) must lie in one live allocation of `kind`.
  void need(const void* p, size_t n, Kind kind, const char* what) {
    if (n == 0) return;
    auto it = mem_.upper_bound((uintptr_t)p);
    if (it != mem_.begin()) {
      --it;
      uintptr_t base = it->first, q = (uintptr_t)p;
      if (it->second.kind == kind && q - base <= it->second.n && n <= it->second.n - (q - base)) return;
    }
    fail(std::string(what) + ": " + std::to_string(n) + " bytes at " + std::to_string((uintptr_t)p) + " are not in live " +
         (kind == Device ? "device" : "pinned host") + " memory");
  }

  void push(Stream s, Op op) {
    if (failed_) stopped();
    queue(s).ops.push_back(std::move(op));
  }

  bool ready(const Queue& q) const {
    if (q.ops.empty()) return false;
    const Op& op = q.ops.front();
    return op.type != Op::Wait || !isnan(events_[op.event - 1].times[op.gen - 1]);
  }

  // Runs one operation at the head of stream s, on its modelled clock.
  void step(Stream s) {
    Queue& q = streams_[s - 1];
    Op op = std::move(q.ops.front());
    q.ops.pop_front();
    double start = q.clock;
    if (op.type == Op::Wait) {
      q.clock = std::max(q.clock, events_[op.event - 1].times[op.gen - 1]);
    } else if (op.type == Op::Record) {
      events_[op.event - 1].times[op.gen - 1] = q.clock;
    } else {
      try {
        op.run();
      } catch (const std::exception& e) {
        broken(e.what());
        throw;
      }
      q.clock += op.cost;
    }
    trace_.push_back(TraceEntry{trace_.size(), s, op.kind, op.fetch, op.bytes, start, q.clock});
  }

  // The host blocked until `done`: run ready streams, picked at random from the seed.
  template <class Done>
  void run_until(Done done) {
    while (!done()) {
      if (failed_) stopped();
      std::vector<Stream> r;
      for (size_t i = 0; i < streams_.size(); i++)
        if (ready(streams_[i])) r.push_back((Stream)i + 1);
      // Cannot happen while waits bind only to records already enqueued (each wait points back
      // in enqueue order, so there is no cycle); kept so a bug shows as an error, not a hang.
      if (r.empty()) fail("emulated streams deadlocked: every queued stream waits on an event not reached");
      step(r[next() % r.size()]);
    }
  }

  uint64_t next() {  // splitmix64: the same sequence on every platform
    uint64_t z = (rng_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  uint64_t rng_;
  Model model_;
  int tag_ = -1;
  bool failed_ = false;
  std::string why_;
  std::vector<Queue> streams_;
  std::vector<Ev> events_;
  std::map<uintptr_t, Alloc> mem_;
  std::vector<TraceEntry> trace_;
};

// trace: [{seq, stream, kind, fetch, bytes, start, end}] and model: {emulated, the model's figures}.
void add_trace(Napi::Env env, const EmulatedRuntime& rt, const EmulatedRuntime::Model& m, Napi::Object o) {
  const auto& tr = rt.trace();
  Napi::Array trace = Napi::Array::New(env, tr.size());
  for (size_t i = 0; i < tr.size(); i++) {
    Napi::Object t = Napi::Object::New(env);
    t.Set("seq", (double)tr[i].seq);
    t.Set("stream", rt.stream_name(tr[i].stream));
    t.Set("kind", tr[i].kind);
    t.Set("fetch", tr[i].fetch);
    t.Set("bytes", (double)tr[i].bytes);
    t.Set("start", tr[i].start);
    t.Set("end", tr[i].end);
    trace.Set(i, t);
  }
  o.Set("trace", trace);
  Napi::Object model = Napi::Object::New(env);
  model.Set("emulated", true);
  model.Set("linkBandwidth", m.link_bandwidth);
  model.Set("copyLatency", m.copy_latency);
  model.Set("decodeBandwidth", m.decode_bandwidth);
  model.Set("ffnFlops", m.ffn_flops);
  o.Set("model", model);
}

double number_option(const Napi::Object& o, const char* name, double def, double min) {
  if (!o.Has(name) || o.Get(name).IsUndefined()) return def;
  double v = o.Get(name).As<Napi::Number>().DoubleValue();
  if (!(v >= min) || !isfinite(v))
    throw Napi::RangeError::New(o.Env(), std::string(name) + " must be a finite number of at least " + std::to_string(min));
  return v;
}

// The emulated device's model from options {linkBandwidth?, copyLatency?, decodeBandwidth?}.
EmulatedRuntime::Model model_of(const Napi::Object& opt) {
  EmulatedRuntime::Model m;
  m.link_bandwidth = number_option(opt, "linkBandwidth", m.link_bandwidth, 1);
  m.copy_latency = number_option(opt, "copyLatency", m.copy_latency, 0);
  m.decode_bandwidth = number_option(opt, "decodeBandwidth", m.decode_bandwidth, 1);
  return m;
}

// emulatedPipelineRun(fetches, {seed?, outputSlots?, inFlight?, linkBandwidth?, copyLatency?,
// decodeBandwidth?}) → {outputs, fetches, rungBuffers, trace, model} (pipeline_driver.h)
Napi::Value EmulatedPipelineRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    std::vector<FetchSpec> specs = fetch_specs(info[0]);
    Napi::Object opt = info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
    EmulatedRuntime::Model m = model_of(opt);
    uint64_t seed = (uint64_t)number_option(opt, "seed", 1, 0);
    int slots = (int)number_option(opt, "outputSlots", 0, 0);
    int in_flight = (int)number_option(opt, "inFlight", 0, 0);

    EmulatedRuntime rt(seed, m);
    Napi::Object o = run_result_js(env, run_fetches(rt, specs, slots, in_flight));
    add_trace(env, rt, m, o);
    return o;
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Napi::RangeError::New(env, "emulated CUDA pipeline: out of host memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string("emulated CUDA pipeline: ") + e.what());
  }
}

// The CUDA engine (device_engine.h) on its own emulated device, kept across layer calls.
struct EmulatedEngine {
  EmulatedRuntime::Model model;
  EmulatedRuntime rt;
  DeviceEngine<EmulatedRuntime> engine;
  EmulatedEngine(EmulatedRuntime::Model m, uint64_t seed, int d, int ff, int capacity) : model(m), rt(seed, m), engine(rt, d, ff, capacity) {}
};

template <class Fn>
Napi::Value emulated_call(Napi::Env env, Fn fn) {
  return with_js_errors(env, "emulated CUDA engine: ", fn);
}

// emulatedEngineNew(d, ff, capacity, {seed?, linkBandwidth?, copyLatency?, decodeBandwidth?}) → handle
Napi::Value EmulatedEngineNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return emulated_call(env, [&]() -> Napi::Value {
    Napi::Object opt = info[3].IsObject() ? info[3].As<Napi::Object>() : Napi::Object::New(env);
    EmulatedRuntime::Model m = model_of(opt);
    auto* h = new EmulatedEngine(m, (uint64_t)number_option(opt, "seed", 1, 0), info[0].As<Napi::Number>().Int32Value(),
                                 info[1].As<Napi::Number>().Int32Value(), info[2].As<Napi::Number>().Int32Value());
    return Napi::External<EmulatedEngine>::New(env, h, [](Napi::Env, EmulatedEngine* p) { delete p; });
  });
}

// emulatedEnginePrefetch(handle, {key, gate, up, down}): starts the expert's fetch; never waits.
Napi::Value EmulatedEnginePrefetch(const Napi::CallbackInfo& info) {
  return emulated_call(info.Env(), [&] { return engine_prefetch_js<EmulatedEngine>(info); });
}

// emulatedEngineLayer(handle, experts [{key, gate, up, down}], slotExpert, slotWeight, hidden, T, k, d, ff)
// → {out, fetches, hits, misses}
Napi::Value EmulatedEngineLayer(const Napi::CallbackInfo& info) {
  return emulated_call(info.Env(), [&] { return engine_layer_js<EmulatedEngine>(info); });
}

// emulatedEngineTrace(handle) → {trace, model}: every operation the emulated device ran so far.
Napi::Value EmulatedEngineTrace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return emulated_call(env, [&]() -> Napi::Value {
    EmulatedEngine& h = holder_of<EmulatedEngine>(info[0]);
    Napi::Object o = Napi::Object::New(env);
    add_trace(env, h.rt, h.model, o);
    return o;
  });
}

}  // namespace

void register_emulated_pipeline(Napi::Env env, Napi::Object exports) {
  exports.Set("emulatedPipelineRun", Napi::Function::New(env, EmulatedPipelineRun));
  exports.Set("emulatedEngineNew", Napi::Function::New(env, EmulatedEngineNew));
  exports.Set("emulatedEnginePrefetch", Napi::Function::New(env, EmulatedEnginePrefetch));
  exports.Set("emulatedEngineLayer", Napi::Function::New(env, EmulatedEngineLayer));
  exports.Set("emulatedEngineTrace", Napi::Function::New(env, EmulatedEngineTrace));
}

}  // namespace eb
