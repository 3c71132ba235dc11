// Weight packing at load, on the device: fp32 Hugging Face layout in, bf16 GEMM layout out, zero padded.
#include "common.cuh"
#include "kernels.h"

namespace moe_cuda {

namespace {

__global__ void packBf16Kernel(const float* __restrict__ src, int rows, int cols, bf16* __restrict__ dst,
                               int colsPad) {
  const int r = blockIdx.x;
  for (int c = threadIdx.x; c < colsPad; c += blockDim.x)
    dst[size_t(r) * colsPad + c] = __float2bfloat16_rn(r < rows && c < cols ? src[size_t(r) * cols + c] : 0.0f);
}

// Packed row P: group q = P / 16 covers outputs 8q..8q+7; P % 16 < 8 is their gate row, the rest their up row.
__global__ void packGateUpKernel(const float* __restrict__ w1, const float* __restrict__ w3, int f, int d,
                                 bf16* __restrict__ dst, int dPad) {
  const int P = blockIdx.x;
  const int q = P / 16, s = P % 16;
  const int out = q * 8 + (s % 8);
  const float* src = (s < 8 ? w1 : w3) + size_t(out) * d;
  for (int c = threadIdx.x; c < dPad; c += blockDim.x)
    dst[size_t(P) * dPad + c] = __float2bfloat16_rn(out < f && c < d ? src[c] : 0.0f);
}

}  // namespace

void launchPackBf16(const float* src, int rows, int cols, bf16* dst, int rowsPad, int colsPad, cudaStream_t s) {
  packBf16Kernel<<<unsigned(rowsPad), 256, 0, s>>>(src, rows, cols, dst, colsPad);
  checkLaunch("packBf16Kernel");
}

void launchPackGateUp(const float* w1, const float* w3, int f, int d, bf16* dst, int fPad, int dPad,
                      cudaStream_t s) {
  packGateUpKernel<<<unsigned(2 * fPad), 256, 0, s>>>(w1, w3, f, d, dst, dPad);
  checkLaunch("packGateUpKernel");
}

}  // namespace moe_cuda
