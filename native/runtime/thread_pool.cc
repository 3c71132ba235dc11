// Fork/join pool. A job bumps `generation_`; each share of it (one per worker index) is claimed once, by its worker
// or by the caller: the caller runs its own share, then every share no worker has claimed yet, and waits only for
// the shares workers are running. So a job never waits for a worker to wake up — on the development VM a sleeping
// worker takes 0.1-0.4 ms to, against ~10 us for a whole routing call of one token. Workers spin for a short while
// after a job (back-to-back kernels in one forward are common), then sleep on the condition variable so an idle
// process costs nothing.
#include "moe/thread_pool.h"

#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MOE_CPU_RELAX() _mm_pause()
#else
#define MOE_CPU_RELAX() ((void)0)
#endif

namespace moe {

namespace {
// ~0.4 ms of pause before a worker sleeps on the Zen 5 development VM (a pause takes ~60 cycles there); a
// 50 us time bound instead changed neither forward times nor the observability overhead (bench/RESULTS.md)
constexpr int kSpinIterations = 20000;
}

ThreadPool::ThreadPool(int threads) {
  if (threads < 1) threads = 1;
  claims_ = std::vector<std::atomic<uint64_t>>(size_t(threads));
  try {
    workers_.reserve(threads - 1);
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { workerLoop(i); });
  } catch (const std::exception& e) {
    // Out of threads (a container's pid limit, ulimit -u) or memory: the workers already started wait on members
    // the unwinding is about to destroy, and a joinable std::thread's destructor terminates. Stop and join them,
    // then let the caller turn the error into a JS exception.
    const size_t started = workers_.size() + 1;
    stopAndJoin();
    throw std::runtime_error("could not start a pool of " + std::to_string(threads) + " threads (" +
                             std::to_string(started) + " running): " + e.what() + "; ask for fewer threads");
  }
}

ThreadPool::~ThreadPool() { stopAndJoin(); }

void ThreadPool::stopAndJoin() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

int ThreadPool::defaultThreads() {
  if (const char* env = std::getenv("MOE_THREADS")) {
    // a whole integer in [1, 1024], blanks around it allowed; anything else is ignored (lib/native.ts warns)
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    while (end && (*end == ' ' || *end == '\t')) ++end;
    if (end != env && end && *end == '\0' && n > 0 && n <= 1024) return static_cast<int>(n);
  }
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void ThreadPool::run_impl(int workers, Trampoline fn, void* ctx) {
  if (workers > size()) workers = size();
  if (workers <= 1) {
    fn(ctx, 0, 1);
    return;
  }
  // Calls from different JS threads (worker_threads, or route beside forwardAsync) take turns.
  std::lock_guard<std::mutex> job(jobMutex_);
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = fn;
    ctx_ = ctx;
    active_ = workers;
    generation = generation_.fetch_add(1, std::memory_order_release) + 1;
  }
  wake_.notify_all();
  fn(ctx, 0, workers);
  for (int share = 1; share < workers; ++share)
    if (claim(share, generation)) fn(ctx, share, workers);
  while (pending_.load(std::memory_order_acquire) != 0) MOE_CPU_RELAX();
}

bool ThreadPool::claim(int share, uint64_t generation) {
  // A share's claim only grows (the generation of the last job that ran it), so a worker that read an older job
  // late can never claim a share of a newer one.
  uint64_t last = claims_[size_t(share)].load(std::memory_order_acquire);
  while (last < generation)
    if (claims_[size_t(share)].compare_exchange_weak(last, generation, std::memory_order_acq_rel,
                                                     std::memory_order_acquire))
      return true;
  return false;
}

void ThreadPool::workerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < kSpinIterations; ++spin) {
      MOE_CPU_RELAX();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      gen = generation_.load(std::memory_order_acquire);
    }
    Trampoline fn;
    void* ctx;
    int active;
    {
      // Read the job and its generation together: an idle worker may wake late, after a newer job began.
      std::lock_guard<std::mutex> lock(mutex_);
      seen = generation_.load(std::memory_order_acquire);
      fn = fn_;
      ctx = ctx_;
      active = active_;
    }
    if (stop_.load(std::memory_order_acquire)) return;
    if (index < active) {
      // Counted before the claim: a caller that finds the share claimed then waits for it.
      pending_.fetch_add(1, std::memory_order_acq_rel);
      if (claim(index, seen)) fn(ctx, index, active);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
}

}  // namespace moe
