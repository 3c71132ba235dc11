// The layer forward: the stages in order, the split of expert work into (expert, panel range) items for the
// pool, and the natively measured stats. The per-call work allocates nothing once the arena has grown.
#include "moe/layer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "moe/dispatch.h"
#include "moe/expert_gemm.h"

namespace moe {

namespace {
using telemetry::nowNs;
constexpr int kItemsPerWorker = 16;  // equal-cost items per worker (see planItems)
constexpr int kGateUpOutputs = kPanelWidth / 2;
}  // namespace

Layer::Layer(std::shared_ptr<Router> router, DType dtype, int32_t staticK, int threads, ExpertActivation activation)
    : router_(std::move(router)),
      dtype_(dtype),
      activation_(activation),
      staticK_(staticK),
      threads_(std::max(1, std::min(threads, router_->pool().size()))),
      hidden_(router_->config().hiddenSize),
      weights_(std::make_shared<LayerWeights>()),
      telemetry_(router_->config().numExperts, router_->config().maxK) {
  weights_->experts.resize(size_t(router_->config().numExperts));
}

Layer::Layer(const Layer& other, std::shared_ptr<Router> router, int32_t staticK, int threads)
    : Layer(std::move(router), other.dtype_, staticK, threads, other.activation_) {
  weights_ = other.weights_;
}

void Layer::pack(PackedExpert& dst, const float* w1, const float* w3, const float* w2, int64_t f) {
  const int64_t d = hidden_;
  if (dtype_ == DType::FP8) {  // quantized here, one scale per row and 128-column block
    const auto quantized = [](const float* w, int64_t rows, int64_t K, std::vector<uint8_t>& q,
                              std::vector<float>& scales) {
      q.resize(size_t(rows * K));
      scales.resize(size_t(rows * fp8Blocks(K)));
      quantizeE4m3(w, size_t(K), rows, K, q.data(), scales.data());
      return Fp8Matrix{q.data(), scales.data()};
    };
    std::vector<uint8_t> q1, q3, q2;
    std::vector<float> s1, s3, s2;
    packFP8(dst, quantized(w1, f, d, q1, s1), quantized(w3, f, d, q3, s3), quantized(w2, d, f, q2, s2), f);
    return;
  }
  const int64_t gateUpPanels = (f + kGateUpOutputs - 1) / kGateUpOutputs;
  dst.intermediate = f;
  dst.gateUp.ensure(size_t(gateUpPanels) * panelBytes(dtype_, d));
  dst.down.ensure(size_t(panelCount(d)) * panelBytes(dtype_, f));
  if (dtype_ == DType::F32) {
    packGateUpF32(w1, w3, f, d, reinterpret_cast<float*>(dst.gateUp.data()));
    packPanelsF32(w2, size_t(f), d, f, reinterpret_cast<float*>(dst.down.data()));
  } else {
    packGateUpBF16(w1, w3, f, d, reinterpret_cast<uint32_t*>(dst.gateUp.data()));
    packPanelsBF16(w2, size_t(f), d, f, reinterpret_cast<uint32_t*>(dst.down.data()));
  }
}

void Layer::packFP8(PackedExpert& dst, Fp8Matrix w1, Fp8Matrix w3, Fp8Matrix w2, int64_t f) {
  const int64_t d = hidden_;
  const int64_t gateUpPanels = (f + kGateUpOutputs - 1) / kGateUpOutputs;
  dst.intermediate = f;
  dst.gateUp.ensure(size_t(gateUpPanels) * fp8PanelBytes(d));
  dst.down.ensure(size_t(panelCount(d)) * fp8PanelBytes(f));
  packGateUpFP8(w1.q, w1.scales, w3.q, w3.scales, f, d, dst.gateUp.data());
  packPanelsFP8(w2.q, w2.scales, d, f, dst.down.data());
}

namespace {
// A checkpoint's E4M3 matrix: no NaN byte (0x7f, 0xff), and scales whose product with 448 (the largest E4M3 value)
// is a finite float32, as every weight then is on every path (the kernels' factor of 256 included).
void checkFp8(const char* name, Fp8Matrix m, int64_t rows, int64_t K) {
  for (int64_t i = 0; i < rows * K; ++i)
    if ((m.q[i] & 0x7f) == 0x7f)
      throw std::invalid_argument(std::string(name) + ": byte " + std::to_string(i) + " is an E4M3 NaN (0x7f/0xff)");
  for (int64_t i = 0; i < rows * fp8Blocks(K); ++i)
    if (!std::isfinite(m.scales[i] * 448.0f))
      throw std::invalid_argument(std::string(name) + ": scale " + std::to_string(i) + " is not finite (or above " +
                                  "3.4e38 / 448)");
}

// An expert's three E4M3 matrices (w1, w3 [f, d], w2 [d, f]) for a layer of `dtype`.
void checkFp8Expert(DType dtype, Fp8Matrix w1, Fp8Matrix w3, Fp8Matrix w2, int64_t f, int64_t d) {
  if (dtype != DType::FP8) throw std::invalid_argument("layer: E4M3 weights need a layer of dtype fp8");
  checkFp8("w1", w1, f, d);
  checkFp8("w3", w3, f, d);
  checkFp8("w2", w2, d, f);
}

void checkFinite(const char* name, const float* v, int64_t n) {
  if (!v) return;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]))
      throw std::invalid_argument(std::string(name) + ": element " + std::to_string(i) + " is not finite (NaN or Inf)");
}

