// The process-wide bound on this addon's async calls. libuv has one thread pool per process (UV_THREADPOOL_SIZE,
// default 4), shared by the main thread and every worker thread, and fs, dns and crypto need it too: at most half of
// its threads run our calls at once, whichever JS thread made them; the rest wait in arrival order. A call that
// waits is parked on its own JS thread and queued there once a finishing call hands it its slot.
#pragma once
#include <napi.h>

namespace moe_binding {

// An AsyncWorker that holds one of the gate's slots while its work runs. Subclasses implement Run(), not Execute(),
// and start with Submit(), not Queue().
class GatedWorker : public Napi::AsyncWorker {
 public:
  ~GatedWorker() override;
  // Queues the work now when a slot is free, else parks it until a slot is handed to it. The calling JS thread's
  // event loop stays alive while it has parked work.
  void Submit();
  // Queues parked work that has been handed a slot (the gate calls this on the worker's JS thread).
  void QueueWithSlot();

 protected:
  GatedWorker(Napi::Env env, const char* resourceName) : Napi::AsyncWorker(env, resourceName) {}
  virtual void Run() = 0;

 private:
  void Execute() final;
  void releaseSlot();
  bool holdsSlot_ = false;
};

// asyncGate(): { limit, running, waiting, executing, peakExecuting } for this process; the peak restarts from the
// current count at each call.
void InitAsyncGate(Napi::Env env, Napi::Object exports);

}  // namespace moe_binding
