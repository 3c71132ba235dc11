// The process-wide async-call gate (see async_gate.h). Its state is the one mutable static of the addon, on
// purpose: the bound is the process's, as libuv's pool is. It is never destroyed (a libuv thread may still release
// a slot while the process exits). Lists, not deques: a deque's map allocation would ask for GLIBCXX_3.4.29
// (std::__throw_bad_array_new_length), past the prebuild's floor (test/package.test.ts).
#include "async_gate.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <list>
#include <mutex>

#include "addon_data.h"

namespace moe_binding {

// One per JS thread (Node environment) that has made an async call: its parked workers and the thread-safe function
// that wakes it when the gate hands it a slot. Freed by that function's finalizer.
struct GateQueue {
  napi_threadsafe_function wake = nullptr;
  std::list<GatedWorker*> parked;  // touched on its own JS thread only
  int granted = 0;                 // slots handed over, not yet taken up on its thread (under Gate::m)
  bool closed = false;             // its environment is being torn down (under Gate::m)
};

namespace {

struct Gate {
  std::mutex m;
  int limit = 0;  // 0 until the first call reads UV_THREADPOOL_SIZE
  int running = 0;
  std::list<GateQueue*> waiting;  // one entry per parked worker, oldest first
  std::atomic<int> executing{0};
  std::atomic<int> peakExecuting{0};
};

Gate& gate() {
  static Gate* g = new Gate();
  return *g;
}

// Half of libuv's threads, read as libuv reads UV_THREADPOOL_SIZE (atoi; 0 means 1; at most 1024; unset means 4).
int limitFromEnvironment() {
  int threads = 4;
  if (const char* v = std::getenv("UV_THREADPOOL_SIZE")) {
    const unsigned n = unsigned(std::atoi(v));
    threads = n == 0 ? 1 : int(std::min(n, 1024u));
  }
  return std::max(1, threads / 2);
}

// One slot has become free (g.m held): it goes to the oldest parked worker whose thread can still take it, else
// back to the pool.
void handOff(Gate& g) {
  while (!g.waiting.empty()) {
    GateQueue* q = g.waiting.front();
    g.waiting.pop_front();
    if (napi_call_threadsafe_function(q->wake, nullptr, napi_tsfn_nonblocking) == napi_ok) {
      q->granted++;
      return;
    }
  }
  g.running--;
}

// On the parked workers' JS thread: queue as many of them as slots were handed over.
void takeGrantedSlots(napi_env env, napi_value, void* context, void*) {
  if (env == nullptr) return;  // the function is being torn down; the queue may already be gone
  auto* q = static_cast<GateQueue*>(context);
  int granted = 0;
  {
    std::lock_guard<std::mutex> lock(gate().m);
    if (q->closed) return;
    granted = q->granted;
    q->granted = 0;
  }
  for (; granted > 0 && !q->parked.empty(); --granted) {
    GatedWorker* w = q->parked.front();
    q->parked.pop_front();
    try {
      w->QueueWithSlot();
    } catch (...) {
      delete w;  // the environment is closing (its slot went on in QueueWithSlot)
    }
  }
  if (q->parked.empty()) napi_unref_threadsafe_function(env, q->wake);
}

void freeQueue(napi_env, void* data, void*) { delete static_cast<GateQueue*>(data); }

// Environment teardown (runs before Node closes the wake function, whose own hook was added earlier): the thread's
// waiting entries leave the line, slots handed to it go on to others, and its parked work is dropped.
void closeQueue(void* arg) {
  auto* q = static_cast<GateQueue*>(arg);
  Gate& g = gate();
  {
    std::lock_guard<std::mutex> lock(g.m);
    q->closed = true;
    g.waiting.remove(q);
    for (; q->granted > 0; --q->granted) handOff(g);
  }
  for (GatedWorker* w : q->parked) delete w;
  q->parked.clear();
  napi_release_threadsafe_function(q->wake, napi_tsfn_abort);
}

GateQueue& queueOf(Napi::Env env) {
  AddonData& data = addonData(env);
  if (data.gateQueue) return *data.gateQueue;
  auto* q = new GateQueue();
  napi_value name = Napi::String::New(env, "moe.asyncGate");
  if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, q, freeQueue, q, takeGrantedSlots,
                                      &q->wake) != napi_ok) {
    delete q;
    NAPI_THROW(Napi::Error::New(env, "async gate: cannot create its wake-up function"), *data.gateQueue);
  }
  napi_unref_threadsafe_function(env, q->wake);
  napi_add_env_cleanup_hook(env, closeQueue, q);
  data.gateQueue = q;
  return *q;
}

Napi::Value AsyncGateInfo(const Napi::CallbackInfo& info) {
  Gate& g = gate();
  Napi::Object o = Napi::Object::New(info.Env());
  int limit, running, waiting;
  {
    std::lock_guard<std::mutex> lock(g.m);
    if (g.limit == 0) g.limit = limitFromEnvironment();
    limit = g.limit;
    running = g.running;
    waiting = int(g.waiting.size());
  }
  const int executing = g.executing.load();
  o.Set("limit", limit);
  o.Set("running", running);
  o.Set("waiting", waiting);
  o.Set("executing", executing);
  o.Set("peakExecuting", g.peakExecuting.exchange(executing));
  return o;
}

}  // namespace

GatedWorker::~GatedWorker() {
  releaseSlot();  // work cancelled before it ran (environment teardown)
}

void GatedWorker::Submit() {
  Gate& g = gate();
  GateQueue& q = queueOf(Env());  // (created first: the decision below and parking are one step under the lock)
  bool now = false;
  {
    std::lock_guard<std::mutex> lock(g.m);
    if (g.limit == 0) g.limit = limitFromEnvironment();
    now = g.running < g.limit && g.waiting.empty();
    if (now)
      g.running++;
    else
      g.waiting.push_back(&q);
  }
  if (now) return QueueWithSlot();
  q.parked.push_back(this);
  if (q.parked.size() == 1) napi_ref_threadsafe_function(Env(), q.wake);
}

void GatedWorker::QueueWithSlot() {
  holdsSlot_ = true;
  try {
    Queue();
  } catch (...) {
    releaseSlot();
    throw;
  }
}

void GatedWorker::Execute() {
  Gate& g = gate();
  const int now = g.executing.fetch_add(1) + 1;
  int peak = g.peakExecuting.load();
  while (now > peak && !g.peakExecuting.compare_exchange_weak(peak, now)) {
  }
  struct Leave {
    GatedWorker* w;
    ~Leave() {
      gate().executing.fetch_sub(1);
      w->releaseSlot();  // the libuv thread is free once Execute returns: the slot goes on now, not after OnOK
    }
  } leave{this};
  Run();
}

void GatedWorker::releaseSlot() {
  if (!holdsSlot_) return;
  holdsSlot_ = false;
  Gate& g = gate();
  std::lock_guard<std::mutex> lock(g.m);
  handOff(g);
}

void InitAsyncGate(Napi::Env env, Napi::Object exports) {
  exports.Set("asyncGate", Napi::Function::New<AsyncGateInfo>(env, "asyncGate"));
}

}  // namespace moe_binding