// An expert's biases as the epilogues read them (GluEpilogue, downPanels); none given: none kept.
void setBiases(PackedExpert& dst, const ExpertBias& bias, int64_t f, int64_t d) {
  constexpr int half = kPanelWidth / 2;
  dst.gateUpBias.clear();
  dst.downBias.clear();
  if (bias.gate || bias.up) {
    const int64_t panels = (f + half - 1) / half;
    dst.gateUpBias.assign(size_t(panels) * kPanelWidth, 0.0f);
    for (int64_t j = 0; j < f; ++j) {
      float* at = dst.gateUpBias.data() + (j / half) * kPanelWidth + j % half;
      if (bias.gate) at[0] = bias.gate[j];
      if (bias.up) at[half] = bias.up[j];
    }
  }
  if (bias.down) dst.downBias.assign(bias.down, bias.down + d);
}
}  // namespace

template <typename Pack>
void Layer::setPacked(int32_t expert, int64_t f, const float* gate, const ExpertBias& bias, Pack&& packInto) {
  checkFinite("gate bias", bias.gate, f);
  checkFinite("up bias", bias.up, f);
  checkFinite("down bias", bias.down, hidden_);
  std::lock_guard<std::mutex> lock(mutex_);
  if (weights_.use_count() > 1) throw std::logic_error("layer: its weights are shared with another layer; load a new one");
  if (expert >= 0) {
    PackedExpert& dst = weights_->experts.at(size_t(expert));
    packInto(dst);
    setBiases(dst, bias, f, hidden_);
  } else {
    auto shared = std::make_unique<PackedExpert>();
    packInto(*shared);
    setBiases(*shared, bias, f, hidden_);
    weights_->shared = std::move(shared);
    if (gate)
      weights_->sharedGate.assign(gate, gate + hidden_);
    else
      weights_->sharedGate.clear();  // a gate set before belongs to the expert this one replaces
  }
  const int64_t width = (f + kPanelWidth - 1) / kPanelWidth * kPanelWidth;
  weights_->hiddenWidth = std::max(weights_->hiddenWidth, width);
}

void Layer::setExpert(int32_t expert, const float* w1, const float* w3, const float* w2, int64_t f,
                      const ExpertBias& bias) {
  setPacked(expert, f, nullptr, bias, [&](PackedExpert& dst) { pack(dst, w1, w3, w2, f); });
}

