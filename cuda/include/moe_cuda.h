/* The C ABI of the CUDA plugin (cuda/ -> moe_cuda.so), loaded on request by native/runtime/cuda_plugin.cc.
 * Plain C: no C++ exceptions or STL types cross it. Every call returns 0 on success, or non-zero with a
 * message written to `err` (always NUL-terminated). The plugin links cudart statically, so a machine needs only
 * the NVIDIA driver; without one, `probe` fails with a message and nothing else is called. */
#ifndef MOE_CUDA_H
#define MOE_CUDA_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_CUDA_API_VERSION 5u /* 2: MoeCudaBench.emptyGraphMs; 3: layerCaptureForward; 4: MoeCudaCounters.wait;
                                    5: MoeCudaBench.gatingMs, alignMs, routeAlignStreamMs, emptyGraphStreamMs;
                                    MoeCudaLayerInfo.gemvMaxTokens, forcedTile */

/* Mirrors moe::RouterConfig (native/include/moe/types.h); enums by value. */
typedef struct MoeCudaRouting {
  int32_t numExperts, hiddenSize;
  int32_t scoring;   /* 0 softmax, 1 sigmoid */
  int32_t selection; /* 0 topk, 1 topp, 2 threshold, 3 dynamic, 4 gptOss */
  int32_t k;
  float p, tau;
  int32_t minK, maxK;
  int32_t nGroup, topkGroup, groupScore; /* groupScore: 0 top2sum, 1 max */
  int32_t normalize;
  float scale;
} MoeCudaRouting;

typedef struct MoeCudaProbe {
  int32_t deviceCount;
  int32_t device;         /* the device used: the current one (CUDA_VISIBLE_DEVICES picks) */
  int32_t major, minor;   /* compute capability */
  int32_t multiprocessors;
  int32_t driverVersion, runtimeVersion;
  int64_t totalMemory;
  char name[128];
  int32_t score;          /* 0: cannot run here; >0: usable (sm_80 or newer) */
} MoeCudaProbe;

typedef struct MoeCudaLayerDesc {
  MoeCudaRouting routing;
  const float* gateWeight; /* [E, d] fp32, copied */
  const float* bias;       /* [E] or null: selection only */
  const float* logitBias;  /* [E] or null: added to the logits */
  int64_t intermediateSize;
  int32_t staticK;
} MoeCudaLayerDesc;

/* Where the per-token complexity of the dynamic rule comes from. */
enum { MOE_CUDA_COMPLEXITY_NONE = 0, MOE_CUDA_COMPLEXITY_HOST = 1, MOE_CUDA_COMPLEXITY_ROUTER_ENTROPY = 2,
       MOE_CUDA_COMPLEXITY_NORM_L2 = 3, MOE_CUDA_COMPLEXITY_NORM_L1 = 4 };
/* How a device-computed raw signal becomes [0,1] (lib/estimators.ts Calibrator). */
enum { MOE_CUDA_CALIBRATION_NONE = 0, MOE_CUDA_CALIBRATION_ZSCORE = 1, MOE_CUDA_CALIBRATION_ZSCORE_FROZEN = 2,
       MOE_CUDA_CALIBRATION_QUANTILE = 3 };

typedef struct MoeCudaForward {
  int64_t tokens;
  int32_t onDevice;         /* 0: x, y and logits are host pointers; 1: x, y are device pointers (no host sync) */
  const float* x;           /* [T, d] */
  float* y;                 /* [T, d] */
  void* stream;             /* onDevice: a cudaStream_t, or null for the layer's own stream */
  const float* logits;      /* host [T, E] or null: replaces the gate GEMM */
  int32_t complexityMode;   /* MOE_CUDA_COMPLEXITY_* (dynamic rule only) */
  const float* complexity;  /* host [T] when complexityMode is HOST */
  int32_t calibration;      /* MOE_CUDA_CALIBRATION_* */
  double calibState[3];     /* running count, mean, M2 (zscore): in, and out after a host-mode call */
  const double* knots;      /* quantile knots */
  int32_t knotCount;
  /* Host outputs, written by host-mode calls (each may be null). */
  int32_t* indices;         /* [T, maxK] */
  float* weights;           /* [T, maxK] */
  int32_t* k;               /* [T] */
  int32_t* counts;          /* [E] */
  float* complexityOut;     /* [T] */
  float* logitsOut;         /* [T, E] router logits */
  float* probsOut;          /* [T, E] unbiased scores (softmax probabilities or sigmoids) */
  double routeStats[5];     /* meanK, auxLoss, zLoss, loadBalance, assignments */
  double stageMs[4];        /* gating, dispatch, expert GEMM, combine (device events) */
  int64_t badToken;         /* first token with non-finite logits, or -1 */
} MoeCudaForward;

