// eb_pipeline.h — the device side of one expert fetch, written once for two runtimes.
//
// An expert that is not on the device lives in host memory as compressed rungs (the store). To
// compute with it at rung k, its rungs 0..k cross the link into device buffers (tier B), the
// codec's decode kernels turn them into weights in the expert's device buffer, and the compute
// stream may then run its GEMMs on them:
//
//   pinned host rungs ─cudaMemcpyAsync (COPY stream)─> device rungs ─event `copied`─>
//   DECOMPRESS stream waits, decodes device rungs → expert weights ─event `ready`─>
//   COMPUTE stream waits, then uses the weights
//
// Three streams so that each engine works on its own: while the decompress stream decodes fetch
// i, the copy engine already moves fetch i+1, and compute runs whatever is ready. Events are the
// only thing that orders them, so each one below says which hazard it prevents.
//
// The logic is a template on a Runtime policy, so the same code runs on a GPU (eb::cuda::
// CudaRuntime, cuda/eb_offload.cu) and, with no GPU at all, under an emulation whose streams are
// queues a seeded scheduler interleaves (src/native/emulated_pipeline.cc), which is how the tests
// check the ordering. A Runtime provides (calls may throw, except the free and destroy calls,
// which run in destructors; "async" calls and record/wait only enqueue):
//   using Stream, Event;                       copyable handles; Event{} is never a real event
//   Stream stream_create(const char* name); void stream_destroy(Stream);   (name: for traces)
//   Event event_create();   void event_destroy(Event);        events that can be timed
//   void* host_alloc_pinned(size_t); void host_free_pinned(void*);
//   void* device_alloc(size_t);      void device_free(void*);
//   void copy_h2d_async(void* dst, const void* src, size_t bytes, Stream);
//   void copy_d2h_async(void* dst, const void* src, size_t bytes, Stream);   (callers' readback)
//   void record(Event, Stream);        the event completes when the stream reaches this point
//   void wait(Stream, Event);          the stream goes no further until the event's latest
//                                      record (as of this call) has completed
//   void event_synchronize(Event); void stream_synchronize(Stream);   the host blocks
//   double elapsed_seconds(Event a, Event b);   both completed; b's time minus a's
//   void decode_resident(const StreamView&, const uint8_t* const* d_rung, int k, DType,
//                        void* d_out, Stream);  the codec's decode kernels, rung j read at d_rung[j]
//   void tag(int fetch);               names what the next calls belong to (traces, profilers)
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <string.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/native/stream_format.h"

namespace eb {

// A pinned host copy of one expert's rungs, validated once (checksums included), as the store
// keeps them when CUDA is present. Pinned because cudaMemcpyAsync from pageable memory is staged
// through a driver buffer and does not overlap with anything; from pinned memory it is a DMA the
// copy engine runs while the host and the other engines go on. The arena must outlive every
// copy enqueued from it (until its fetches' transfer_seconds or release return).
template <class RT>
class PinnedArena {
 public:
  // head: header + rung table; rungs[0..given) with their lengths, as splitRungs cuts them.
  // Throws CodecError when they do not form a valid stream (the validator's codes).
  PinnedArena(RT& rt, const uint8_t* head, size_t head_len, const uint8_t* const* rungs, const size_t* lens,
              int given)
      : rt_(rt) {
    if (given < 1 || given > EB_MAX_RUNGS)
      throw CodecError("BAD_RUNGS", "given " + std::to_string(given) + " rungs; a stream has 1..16");
    size_t at[EB_MAX_RUNGS];
    size_t total = 0;
    for (int j = 0; j < given; j++) {
      at[j] = total;
      total += (lens[j] + 63) & ~size_t(63);  // each rung on its own cache line
    }
    bytes_ = total < 64 ? 64 : total;
    pinned_ = static_cast<uint8_t*>(rt_.host_alloc_pinned(bytes_));
    try {
      const uint8_t* mine[EB_MAX_RUNGS];
      for (int j = 0; j < given; j++) {
        if (lens[j]) memcpy(pinned_ + at[j], rungs[j], lens[j]);
        mine[j] = pinned_ + at[j];
      }
      view_ = parse_parts(head, head_len, mine, lens, given, true);
    } catch (...) {
      rt_.host_free_pinned(pinned_);
      throw;
    }
  }
  ~PinnedArena() { rt_.host_free_pinned(pinned_); }
  PinnedArena(const PinnedArena&) = delete;
  PinnedArena& operator=(const PinnedArena&) = delete;

  // The validated stream; its rung pointers point into pinned memory.
  const StreamView& view() const { return view_; }

