// decode_stream.cc — see decode_stream.h. One stream per Node environment (the main thread and
// each worker thread that uses it), created on first use and stopped by the environment's cleanup
// hook. Jobs are ordered by start time, then by arrival; JS objects a job reads or writes are
// referenced until its promise settles, and references are only made and dropped on the JS thread.
#include "decode_stream.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "codec_cpu.h"
#include "napi_util.h"
#include "stream_format.h"

namespace eb {
namespace {

using Clock = std::chrono::steady_clock;

struct Job {
  Clock::time_point start;
  uint64_t seq = 0;
  int threads = 1;
  std::vector<StreamView> streams;
  std::vector<float*> out;
  // JS-thread only:
  Napi::Promise::Deferred deferred;
  std::vector<Napi::ObjectReference> keep;
  Napi::ObjectReference values;
  // Set on the stream thread:
  double seconds = 0, waited = 0;
  std::string code, message;

  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

struct Later {
  bool operator()(const Job* a, const Job* b) const { return a->start != b->start ? a->start > b->start : a->seq > b->seq; }
};

class DecodeStream {
 public:
  explicit DecodeStream(Napi::Env env) {
    done_ = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "ebserve decode stream", 0, 1);
    done_.Unref(env);  // only pending jobs keep the loop alive (submit refs it)
    thread_ = std::thread([this] { loop(); });
  }

  // Stops the thread; jobs still queued are dropped (the environment is going away).
  void stop() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    done_.Release();
  }

  void submit(Napi::Env env, std::unique_ptr<Job> job) {
    if (pending_++ == 0) done_.Ref(env);
    {
      std::lock_guard<std::mutex> g(m_);
      job->seq = seq_++;
      queue_.push(job.release());
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      Job* j = queue_.top();
      auto now = Clock::now();
      if (now < j->start) {
        // An earlier job may arrive meanwhile: wake for it, then look again.
        cv_.wait_until(lk, j->start);
        continue;
      }
      queue_.pop();
      lk.unlock();
      j->waited = std::chrono::duration<double>(now - j->start).count();
      auto t = Clock::now();
      try {
        for (size_t i = 0; i < j->streams.size(); i++) decode(j->streams[i], j->streams[i].available - 1, DType::F32, j->out[i], j->threads);
      } catch (const CodecError& e) {
        j->code = e.code;
        j->message = e.what();
      } catch (const std::exception& e) {
        j->code = "INTERNAL";
        j->message = e.what();
      }
      j->seconds = std::chrono::duration<double>(Clock::now() - t).count();
      done_.BlockingCall(j, [this](Napi::Env env, Napi::Function, Job* raw) { finish(env, raw); });
      lk.lock();
    }
  }

  // On the JS thread: settles the job's promise and drops its references.
  void finish(Napi::Env env, Job* raw) {
    if (env == nullptr) return;  // the environment is tearing down: nothing left to settle
    std::unique_ptr<Job> j(raw);
    if (--pending_ == 0) done_.Unref(env);
    Napi::HandleScope scope(env);
    if (!j->code.empty()) {
      j->deferred.Reject(codec_error(env, CodecError(j->code, j->message)).Value());
      return;
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("values", j->values.Value());
    r.Set("seconds", j->seconds);
    r.Set("waitedSeconds", j->waited);
    j->deferred.Resolve(r);
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::priority_queue<Job*, std::vector<Job*>, Later> queue_;
  uint64_t seq_ = 0;
  bool stop_ = false;
  int pending_ = 0;  // JS thread only
  Napi::ThreadSafeFunction done_;
  std::thread thread_;
};

DecodeStream& stream_of(Napi::Env env) {
  auto* s = env.GetInstanceData<DecodeStream>();
  if (s) return *s;
  s = new DecodeStream(env);
  env.SetInstanceData<DecodeStream>(s);  // deleted at teardown, after the cleanup hook stopped it
  env.AddCleanupHook([s] { s->stop(); });
  return *s;
}

Napi::Value Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "parts must be an array of {head, rungs}");
  auto parts = info[0].As<Napi::Array>();
  double delay_ms = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : 0;
  if (!(delay_ms > 0)) delay_ms = 0;           // NaN, negative: start now
  delay_ms = std::min(delay_ms, 3600e3);       // an hour at most (no link takes longer)
  auto job = std::make_unique<Job>(env);
  job->threads = threads_of(info[2]);
  job->start = Clock::now() + std::chrono::microseconds((int64_t)(delay_ms * 1000));
  Napi::Array values = Napi::Array::New(env, parts.Length());
  try {
    for (uint32_t i = 0; i < parts.Length(); i++) {
      Napi::Value p = parts.Get(i);
      if (!p.IsObject()) throw Napi::TypeError::New(env, "part " + std::to_string(i) + " must be {head, rungs}");
      auto o = p.As<Napi::Object>();
      Napi::Value head = o.Get("head"), rungs = o.Get("rungs");
      if (!rungs.IsArray()) throw Napi::TypeError::New(env, "part " + std::to_string(i) + ": rungs must be an array");
      Bytes h = bytes_of(head, "head");
      job->keep.push_back(Napi::Persistent(head.As<Napi::Object>()));
      // The CPU decoder reads either coder (fixed-length or entropy-coded rungs).
      StreamView s = parse_split_stream(h, rungs.As<Napi::Array>(), false, job->keep, Readable::AnyCoder);
      if (s.available < 1) throw CodecError("BAD_RUNGS", "part " + std::to_string(i) + " has no rung to decode");
      // The caller's buffer when it gives one (a recycled expert's, so a miss allocates nothing).
      Napi::Float32Array out;
      Napi::Value given = info[3].IsArray() ? info[3].As<Napi::Array>().Get(i) : env.Undefined();
      if (given.IsTypedArray() && given.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array &&
          given.As<Napi::Float32Array>().ElementLength() == s.h.count) {
        out = given.As<Napi::Float32Array>();
      } else if (!given.IsUndefined() && !given.IsNull()) {
        throw Napi::TypeError::New(env, "part " + std::to_string(i) + ": the output must be a Float32Array of " + std::to_string(s.h.count) + " values");
      } else {
        out = Napi::Float32Array::New(env, s.h.count);
      }
      job->out.push_back(out.Data());
      job->streams.push_back(std::move(s));
      values.Set(i, out);
    }
  } catch (const CodecError& e) {
    throw codec_error(env, e);
  }
  job->values = Napi::Persistent(values.As<Napi::Object>());
  Napi::Promise p = job->deferred.Promise();
  stream_of(env).submit(env, std::move(job));
  return p;
}

}  // namespace

void register_decode_stream(Napi::Env env, Napi::Object exports) {
  exports.Set("decodeStreamRun", Napi::Function::New(env, Run));
}

}  // namespace eb
