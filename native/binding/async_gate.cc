// The process-wide async-call gate (see async_gate.h). Its state is the one mutable static of the addon, on
// purpose: the bound is the process's, as libuv's pool is. It is never destroyed (a libuv thread may still release
// a slot while the process exits). Lists, not deques: a deque's map allocation would ask for GLIBCXX_3.4.29
// (std::__throw_bad_array_new_length), past the prebuild's floor (test/package.test.ts).
#include "async_gate.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>

#include "addon_data.h"

namespace moe_binding {

namespace {

struct Gate {
  std::mutex m;
  int limit = 0;    // set by the first InitAsyncGate
  int running = 0;  // slots held
  int waiting = 0;  // parked calls, every thread
  std::list<GateQueue*> queues;  // threads with parked calls
  std::atomic<int> executing{0};
  std::atomic<int> peakExecuting{0};
  std::atomic<int64_t> started{0};  // calls whose work began, since the addon loaded
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

void wakeWaitingThreads(Gate& g);

// False once Node is tearing this thread's environment down (a terminated worker): a property read, which may run
// JS, is then refused with napi_pending_exception while no exception is pending. Its waiting calls must not start.
bool canRunJs(napi_env env) {
  napi_value object, key, value;
  if (napi_create_object(env, &object) != napi_ok || napi_create_string_utf8(env, "x", 1, &key) != napi_ok)
    return false;
  if (napi_get_property(env, object, key, &value) == napi_ok) return true;
  bool pending = false;
  return napi_is_exception_pending(env, &pending) == napi_ok && pending;  // (a real exception: still alive)
}

}  // namespace

// One per JS thread (Node environment) that has made an async call: its parked calls and the thread-safe function
// that wakes it when a slot frees. Freed by that function's finalizer.
struct GateQueue {
  napi_threadsafe_function wake = nullptr;
  std::list<GatedWorker*> parked;  // oldest first (under Gate::m)
  bool listed = false;             // in Gate::queues (under Gate::m)
  bool woken = false;              // a wake-up is on its way (under Gate::m)
  bool closed = false;             // its environment is being torn down (under Gate::m)

  // On its own JS thread, after a wake-up: its oldest parked calls take the free slots.
  static void takeFreeSlots(napi_env env, napi_value, void* context, void*) {
    if (env == nullptr) return;  // the function is being torn down; the queue may already be gone
    auto* q = static_cast<GateQueue*>(context);
    Gate& g = gate();
    if (!canRunJs(env)) {  // stopping: its calls wait for closeAtTeardown, which drops them
      std::lock_guard<std::mutex> lock(g.m);
      q->woken = false;
      return;
    }
    std::list<GatedWorker*> now;
    bool empty = false;
    {
      std::lock_guard<std::mutex> lock(g.m);
      q->woken = false;
      if (q->closed) return;
      while (g.running < g.limit && !q->parked.empty()) {
        g.running++;
        g.waiting--;
        now.splice(now.end(), q->parked, q->parked.begin());
      }
      empty = q->parked.empty();
      if (empty && q->listed) {
        g.queues.remove(q);
        q->listed = false;
      }
    }
    for (GatedWorker* w : now) {
      try {
        w->queueWithSlot();
      } catch (...) {
        delete w;  // the environment is closing (its slot was released in queueWithSlot)
      }
    }
    if (empty) napi_unref_threadsafe_function(env, q->wake);
  }

  static void finalize(napi_env, void* data, void*) { delete static_cast<GateQueue*>(data); }

  // Environment teardown (runs before Node closes the wake function, whose own hook was added earlier): the thread
  // leaves the line and its parked calls are dropped. (Before the hooks, Node turns a stopping thread's event loop
  // until its running calls end; a wake-up that comes in then starts nothing: canRunJs.)
  static void closeAtTeardown(void* arg) {
    auto* q = static_cast<GateQueue*>(arg);
    Gate& g = gate();
    std::list<GatedWorker*> dropped;
    {
      std::lock_guard<std::mutex> lock(g.m);
      q->closed = true;
      if (q->listed) g.queues.remove(q);
      q->listed = false;
      g.waiting -= int(q->parked.size());
      dropped.swap(q->parked);
    }
    for (GatedWorker* w : dropped) delete w;
    napi_release_threadsafe_function(q->wake, napi_tsfn_abort);
  }