/* Cumulative device-side counters; a drain returns the snapshot of the last completed copy (never waits). */
typedef struct MoeCudaCounters {
  uint64_t calls, tokens, assignments, nonFinite;
  uint64_t* expertTokens;   /* caller array [E] */
  /* in: 0 returns what the copy queued by the previous drain holds, never waiting; 1 waits for a copy of every
     count so far (the last drain before the layer is freed) */
  int32_t wait;
} MoeCudaCounters;

typedef struct MoeCudaLayerInfo {
  int64_t weightBytes, workspaceBytes;
  int32_t device;
  char path[32];            /* "mma.sync sm80" and so on */
  int32_t gemvMaxTokens;    /* forwards of at most this many tokens take the decode GEMV kernels */
  int32_t forcedTile;       /* MOE_CUDA_TILE's GemmTile (cuda/kernels.h order), -1 when the layer chooses */
} MoeCudaLayerInfo;

typedef struct MoeCudaBench {
  int64_t tokens;
  int32_t iterations;
  int32_t graph;            /* replay one captured CUDA graph per forward */
  double forwardMs;         /* median device time of one whole forward (device-resident x and y) */
  double routeAlignMs;      /* median of gating + align alone, from precomputed logits */
  double routeAlignFromXMs; /* the same with the gate GEMM from x */
  double expertMs;          /* median of the expert stage alone (gate/up + down), the layer's own tile choice */
  double expertMsByTile[7]; /* the same with each GEMM tile forced (cuda/kernels.h GemmTile order) */
  double expertFlops;       /* FLOPs of that stage: 6 d f per (token, expert) pair */
  double expertBytes;       /* distinct expert weight bytes that stage reads */
  double emptyGraphMs;      /* median of a graph of one empty kernel: the floor of the graph-timed figures above */
  double gatingMs, alignMs; /* route + align from logits as two launches (the unfused path), each timed alone */
  double routeAlignStreamMs;  /* routeAlignMs as the mean of 200 replays issued back to back */
  double emptyGraphStreamMs;  /* emptyGraphMs likewise */
} MoeCudaBench;

typedef struct MoeCudaLayer MoeCudaLayer;

typedef struct MoeCudaApi {
  uint32_t version;
  int (*probe)(MoeCudaProbe* out, char* err, size_t errLen);
  int (*layerCreate)(const MoeCudaLayerDesc* desc, MoeCudaLayer** out, char* err, size_t errLen);
  /* w1, w3: [f, d]; w2: [d, f]; fp32, converted to bf16 and uploaded once. */
  int (*layerSetExpert)(MoeCudaLayer* layer, int32_t expert, const float* w1, const float* w3, const float* w2,
                        char* err, size_t errLen);
  int (*layerSetShared)(MoeCudaLayer* layer, const float* w1, const float* w3, const float* w2, int64_t f,
                        const float* gate, char* err, size_t errLen);
  int (*layerForward)(MoeCudaLayer* layer, MoeCudaForward* call, char* err, size_t errLen);
  /* Routing only (host mode): gate GEMM, complexity, selection and stats; y is not used. A layer created with
   * intermediateSize 0 holds no experts and serves as a CUDA router. */
  int (*layerRoute)(MoeCudaLayer* layer, MoeCudaForward* call, char* err, size_t errLen);
  int (*layerDrain)(MoeCudaLayer* layer, MoeCudaCounters* out, char* err, size_t errLen);
  int (*layerInfo)(MoeCudaLayer* layer, MoeCudaLayerInfo* out);
  int (*layerBench)(MoeCudaLayer* layer, MoeCudaBench* bench, char* err, size_t errLen);
  /* Benchmarks only: every routed expert gets N(0, std^2) weights generated on the device (no host copy). */
  int (*layerRandomize)(MoeCudaLayer* layer, uint64_t seed, float std, char* err, size_t errLen);
  void (*layerDestroy)(MoeCudaLayer* layer);
  /* Device-to-device copy of `bytes`, median seconds over `iterations` (the bandwidth anchor). */
  int (*benchCopy)(int64_t bytes, int32_t iterations, double* seconds, char* err, size_t errLen);
  /* Plain device memory for tests of forwardDevice: allocate, free, and copy (toDevice 1: host -> device). */
  int (*deviceAlloc)(int64_t bytes, void** ptr, char* err, size_t errLen);
  void (*deviceFree)(void* ptr);
  int (*deviceCopy)(void* dst, const void* src, int64_t bytes, int32_t toDevice, char* err, size_t errLen);
  /* Tests only: `call` (device pointers) captured into a CUDA graph on a stream of its own after one uncaptured
   * warm-up call, replayed `replays` times and waited for. */
  int (*layerCaptureForward)(MoeCudaLayer* layer, MoeCudaForward* call, int32_t replays, char* err, size_t errLen);
} MoeCudaApi;

/* The one exported symbol. Returns null when `version` is not supported. */
const MoeCudaApi* moe_cuda_api(uint32_t version);

#ifdef __cplusplus
}
#endif
#endif
