// The C ABI table (include/moe_cuda.h): every entry catches C++ exceptions and turns them into a status and
// a message, so nothing but plain data crosses into the addon.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

#include "common.cuh"
#include "include/moe_cuda.h"
#include "layer.h"

struct MoeCudaLayer {
  moe_cuda::CudaLayer impl;
  explicit MoeCudaLayer(const MoeCudaLayerDesc& d) : impl(d) {}
};

namespace moe_cuda {
double benchCopySeconds(int64_t bytes, int iterations);
}

namespace {

void writeError(char* err, size_t len, const char* msg) {
  if (!err || len == 0) return;
  std::snprintf(err, len, "%s", msg);
}

// A failed call leaves its error as the runtime's "last error" (e.g. cudaErrorInvalidValue from a bad pointer), which
// a later launch check would read as its own: every failure clears it (a sticky error, which poisons the context,
// stays whatever is done here).
template <typename F>
int guarded(char* err, size_t len, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::bad_alloc&) {
    writeError(err, len, "out of host memory");
  } catch (const std::exception& e) {
    writeError(err, len, e.what());
  } catch (...) {
    writeError(err, len, "unknown error in the CUDA plugin");
  }
  (void)cudaGetLastError();
  return 1;
}

// Every call on a layer runs on the layer's device, whichever thread makes it (libuv's threads start on device 0,
// and a caller may have made another device current), and leaves the thread's current device as it found it.
// Never throws: status() says whether the switch worked.
class OnDevice {
 public:
  explicit OnDevice(int device) {
    status_ = cudaGetDevice(&previous_);
    if (status_ != cudaSuccess || previous_ == device) previous_ = -1;
    else if ((status_ = cudaSetDevice(device)) != cudaSuccess) previous_ = -1;
  }
  ~OnDevice() {
    if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }
  OnDevice(const OnDevice&) = delete;
  OnDevice& operator=(const OnDevice&) = delete;
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

// guarded(), on the layer's device.
template <typename F>
int onLayer(MoeCudaLayer* l, char* err, size_t len, F&& body) {
  return guarded(err, len, [&] {
    OnDevice on(l->impl.device());
    moe_cuda::check(on.status(), "selecting the layer's device");
    body();
  });
}

int probe(MoeCudaProbe* out, char* err, size_t len) {
  return guarded(err, len, [&] {
    std::memset(out, 0, sizeof(*out));
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    out->runtimeVersion = runtime;
    out->driverVersion = driver;
    if (driver == 0) throw moe_cuda::CudaError("no NVIDIA driver found (libcuda.so.1 could not be loaded)");
    int count = 0;
    moe_cuda::check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    out->deviceCount = count;
    if (count == 0) throw moe_cuda::CudaError("no CUDA device is visible");
    int device = 0;
    moe_cuda::check(cudaGetDevice(&device), "cudaGetDevice");
    cudaDeviceProp prop;
    moe_cuda::check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    out->device = device;
    out->major = prop.major;
    out->minor = prop.minor;
    out->multiprocessors = prop.multiProcessorCount;
    out->totalMemory = int64_t(prop.totalGlobalMem);
    std::snprintf(out->name, sizeof(out->name), "%.127s", prop.name);
    out->score = prop.major >= 8 ? 10 * prop.major + prop.minor : 0;
    if (out->score == 0)
      throw moe_cuda::CudaError(std::string(prop.name) + " has compute capability " + std::to_string(prop.major) +
                                "." + std::to_string(prop.minor) + "; the CUDA backend needs 8.0 (Ampere) or newer");
  });
}

int layerCreate(const MoeCudaLayerDesc* desc, MoeCudaLayer** out, char* err, size_t len) {
  *out = nullptr;
  return guarded(err, len, [&] { *out = new MoeCudaLayer(*desc); });
}

int layerSetExpert(MoeCudaLayer* l, int32_t e, const float* w1, const float* w3, const float* w2, char* err,
                   size_t len) {
  return onLayer(l, err, len, [&] { l->impl.setExpert(e, w1, w3, w2); });
}

int layerSetShared(MoeCudaLayer* l, const float* w1, const float* w3, const float* w2, int64_t f, const float* gate,
                   char* err, size_t len) {
  return onLayer(l, err, len, [&] { l->impl.setShared(w1, w3, w2, f, gate); });
}

int layerForward(MoeCudaLayer* l, MoeCudaForward* call, char* err, size_t len) {
  return onLayer(l, err, len, [&] { l->impl.forward(*call); });
}

int layerRoute(MoeCudaLayer* l, MoeCudaForward* call, char* err, size_t len) {
  return onLayer(l, err, len, [&] { l->impl.forward(*call, true); });
}

int layerDrain(MoeCudaLayer* l, MoeCudaCounters* out, char* err, size_t len) {
  return onLayer(l, err, len, [&] { l->impl.drain(*out); });
}

int layerInfo(MoeCudaLayer* l, MoeCudaLayerInfo* out) {
  return guarded(nullptr, 0, [&] { l->impl.info(*out); });  // (reads host-side figures only: no device needed)
}

int layerBench(MoeCudaLayer* l, MoeCudaBench* b, char* err, size_t len) {
  return onLayer(l, err, len, [&] { l->impl.bench(*b); });
}

int layerRandomize(MoeCudaLayer* l, uint64_t seed, float std, char* err, size_t len) {
  return onLayer(l, err, len, [&] { l->impl.randomize(seed, std); });
}

void layerDestroy(MoeCudaLayer* l) {
  {
    OnDevice on(l->impl.device());  // (the destructor waits for the layer's stream and frees its memory there)
    delete l;
  }
  (void)cudaGetLastError();  // it must not throw, nor leave an error for the next launch check
}

int benchCopy(int64_t bytes, int32_t iterations, double* seconds, char* err, size_t len) {
  return guarded(err, len, [&] { *seconds = moe_cuda::benchCopySeconds(bytes, iterations); });
}

int deviceAlloc(int64_t bytes, void** ptr, char* err, size_t len) {
  *ptr = nullptr;
  return guarded(err, len, [&] { moe_cuda::check(cudaMalloc(ptr, size_t(bytes)), "cudaMalloc"); });
}

void deviceFree(void* ptr) {
  if (cudaFree(ptr) != cudaSuccess) (void)cudaGetLastError();  // (a bad pointer must not fail the next launch)
}

int deviceCopy(void* dst, const void* src, int64_t bytes, int32_t toDevice, char* err, size_t len) {
  return guarded(err, len, [&] {
    // The layers' streams do not synchronise with the legacy default stream (cudaStreamNonBlocking), so wait for
    // the whole device on both sides: a forwardDevice enqueued before has finished, and the copy has landed before
    // anything enqueued after it.
    moe_cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    moe_cuda::check(cudaMemcpy(dst, src, size_t(bytes), toDevice ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost),
                    "cudaMemcpy");
    moe_cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  });
}

int layerCaptureForward(MoeCudaLayer* layer, MoeCudaForward* call, int32_t replays, char* err, size_t len) {
  return onLayer(layer, err, len, [&] { layer->impl.captureForward(*call, replays); });
}

const MoeCudaApi kApi = {MOE_CUDA_API_VERSION, probe,     layerCreate,    layerSetExpert, layerSetShared,
                         layerForward,         layerRoute, layerDrain,     layerInfo,      layerBench,
                         layerRandomize,       layerDestroy, benchCopy,      deviceAlloc,    deviceFree,
                         deviceCopy,           layerCaptureForward};

}  // namespace

extern "C" __attribute__((visibility("default"))) const MoeCudaApi* moe_cuda_api(uint32_t version) {
  return version == MOE_CUDA_API_VERSION ? &kApi : nullptr;
}
