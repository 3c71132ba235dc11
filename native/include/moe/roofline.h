// The two anchors of the roofline the benches report against, measured with the package's own kernels:
// streaming-read bandwidth and the best dense GEMM rate (fp32 and bf16).
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/gemm.h"
#include "moe/thread_pool.h"

namespace moe {

// Reads n floats once, split over the workers; returns a checksum so the reads cannot be elided.
uint64_t streamRead(const float* data, size_t n, ThreadPool& pool, int workers);

// C[M, N] = A[M, K] · B[N, K]^T, B prepacked for `dtype`, run `reps` times; returns the median seconds.
// A and B are filled with seeded normal values internally.
double denseGemmSeconds(int64_t M, int64_t N, int64_t K, DType dtype, int reps, ThreadPool& pool, int workers);

// Fills n floats with normal samples (mean 0, std) from a seeded xorshift generator; parallel and fast enough
// for benches that need gigabytes of weights. Each 64Ki block has its own stream, so the output does not
// depend on the thread count.
void fillNormal(float* out, size_t n, uint64_t seed, float stddev, ThreadPool& pool, int workers);

}  // namespace moe
