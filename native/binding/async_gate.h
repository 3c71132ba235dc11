// The process-wide bound on this addon's async calls. libuv has one thread pool per process (UV_THREADPOOL_SIZE,
// default 4), shared by the main thread and every worker thread, and fs, dns and crypto need it too: at most half of
// its threads run our calls at once, whichever JS thread made them. A call that finds no free slot, or calls waiting
// already, is parked on its own JS thread; each finishing call frees its slot and wakes every thread with parked
// calls, and whichever of them turns its event loop first takes it for its oldest. (Slots are never handed to one thread: a thread blocked in synchronous work,
// e.g. Atomics.wait on another thread's result, would hold them idle, and the other thread could never run.)
#pragma once
#include <napi.h>

namespace moe_binding {

struct GateQueue;

// An AsyncWorker that holds one of the gate's slots while its work runs. Subclasses implement Run(), not Execute().
class GatedWorker : public Napi::AsyncWorker {
 public:
  ~GatedWorker() override;
  // Queues `worker` now when a slot is free, else parks it until one is (the calling thread's event loop stays alive
  // while it has parked calls). On failure it is deleted and the error thrown.
  static void Submit(GatedWorker* worker);

 protected:
  GatedWorker(Napi::Env env, const char* resourceName) : Napi::AsyncWorker(env, resourceName) {}
  virtual void Run() = 0;

 private:
  friend struct GateQueue;
  using Napi::AsyncWorker::Queue;  // (only through the gate)
  void Execute() final;
  void queueWithSlot();
  void releaseSlot();
  bool holdsSlot_ = false;
};

// Reads the bound (half of UV_THREADPOOL_SIZE, as libuv reads it) at the first load, and exports asyncGate():
// { limit, running, waiting, executing, peakExecuting, started } for the process; the peak restarts at each call.
void InitAsyncGate(Napi::Env env, Napi::Object exports);

}  // namespace moe_binding
