// Expert selection for every rule the package supports. One token is handled start to finish by one worker:
// scores, optional group limit, a partial sort of the best maxK candidates, the rule's k, then weights.
//
// Tie rule: on equal selection scores the lower expert index wins, everywhere (groups included). Candidates
// are visited in index order and only a strictly better score displaces an earlier one.
#include <algorithm>
#include <cmath>
#include <limits>

#include "moe/gating.h"
#include "moe/gemm.h"

namespace moe {

namespace {

constexpr int64_t kChunkTokens = 64;  // stats are summed per fixed chunk, so they do not depend on threads
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct TokenWork {
  float* probs;     // [E] unbiased scores (softmax probs or sigmoids)
  float* select;    // [E] selection scores
  float* groups;    // [nGroup]
  int32_t* order;   // [E] best candidates, sorted
};

// Keeps the best `keep` indices of score[0..n) sorted descending, ties to the lower index (-inf: not a
// candidate). `order` has room for n indices. Few kept (top-k routing): an insertion pass, which rejects most
// candidates with one compare; it costs O(n * keep) when most are kept (top-p or threshold over all experts,
// maxK = E), which a sort, O(n log n), beats from about n = keep = 512 on (measured: E = 4096, 4x).
int partialSort(const float* score, int n, int keep, int32_t* order) {
  if (int64_t(keep) * n > (int64_t(1) << 18)) {
    int m = 0;
    for (int i = 0; i < n; ++i)
      if (score[i] != kNegInf) order[m++] = i;
    const auto better = [score](int32_t a, int32_t b) {
      return score[a] > score[b] || (score[a] == score[b] && a < b);
    };
    keep = std::min(keep, m);
    if (2 * keep >= m)
      std::sort(order, order + m, better);  // (a heap-based partial sort of most of them is slower)
    else
      std::partial_sort(order, order + keep, order + m, better);
    return keep;
  }
  int filled = 0;
  for (int i = 0; i < n; ++i) {
    const float s = score[i];
    if (s == kNegInf) continue;
    if (filled == keep && !(s > score[order[filled - 1]])) continue;
    int pos = filled < keep ? filled++ : keep - 1;
    while (pos > 0 && s > score[order[pos - 1]]) {
      order[pos] = order[pos - 1];
      --pos;
    }
    order[pos] = i;
  }
  return filled;
}

// Masks the experts of every group outside the best `topkGroup` groups to -inf.
void limitGroups(const RouterConfig& cfg, TokenWork& w) {
  const int E = cfg.numExperts, groupSize = E / cfg.nGroup;
  for (int g = 0; g < cfg.nGroup; ++g) {
    const float* s = w.select + g * groupSize;
    float first = kNegInf, second = kNegInf;
    for (int i = 0; i < groupSize; ++i) {
      if (s[i] > first) {
        second = first;
        first = s[i];
      } else if (s[i] > second) {
        second = s[i];
      }
    }
    w.groups[g] = cfg.groupScore == GroupScore::Max || groupSize < 2 ? first : first + second;
  }
  int32_t keptGroups[64];
  int32_t* kept = cfg.nGroup <= 64 ? keptGroups : w.order;  // order is overwritten right after
  const int nKept = partialSort(w.groups, cfg.nGroup, cfg.topkGroup, kept);
  bool keep[1024] = {};
  for (int i = 0; i < nKept; ++i) keep[kept[i]] = true;
  for (int g = 0; g < cfg.nGroup; ++g)
    if (!keep[g])
      for (int i = 0; i < groupSize; ++i) w.select[g * groupSize + i] = kNegInf;
}

// Scores for one token; returns logsumexp of the logits (for the z-loss) and the probability mass used by
// top-p (1 for softmax, the sum of sigmoids otherwise).
double scoreToken(const RouterConfig& cfg, const float* logits, float* probs, double& mass) {
  const int E = cfg.numExperts;
  float maxLogit = logits[0];
  for (int i = 1; i < E; ++i) maxLogit = std::max(maxLogit, logits[i]);
  if (cfg.scoring == Scoring::Softmax) {
    double sumExp = 0;
    for (int i = 0; i < E; ++i) {
      probs[i] = std::exp(logits[i] - maxLogit);
      sumExp += probs[i];
    }
    const float inv = float(1.0 / sumExp);
    for (int i = 0; i < E; ++i) probs[i] *= inv;
    mass = 1.0;
    return maxLogit + std::log(sumExp);
  }
  double sumExp = 0;
  mass = 0;
  for (int i = 0; i < E; ++i) {
    sumExp += std::exp(logits[i] - maxLogit);
    probs[i] = 1.0f / (1.0f + std::exp(-logits[i]));
    mass += probs[i];
  }
  const double lse = maxLogit + std::log(sumExp);
  return lse;
}

int32_t ruleK(const RouterConfig& cfg, const TokenWork& w, int candidates, double mass, float complexity) {
  int32_t k = cfg.k;
  switch (cfg.selection) {
    case Selection::TopK:
    case Selection::GptOss:
      k = cfg.k;
      break;
    case Selection::TopP: {
      // (mass 0: every sigmoid underflowed to 0 in float32, logits below about -88; nothing to cover: minK)
      double cum = 0;
      k = mass > 0 ? cfg.maxK : cfg.minK;
      for (int j = 0; j < candidates && mass > 0; ++j) {
        cum += double(w.probs[w.order[j]]) / mass;
        if (cum >= cfg.p) {
          k = j + 1;
          break;
        }
      }
      k = std::clamp(k, cfg.minK, cfg.maxK);
      break;
    }
    case Selection::Threshold: {
      int32_t above = 0;
      for (int i = 0; i < cfg.numExperts; ++i) above += w.select[i] != kNegInf && w.probs[i] >= cfg.tau;
      k = std::clamp(above, cfg.minK, cfg.maxK);
      break;
    }
    case Selection::Dynamic:
      k = dynamicK(cfg.minK, cfg.maxK, complexity);
      break;
  }
  return std::min<int32_t>(k, candidates);
}

void writeWeights(const RouterConfig& cfg, const float* logits, const TokenWork& w, int32_t k, float* weights) {
  double sum = 0;
  if (cfg.selection == Selection::GptOss) {
    // the largest chosen logit (a choose-only bias can rank a smaller one first: exp would overflow)
    float top = logits[w.order[0]];
    for (int j = 1; j < k; ++j) top = std::max(top, logits[w.order[j]]);
    for (int j = 0; j < k; ++j) sum += std::exp(double(logits[w.order[j]]) - top);
    for (int j = 0; j < k; ++j) weights[j] = float(std::exp(double(logits[w.order[j]]) - top) / sum * cfg.scale);
    return;
  }
  for (int j = 0; j < k; ++j) sum += w.probs[w.order[j]];
  const double norm = cfg.normalize && sum > 0 ? cfg.scale / sum : cfg.scale;
  for (int j = 0; j < k; ++j) weights[j] = float(w.probs[w.order[j]] * norm);
}

}  // namespace

int32_t dynamicK(int32_t minK, int32_t maxK, float complexity) {
  const double c = std::isfinite(complexity) ? std::clamp(double(complexity), 0.0, 1.0) : 0.0;
  const int32_t k = minK + int32_t(std::floor(double(maxK - minK) * c + 0.5));
  return std::clamp(k, minK, maxK);
}

void GatingScratch::reserve(int workers, int numExperts, int nGroup, int64_t chunks) {
  const size_t perWorkerFloats = size_t(3) * numExperts + size_t(nGroup);
  if (perWorker.size() < workers * perWorkerFloats) perWorker.resize(workers * perWorkerFloats);
  if (order.size() < size_t(workers) * numExperts) order.resize(size_t(workers) * numExperts);
  if (chunkSums.size() < size_t(chunks) * (numExperts + 1)) chunkSums.resize(size_t(chunks) * (numExperts + 1));
}

std::string selectExperts(const RouterConfig& cfg, const float* logits, int64_t T, const float* bias,
                          const float* complexity, RoutingOutput& out, RoutingStats& stats, ThreadPool& pool,
                          int workers, GatingScratch& scratch) {
  const int E = cfg.numExperts, maxK = cfg.maxK;
  const int64_t chunks = (T + kChunkTokens - 1) / kChunkTokens;
  workers = int(std::max<int64_t>(1, std::min<int64_t>(workers, chunks)));
  scratch.reserve(workers, E, cfg.nGroup, chunks);
  std::fill(out.expertCounts, out.expertCounts + E, 0);
  std::atomic<int64_t> firstBadToken{-1};

  pool.parallelFor(workers, chunks, [&](int64_t chunk, int worker) {
    float* base = scratch.perWorker.data() + size_t(worker) * (3 * E + cfg.nGroup);
    TokenWork w{base, base + E, base + 2 * E, scratch.order.data() + size_t(worker) * E};
    double* sums = scratch.chunkSums.data() + size_t(chunk) * (E + 1);
    std::fill(sums, sums + E + 1, 0.0);
    const int64_t end = std::min(T, (chunk + 1) * kChunkTokens);
    for (int64_t t = chunk * kChunkTokens; t < end; ++t) {
      const float* row = logits + t * E;
      bool finite = true;
      for (int i = 0; i < E; ++i) finite &= std::isfinite(row[i]);
      int32_t* idx = out.indices + t * maxK;
      float* wts = out.weights + t * maxK;
      std::fill(idx, idx + maxK, -1);
      std::fill(wts, wts + maxK, 0.0f);
      if (!finite) {
        // The lowest bad token, whatever the thread count, so the message is reproducible.
        int64_t seen = firstBadToken.load();
        while ((seen < 0 || t < seen) && !firstBadToken.compare_exchange_weak(seen, t)) {
        }
        out.k[t] = 0;
        continue;
      }
      double mass = 1;
      const double lse = scoreToken(cfg, row, w.probs, mass);
      const float* chooseFrom = cfg.selection == Selection::GptOss ? row : w.probs;
      for (int i = 0; i < E; ++i) w.select[i] = chooseFrom[i] + (bias ? bias[i] : 0.0f);
      if (cfg.nGroup > 0) limitGroups(cfg, w);
      const int candidates = partialSort(w.select, E, maxK, w.order);
      const int32_t k = ruleK(cfg, w, candidates, mass, complexity ? complexity[t] : 0.5f);
      for (int j = 0; j < k; ++j) idx[j] = w.order[j];
      writeWeights(cfg, row, w, k, wts);
      out.k[t] = k;
      if (out.probs) std::copy(w.probs, w.probs + E, out.probs + t * E);
      if (mass > 0)
        for (int i = 0; i < E; ++i) sums[i] += w.probs[i] / mass;
      sums[E] += lse * lse;
    }
  });
  if (firstBadToken.load() >= 0)
    return "router logits of token " + std::to_string(firstBadToken.load()) +
           " are not finite (NaN or Inf): check the hidden states and the gate weight for overflow";

  // Reduce in chunk order: the stats are the same for any thread count.
  std::vector<double>& sums = scratch.chunkSums;
  double zSum = 0;
  int64_t assignments = 0;
  for (int64_t t = 0; t < T; ++t) {
    assignments += out.k[t];
    for (int j = 0; j < out.k[t]; ++j) ++out.expertCounts[out.indices[t * maxK + j]];
  }
  double aux = 0, entropy = 0;
  for (int i = 0; i < E; ++i) {
    double probSum = 0;
    for (int64_t c = 0; c < chunks; ++c) probSum += sums[size_t(c) * (E + 1) + i];
    const double share = assignments > 0 ? double(out.expertCounts[i]) / assignments : 0;
    aux += share * (probSum / double(T));
    if (share > 0) entropy -= share * std::log(share);
  }
  for (int64_t c = 0; c < chunks; ++c) zSum += sums[size_t(c) * (E + 1) + E];
  stats.assignments = assignments;
  stats.meanK = double(assignments) / double(T);
  stats.auxLoss = E * aux;
  stats.zLoss = zSum / double(T);
  stats.loadBalance = E > 1 ? std::clamp(entropy / std::log(double(E)), 0.0, 1.0) : 1.0;
  return {};
}

void gateLogits(const float* x, int64_t T, int64_t d, const float* packedGate, int64_t E, float* logits,
                ThreadPool& pool, int workers) {
  const GemmKernels& kern = gemmKernels();
  const int64_t rowBlocks = (T + kern.maxRows - 1) / kern.maxRows;
  const int64_t panels = panelCount(E);
  // Few flops: skip the wake-up cost of the other threads.
  if (T * d * E < (int64_t(1) << 17)) workers = 1;
  pool.parallelFor(workers, rowBlocks * panels, [&](int64_t item, int) {
    const int64_t panel = item % panels, block = item / panels;
    const int64_t row0 = block * kern.maxRows;
    const int rows = int(std::min<int64_t>(kern.maxRows, T - row0));
    alignas(64) float tile[16 * kPanelWidth];
    kern.f32(rows, int(d), x + row0 * d, size_t(d), packedGate + size_t(panel) * d * kPanelWidth, tile, false, {});
    const int64_t col0 = panel * kPanelWidth;
    const int cols = int(std::min<int64_t>(kPanelWidth, E - col0));
    for (int r = 0; r < rows; ++r)
      std::copy(tile + r * kPanelWidth, tile + r * kPanelWidth + cols, logits + (row0 + r) * E + col0);
  });
}

}  // namespace moe
