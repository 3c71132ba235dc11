// The CUDA MoE layer behind the C ABI: weights uploaded once (bf16, GEMM layout), a workspace that grows to the
// largest batch seen, and one forward = gate GEMM -> complexity -> gating -> align -> experts -> combine, all
// enqueued on one stream with no host synchronisation until host-mode outputs are copied back.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "include/moe_cuda.h"
#include "kernels.h"

namespace moe_cuda {

// Owns one cudaMalloc'ed block; grows (never shrinks) on ensure().
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }
  void ensure(size_t bytes);
  void release();
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

struct ExpertWeights {
  DeviceBuffer gateUp, down;  // [E][2 fPad][dPad], [E][dPad][fPad] bf16
  int f = 0, fPad = 0;
};

// Per-call buffers, sized for the largest batch seen (see CudaLayer::ensureWorkspace).
struct Workspace {
  DeviceBuffer x, xb, logits, raw, complexity, indices, weights, k, counts, badToken, sliceCounts, probsNorm, lse2,
      stats;
  DeviceBuffer offsets, tilesBefore, active, numActive, rowToken, rowWeight, slotRow, hidden, out, y;
  DeviceBuffer calib, knots, probs;
  DeviceBuffer sharedScale, sharedHidden, sharedOut, sharedOffsets, sharedTiles, sharedActive, sharedNumActive;
};

class CudaLayer {
 public:
  explicit CudaLayer(const MoeCudaLayerDesc& desc);
  ~CudaLayer();
  void setExpert(int e, const float* w1, const float* w3, const float* w2);
  void setShared(const float* w1, const float* w3, const float* w2, int64_t f, const float* gate);
  // routeOnly: gating and stats only, host mode (a router, or a layer asked for its routing).
  void forward(MoeCudaForward& call, bool routeOnly = false);
  void drain(MoeCudaCounters& out);
  // Never waits for a forward (a drain calls it while one may run): reads the byte counts the calls that grow
  // the buffers keep.
  void info(MoeCudaLayerInfo& out) const;
  int device() const { return device_; }  // where the layer lives: the device current when it was created
  void bench(MoeCudaBench& b);
  void randomize(uint64_t seed, float std);  // bench.cu
  // Tests: a device-pointer call (after one uncaptured warm-up) captured into a CUDA graph on a stream of its own,
  // replayed `replays` times and waited for.
  void captureForward(MoeCudaForward call, int replays);

 private:
  void ensureWorkspace(int64_t T);
  void growWorkspace(int64_t T);  // ensureWorkspace's body
  void uploadShared(const float* w1, const float* w3, const float* w2, int64_t f, const float* gate);  // setShared's
  void init(const MoeCudaLayerDesc& desc);  // the constructor's body
  void releaseHandles();                    // stream, events and pinned memory (the buffers free themselves)
  void checkComplete() const;
  void noteBytes();  // after the weights or the workspace grew (or failed to): the figures info() reads
  void packExpert(int e, const float* staged);  // staged: w1, w3, w2 back to back on the device
  void poison(int64_t T, cudaStream_t s);       // MOE_CUDA_POISON=1: NaN-fill outputs before a forward
  // The stages, enqueued on s. x is a device pointer.
  // fromLogits: the logits buffer already holds them (x is then only converted to bf16, unless !convert).
  void enqueueRoute(const float* x, int64_t T, bool fromLogits, const MoeCudaForward& call, bool stats,
                    cudaStream_t s, bool convert = true);
  void enqueueAlign(int64_t T, bool counters, cudaStream_t s);
  void enqueueStats(int64_t T, cudaStream_t s);  // after align: it reads the counts
  GemmTile tileFor(int64_t rows, int experts) const;
  void enqueueExperts(const float* x, int64_t T, cudaStream_t s);
  void enqueueCombine(int64_t T, float* y, cudaStream_t s);
  void runExperts(const ExpertWeights& w, const int32_t* rowToken, const int32_t* offsets,
                  const int32_t* tilesBefore, const int32_t* active, const int32_t* numActive, int E, int64_t rows,
                  int slots, const float* scale, bf16* hidden, float* out, int64_t T, cudaStream_t s);

  MoeCudaRouting cfg_;
  int E_, d_, dPad_, maxK_, staticK_, device_, multiprocessors_ = 132;
  size_t sharedOptin_ = 0;  // shared memory a block of this layer's gating may use (init)
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;  // the last forward's end: the workspace is free after it
  cudaEvent_t stage_[5] = {};
  DeviceBuffer gate_, bias_, logitBias_, sharedGate_, staging_;
  ExpertWeights experts_, shared_;
  std::vector<bool> loaded_;
  bool hasShared_ = false;
  bool poison_ = false;
  std::vector<double> uploadedCalibration_;  // calibration state (+ knots) last copied to the device
  GatingOut gating_{};                      // set by enqueueRoute for enqueueAlign (fused for few tokens)
  const float* gatingComplexity_ = nullptr;
  bool hopper_ = false;  // hopperGemmAvailable() on this layer's device: the large tile is wgmma
  int forcedTile_ = -1;  // tests and benchmarks: a GemmTile for every expert pass (MOE_CUDA_TILE)
  bool splitRoute_ = false;  // benchmarks: gating and align as two launches at every T (no fused route + align)
  int gemvMaxTokens_ = kGemvDefaultTokens;  // forwards of at most this many tokens take the GEMV kernels
  std::unique_ptr<Workspace> ws_;
  int64_t capacity_ = 0;
  std::atomic<int64_t> weightBytes_{0}, workspaceBytes_{0};
  std::mutex mutex_;  // one forward (and its workspace) at a time

  // Device counters for device-mode forwards, and their asynchronous snapshot.
  DeviceBuffer counters_;
  unsigned long long* snapshot_ = nullptr;  // pinned [4 + E]
  std::vector<unsigned long long> drained_;
  cudaEvent_t snapshotReady_ = nullptr;
  bool snapshotPending_ = false;
  std::mutex drainMutex_;
};

}  // namespace moe_cuda
