// Plain data shared by every stage: routing options, routing outputs and per-call stats.
// Kernels take these structs and raw pointers; nothing here knows about Node.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

enum class Scoring : int32_t { Softmax = 0, Sigmoid = 1 };

enum class Selection : int32_t { TopK = 0, TopP = 1, Threshold = 2, Dynamic = 3, GptOss = 4 };

// How a group's score is formed in group-limited selection.
// Top2Sum is DeepSeek-V3 (`noaux_tc`); Max is DeepSeek-V2 (`group_limited_greedy`).
enum class GroupScore : int32_t { Top2Sum = 0, Max = 1 };

struct RouterConfig {
  int32_t numExperts = 0;
  int32_t hiddenSize = 0;
  Scoring scoring = Scoring::Softmax;
  Selection selection = Selection::TopK;
  int32_t k = 1;       // topk / gptOss
  float p = 1.0f;      // topp
  float tau = 0.0f;    // threshold
  int32_t minK = 1;    // topp, threshold, dynamic
  int32_t maxK = 1;    // width of the output rows for every rule
  int32_t nGroup = 0;  // 0 = no group limit
  int32_t topkGroup = 0;
  GroupScore groupScore = GroupScore::Top2Sum;
  bool normalize = false;
  float scale = 1.0f;
  bool hasBias = false;  // bias lives beside the gate weight in the router
};

// Caller-owned output views for one routing call of T tokens.
struct RoutingOutput {
  int32_t* indices = nullptr;    // [T, maxK], -1 padded
  float* weights = nullptr;      // [T, maxK], 0 padded
  int32_t* k = nullptr;          // [T]
  float* logits = nullptr;       // optional [T, E]
  float* probs = nullptr;        // optional [T, E] unbiased scores
  int32_t* expertCounts = nullptr;  // [E], required: tokens per expert
};

// Per-call statistics, computed as a by-product of selection.
struct RoutingStats {
  double meanK = 0;
  double auxLoss = 0;      // E * sum_i f_i * P_i, f_i = share of assignments, P_i = mean prob
  double zLoss = 0;        // mean over tokens of logsumexp(logits)^2
  double loadBalance = 0;  // entropy(counts / sum) / log(E), in [0,1]
  int64_t assignments = 0; // sum of k over tokens
};

}  // namespace moe