  static GateQueue& of(Napi::Env env) {
    AddonData& data = addonData(env);
    if (data.gateQueue) return *data.gateQueue;
    auto* q = new GateQueue();
    napi_value name = Napi::String::New(env, "moe.asyncGate");
    if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, q, finalize, q, takeFreeSlots, &q->wake) !=
        napi_ok) {
      delete q;
      throw Napi::Error::New(env, "async gate: cannot create its wake-up function");
    }
    napi_unref_threadsafe_function(env, q->wake);
    napi_add_env_cleanup_hook(env, closeAtTeardown, q);  // (after the function: cleanup hooks run last-added first)
    data.gateQueue = q;
    return *q;
  }
};

namespace {

// A slot has been freed (g.m held): every thread with parked calls is woken once; the first to run takes it.
void wakeWaitingThreads(Gate& g) {
  for (GateQueue* q : g.queues) {
    if (q->woken) continue;
    if (napi_call_threadsafe_function(q->wake, nullptr, napi_tsfn_nonblocking) == napi_ok) q->woken = true;
  }
}

Napi::Value AsyncGateInfo(const Napi::CallbackInfo& info) {
  Gate& g = gate();
  Napi::Object o = Napi::Object::New(info.Env());
  int limit, running, waiting;
  {
    std::lock_guard<std::mutex> lock(g.m);
    limit = g.limit;
    running = g.running;
    waiting = g.waiting;
  }
  const int executing = g.executing.load();
  o.Set("limit", limit);
  o.Set("running", running);
  o.Set("waiting", waiting);
  o.Set("executing", executing);
  o.Set("peakExecuting", g.peakExecuting.exchange(executing));
  o.Set("started", double(g.started.load()));
  return o;
}

}  // namespace

GatedWorker::~GatedWorker() {
  releaseSlot();  // work cancelled before it ran (environment teardown)
}

void GatedWorker::Submit(GatedWorker* worker) {
  try {
    Gate& g = gate();
    GateQueue& q = GateQueue::of(worker->Env());
    bool now = false;
    bool first = false;
    {
      std::lock_guard<std::mutex> lock(g.m);
      // A free slot is taken at once only when no call waits; otherwise this call waits behind them, and when a slot
      // is free this thread is woken to compete for it too (as a thread that turns its event loop, never one that
      // other threads must wait for).
      now = g.running < g.limit && g.waiting == 0;
      if (now) {
        g.running++;
      } else {
        g.waiting++;
        q.parked.push_back(worker);
        first = !q.listed;
        if (first) {
          g.queues.push_back(&q);
          q.listed = true;
        }
        if (g.running < g.limit && !q.woken &&
            napi_call_threadsafe_function(q.wake, nullptr, napi_tsfn_nonblocking) == napi_ok)
          q.woken = true;
      }
    }
    if (now) return worker->queueWithSlot();
    if (first) napi_ref_threadsafe_function(worker->Env(), q.wake);
  } catch (...) {
    delete worker;  // neither queued nor parked
    throw;
  }
}

void GatedWorker::queueWithSlot() {
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
  g.started.fetch_add(1);
  int peak = g.peakExecuting.load();
  while (now > peak && !g.peakExecuting.compare_exchange_weak(peak, now)) {
  }
  struct Leave {
    GatedWorker* w;
    ~Leave() {
      gate().executing.fetch_sub(1);
      w->releaseSlot();  // the libuv thread is free once Execute returns: the slot goes now, not after OnOK
    }
  } leave{this};
  Run();
}

void GatedWorker::releaseSlot() {
  if (!holdsSlot_) return;
  holdsSlot_ = false;
  Gate& g = gate();
  std::lock_guard<std::mutex> lock(g.m);
  g.running--;
  wakeWaitingThreads(g);
}

void InitAsyncGate(Napi::Env env, Napi::Object exports) {
  {
    Gate& g = gate();
    std::lock_guard<std::mutex> lock(g.m);
    if (g.limit == 0) g.limit = limitFromEnvironment();
  }
  exports.Set("asyncGate", Napi::Function::New<AsyncGateInfo>(env, "asyncGate"));
}

}  // namespace moe_binding
