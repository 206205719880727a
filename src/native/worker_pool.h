// worker_pool: a persistent pool for the expert engine's small, frequent calls. parallel_for
// (parallel.h) starts threads per call, ~50 µs, which is nothing next to a tensor's compression
// but longer than a whole expert layer of a small model's decode step: the engine is called once
// per layer per token, so its helpers must already be running, and awake. After a run a helper
// spins for kSpin before it sleeps, because the next layer's run comes tens of microseconds later
// and waking a sleeping thread costs about as much as the run itself; a pool left idle sleeps.
//
// One run at a time: a caller that finds the pool busy (two requests decoding at once on two
// libuv workers) runs its tasks alone instead of waiting, so concurrent calls never serialize.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define EB_PAUSE() _mm_pause()
#else
#define EB_PAUSE() std::this_thread::yield()
#endif

namespace eb {

class WorkerPool {
 public:
  static constexpr std::chrono::microseconds kSpin{200};

  // helpers: threads besides the caller (hardware threads − 1 for "every core").
  explicit WorkerPool(int helpers) {
    for (int i = 0; i < helpers; i++) threads_.emplace_back([this] { loop(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int helpers() const { return (int)threads_.size(); }

  // Runs fn(task) for task in [0, tasks) on the caller and up to `threads − 1` helpers; returns
  // when every task is done. Tasks must not throw (the engine's only do arithmetic on memory
  // validated before the run).
  void run(int tasks, int threads, const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> own(run_, std::try_to_lock);
    if (!own.owns_lock() || threads <= 1 || tasks <= 1 || threads_.empty()) {
      for (int t = 0; t < tasks; t++) fn(t);
      return;
    }
    int use = std::min<int>({threads - 1, (int)threads_.size(), tasks - 1});
    fn_ = &fn;
    tasks_ = tasks;
    next_.store(0);
    active_.store(use);
    wanted_.store(use, std::memory_order_release);
    generation_.fetch_add(1);  // seq_cst: pairs with a helper's sleepers_++ then re-check
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> g(m_);
      wake_.notify_all();
    }
    work();
    // The helpers finish within a task's time of the caller: spin, then sleep.
    auto until = std::chrono::steady_clock::now() + kSpin;
    while (active_.load(std::memory_order_acquire) > 0 && std::chrono::steady_clock::now() < until) EB_PAUSE();
    if (active_.load(std::memory_order_acquire) > 0) {
      std::unique_lock<std::mutex> g(m_);
      done_.wait(g, [this] { return active_.load() == 0; });
    }
    fn_ = nullptr;
  }

 private:
  void work() {
    for (int t; (t = next_.fetch_add(1)) < tasks_;) (*fn_)(t);
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      auto until = std::chrono::steady_clock::now() + kSpin;
      while (generation_.load(std::memory_order_acquire) == seen && !stop_.load() && std::chrono::steady_clock::now() < until)
        EB_PAUSE();
      if (generation_.load(std::memory_order_acquire) == seen && !stop_.load()) {
        std::unique_lock<std::mutex> g(m_);
        sleepers_++;
        wake_.wait(g, [&] { return stop_.load() || generation_.load() != seen; });
        sleepers_--;
      }
      if (stop_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      // A run wants `use` helpers; one that comes late finds none wanted and waits again.
      if (wanted_.fetch_sub(1, std::memory_order_acq_rel) <= 0) continue;
      work();
      if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> g(m_);
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> threads_;
  std::mutex run_;  // held for the whole of a run
  std::mutex m_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  int tasks_ = 0;
  std::atomic<int> next_{0}, wanted_{0}, active_{0}, sleepers_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace eb
