// Device-side benchmarks behind the C ABI: the copy-bandwidth anchor and the layer's stage timings on
// device-resident random data (events around each enqueue; medians). Used by bench/gpu only.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "common.cuh"
#include "layer.h"

namespace moe_cuda {

namespace {

// Counter-based normal samples (Box-Muller over a 64-bit hash): reproducible from the seed, never all zero.
__device__ uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__global__ void fillNormalKernel(float* out, int64_t n, uint64_t seed, float sd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t h = mix(seed * 0x9e3779b97f4a7c15ull + uint64_t(i));
    const float u1 = (float(h >> 40) + 0.5f) / 16777216.0f, u2 = float((h >> 16) & 0xffffff) / 16777216.0f;
    out[i] = sd * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
  }
}

class Timer {
 public:
  explicit Timer(cudaStream_t s) : s_(s) {
    check(cudaEventCreate(&a_), "event");
    check(cudaEventCreate(&b_), "event");
  }
  ~Timer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  template <typename F>
  double medianMs(int iterations, F&& enqueue) {
    std::vector<float> ms;
    for (int i = 0; i < iterations; ++i) {
      check(cudaEventRecord(a_, s_), "event");
      enqueue();
      check(cudaEventRecord(b_, s_), "event");
      check(cudaEventSynchronize(b_), "benchmark");
      float t = 0;
      check(cudaEventElapsedTime(&t, a_, b_), "event time");
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }
  // Mean time of `iterations` enqueues issued back to back between two events: what each costs inside a stream of
  // work (launch overheads overlap the previous one's run), where medianMs times one alone from an idle stream.
  template <typename F>
  double backToBackMs(int iterations, F&& enqueue) {
    check(cudaEventRecord(a_, s_), "event");
    for (int i = 0; i < iterations; ++i) enqueue();
    check(cudaEventRecord(b_, s_), "event");
    check(cudaEventSynchronize(b_), "benchmark");
    float t = 0;
    check(cudaEventElapsedTime(&t, a_, b_), "event time");
    return double(t) / iterations;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t a_, b_;
};

__global__ void emptyKernel() {}

}  // namespace

void CudaLayer::bench(MoeCudaBench& b) {
  std::lock_guard<std::mutex> lock(mutex_);
  checkComplete();
  const int64_t T = b.tokens;
  const int iterations = std::max(3, b.iterations);
  ensureWorkspace(T);
  check(cudaStreamWaitEvent(stream_, done_, 0), "ordering");
  DeviceBuffer x, y;
  x.ensure(size_t(T) * d_ * sizeof(float));
  y.ensure(size_t(T) * d_ * sizeof(float));
  fillNormalKernel<<<1024, 256, 0, stream_>>>(x.as<float>(), T * d_, 12345, 1.0f);
  checkLaunch("fillNormalKernel");
  MoeCudaForward call{};
  call.tokens = T;
  call.complexityMode = cfg_.selection == 3 ? MOE_CUDA_COMPLEXITY_ROUTER_ENTROPY : MOE_CUDA_COMPLEXITY_NONE;
  call.calibration = MOE_CUDA_CALIBRATION_ZSCORE;
  check(cudaMemsetAsync(ws_->calib.as<void>(), 0, 3 * sizeof(double), stream_), "calibration reset");
  uploadedCalibration_.clear();  // the device's copy changes under this bench
  auto whole = [&] {
    enqueueRoute(x.as<float>(), T, false, call, false, stream_);
    enqueueAlign(T, false, stream_);
    enqueueExperts(x.as<float>(), T, stream_);
    enqueueCombine(T, y.as<float>(), stream_);
  };
  Timer timer(stream_);
  for (int i = 0; i < 3; ++i) whole();  // warm-up (and routing state for the stage timings below)
  check(cudaStreamSynchronize(stream_), "warm-up");
  // Median time of what `enqueue` enqueues, captured once in a CUDA graph and replayed (no launch gaps); with
  // backToBack, the mean over that many replays issued together instead.
  auto graphMs = [&](auto&& enqueue, int backToBack = 0) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "graph capture");
    enqueue();
    check(cudaStreamEndCapture(stream_, &graph), "graph capture");
    check(cudaGraphInstantiate(&exec, graph, 0), "graph instantiate");
    check(cudaGraphLaunch(exec, stream_), "graph launch");
    auto replay = [&] { check(cudaGraphLaunch(exec, stream_), "graph launch"); };
    const double ms = backToBack > 0 ? timer.backToBackMs(backToBack, replay) : timer.medianMs(iterations, replay);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return ms;
  };
  b.forwardMs = b.graph ? graphMs(whole) : timer.medianMs(iterations, whole);
  // Route + align from the logits left by the last forward, then from x (gate GEMM included).
  b.routeAlignFromXMs = graphMs([&] {
    enqueueRoute(x.as<float>(), T, false, call, false, stream_);
    enqueueAlign(T, false, stream_);
  });
  auto routeAlign = [&] {
    enqueueRoute(x.as<float>(), T, true, call, false, stream_, false);
    enqueueAlign(T, false, stream_);
  };
  b.routeAlignMs = graphMs(routeAlign);
  // The same in a stream of back-to-back replays (as inside a forward, where nothing waits for it to start).
  b.routeAlignStreamMs = graphMs(routeAlign, 200);
  // The forced tile and the split route below are put back however this returns (a failed capture throws).
  struct Restore {
    CudaLayer& layer;
    const int tile;
    ~Restore() {
      layer.forcedTile_ = tile;
      layer.splitRoute_ = false;
    }
  } restore{*this, forcedTile_};
  // The expert stage alone, replayed from a graph (the decode kernels are short: launch gaps would dominate),
  // with the layer's choice (the decode GEMV kernels up to gemvMaxTokens_) and each GEMM tile forced.
  const int ownTile = forcedTile_;
  auto expertMs = [&](int tile) {
    forcedTile_ = tile;
    enqueueRoute(x.as<float>(), T, false, call, false, stream_);
    enqueueAlign(T, false, stream_);
    const double ms = graphMs([&] { enqueueExperts(x.as<float>(), T, stream_); });
    forcedTile_ = ownTile;
    return ms;
  };
  for (int t = 0; t < kGemmTiles; ++t) b.expertMsByTile[t] = expertMs(t);
  b.expertMs = expertMs(ownTile);
  // Where route + align goes: the gating kernel alone, then the align kernel alone on the choices it left (for
  // T <= 16 the layer fuses the two into one launch, timed above).
  splitRoute_ = true;
  b.gatingMs = graphMs([&] { enqueueRoute(x.as<float>(), T, true, call, false, stream_, false); });
  b.alignMs = graphMs([&] { enqueueAlign(T, false, stream_); });
  splitRoute_ = false;
  auto empty = [&] {
    emptyKernel<<<1, 32, 0, stream_>>>();
    checkLaunch("emptyKernel");
  };
  b.emptyGraphMs = graphMs(empty);
  b.emptyGraphStreamMs = graphMs(empty, 200);
  int32_t active = 0;
  std::vector<int32_t> offsets(size_t(E_) + 1);
  check(cudaMemcpy(&active, ws_->numActive.as<void>(), sizeof(int32_t), cudaMemcpyDeviceToHost), "download");
  check(cudaMemcpy(offsets.data(), ws_->offsets.as<void>(), offsets.size() * 4, cudaMemcpyDeviceToHost), "download");
  const double rows = offsets[size_t(E_)];
  b.expertFlops = 6.0 * d_ * experts_.f * rows + (hasShared_ ? 6.0 * d_ * shared_.f * T : 0.0);
  b.expertBytes = 3.0 * 2.0 * d_ * experts_.f * active + (hasShared_ ? 6.0 * d_ * shared_.f : 0.0);
  check(cudaEventRecord(done_, stream_), "event");
  check(cudaStreamSynchronize(stream_), "benchmark");
}

