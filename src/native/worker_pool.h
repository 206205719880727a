// worker_pool: a persistent pool for the expert engine's small, frequent calls. parallel_for
// (parallel.h) starts threads per call, ~50 µs, which is nothing next to a tensor's compression
// but as long as a whole expert FFN of a decode step: the engine is called once per layer per
// token, so its helpers must already be running. One run at a time: a caller that finds the pool
// busy (two requests decoding at once on two libuv workers) runs its tasks alone instead of
// waiting, so concurrent calls never serialize on the pool.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace eb {

class WorkerPool {
 public:
  // helpers: threads besides the caller (hardware threads − 1 for "every core").
  explicit WorkerPool(int helpers) {
    for (int i = 0; i < helpers; i++) threads_.emplace_back([this] { loop(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int helpers() const { return (int)threads_.size(); }

  // Runs fn(task) for task in [0, tasks) on the caller and up to `threads − 1` helpers; returns
  // when every task is done. Tasks must not throw (the engine's do not: they only do arithmetic
  // on memory validated before the run).
  void run(int tasks, int threads, const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> own(run_, std::try_to_lock);
    if (!own.owns_lock() || threads <= 1 || tasks <= 1 || threads_.empty()) {
      for (int t = 0; t < tasks; t++) fn(t);
      return;
    }
    int use = std::min<int>({threads - 1, (int)threads_.size(), tasks - 1});
    next_.store(0);
    {
      std::lock_guard<std::mutex> g(m_);
      fn_ = &fn;
      tasks_ = tasks;
      wanted_ = use;
      active_ = use;
      generation_++;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> g(m_);
    done_.wait(g, [this] { return active_ == 0; });
    fn_ = nullptr;
  }

 private:
  void work() {
    for (int t; (t = next_.fetch_add(1)) < tasks_;) (*fn_)(t);
  }

  void loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> g(m_);
    for (;;) {
      wake_.wait(g, [&] { return stop_ || (generation_ != seen && wanted_ > 0); });
      if (stop_) return;
      seen = generation_;
      wanted_--;
      g.unlock();
      work();
      g.lock();
      if (--active_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex run_;  // held for the whole of a run
  std::mutex m_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  std::atomic<int> next_{0};
  int tasks_ = 0, wanted_ = 0, active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace eb
