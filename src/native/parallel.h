// parallel_for: runs fn(task) for task in [0, tasks) on `threads` threads (the caller is one of
// them). Threads are started per call: calls are made per tensor, so the ~50 µs it costs is small
// next to the work, and concurrent calls from several libuv workers never wait on a shared pool.
#pragma once
#include <atomic>
#include <thread>
#include <vector>

namespace eb {

template <typename F>
void parallel_for(int tasks, int threads, F&& fn) {
  if (threads > tasks) threads = tasks;
  if (threads <= 1) {
    for (int t = 0; t < tasks; t++) fn(t);
    return;
  }
  std::atomic<int> next{0};
  auto run = [&] {
    for (int t; (t = next.fetch_add(1)) < tasks;) fn(t);
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int i = 1; i < threads; i++) pool.emplace_back(run);
  run();
  for (auto& th : pool) th.join();
}

// The number of threads "all cores" means here.
inline int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? (int)n : 1;
}

}  // namespace eb
