// Complexity signals that are heavy enough to belong in native code: norms over the hidden size, entropies over
// the attention span and over an LM vocabulary. Each token (or head row) is one independent work item.
#include "moe/complexity.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moe {

namespace {
constexpr int64_t kRowsPerItem = 16;

// Entropy of p / sum(p) over n entries, divided by log n (0 when n < 2, or when every entry is 0). NaN when an
// entry is NaN, infinite or negative: not a distribution (the estimator turns that into an error).
double normalisedRowEntropy(const float* p, int64_t n) {
  double sum = 0;
  bool valid = true;
  for (int64_t i = 0; i < n; ++i) {
    valid &= p[i] >= 0 && p[i] <= std::numeric_limits<float>::max();
    sum += p[i];
  }
  if (!valid) return std::numeric_limits<double>::quiet_NaN();
  if (n < 2 || !(sum > 0)) return 0;
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
    } else {
      for (int64_t i = 0; i < d; ++i) acc += double(row[i]) * row[i];
      acc = std::sqrt(acc);
    }
    // (NaN and Inf in the row stay so; a finite norm past float's range is clamped to its largest value)
    out[t] = std::isfinite(acc) ? float(std::min(acc, double(std::numeric_limits<float>::max()))) : float(acc);
  });
}

void attentionEntropy(const float* attention, int64_t heads, int64_t T, int64_t S, bool reduceMax, float* out,
                      ThreadPool& pool, int workers) {
  forRows(pool, workers, T, [&](int64_t t) {
    double acc = 0;
    bool valid = true;
    for (int64_t h = 0; h < heads; ++h) {
      const double e = normalisedRowEntropy(attention + (h * T + t) * S, S);
      valid &= !std::isnan(e);  // (std::max would drop a NaN)
      acc = reduceMax ? std::max(acc, e) : acc + e;
    }
    out[t] = valid ? float(reduceMax ? acc : acc / double(heads)) : std::numeric_limits<float>::quiet_NaN();
  });
}

void logitEntropy(const float* logits, int64_t T, int64_t V, float temperature, float* out, ThreadPool& pool,
                  int workers) {
  const double invTemp = 1.0 / temperature;
  forRows(pool, workers, T, [&](int64_t t) {
    const float* row = logits + t * V;
    // -inf is a masked logit; NaN and +inf give NaN (the estimator turns that into an error)
    bool valid = true;
    double maxScaled = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < V; ++i) {
      valid &= row[i] < std::numeric_limits<float>::infinity();
      maxScaled = std::max(maxScaled, row[i] * invTemp);
    }
    if (!valid) {
      out[t] = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    if (V < 2 || !std::isfinite(maxScaled)) {  // one entry, or every logit masked: no distribution to measure
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
