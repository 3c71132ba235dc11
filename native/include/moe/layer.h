// An MoE layer on the CPU: router, prepacked expert weights, optional shared expert, and the per-layer arena.
//   forward: route -> dispatch (counting sort into expert-contiguous rows, gather) -> gate/up GEMM with fused
//   SwiGLU -> down GEMM scaled by the routing weight -> combine (sum of a token's rows in slot order).
#pragma once
#include <cstdint>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "moe/aligned.h"
#include "moe/gemm.h"
#include "moe/router.h"
#include "moe/types.h"

namespace moe {

// One expert's SwiGLU FFN, packed as panels of the layer's dtype: gate and up interleaved (packGateUp*), down as
// plain panels. Biases (gpt-oss), where the expert has them: gate/up as the epilogue reads them (GluEpilogue:
// [panels][32]), down [d].
struct PackedExpert {
  int64_t intermediate = 0;  // f
  AlignedBuffer<uint8_t> gateUp, down;
  std::vector<float> gateUpBias, downBias;
  size_t bytes() const { return gateUp.bytes() + down.bytes() + (gateUpBias.size() + downBias.size()) * sizeof(float); }
};

// How the routed experts are applied. The activation: SwiGLU, or gpt-oss's clamped one (GluEpilogue), whose alpha
// and limit are set here. `weightInputs` (Llama 4): the routing weight scales each routed expert's input row instead
// of its output, FFN(w·x) in place of w·FFN(x); a shared expert takes x as it is.
struct ExpertActivation {
  bool clamped = false;
  float alpha = 0, limit = 0;
  bool weightInputs = false;
};

// An expert's biases, each may be null: gate and up [f] (added before the activation), down [d] (added to the
// expert's output before the routing weight scales it).
struct ExpertBias {
  const float* gate = nullptr;
  const float* up = nullptr;
  const float* down = nullptr;
};

// A weight matrix [rows, K] already in E4M3: its bytes, row-major, and one scale per row and 128-column block
// ([rows, ceil(K/128)]): W[r][k] = e4m3(q[r][k]) * scales[r][k/128].
struct Fp8Matrix {
  const uint8_t* q;
  const float* scales;
};

// Everything a layer packs at load. Layers made by `Layer(const Layer&, ...)` share one of these.
struct LayerWeights {
  std::vector<PackedExpert> experts;
  std::unique_ptr<PackedExpert> shared;
  std::vector<float> sharedGate;
  int64_t hiddenWidth = 0;  // SwiGLU row width: the widest f, rounded up to 32 (hiddenRowStride adds the pad)
};

// Stage timings are steady-clock nanoseconds (CLOCK_MONOTONIC, the clock of process.hrtime).
struct LayerStats {
  double flopsComputed = 0;  // expert FLOPs actually run (routed + shared)
  double flopsStatic = 0;    // the same tokens under the model's static top-k
  int64_t startNs = 0, gatingEndNs = 0, dispatchEndNs = 0, expertEndNs = 0, combineEndNs = 0;
};

// A unit of expert work: the rows [row0, row0 + rows) of the dispatched buffers that go to one expert.
struct ExpertJob {
  int32_t expert;  // numExperts means the shared expert
  int64_t row0, rows;
};

// Row strides of the layer's per-row scratch (gathered input, SwiGLU activations, expert outputs), in elements
// (floats, or bf16 pairs): one 64-byte line more than a row needs. Rows of a power-of-two size (2048 floats,
// 1024 pairs) would all start in the same few L1 sets, where the 16-32 rows of a kernel's A operand and the
// epilogues' row stores evict each other (bench/RESULTS.md, step 20).
constexpr int64_t kRowPad = 16;
// `dtype`: the activations' (activationType of the weights').
inline int64_t inputRowStride(DType dtype, int64_t d) { return (dtype == DType::BF16 ? packedKPairs(d) : d) + kRowPad; }
inline int64_t hiddenRowStride(DType dtype, int64_t width) {
  return (dtype == DType::BF16 ? width / 2 : width) + kRowPad;
}
inline int64_t outputRowStride(int64_t d) { return d + kRowPad; }

// Reused buffers; they grow to the largest batch seen and are never shrunk.
struct LayerArena {
  AlignedBuffer<float> inputF32, hiddenF32, output;  // gathered x, SwiGLU activations, weighted expert outputs
  AlignedBuffer<uint32_t> inputBF16, hiddenBF16;
  AlignedBuffer<int32_t> rowToken, slotRow;
  AlignedBuffer<float> rowWeight, sharedScale;
  AlignedBuffer<float> accumulators;  // per worker: rows x 32, or x 64 for a streamed bf16 gate/up pass
  AlignedBuffer<uint32_t> tileScratch;  // per worker, fp8 on AMX or AVX-512: kFp8TileScratchWords (expert_gemm.h)
  std::vector<int64_t> cursor;
  std::vector<ExpertJob> jobs;
  struct WorkItem {
    int32_t job;
    int32_t panelBegin, panelEnd;
  };
  std::vector<WorkItem> items;
};

class Layer {
 public:
  // `threads` caps the workers of the expert stages (the router's pool size caps it again).
  Layer(std::shared_ptr<Router> router, DType dtype, int32_t staticK, int threads,
        ExpertActivation activation = ExpertActivation{});
  // A layer over the packed weights of `other` (shared, not copied) with another router of the same E and d.
  Layer(const Layer& other, std::shared_ptr<Router> router, int32_t staticK, int threads);

