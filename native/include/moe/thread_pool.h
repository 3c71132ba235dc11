// A persistent pool of worker threads. The calling thread takes part as worker 0, so a pool of size 1 has no
// threads at all. Jobs are short fork/join regions; workers spin briefly between jobs, then sleep. The caller also
// runs the shares of workers that have not woken up by the time its own is done, so one thread may run several
// shares of a job, one after another: a body must not wait for another share.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace moe {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs body(worker, workers) for every worker index in [0, workers) (clamped to size()), each index once, on up to
  // that many threads, and returns when all are done. Overlapping calls from different threads are serialised; a
  // body must not call run() itself, nor wait for another index.
  template <typename F>
  void run(int workers, F&& body) {
    run_impl(workers, &invoke<F>, static_cast<void*>(&body));
  }

  // Splits [0, items) dynamically over the workers: fn(item, worker).
  template <typename F>
  void parallelFor(int workers, int64_t items, F&& fn) {
    if (items <= 0) return;
    if (workers > items) workers = static_cast<int>(items);
    std::atomic<int64_t> next{0};
    run(workers, [&](int worker, int) {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < items;
           i = next.fetch_add(1, std::memory_order_relaxed))
        fn(i, worker);
    });
  }

  static int defaultThreads();

 private:
  using Trampoline = void (*)(void*, int, int);
  template <typename F>
  static void invoke(void* f, int worker, int workers) {
    (*static_cast<F*>(f))(worker, workers);
  }
  void run_impl(int workers, Trampoline fn, void* ctx);
  // Takes share `share` of job `generation` for the calling thread, unless a thread has already.
  bool claim(int share, uint64_t generation);
  void workerLoop(int index);
  // Wakes every worker with stop_ set and joins them (the destructor, and a constructor that failed midway).
  void stopAndJoin();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::mutex jobMutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // shares workers are running (or about to try to claim)
  std::vector<std::atomic<uint64_t>> claims_;  // per worker index: the generation of the last job that ran it
  std::atomic<bool> stop_{false};
  Trampoline fn_ = nullptr;
  void* ctx_ = nullptr;
  int active_ = 0;
};

}  // namespace moe