 private:
  RT& rt_;
  uint8_t* pinned_ = nullptr;
  size_t bytes_ = 0;
  StreamView view_;
};

template <class RT>
class ExpertPipeline {
 public:
  using Stream = typename RT::Stream;
  using Event = typename RT::Event;
  struct Ticket {
    uint64_t id = 0;
  };

  // Makes the copy and decompress streams. The compute stream is the caller's.
  explicit ExpertPipeline(RT& rt) : rt_(rt) {
    copy_ = rt_.stream_create("copy");
    try {
      decomp_ = rt_.stream_create("decompress");
    } catch (...) {
      rt_.stream_destroy(copy_);
      throw;
    }
  }

  // Waits for what is still queued (the device buffers it frees may be in use until then).
  ~ExpertPipeline() {
    for (auto& [id, f] : fetches_) {
      try {
        if (!none(f.ready)) rt_.event_synchronize(f.ready);
      } catch (...) {
        // A destructor must not throw; the runtime already reported its failure to someone.
      }
      give_back(f);
    }
    for (Buf& b : free_bufs_) rt_.device_free(b.p);
    for (Event e : free_events_) rt_.event_destroy(e);
    rt_.stream_destroy(decomp_);
    rt_.stream_destroy(copy_);
  }
  ExpertPipeline(const ExpertPipeline&) = delete;
  ExpertPipeline& operator=(const ExpertPipeline&) = delete;

  Stream copy_stream() const { return copy_; }
  Stream decompress_stream() const { return decomp_; }

  // Enqueues the fetch of rungs 0..k of `a` at out_dtype into d_out (device memory holding
  // out_capacity bytes) and returns at once. `out_last_user`, when given, is the stream that last
  // used d_out (the compute stream, when d_out held an evicted expert): decoding waits for the
  // work already queued there. Throws CodecError (BAD_RUNGS, BAD_OUTPUT) before enqueuing anything.
  Ticket enqueue_fetch(const PinnedArena<RT>& a, int k, DType out_dtype, void* d_out, size_t out_capacity,
                       const Stream* out_last_user = nullptr) {
    const StreamView& s = a.view();
    const Header& h = s.h;
    if (k < 0 || k >= s.available)
      throw CodecError("BAD_RUNGS", "cannot decode rung " + std::to_string(k) + " from " +
                                        std::to_string(s.available) + " rungs");
    size_t need = h.count * dtype_size(out_dtype);
    if (out_capacity < need)
      throw CodecError("BAD_OUTPUT", "output holds " + std::to_string(out_capacity) +
                                         " bytes; the stream decodes to " + std::to_string(need));

    // Registered before anything is enqueued, so that if the runtime fails half way the
    // destructor still waits for what did get queued before it frees the buffers.
    Ticket t{next_id_++};
    Fetch& f = fetches_[t.id];
    // Rungs 0..k back to back in payload order, as in the stream: every rung is a multiple of 4
    // bytes long, so each starts 4-aligned, which the decode kernels' word loads need.
    f.bytes = h.rung_offset[k] + h.rung_bytes[k];
    f.buf = take_buffer(f.bytes);
    f.copy_start = take_event();
    f.copied = take_event();
    f.decode_start = take_event();
    f.ready = take_event();
    if (out_last_user) f.out_free = take_event();

    // On the copy stream, first a timestamp: it completes when the copy engine gets to this
    // fetch (after the previous fetch's copies), so copy_start → copied times this fetch's bytes
    // on the link, not the queue before them (only a gap while the host is still enqueuing this
    // fetch's copies would count too: microseconds).
    rt_.record(f.copy_start, copy_);
    const uint8_t* d_rung[EB_MAX_RUNGS] = {nullptr};
    for (int j = 0; j <= k; j++) {
      d_rung[j] = f.buf.p + h.rung_offset[j];
      if (h.rung_bytes[j]) {
        rt_.copy_h2d_async(f.buf.p + h.rung_offset[j], s.rung[j], h.rung_bytes[j], copy_);
        f.copies++;
      }
    }
    // `copied`: the device rungs are complete. The decode kernels read them, so the decompress
    // stream must not pass this point earlier (a read-after-write hazard across engines).
    rt_.record(f.copied, copy_);
    rt_.wait(decomp_, f.copied);
    // d_out may still be read by compute work queued for the expert it held before: decoding
    // over it first would change weights under a running GEMM (write-after-read hazard).
    if (out_last_user) {
      rt_.record(f.out_free, *out_last_user);
      rt_.wait(decomp_, f.out_free);
    }
    // After the waits, so decode_start → ready times the decode alone, not the waiting.
    rt_.record(f.decode_start, decomp_);
    rt_.decode_resident(s, d_rung, k, out_dtype, d_out, decomp_);
    // `ready`: the weights are in d_out. wait_ready puts it in front of the compute stream.
    rt_.record(f.ready, decomp_);
    return t;
  }