  // w1 (gate_proj) and w3 (up_proj) are [f, d], w2 (down_proj) is [d, f], all fp32 row-major. Throws
  // std::invalid_argument on a bias that is not finite.
  void setExpert(int32_t expert, const float* w1, const float* w3, const float* w2, int64_t f,
                 const ExpertBias& bias = ExpertBias{});
  // The always-on expert; `gate` ([d], may be null) scales it by sigmoid(x . gate) per token (Qwen2-MoE).
  void setSharedExpert(const float* w1, const float* w3, const float* w2, int64_t f, const float* gate,
                       const ExpertBias& bias = ExpertBias{});
  // fp8 layers: the same from weights already in E4M3 (a checkpoint's bytes and scales, packed as they are). Throws
  // std::invalid_argument on a NaN byte or a scale that is not finite (or overflows once times 448).
  void setExpertFP8(int32_t expert, Fp8Matrix w1, Fp8Matrix w3, Fp8Matrix w2, int64_t f,
                    const ExpertBias& bias = ExpertBias{});
  void setSharedExpertFP8(Fp8Matrix w1, Fp8Matrix w3, Fp8Matrix w2, int64_t f, const float* gate,
                          const ExpertBias& bias = ExpertBias{});
  bool complete(std::string& missing) const;

  // x [T, d] -> y [T, d]. `logits` (optional, [T, E]) replaces the gate GEMM; `complexity` feeds dynamic k.
  std::string forward(const float* x, int64_t T, const float* logits, const float* complexity, float* y,
                      RoutingOutput& routing, RoutingStats& routingStats, LayerStats& stats,
                      int64_t complexityNs = 0);
  telemetry::Telemetry& telemetry() { return telemetry_; }
  size_t arenaBytes() const;

  Router& router() { return *router_; }
  DType dtype() const { return dtype_; }
  const ExpertActivation& activation() const { return activation_; }
  size_t weightBytes() const;

 private:
  void pack(PackedExpert& dst, const float* w1, const float* w3, const float* w2, int64_t f);
  void packFP8(PackedExpert& dst, Fp8Matrix w1, Fp8Matrix w3, Fp8Matrix w2, int64_t f);
  // The checks and bookkeeping around packing an expert (e: -1 for the shared one), under the layer's lock.
  template <typename Pack>
  void setPacked(int32_t expert, int64_t f, const float* gate, const ExpertBias& bias, Pack&& pack);
  void dispatch(const float* x, int64_t T, const RoutingOutput& routing);
  void runExperts();
  void combine(int64_t T, int32_t maxK, const int32_t* k, float* y);

  std::shared_ptr<Router> router_;
  DType dtype_;
  ExpertActivation activation_;
  int32_t staticK_;
  int threads_;
  int64_t hidden_;
  std::shared_ptr<LayerWeights> weights_;
  std::mutex mutex_;
  LayerArena arena_;
  telemetry::Telemetry telemetry_;
  std::atomic<size_t> arenaBytes_{0};  // published after each forward, so a drain never waits for one
};

}  // namespace moe
