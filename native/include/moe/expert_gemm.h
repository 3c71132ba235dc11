// The two GEMM passes of an expert over a range of its panels, so that (expert, panel range) items are the units of
// work the thread pool shares out. Rows are the expert's dispatched tokens; `acc` is worker scratch.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/gemm.h"

namespace moe {

// The activations one pass reads: fp32 rows, or bf16 pairs (uint32) rows; `ld` counts elements of that type.
struct Activations {
  DType dtype;
  const void* data;
  size_t ld;
};

// Scratch of one worker for fp8 panels on bf16 pairs (fp8 weights with bf16 activations: AMX, AVX-512): a K slice
// of 2048 widened to 1024 bf16 pairs, then its 16 blocks' scales (as uint32 words).
constexpr size_t kFp8TileScratchWords = size_t(1024 + 16) * kPanelWidth;

// acc[rows][32] = A[rows, K] · panel^T, blocked over K so the slice of the panel in use stays in L2. `weights`: the
// panel's type (fp32 panels take fp32 activations, bf16 panels bf16 pairs, fp8 panels either: bf16 pairs only where
// the kernels have fp8Tiles, and then `tileScratch` holds kFp8TileScratchWords).
// `nextPanel` (may be null) is the panel the caller computes next; its first slice is prefetched into L2.
// `wideSlices`: K slices of 2048 bf16 pairs on AMX too (the dense anchor's best; the layer's is 1024).
void panelProduct(const GemmKernels& kern, const Activations& A, int64_t rows, int64_t K, DType weights,
                  const void* panel, float* acc, const void* nextPanel = nullptr, bool wideSlices = false,
                  uint32_t* tileScratch = nullptr);

// Above this many bytes, a pass's output (the SwiGLU rows, the expert output rows) is written with non-temporal
// stores where whole 64-byte lines allow: it cannot stay in cache until the next stage reads it, and ordinary stores
// of lines that are not in cache each wait for the line to be read first (bench/RESULTS.md, step 24).
constexpr size_t kStreamStoreMinBytes = size_t(4) << 20;
// Whether an output of this many bytes in all is written around the caches (the `stream` arguments below).
inline bool streamsOutput(size_t bytes) { return bytes > kStreamStoreMinBytes; }

// The gate/up epilogue of experts other than a plain SwiGLU: biases added to the accumulators (gpt-oss's
// gate_up_proj_bias) and gpt-oss's clamped activation, h = (clamp(u, -limit, limit) + 1) * g * sigmoid(alpha * g)
// with g = min(gate, limit). `bias`: the expert's [panels][32] (per panel 16 gate then 16 up biases, zero past f),
// or null. Plain (no bias, not clamped): the kernels' own SwiGLU epilogue, as before.
struct GluEpilogue {
  const float* bias = nullptr;
  bool clamped = false;
  float alpha = 0, limit = 0;
  bool plain() const { return bias == nullptr && !clamped; }
};

// One tile row's 16 outputs of gate/up panel p under `ep` (see GluEpilogue), written as the kernels' swiglu writes.
void gluRow(const GemmKernels& kern, const float* tileRow, const GluEpilogue& ep, int64_t p, void* out, bool bf16);

// Gate/up panels [p0, p1) of one expert; panel p covers intermediate columns [16p, 16p+16): h = silu(x·w1) * (x·w3),
// (or the activation of `ep`), written to `hidden` (fp32 rows, or bf16 pairs when x is) with row stride `ldh` elements. `acc` is
// scratch for rows x 32 floats, rows x 64 for a streamed bf16 pass. `stream`: write whole lines with non-temporal
// stores (fp32: every panel's 16 outputs; bf16: two panels', from an even p), then fence; only where `hidden` and
// its rows start on 64-byte lines.
void gateUpPanels(const GemmKernels& kern, const Activations& x, int64_t rows, int64_t d, DType weights,
                  const void* gateUpPanels, int64_t p0, int64_t p1, void* hidden, size_t ldh, float* acc,
                  bool stream, uint32_t* tileScratch = nullptr, const GluEpilogue& ep = GluEpilogue{});

// Down panels [p0, p1) of one expert; panel p covers output columns [32p, 32p+32) of d:
// out[r] = weight[r] * (h[r] · w2^T + bias) (`bias` [d] or null). `acc`: rows x 32 floats. `stream`: as for gateUpPanels, for whole panels on
// rows that start on 64-byte lines (d a multiple of 16).
void downPanels(const GemmKernels& kern, const Activations& h, int64_t rows, int64_t f, DType weights,
                const void* downPanels, int64_t p0, int64_t p1, int64_t d, const float* rowWeight, float* out,
                size_t ldo, float* acc, bool stream, uint32_t* tileScratch = nullptr, const float* bias = nullptr);

// Writes a panel's accumulators (rows x 32, row stride 32) to rows x `cols` of `out` (row stride `ldo` floats),
// row r scaled by rowWeight[r] when rowWeight is set. `stream`: rows of a whole panel on 64-byte lines go with
// non-temporal stores; returns whether any did, and then the caller runs streamFence() before the rows are read
// by another thread (once per work item is enough).
bool storePanelRows(const float* acc, int64_t rows, int cols, const float* rowWeight, float* out, size_t ldo,
                    bool stream);
// Makes the non-temporal stores before it visible before any later store (the thread pool's "done" included).
void streamFence();

// Bytes of one packed panel over K for the weight type.
inline size_t panelBytes(DType dtype, int64_t K) {
  switch (dtype) {
    case DType::F32: return size_t(K) * kPanelWidth * sizeof(float);
    case DType::BF16: return size_t(packedKPairs(K)) * kPanelWidth * sizeof(uint32_t);
    default: return fp8PanelBytes(K);
  }
}

}  // namespace moe
