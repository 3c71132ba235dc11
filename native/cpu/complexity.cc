// Complexity signals that are heavy enough to belong in native code: norms over the hidden size, entropies over
// the attention span and over an LM vocabulary. Each token (or head row) is one independent work item.
#include "moe/complexity.h"

#include <algorithm>
#include <cmath>

namespace moe {

namespace {
constexpr int64_t kRowsPerItem = 16;

// Entropy of p / sum(p) over n entries, divided by log n (0 when n < 2).
double normalisedRowEntropy(const float* p, int64_t n) {
  if (n < 2) return 0;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += p[i];
  if (!(sum > 0)) return 0;
  double h = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double q = p[i] / sum;
    if (q > 0) h -= q * std::log(q);
  }
  return std::clamp(h / std::log(double(n)), 0.0, 1.0);
}

template <typename F>
void forRows(ThreadPool& pool, int workers, int64_t rows, F&& perRow) {
  const int64_t items = (rows + kRowsPerItem - 1) / kRowsPerItem;
  pool.parallelFor(workers, items, [&](int64_t item, int) {
    const int64_t end = std::min(rows, (item + 1) * kRowsPerItem);
    for (int64_t r = item * kRowsPerItem; r < end; ++r) perRow(r);
  });
}
}  // namespace

void rowNorms(const float* x, int64_t T, int64_t d, int order, float* out, ThreadPool& pool, int workers) {
  forRows(pool, workers, T, [&](int64_t t) {
    const float* row = x + t * d;
    double acc = 0;
    if (order == 1) {
      for (int64_t i = 0; i < d; ++i) acc += std::fabs(row[i]);
      out[t] = float(acc);
    } else {
      for (int64_t i = 0; i < d; ++i) acc += double(row[i]) * row[i];
      out[t] = float(std::sqrt(acc));
    }
  });
}

void attentionEntropy(const float* attention, int64_t heads, int64_t T, int64_t S, bool reduceMax, float* out,
                      ThreadPool& pool, int workers) {
  forRows(pool, workers, T, [&](int64_t t) {
    double acc = 0;
    for (int64_t h = 0; h < heads; ++h) {
      const double e = normalisedRowEntropy(attention + (h * T + t) * S, S);
      acc = reduceMax ? std::max(acc, e) : acc + e;
    }
    out[t] = float(reduceMax ? acc : acc / double(heads));
  });
}

void logitEntropy(const float* logits, int64_t T, int64_t V, float temperature, float* out, ThreadPool& pool,
                  int workers) {
  const double invTemp = 1.0 / temperature;
  forRows(pool, workers, T, [&](int64_t t) {
    const float* row = logits + t * V;
    if (V < 2) {
      out[t] = 0;
      return;
    }
    double maxScaled = row[0] * invTemp;
    for (int64_t i = 1; i < V; ++i) maxScaled = std::max(maxScaled, row[i] * invTemp);
    if (!std::isfinite(maxScaled)) {  // every logit masked to -inf (or +inf present): no distribution to measure
      out[t] = 0;
      return;
    }
    // H = log Z - sum(e_i * s_i) / Z with s_i = l_i / T - max and e_i = exp(s_i).
    double z = 0, weighted = 0;
    for (int64_t i = 0; i < V; ++i) {
      const double s = row[i] * invTemp - maxScaled;
      const double e = std::exp(s);
      z += e;
      if (e > 0) weighted += e * s;  // masked logits (-inf) have e = 0 and contribute nothing
    }
    const double h = std::log(z) - weighted / z;
    out[t] = float(std::clamp(h / std::log(double(V)), 0.0, 1.0));
  });
}

}  // namespace moe