void Layer::setSharedExpert(const float* w1, const float* w3, const float* w2, int64_t f, const float* gate,
                            const ExpertBias& bias) {
  setPacked(-1, f, gate, bias, [&](PackedExpert& dst) { pack(dst, w1, w3, w2, f); });
}

void Layer::setExpertFP8(int32_t expert, Fp8Matrix w1, Fp8Matrix w3, Fp8Matrix w2, int64_t f, const ExpertBias& bias) {
  checkFp8Expert(dtype_, w1, w3, w2, f, hidden_);
  setPacked(expert, f, nullptr, bias, [&](PackedExpert& dst) { packFP8(dst, w1, w3, w2, f); });
}

void Layer::setSharedExpertFP8(Fp8Matrix w1, Fp8Matrix w3, Fp8Matrix w2, int64_t f, const float* gate,
                               const ExpertBias& bias) {
  checkFp8Expert(dtype_, w1, w3, w2, f, hidden_);
  setPacked(-1, f, gate, bias, [&](PackedExpert& dst) { packFP8(dst, w1, w3, w2, f); });
}

bool Layer::complete(std::string& missing) const {
  for (size_t e = 0; e < weights_->experts.size(); ++e)
    if (weights_->experts[e].intermediate == 0) {
      missing = "expert " + std::to_string(e);
      return false;
    }
  return true;
}

size_t Layer::weightBytes() const {
  size_t total = weights_->shared ? weights_->shared->bytes() : 0;
  for (const auto& e : weights_->experts) total += e.bytes();
  return total;
}

void Layer::dispatch(const float* x, int64_t T, const RoutingOutput& routing) {
  const RouterConfig& cfg = router_->config();
  const float* sharedScale = nullptr;
  if (weights_->shared && !weights_->sharedGate.empty()) {
    arena_.sharedScale.ensure(size_t(T));
    float* scale = arena_.sharedScale.data();
    const float* gate = weights_->sharedGate.data();
    // Qwen2-MoE's sigmoid gate of the shared expert, one token per item (T·d work: split it over the pool).
    router_->pool().parallelFor(threads_, T, [&](int64_t t, int) {
      double dot = 0;
      for (int64_t i = 0; i < hidden_; ++i) dot += double(x[t * hidden_ + i]) * gate[i];
      scale[t] = float(1.0 / (1.0 + std::exp(-dot)));
    });
    sharedScale = scale;
  }
  planDispatch(routing, T, cfg.maxK, cfg.numExperts, weights_->shared != nullptr, sharedScale, arena_);
  if (arena_.jobs.empty()) return;
  const ExpertJob& last = arena_.jobs.back();
  // (Llama 4: the routed rows, all but a shared expert's T at the end, scaled by their routing weight)
  const int64_t rows = last.row0 + last.rows;
  const int64_t routed = weights_->shared ? rows - T : rows;
  gatherRows(x, hidden_, rows, activationType(dtype_), arena_, router_->pool(), threads_,
             activation_.weightInputs ? routed : 0);
}

