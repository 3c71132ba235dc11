// A stand-in for the CUDA plugin (cuda/ -> moe_cuda.so) on machines without a GPU: the plugin's C ABI
// (cuda/include/moe_cuda.h) implemented on the host, so that tests can drive the addon's CUDA binding, the
// backend choice and the error paths where no GPU is. It does not compute an MoE layer: token t takes experts
// (t + j) % E with equal weights, y = x, and "device memory" is host memory. Its drain is one drain late, as the
// real plugin's: each drain returns the counts of a snapshot taken at the drain before (a final drain, `wait`, takes
// one first). Unlike the real plugin, it flags non-finite x, not non-finite logits.
// test/cuda-host.test.ts builds it.
//
// Environment, read at every call:
//   MOE_MOCK_CUDA_FAIL   a failure to inject: probe | create | expert:N | shared | forward | drain | silent (a
//                        forward that fails without a message)
//   MOE_MOCK_CUDA_LOG    a file to which every layer's creation and destruction is appended ("create ID", ...)
//   MOE_MOCK_CUDA_DELAY_MS  how long a host-mode forward or route sleeps (async tests)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "moe_cuda.h"

struct MoeCudaLayer {
  int id = 0;
  MoeCudaRouting routing{};
  int64_t f = 0, sharedF = 0;
  int32_t staticK = 0;
  std::vector<bool> loaded;
  std::mutex mutex;  // one call at a time, as the real layer
  std::mutex drainMutex;
  std::atomic<uint64_t> calls{0}, tokens{0}, assignments{0};
  std::vector<std::atomic<uint64_t>> expertTokens;
  // counts as of the last snapshot, and as of the last drain: [calls, tokens, assignments, experts...]
  std::vector<uint64_t> snapshot, drained;
  explicit MoeCudaLayer(int E) : expertTokens(size_t(E)), snapshot(size_t(3 + E), 0), drained(size_t(3 + E), 0) {}
};

