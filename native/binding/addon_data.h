// Per-addon-instance state (safe under worker_threads: no mutable statics but the async gate's): the shared compute pool and the
// constructors of the wrapped classes, so that one wrap can check another by type tag.
#pragma once
#include <napi.h>

#include <memory>
#include <string>

#include "moe/thread_pool.h"

namespace moe_binding {

struct GateQueue;  // async_gate.cc

struct AddonData {
  std::shared_ptr<moe::ThreadPool> pool;
  Napi::FunctionReference routerConstructor;
  Napi::FunctionReference layerConstructor;
  // The metrics text of the latest scrape (exposition_wrap.cc): its capacity is kept, so a scrape allocates none.
  std::string expositionText;
  // This thread's parked async calls (async_gate.cc), created at its first async call; not owned.
  GateQueue* gateQueue = nullptr;

  // The shared pool when it is big enough for `threads`, else a pool of that size for one owner.
  std::shared_ptr<moe::ThreadPool> poolFor(int threads) {
    if (threads <= pool->size()) return pool;
    return std::make_shared<moe::ThreadPool>(threads);
  }
};

inline AddonData& addonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

// Type tags: unwrapping checks them so a foreign object can never be reinterpreted.
constexpr napi_type_tag kRouterTag = {0x6d6f65726f757465ULL, 0x72000000000000a1ULL};
constexpr napi_type_tag kLayerTag = {0x6d6f656c61796572ULL, 0x00000000000000a2ULL};

}  // namespace moe_binding