void Layer::runExperts() {
  if (arena_.jobs.empty()) return;
  const int64_t d = hidden_, rows = arena_.jobs.back().row0 + arena_.jobs.back().rows;
  const GemmKernels& kern = gemmKernels();
  // A job's activations: fp32 rows for fp32 and fp8 weights, bf16 pairs for bf16; where the kernels have fp8 pairs
  // (GemmKernels::fp8Tiles), an fp8 job of kFp8TileRows rows or more runs on them with bf16 activations too.
  const bool fp8Tiles = dtype_ == DType::FP8 && kern.fp8Tiles != nullptr;
  const auto actOf = [&](const ExpertJob& job) {
    return fp8Tiles && job.rows >= kFp8TileRows ? DType::BF16 : activationType(dtype_);
  };
  const int64_t width = weights_->hiddenWidth;
  const auto ldhOf = [&](DType act) { return size_t(hiddenRowStride(act, width)); };
  const auto ldxOf = [&](DType act) { return size_t(inputRowStride(act, d)); };
  int64_t rowsOf[2] = {0, 0};  // rows with fp32, bf16 activations
  int64_t maxRows = 0;
  for (const ExpertJob& job : arena_.jobs) {
    rowsOf[actOf(job) == DType::BF16] += job.rows;
    maxRows = std::max(maxRows, job.rows);
  }
  const size_t ldo = size_t(outputRowStride(d));
  // (rows are indexed alike in both types' buffers: each is as long as all the rows)
  if (rowsOf[0] > 0) arena_.hiddenF32.ensure(size_t(rows) * ldhOf(DType::F32));
  if (rowsOf[1] > 0) arena_.hiddenBF16.ensure(size_t(rows) * ldhOf(DType::BF16));
  arena_.output.ensure(size_t(rows) * ldo);
  const int workers = threads_;
  // Outputs larger than the caches go around them (kStreamStoreMinBytes). A bf16 line of SwiGLU rows is two gate/up
  // panels: those items then start on even panels, and a worker's scratch holds two panels' accumulators. (Floats
  // and bf16 pairs are both 4 bytes.)
  const bool streamHidden =
      streamsOutput((size_t(rowsOf[0]) * ldhOf(DType::F32) + size_t(rowsOf[1]) * ldhOf(DType::BF16)) * 4);
  const bool streamOutput = streamsOutput(size_t(rows) * ldo * sizeof(float));
  const int64_t gateUpPanelsPerLine = rowsOf[1] > 0 && streamHidden ? 2 : 1;
  const size_t accPerWorker = size_t(maxRows) * size_t(gateUpPanelsPerLine) * kPanelWidth;
  arena_.accumulators.ensure(size_t(workers) * accPerWorker);
  auto expertOf = [&](const ExpertJob& job) -> const PackedExpert& {
    return job.expert < int32_t(weights_->experts.size()) ? weights_->experts[size_t(job.expert)] : *weights_->shared;
  };
  // A job's rows of input and SwiGLU activations, in its type's buffers.
  const auto inputOf = [&](const ExpertJob& job) {
    const DType act = actOf(job);
    const void* base = act == DType::F32 ? static_cast<const void*>(arena_.inputF32.data()) : arena_.inputBF16.data();
    return Activations{act, static_cast<const char*>(base) + size_t(job.row0) * ldxOf(act) * 4, ldxOf(act)};
  };
  const auto hiddenOf = [&](const ExpertJob& job) {
    const DType act = actOf(job);
    void* base = act == DType::F32 ? static_cast<void*>(arena_.hiddenF32.data()) : arena_.hiddenBF16.data();
    return std::make_pair(static_cast<char*>(base) + size_t(job.row0) * ldhOf(act) * 4, ldhOf(act));
  };

  uint32_t* tileScratch = nullptr;
  if (fp8Tiles && rowsOf[1] > 0) {
    arena_.tileScratch.ensure(size_t(workers) * kFp8TileScratchWords);
    tileScratch = arena_.tileScratch.data();
    // The tiles' rows: gathered rows to bf16 pairs, and the pairs their tile steps read past K zeroed, in the
    // input rows and past the SwiGLU outputs the gate/up pass writes (whole panels of 16). 16 rows an item.
    arena_.inputBF16.ensure(size_t(rows) * ldxOf(DType::BF16));
    const auto padTo = [](int64_t pairs) { return (pairs + kAmxStepPairs - 1) / kAmxStepPairs * kAmxStepPairs; };
    constexpr int64_t kRowsPerItem = 16;
    router_->pool().parallelFor(workers, (rows + kRowsPerItem - 1) / kRowsPerItem, [&](int64_t item, int) {
      const int64_t r0 = item * kRowsPerItem, r1 = std::min(rows, r0 + kRowsPerItem);
      // (the first job that ends past r0: jobs hold consecutive rows in order)
      auto job = std::upper_bound(arena_.jobs.begin(), arena_.jobs.end(), r0,
                                  [](int64_t r, const ExpertJob& j) { return r < j.row0 + j.rows; });
      for (int64_t r = r0; r < r1; ++r) {
        while (r >= job->row0 + job->rows) ++job;
        if (actOf(*job) != DType::BF16) continue;
        const int64_t f = expertOf(*job).intermediate;
        const int64_t inPairs = packedKPairs(d), written = (f + kGateUpOutputs - 1) / kGateUpOutputs * 8;
        uint32_t* row = arena_.inputBF16.data() + size_t(r) * ldxOf(DType::BF16);
        rowToBf16Pairs(arena_.inputF32.data() + size_t(r) * ldxOf(DType::F32), d, row);
        std::fill(row + inPairs, row + padTo(inPairs), 0u);
        uint32_t* hiddenRow = arena_.hiddenBF16.data() + size_t(r) * ldhOf(DType::BF16);
        std::fill(hiddenRow + written, hiddenRow + padTo(packedKPairs(f)), 0u);
      }
    });
  }

  // Splits each job's panels into ranges of about equal cost (rows x panels), kItemsPerWorker per worker over
  // the whole pass: items of equal size keep both cores busy to the end even when experts differ in load.
  auto planItems = [&](auto panelsOf, int64_t multiple) {
    double totalCost = 0;
    for (const ExpertJob& job : arena_.jobs) totalCost += double(job.rows) * double(panelsOf(job));
    const double target = totalCost / (double(workers) * kItemsPerWorker);
    arena_.items.clear();
    for (size_t j = 0; j < arena_.jobs.size(); ++j) {
      const int64_t n = panelsOf(arena_.jobs[j]);
      int64_t chunk = std::clamp<int64_t>(int64_t(target / double(arena_.jobs[j].rows) + 0.5), 1, n);
      chunk = (chunk + multiple - 1) / multiple * multiple;
      for (int64_t p = 0; p < n; p += chunk)
        arena_.items.push_back({int32_t(j), int32_t(p), int32_t(std::min(n, p + chunk))});
    }
  };

  planItems([&](const ExpertJob& job) { return (expertOf(job).intermediate + kGateUpOutputs - 1) / kGateUpOutputs; },
            gateUpPanelsPerLine);
  router_->pool().parallelFor(workers, int64_t(arena_.items.size()), [&](int64_t i, int worker) {
    const LayerArena::WorkItem item = arena_.items[size_t(i)];
    const ExpertJob& job = arena_.jobs[size_t(item.job)];
    const PackedExpert& ex = expertOf(job);
    const auto [h, ldh] = hiddenOf(job);
    float* acc = arena_.accumulators.data() + size_t(worker) * accPerWorker;
    uint32_t* scratch = tileScratch ? tileScratch + size_t(worker) * kFp8TileScratchWords : nullptr;
    const GluEpilogue ep{ex.gateUpBias.empty() ? nullptr : ex.gateUpBias.data(), activation_.clamped,
                         activation_.alpha, activation_.limit};
    gateUpPanels(kern, inputOf(job), job.rows, d, dtype_, ex.gateUp.data(), item.panelBegin, item.panelEnd, h, ldh,
                 acc, streamHidden, scratch, ep);
  });

  planItems([&](const ExpertJob&) { return panelCount(d); }, 1);
  router_->pool().parallelFor(workers, int64_t(arena_.items.size()), [&](int64_t i, int worker) {
    const LayerArena::WorkItem item = arena_.items[size_t(i)];
    const ExpertJob& job = arena_.jobs[size_t(item.job)];
    const PackedExpert& ex = expertOf(job);
    const auto [h, ldh] = hiddenOf(job);
    float* out = arena_.output.data() + size_t(job.row0) * ldo;
    // (a routed expert's input already carries its weight under weightInputs)
    const bool routed = job.expert < int32_t(weights_->experts.size());
    const float* weight = activation_.weightInputs && routed ? nullptr : arena_.rowWeight.data() + job.row0;
    float* acc = arena_.accumulators.data() + size_t(worker) * accPerWorker;
    uint32_t* scratch = tileScratch ? tileScratch + size_t(worker) * kFp8TileScratchWords : nullptr;
    downPanels(kern, Activations{actOf(job), h, ldh}, job.rows, ex.intermediate, dtype_, ex.down.data(),
               item.panelBegin, item.panelEnd, d, weight, out, ldo, acc, streamOutput, scratch,
               ex.downBias.empty() ? nullptr : ex.downBias.data());
  });
}