void CudaLayer::randomize(uint64_t seed, float std) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (experts_.f == 0) throw CudaError("randomize: this CUDA layer was created as a router (no experts)");
  const size_t n = size_t(experts_.f) * d_;
  staging_.ensure(3 * n * sizeof(float));
  for (int e = 0; e < E_; ++e) {
    fillNormalKernel<<<2048, 256, 0, stream_>>>(staging_.as<float>(), int64_t(3 * n), seed + uint64_t(e), std);
    checkLaunch("fillNormalKernel");
    packExpert(e, staging_.as<float>());
    loaded_[size_t(e)] = true;
  }
  check(cudaStreamSynchronize(stream_), "randomize");
  staging_.release();
}

double benchCopySeconds(int64_t bytes, int iterations) {
  DeviceBuffer a, b;
  a.ensure(size_t(bytes));
  b.ensure(size_t(bytes));
  cudaStream_t s;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  fillNormalKernel<<<1024, 256, 0, s>>>(a.as<float>(), bytes / 4, 7, 1.0f);
  checkLaunch("fillNormalKernel");
  double ms;
  {
    Timer timer(s);
    auto copy = [&] {
      check(cudaMemcpyAsync(b.as<void>(), a.as<void>(), size_t(bytes), cudaMemcpyDeviceToDevice, s), "copy");
    };
    copy();
    ms = timer.medianMs(std::max(3, iterations), copy);
  }
  cudaStreamDestroy(s);
  return ms / 1e3;
}

}  // namespace moe_cuda