namespace {

std::atomic<int> nextId{1};

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool failing(const std::string& what) { return env("MOE_MOCK_CUDA_FAIL") == what; }

int fail(char* err, size_t len, const std::string& msg) {
  if (err && len) std::snprintf(err, len, "%s", msg.c_str());
  return 1;
}

void logEvent(const char* what, int id) {
  const std::string file = env("MOE_MOCK_CUDA_LOG");
  if (file.empty()) return;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (FILE* out = std::fopen(file.c_str(), "a")) {
    std::fprintf(out, "%s %d\n", what, id);
    std::fclose(out);
  }
}

int probe(MoeCudaProbe* out, char* err, size_t len) {
  std::memset(out, 0, sizeof(*out));
  if (failing("probe")) return fail(err, len, "mock: no device answers");
  out->deviceCount = 1;
  out->major = 9;
  out->multiprocessors = 4;
  out->driverVersion = out->runtimeVersion = 13000;
  out->totalMemory = int64_t(1) << 30;
  std::snprintf(out->name, sizeof(out->name), "Mock GPU (host stand-in)");
  out->score = 90;
  return 0;
}

int layerCreate(const MoeCudaLayerDesc* desc, MoeCudaLayer** out, char* err, size_t len) {
  *out = nullptr;
  if (failing("create")) return fail(err, len, "mock: cudaMalloc of 4096 bytes: cudaErrorMemoryAllocation");
  auto* l = new (std::nothrow) MoeCudaLayer(desc->routing.numExperts);
  if (!l) return fail(err, len, "out of host memory");
  l->id = nextId++;
  l->routing = desc->routing;
  l->f = desc->intermediateSize;
  l->staticK = desc->staticK;
  l->loaded.assign(size_t(desc->routing.numExperts), false);
  logEvent("create", l->id);
  *out = l;
  return 0;
}

int layerSetExpert(MoeCudaLayer* l, int32_t e, const float* w1, const float* w3, const float* w2, char* err,
                   size_t len) {
  std::lock_guard<std::mutex> lock(l->mutex);
  if (failing("expert:" + std::to_string(e))) return fail(err, len, "mock: expert upload: cudaErrorMemoryAllocation");
  if (!w1 || !w3 || !w2 || e < 0 || e >= l->routing.numExperts) return fail(err, len, "mock: bad setExpert call");
  l->loaded[size_t(e)] = true;
  return 0;
}

int layerSetShared(MoeCudaLayer* l, const float*, const float*, const float*, int64_t f, const float*, char* err,
                   size_t len) {
  std::lock_guard<std::mutex> lock(l->mutex);
  if (failing("shared")) return fail(err, len, "mock: shared expert upload: cudaErrorMemoryAllocation");
  l->sharedF = f;
  return 0;
}

// The fixed pattern: token t takes k experts (t + j) % E, weights 1/k; k is the static k of top-k rules and the
// largest k of the others.
int run(MoeCudaLayer* l, MoeCudaForward* c, bool routeOnly, char* err, size_t len) {
  std::lock_guard<std::mutex> lock(l->mutex);
  if (failing("forward")) return fail(err, len, "mock: an illegal memory access was encountered");
  if (failing("silent")) return 1;
  if (const int ms = std::atoi(env("MOE_MOCK_CUDA_DELAY_MS").c_str()); ms > 0 && !c->onDevice)
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  const MoeCudaRouting& r = l->routing;
  const int64_t T = c->tokens, d = r.hiddenSize, E = r.numExperts, K = r.maxK;
  const int k = r.selection == 0 || r.selection == 4 ? r.k : r.maxK;
  if (!routeOnly)
    for (int e = 0; e < E; ++e)
      if (!l->loaded[size_t(e)]) return fail(err, len, ("mock: weights missing for expert " + std::to_string(e)).c_str());
  c->badToken = -1;
  if (c->x)
    for (int64_t i = 0; i < T * d && c->badToken < 0; ++i)
      if (!std::isfinite(c->x[i])) c->badToken = i / d;
  if (c->badToken >= 0) return 0;
  if (!routeOnly) std::memcpy(c->y, c->x, size_t(T * d) * sizeof(float));
  if (!c->onDevice) {
    if (c->counts) std::fill(c->counts, c->counts + E, 0);
    for (int64_t t = 0; t < T; ++t) {
      for (int j = 0; j < K; ++j) {
        const int e = int((t + j) % E);
        if (c->indices) c->indices[t * K + j] = j < k ? e : -1;
        if (c->weights) c->weights[t * K + j] = j < k ? 1.0f / float(k) : 0.0f;
        if (j < k && c->counts) c->counts[e] += 1;
      }
      if (c->k) c->k[t] = k;
      if (c->complexityOut) c->complexityOut[t] = 0.5f;
    }
    for (float* out : {c->logitsOut, c->probsOut})
      if (out) std::fill(out, out + T * E, out == c->probsOut ? 1.0f / float(E) : 0.0f);
    const double assignments = double(T) * k;
    const double stats[5] = {double(k), 1.0, 0.0, 1.0, assignments};
    std::memcpy(c->routeStats, stats, sizeof(stats));
    const double stageMs[4] = {0.01, 0.01, routeOnly ? 0.0 : 0.05, routeOnly ? 0.0 : 0.01};
    std::memcpy(c->stageMs, stageMs, sizeof(stageMs));
  } else {
    // device mode: the device counters a drain reads
    l->calls += 1;
    l->tokens += uint64_t(T);
    l->assignments += uint64_t(T) * uint64_t(k);
    for (int64_t t = 0; t < T; ++t)
      for (int j = 0; j < k; ++j) l->expertTokens[size_t((t + j) % E)] += 1;
  }
  return 0;
}

int layerForward(MoeCudaLayer* l, MoeCudaForward* c, char* err, size_t len) { return run(l, c, false, err, len); }
int layerRoute(MoeCudaLayer* l, MoeCudaForward* c, char* err, size_t len) { return run(l, c, true, err, len); }

int layerDrain(MoeCudaLayer* l, MoeCudaCounters* out, char* err, size_t len) {
  if (failing("drain")) return fail(err, len, "mock: counter snapshot failed");
  std::lock_guard<std::mutex> lock(l->drainMutex);  // (as the real layer: a drain never waits for a forward)
  auto takeSnapshot = [l] {
    l->snapshot[0] = l->calls;
    l->snapshot[1] = l->tokens;
    l->snapshot[2] = l->assignments;
    for (size_t e = 0; e < l->expertTokens.size(); ++e) l->snapshot[3 + e] = l->expertTokens[e];
  };
  if (out->wait) takeSnapshot();
  uint64_t delta[3];
  for (size_t i = 0; i < l->snapshot.size(); ++i) {
    const uint64_t d = l->snapshot[i] - l->drained[i];
    l->drained[i] = l->snapshot[i];
    if (i < 3) delta[i] = d;
    else out->expertTokens[i - 3] = d;
  }
  out->calls = delta[0];
  out->tokens = delta[1];
  out->assignments = delta[2];
  out->nonFinite = 0;
  takeSnapshot();  // what the next drain returns
  return 0;
}

int layerInfo(MoeCudaLayer* l, MoeCudaLayerInfo* out) {
  std::memset(out, 0, sizeof(*out));
  out->weightBytes = int64_t(l->routing.numExperts) * 3 * l->f * l->routing.hiddenSize * 2;
  std::snprintf(out->path, sizeof(out->path), "mock");
  out->gemvMaxTokens = 4;
  out->forcedTile = -1;
  return 0;
}

int layerBench(MoeCudaLayer*, MoeCudaBench*, char* err, size_t len) { return fail(err, len, "mock: no bench"); }
int layerRandomize(MoeCudaLayer*, uint64_t, float, char* err, size_t len) { return fail(err, len, "mock: no bench"); }

void layerDestroy(MoeCudaLayer* l) {
  logEvent("destroy", l->id);
  delete l;
}

int benchCopy(int64_t, int32_t, double*, char* err, size_t len) { return fail(err, len, "mock: no bench"); }

int deviceAlloc(int64_t bytes, void** ptr, char* err, size_t len) {
  *ptr = std::aligned_alloc(64, size_t((bytes + 63) / 64 * 64));
  return *ptr ? 0 : fail(err, len, "mock: out of memory");
}

void deviceFree(void* ptr) { std::free(ptr); }

int deviceCopy(void* dst, const void* src, int64_t bytes, int32_t, char*, size_t) {
  std::memcpy(dst, src, size_t(bytes));
  return 0;
}

int layerCaptureForward(MoeCudaLayer*, MoeCudaForward*, int32_t, char* err, size_t len) {
  return fail(err, len, "mock: no graphs");
}

const MoeCudaApi kApi = {MOE_CUDA_API_VERSION, probe,      layerCreate,  layerSetExpert, layerSetShared,
                         layerForward,         layerRoute, layerDrain,   layerInfo,      layerBench,
                         layerRandomize,       layerDestroy, benchCopy,  deviceAlloc,    deviceFree,
                         deviceCopy,           layerCaptureForward};

}  // namespace

extern "C" __attribute__((visibility("default"))) const MoeCudaApi* moe_cuda_api(uint32_t version) {
  return version == MOE_CUDA_API_VERSION ? &kApi : nullptr;
}