  // Compute work enqueued on `compute` after this call sees the fetch's weights; work enqueued
  // before it does not wait (the host never blocks here).
  void wait_ready(Ticket t, Stream compute) { rt_.wait(compute, at(t).ready); }

  // Bytes the fetch moved over the link (rungs 0..k) and how many copies that took.
  uint64_t bytes(Ticket t) const { return at(t).bytes; }
  int copies(Ticket t) const { return at(t).copies; }
  // Device rung buffers allocated so far; released fetches' buffers are reused before this grows.
  size_t buffers_allocated() const { return allocated_; }

  // Seconds the link spent on the fetch's bytes, from the copy stream's events. Blocks the host
  // until the copy is done: an event's time can only be read once it has completed.
  double transfer_seconds(Ticket t) {
    Fetch& f = at(t);
    rt_.event_synchronize(f.copied);
    return rt_.elapsed_seconds(f.copy_start, f.copied);
  }

  // Seconds the decode kernels took. Blocks the host until the weights are ready.
  double decompress_seconds(Ticket t) {
    Fetch& f = at(t);
    rt_.event_synchronize(f.ready);
    return rt_.elapsed_seconds(f.decode_start, f.ready);
  }

  // Forgets a fetch once its weights are ready (blocking until then): its device rungs go back
  // to the pool for the next fetch, its events to the event pool. Compute work that already
  // waits on it is unaffected (a wait binds to the record it saw when it was enqueued).
  void release(Ticket t) {
    Fetch& f = at(t);
    rt_.event_synchronize(f.ready);
    give_back(f);
    fetches_.erase(t.id);
  }

 private:
  struct Buf {
    uint8_t* p = nullptr;
    size_t cap = 0;
  };
  struct Fetch {
    Buf buf;
    Event copy_start = Event(), copied = Event(), decode_start = Event(), ready = Event(), out_free = Event();
    uint64_t bytes = 0;
    int copies = 0;
  };

  static bool none(const Event& e) { return e == Event(); }

  Fetch& at(Ticket t) {
    auto it = fetches_.find(t.id);
    if (it == fetches_.end()) throw std::logic_error("unknown or released fetch ticket " + std::to_string(t.id));
    return it->second;
  }
  const Fetch& at(Ticket t) const { return const_cast<ExpertPipeline*>(this)->at(t); }

  // Device rung buffers are pooled: cudaMalloc and cudaFree synchronize the device, which would
  // serialize the very streams this class keeps apart. A buffer returns to the pool only after
  // its fetch's decode completed, so no queued kernel still reads it.
  Buf take_buffer(size_t bytes) {
    size_t best = free_bufs_.size();
    for (size_t i = 0; i < free_bufs_.size(); i++)
      if (free_bufs_[i].cap >= bytes && (best == free_bufs_.size() || free_bufs_[i].cap < free_bufs_[best].cap))
        best = i;
    if (best < free_bufs_.size()) {
      Buf b = free_bufs_[best];
      free_bufs_.erase(free_bufs_.begin() + best);
      return b;
    }
    Buf b;
    b.cap = ((bytes < 4 ? 4 : bytes) + 4095) & ~size_t(4095);
    b.p = static_cast<uint8_t*>(rt_.device_alloc(b.cap));
    allocated_++;
    return b;
  }

  Event take_event() {
    if (free_events_.empty()) return rt_.event_create();
    Event e = free_events_.back();
    free_events_.pop_back();
    return e;
  }

  // Event{} and a null buffer are what a fetch holds when the runtime failed before giving it one.
  void give_back(Fetch& f) {
    if (f.buf.p) free_bufs_.push_back(f.buf);
    const Event held[] = {f.copy_start, f.copied, f.decode_start, f.ready, f.out_free};
    for (const Event& e : held)
      if (!none(e)) free_events_.push_back(e);
  }

  RT& rt_;
  Stream copy_ = Stream(), decomp_ = Stream();
  uint64_t next_id_ = 0;
  size_t allocated_ = 0;
  std::map<uint64_t, Fetch> fetches_;
  std::vector<Buf> free_bufs_;
  std::vector<Event> free_events_;
};

}  // namespace eb