size_t Layer::arenaBytes() const { return arenaBytes_.load(std::memory_order_relaxed); }

static size_t arenaSize(const LayerArena& a) {
  return a.inputF32.bytes() + a.hiddenF32.bytes() + a.output.bytes() + a.inputBF16.bytes() + a.hiddenBF16.bytes() +
         a.rowToken.bytes() + a.slotRow.bytes() + a.rowWeight.bytes() + a.sharedScale.bytes() +
         a.accumulators.bytes() + a.tileScratch.bytes();
}

std::string Layer::forward(const float* x, int64_t T, const float* logits, const float* complexity, float* y,
                           RoutingOutput& routing, RoutingStats& routingStats, LayerStats& stats,
                           int64_t complexityNs) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats = LayerStats{};
  stats.startNs = nowNs();
  if (logits) {  // routing will not read x, so check it here
    for (int64_t i = 0; i < T * hidden_; ++i)
      if (!std::isfinite(x[i])) {
        telemetry_.recordError(telemetry::ErrorKind::NonFinite);
        return "x: element " + std::to_string(i) + " is not finite (NaN or Inf)";
      }
  }
  std::string error = logits ? router_->select(logits, T, complexity, routing, routingStats, 0, false)
                             : router_->route(x, T, complexity, routing, routingStats, 0, false);
  if (!error.empty()) {
    telemetry_.recordError(telemetry::ErrorKind::NonFinite);
    return error;
  }
  stats.gatingEndNs = nowNs();
  dispatch(x, T, routing);
  stats.dispatchEndNs = nowNs();
  runExperts();
  stats.expertEndNs = nowNs();
  arenaBytes_.store(arenaSize(arena_), std::memory_order_relaxed);
  const RouterConfig& cfg = router_->config();
  const int64_t routedRows = routingStats.assignments;
  combineRows(T, hidden_, cfg.maxK, arena_.slotRow.data(), arena_.output.data(), size_t(outputRowStride(hidden_)),
              weights_->shared ? routedRows : -1, y, router_->pool(), threads_);
  stats.combineEndNs = nowNs();

  const double perTokenExpert = 6.0 * double(hidden_) * double(weights_->experts[0].intermediate);
  const double sharedFlops = weights_->shared ? 6.0 * double(hidden_) * double(weights_->shared->intermediate) * double(T) : 0.0;
  stats.flopsComputed = double(routedRows) * perTokenExpert + sharedFlops;
  stats.flopsStatic = double(T) * double(staticK_) * perTokenExpert + sharedFlops;

  telemetry::CallRecord call = callRecordOf(T, complexity, routing, routingStats, complexityNs);
  call.flopsComputed = stats.flopsComputed;
  call.flopsStatic = stats.flopsStatic;
  call.span = {stats.startNs, stats.gatingEndNs, stats.dispatchEndNs, stats.expertEndNs, stats.combineEndNs};
  telemetry_.record(call);
  return {};
}

}  // namespace moe
