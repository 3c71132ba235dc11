// CudaLayer: upload, workspace and the forward's stage sequence (see layer.h).
#include "layer.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common.cuh"

namespace moe_cuda {

void DeviceBuffer::ensure(size_t bytes) {
  if (bytes <= bytes_) return;
  release();
  const cudaError_t status = cudaMalloc(&ptr_, bytes);
  if (status != cudaSuccess) {
    ptr_ = nullptr;
    // An allocation failure is not sticky, but it stays the thread's last error: clear it, so that the next launch
    // check (of any layer on this thread) does not report it again.
    (void)cudaGetLastError();
    check(status, ("cudaMalloc of " + std::to_string(bytes) + " bytes").c_str());
  }
  bytes_ = bytes;
}

void DeviceBuffer::release() {
  if (ptr_) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

namespace {

size_t rowsBytes(int64_t rows, int64_t width, size_t elem) { return size_t(std::max<int64_t>(rows, 1)) * width * elem; }

// cuMemGetAddressRange from the driver, found through the runtime (the plugin links no driver library).
using AddressRange = int (*)(unsigned long long* base, size_t* size, unsigned long long ptr);
AddressRange addressRange() {
  static const AddressRange fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t rc =
        cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &p, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t rc = cudaGetDriverEntryPoint("cuMemGetAddressRange", &p, cudaEnableDefault, &found);
#endif
    if (rc != cudaSuccess || found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      p = nullptr;
    }
    return reinterpret_cast<AddressRange>(p);
  }();
  return fn;
}

// A caller's device pointer must be device memory of the layer's GPU with `bytes` after it: a bad pointer would
// otherwise fault inside a kernel and leave the process's CUDA context unusable.
void checkDeviceSpan(const void* ptr, size_t bytes, int device, const char* what) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, ptr) != cudaSuccess) {
    cudaGetLastError();
    throw CudaError(std::string(what) + ": not a pointer CUDA knows");
  }
  if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
    throw CudaError(std::string(what) + ": not device memory (forwardDevice takes cudaMalloc'ed pointers; use " +
                    "forward() for host arrays)");
  if (a.type == cudaMemoryTypeDevice && a.device != device)
    throw CudaError(std::string(what) + ": memory of GPU " + std::to_string(a.device) + ", the layer is on GPU " +
                    std::to_string(device));
  unsigned long long base = 0;
  size_t size = 0;
  const AddressRange range = addressRange();
  if (range && range(&base, &size, reinterpret_cast<uintptr_t>(ptr)) == 0 &&
      reinterpret_cast<uintptr_t>(ptr) + bytes > base + size)
    throw CudaError(std::string(what) + ": the allocation ends " +
                    std::to_string(base + size - reinterpret_cast<uintptr_t>(ptr)) + " bytes after the pointer, " +
                    std::to_string(bytes) + " are needed (T x d floats)");
}

}  // namespace

CudaLayer::CudaLayer(const MoeCudaLayerDesc& desc)
    : cfg_(desc.routing),
      E_(desc.routing.numExperts),
      d_(desc.routing.hiddenSize),
      maxK_(desc.routing.maxK),
      staticK_(desc.staticK),
      ws_(new Workspace) {
  try {
    init(desc);
  } catch (...) {
    releaseHandles();  // the destructor does not run for a constructor that throws
    throw;
  }
}

void CudaLayer::init(const MoeCudaLayerDesc& desc) {
  if (cfg_.nGroup > 32) throw CudaError("nGroup: the CUDA gating supports at most 32 expert groups");
  check(cudaGetDevice(&device_), "cudaGetDevice");
  // (at most 160 KB, the bound every GPU run so far used on H100/H200; less on GPUs that allow less)
  sharedOptin_ = std::min<size_t>(sharedOptinBytes(device_), 160 * 1024);
  if (gatingSharedBytes(cfg_) > sharedOptin_)
    throw CudaError("numExperts: too many experts for the CUDA gating kernel's shared memory on this GPU (" +
                    std::to_string(gatingSharedBytes(cfg_)) + " bytes, " + std::to_string(sharedOptin_) +
                    " available)");
  check(cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device_), "multiprocessors");
  dPad_ = int(roundUp(d_, kGemmTileN));
  const int64_t f = desc.intermediateSize;
  experts_.f = int(f);
  experts_.fPad = int(roundUp(f, kGemmTileN / 2));
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
  for (auto& ev : stage_) check(cudaEventCreate(&ev), "cudaEventCreate");
  check(cudaEventCreateWithFlags(&snapshotReady_, cudaEventDisableTiming), "cudaEventCreate");
  gate_.ensure(size_t(E_) * d_ * sizeof(float));
  check(cudaMemcpy(gate_.as<float>(), desc.gateWeight, gate_.bytes(), cudaMemcpyHostToDevice), "gate upload");
  if (desc.bias) {
    bias_.ensure(size_t(E_) * sizeof(float));
    check(cudaMemcpy(bias_.as<float>(), desc.bias, bias_.bytes(), cudaMemcpyHostToDevice), "bias upload");
  }
  if (desc.logitBias) {
    logitBias_.ensure(size_t(E_) * sizeof(float));
    check(cudaMemcpy(logitBias_.as<float>(), desc.logitBias, logitBias_.bytes(), cudaMemcpyHostToDevice),
          "logit bias upload");
  }
  const size_t perExpertGateUp = size_t(2) * experts_.fPad * dPad_, perExpertDown = size_t(dPad_) * experts_.fPad;
  experts_.gateUp.ensure(E_ * perExpertGateUp * sizeof(bf16));
  experts_.down.ensure(E_ * perExpertDown * sizeof(bf16));
  loaded_.assign(size_t(E_), false);
  counters_.ensure(size_t(4 + E_) * sizeof(unsigned long long));
  check(cudaMemset(counters_.as<void>(), 0, counters_.bytes()), "counters");
  check(cudaMallocHost(&snapshot_, counters_.bytes()), "cudaMallocHost");
  std::memset(snapshot_, 0, counters_.bytes());
  drained_.assign(size_t(4 + E_), 0);
  const char* poison = std::getenv("MOE_CUDA_POISON");
  poison_ = poison && poison[0] == '1';
  hopper_ = hopperGemmAvailable();
  // Tests and benchmarks: MOE_CUDA_TILE=small|large|wide|deep|narrow|stream|hopper forces one GEMM tile (hopper
  // runs as deep where the device cannot take it).
  if (const char* tile = std::getenv("MOE_CUDA_TILE")) {
    const std::string t(tile);
    const char* names[] = {"small", "large", "wide", "deep", "narrow", "stream", "hopper"};
    for (int i = 0; i < kGemmTiles; ++i)
      if (t == names[i]) forcedTile_ = i;
  }
  // A/B runs (bench/gpu/check.sh MOE_CHECK_AB_ENV): MOE_CUDA_GEMV_MAX_TOKENS=0..8, the most tokens a forward
  // streams the experts with the decode GEMV kernels (default kGemvDefaultTokens); above, the grouped GEMM tiles.
  if (const char* v = std::getenv("MOE_CUDA_GEMV_MAX_TOKENS")) {
    const int n = std::atoi(v);
    if (v[0] >= '0' && v[0] <= '9' && n >= 0 && n <= kGemvMaxRows) gemvMaxTokens_ = n;
  }
  noteBytes();
}

CudaLayer::~CudaLayer() {
  if (stream_) cudaStreamSynchronize(stream_);
  if (done_) cudaEventSynchronize(done_);
  releaseHandles();
}

void CudaLayer::releaseHandles() {
  if (snapshot_) cudaFreeHost(snapshot_);
  snapshot_ = nullptr;
  for (auto& ev : stage_) {
    if (ev) cudaEventDestroy(ev);
    ev = nullptr;
  }
  if (done_) cudaEventDestroy(done_);
  if (snapshotReady_) cudaEventDestroy(snapshotReady_);
  if (stream_) cudaStreamDestroy(stream_);
  done_ = snapshotReady_ = nullptr;
  stream_ = nullptr;
}

// Upload through a staging buffer (one matrix at a time), then pack into bf16 on the device.
void CudaLayer::setExpert(int e, const float* w1, const float* w3, const float* w2) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (experts_.f == 0) throw CudaError("setExpert: this CUDA layer was created as a router (no experts)");
  if (e < 0 || e >= E_) throw CudaError("expert: index out of range");
  const size_t n = size_t(experts_.f) * d_;
  staging_.ensure(3 * n * sizeof(float));
  float* s = staging_.as<float>();
  check(cudaMemcpy(s, w1, n * sizeof(float), cudaMemcpyHostToDevice), "w1 upload");
  check(cudaMemcpy(s + n, w3, n * sizeof(float), cudaMemcpyHostToDevice), "w3 upload");
  check(cudaMemcpy(s + 2 * n, w2, n * sizeof(float), cudaMemcpyHostToDevice), "w2 upload");
  packExpert(e, s);
  check(cudaStreamSynchronize(stream_), "expert packing");
  loaded_[size_t(e)] = true;
  if (std::all_of(loaded_.begin(), loaded_.end(), [](bool b) { return b; })) staging_.release();
}

void CudaLayer::packExpert(int e, const float* s) {
  const size_t n = size_t(experts_.f) * d_;
  const int fPad = experts_.fPad;
  launchPackGateUp(s, s + n, experts_.f, d_, experts_.gateUp.as<bf16>() + size_t(e) * 2 * fPad * dPad_, fPad, dPad_,
                   stream_);
  launchPackBf16(s + 2 * n, d_, experts_.f, experts_.down.as<bf16>() + size_t(e) * dPad_ * fPad, dPad_, fPad,
                 stream_);
}

void CudaLayer::poison(int64_t T, cudaStream_t s) {
  Workspace& w = *ws_;
  const int64_t R = T * maxK_;
  check(cudaMemsetAsync(w.y.as<void>(), 0xff, size_t(T) * d_ * sizeof(float), s), "poison");
  check(cudaMemsetAsync(w.out.as<void>(), 0xff, size_t(R) * dPad_ * sizeof(float), s), "poison");
  check(cudaMemsetAsync(w.hidden.as<void>(), 0xff, size_t(R) * experts_.fPad * sizeof(bf16), s), "poison");
  check(cudaMemsetAsync(w.indices.as<void>(), 0xff, size_t(T) * maxK_ * 4, s), "poison");
  check(cudaMemsetAsync(w.weights.as<void>(), 0xff, size_t(T) * maxK_ * 4, s), "poison");
  check(cudaMemsetAsync(w.k.as<void>(), 0xff, size_t(T) * 4, s), "poison");
  check(cudaMemsetAsync(w.rowToken.as<void>(), 0xff, size_t(R) * 4, s), "poison");
  check(cudaMemsetAsync(w.slotRow.as<void>(), 0xff, size_t(R) * 4, s), "poison");
  if (hasShared_) check(cudaMemsetAsync(w.sharedOut.as<void>(), 0xff, size_t(T) * dPad_ * sizeof(float), s), "poison");
}

void CudaLayer::setShared(const float* w1, const float* w3, const float* w2, int64_t f, const float* gate) {
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    uploadShared(w1, w3, w2, f, gate);
  } catch (...) {
    noteBytes();
    throw;
  }
  noteBytes();
}

void CudaLayer::uploadShared(const float* w1, const float* w3, const float* w2, int64_t f, const float* gate) {
  shared_.f = int(f);
  shared_.fPad = int(roundUp(f, kGemmTileN / 2));
  const size_t n = size_t(f) * d_;
  staging_.ensure(3 * n * sizeof(float));
  float* s = staging_.as<float>();
  check(cudaMemcpy(s, w1, n * sizeof(float), cudaMemcpyHostToDevice), "shared w1 upload");
  check(cudaMemcpy(s + n, w3, n * sizeof(float), cudaMemcpyHostToDevice), "shared w3 upload");
  check(cudaMemcpy(s + 2 * n, w2, n * sizeof(float), cudaMemcpyHostToDevice), "shared w2 upload");
  shared_.gateUp.ensure(size_t(2) * shared_.fPad * dPad_ * sizeof(bf16));
  shared_.down.ensure(size_t(dPad_) * shared_.fPad * sizeof(bf16));
  launchPackGateUp(s, s + n, shared_.f, d_, shared_.gateUp.as<bf16>(), shared_.fPad, dPad_, stream_);
  launchPackBf16(s + 2 * n, d_, shared_.f, shared_.down.as<bf16>(), dPad_, shared_.fPad, stream_);
  if (gate) {
    sharedGate_.ensure(size_t(d_) * sizeof(float));
    check(cudaMemcpyAsync(sharedGate_.as<float>(), gate, sharedGate_.bytes(), cudaMemcpyHostToDevice, stream_),
          "shared gate upload");
  } else {
    sharedGate_.release();
  }
  check(cudaStreamSynchronize(stream_), "shared expert packing");
  staging_.release();
  hasShared_ = true;
  capacity_ = 0;  // the next forward sizes the shared expert's buffers too
}

void CudaLayer::checkComplete() const {
  for (int e = 0; e < E_; ++e)
    if (!loaded_[size_t(e)]) throw CudaError("layer: weights missing for expert " + std::to_string(e));
}

void CudaLayer::ensureWorkspace(int64_t T) {
  if (T <= capacity_) return;
  try {
    growWorkspace(T);
  } catch (...) {
    noteBytes();
    throw;
  }
  noteBytes();
}

void CudaLayer::growWorkspace(int64_t T) {
  check(cudaEventSynchronize(done_), "waiting for the previous forward");  // its buffers are about to move
  // Until every buffer has grown: a failed allocation below leaves some released, and the next call, even a
  // smaller one, must allocate them again rather than write through a null pointer.
  capacity_ = 0;
  Workspace& w = *ws_;
  const int64_t R = T * maxK_;
  const bool layer = experts_.f > 0;  // a router needs no output rows
  w.x.ensure(rowsBytes(T, d_, sizeof(float)));
  if (layer) w.y.ensure(rowsBytes(T, d_, sizeof(float)));
  w.xb.ensure(rowsBytes(T, dPad_, sizeof(bf16)));
  w.logits.ensure(rowsBytes(T, E_, sizeof(float)));
  w.raw.ensure(rowsBytes(T, 1, sizeof(float)));
  w.complexity.ensure(rowsBytes(T, 1, sizeof(float)));
  w.indices.ensure(rowsBytes(T, maxK_, sizeof(int32_t)));
  w.weights.ensure(rowsBytes(T, maxK_, sizeof(float)));
  w.k.ensure(rowsBytes(T, 1, sizeof(int32_t)));
  w.counts.ensure(size_t(E_) * sizeof(int32_t));
  w.badToken.ensure(sizeof(int32_t));
  w.sliceCounts.ensure(size_t(E_) * 8 * sizeof(int32_t));
  w.probsNorm.ensure(rowsBytes(T, E_, sizeof(float)));
  w.lse2.ensure(rowsBytes(T, 1, sizeof(float)));
  w.stats.ensure(8 * sizeof(double));
  w.offsets.ensure(size_t(E_ + 1) * sizeof(int32_t));
  w.tilesBefore.ensure(size_t(E_ + 1) * sizeof(int32_t));
  w.active.ensure(size_t(E_) * sizeof(int32_t));
  w.numActive.ensure(sizeof(int32_t));
  w.rowToken.ensure(rowsBytes(R, 1, sizeof(int32_t)));
  w.rowWeight.ensure(rowsBytes(R, 1, sizeof(float)));
  w.slotRow.ensure(rowsBytes(R, 1, sizeof(int32_t)));
  w.hidden.ensure(rowsBytes(R, experts_.fPad, sizeof(bf16)));
  if (layer) w.out.ensure(rowsBytes(R, dPad_, sizeof(float)));
  w.calib.ensure(4 * sizeof(double));
  w.knots.ensure(1025 * sizeof(double));
  w.probs.ensure(rowsBytes(T, E_, sizeof(float)));
  if (hasShared_) {
    w.sharedScale.ensure(rowsBytes(T, 1, sizeof(float)));
    w.sharedHidden.ensure(rowsBytes(T, shared_.fPad, sizeof(bf16)));
    w.sharedOut.ensure(rowsBytes(T, dPad_, sizeof(float)));
    w.sharedOffsets.ensure(2 * sizeof(int32_t));
    w.sharedTiles.ensure(2 * sizeof(int32_t));
    w.sharedActive.ensure(sizeof(int32_t));
    w.sharedNumActive.ensure(sizeof(int32_t));
  }
  capacity_ = T;
}

void CudaLayer::enqueueRoute(const float* x, int64_t T, bool fromLogits, const MoeCudaForward& call, bool stats,
                             cudaStream_t s, bool convert) {
  Workspace& w = *ws_;
  float* logits = w.logits.as<float>();
  if (fromLogits) {
    if (convert) launchToBf16(x, T, d_, dPad_, w.xb.as<bf16>(), s);
  } else {
    launchGateLogits(x, T, d_, dPad_, gate_.as<float>(), logitBias_.as<float>(), E_, logits, w.xb.as<bf16>(), s);
  }
  const float* complexity = nullptr;
  if (cfg_.selection == 3) {
    const int mode = call.complexityMode;
    if (mode == MOE_CUDA_COMPLEXITY_HOST) {
      complexity = w.complexity.as<float>();
    } else if (mode != MOE_CUDA_COMPLEXITY_NONE) {
      if (mode == MOE_CUDA_COMPLEXITY_ROUTER_ENTROPY) launchLogitEntropy(logits, T, E_, w.raw.as<float>(), s);
      else launchRowNorms(x, T, d_, mode == MOE_CUDA_COMPLEXITY_NORM_L1 ? 1 : 2, w.raw.as<float>(), s);
      launchCalibrate(w.raw.as<float>(), T, call.calibration, w.calib.as<double>(), w.knots.as<double>(),
                      call.knotCount, w.complexity.as<float>(), s);
      complexity = w.complexity.as<float>();
    }
  }
  gating_ = GatingOut{w.indices.as<int32_t>(),
                      w.weights.as<float>(),
                      w.k.as<int32_t>(),
                      stats ? w.probsNorm.as<float>() : nullptr,
                      call.probsOut ? w.probs.as<float>() : nullptr,
                      stats ? w.lse2.as<float>() : nullptr};
  gatingComplexity_ = complexity;
  // Few tokens: selection runs inside the align launch (enqueueAlign), one kernel for both.
  if (splitRoute_ || !routeAlignFused(cfg_, T, sharedOptin_))
    launchGating(cfg_, logits, T, bias_.as<float>(), complexity, gating_, s);
}

GemmTile CudaLayer::tileFor(int64_t rows, int experts) const {
  const GemmTile big = hopper_ ? GemmTile::Hopper : GemmTile::Deep;
  if (forcedTile_ >= 0) return forcedTile_ == int(GemmTile::Hopper) ? big : GemmTile(forcedTile_);
  // Up to ~48 rows per expert on average the pass streams weights: 32-row tiles waste least, with deep K steps
  // for many bytes in flight. Above, tiles with K steps of 64: 128 x 256 wgmma blocks on sm_90a, 128 x 128
  // mma.sync elsewhere (bench/RESULTS.md, CUDA runs 2-4 and H200 runs 1-5).
  return rows <= int64_t(48) * experts ? GemmTile::Stream : big;
}

void CudaLayer::enqueueAlign(int64_t T, bool counters, cudaStream_t s) {
  Workspace& w = *ws_;
  AlignOut out{w.counts.as<int32_t>(),
               w.offsets.as<int32_t>(),
               w.tilesBefore.as<int32_t>(),
               w.active.as<int32_t>(),
               w.numActive.as<int32_t>(),
               w.rowToken.as<int32_t>(),
               w.rowWeight.as<float>(),
               w.slotRow.as<int32_t>(),
               counters ? counters_.as<unsigned long long>() : nullptr,
               w.badToken.as<int32_t>(),
               w.sliceCounts.as<int32_t>()};
  const int tileRows = gemmTileRows(tileFor(T * maxK_, std::min<int64_t>(E_, T * maxK_)));
  if (!splitRoute_ && routeAlignFused(cfg_, T, sharedOptin_))
    launchRouteAlign(cfg_, w.logits.as<float>(), T, bias_.as<float>(), gatingComplexity_, gating_, tileRows, out, s);
  else
    launchAlign(T, maxK_, E_, w.indices.as<int32_t>(), w.weights.as<float>(), w.k.as<int32_t>(), tileRows, out, s);
}

void CudaLayer::enqueueStats(int64_t T, cudaStream_t s) {
  Workspace& w = *ws_;
  launchRouteStats(T, E_, w.probsNorm.as<float>(), w.lse2.as<float>(), w.counts.as<int32_t>(), w.stats.as<double>(),
                   s);
}

void CudaLayer::runExperts(const ExpertWeights& ew, const int32_t* rowToken, const int32_t* offsets,
                           const int32_t* tilesBefore, const int32_t* active, const int32_t* numActive, int E,
                           int64_t rows, int slots, const float* scale, bf16* hidden, float* out, int64_t T,
                           cudaStream_t s) {
  const bf16* xb = ws_->xb.as<bf16>();
  // Every expert has at most T rows: stream the weights (unless a test or benchmark forces a GEMM tile).
  if (T <= gemvMaxTokens_ && forcedTile_ < 0) {
    const GemvSchedule g{offsets, active, numActive, slots, int(T), multiprocessors_};
    launchExpertGemvs(xb, rowToken, dPad_, ew.gateUp.as<bf16>(), ew.down.as<bf16>(), ew.fPad, g, scale, hidden, out,
                      s);
    return;
  }
  const GemmTile tile = tileFor(rows, slots);
  const GroupedSchedule g{offsets, tilesBefore, E,
                          int(ceilDiv(rows, gemmTileRows(tile)) + std::min<int64_t>(slots, rows)), tile};
  launchGateUpGemm(xb, rowToken, dPad_, ew.gateUp.as<bf16>(), ew.fPad, g, hidden, s);
  launchDownGemm(hidden, ew.fPad, ew.down.as<bf16>(), dPad_, g, scale, out, s);
}

void CudaLayer::enqueueExperts(const float* x, int64_t T, cudaStream_t s) {
  Workspace& w = *ws_;
  const int64_t R = T * maxK_;
  runExperts(experts_, w.rowToken.as<int32_t>(), w.offsets.as<int32_t>(), w.tilesBefore.as<int32_t>(),
             w.active.as<int32_t>(), w.numActive.as<int32_t>(), E_, R, int(std::min<int64_t>(E_, R)),
             w.rowWeight.as<float>(), w.hidden.as<bf16>(), w.out.as<float>(), T, s);
  if (!hasShared_) return;
  launchIdentitySchedule(T, gemmTileRows(tileFor(T, 1)), w.sharedOffsets.as<int32_t>(), w.sharedTiles.as<int32_t>(),
                         w.sharedActive.as<int32_t>(), w.sharedNumActive.as<int32_t>(), s);
  const float* scale = nullptr;
  if (sharedGate_.bytes()) {
    launchSharedGate(x, T, d_, sharedGate_.as<float>(), w.sharedScale.as<float>(), s);
    scale = w.sharedScale.as<float>();
  }
  runExperts(shared_, nullptr, w.sharedOffsets.as<int32_t>(), w.sharedTiles.as<int32_t>(),
             w.sharedActive.as<int32_t>(), w.sharedNumActive.as<int32_t>(), 1, T, 1, scale,
             w.sharedHidden.as<bf16>(), w.sharedOut.as<float>(), T, s);
}

void CudaLayer::enqueueCombine(int64_t T, float* y, cudaStream_t s) {
  Workspace& w = *ws_;
  launchCombine(T, d_, dPad_, maxK_, w.k.as<int32_t>(), w.slotRow.as<int32_t>(), w.out.as<float>(),
                hasShared_ ? w.sharedOut.as<float>() : nullptr, y, s);
}

void CudaLayer::forward(MoeCudaForward& call, bool routeOnly) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!routeOnly) checkComplete();
  const int64_t T = call.tokens;
  if (T < 1) throw CudaError("tokens: expected at least 1");
  // Grid and index limits of the kernels: 65535 blocks of 8 tokens, and int32 row indices.
  if (T > int64_t(65535) * 8 || T * maxK_ > int64_t(INT32_MAX) / 2)
    throw CudaError("tokens: " + std::to_string(T) + " is more than one CUDA call takes (524280); split the batch");
  const bool host = routeOnly || !call.onDevice;
  if (!host && (!call.x || !call.y)) throw CudaError("forwardDevice: input and output pointers are required");
  if (!host) {
    checkDeviceSpan(call.x, size_t(T) * d_ * sizeof(float), device_, "input");
    checkDeviceSpan(call.y, size_t(T) * d_ * sizeof(float), device_, "output");
  }
  cudaStream_t s = host || !call.stream ? stream_ : static_cast<cudaStream_t>(call.stream);
  // The dynamic rule's calibration, checked and compared with what the device holds: uploaded only when it
  // changed, so device-pointer calls with a fixed calibration copy nothing from the host. Host calls hand the
  // device state back.
  const bool quantile = cfg_.selection == 3 && call.calibration == MOE_CUDA_CALIBRATION_QUANTILE;
  if (quantile && (!call.knots || call.knotCount < 2 || call.knotCount > 1025))
    throw CudaError("calibration: quantile needs 2 to 1025 knots");
  const size_t knots = quantile ? size_t(call.knotCount) : 0;
  const std::vector<double>& uploaded = uploadedCalibration_;
  const bool calibrationChanged =
      cfg_.selection == 3 &&
      !(uploaded.size() == 3 + knots && std::equal(call.calibState, call.calibState + 3, uploaded.begin()) &&
        std::equal(call.knots, call.knots + knots, uploaded.begin() + 3));
  // A device-pointer call may be captured into a CUDA graph. done_ orders the layer's calls (they share the
  // workspace); inside a capture it is waited on and recorded as external event nodes, which each replay of the graph
  // then waits on and records (a plain wait on an event recorded outside the capture would invalidate it, and a
  // plain record would leave done_ captured, unusable to the calls after). A capture cannot grow the workspace.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (!host) check(cudaStreamIsCapturing(s, &capture), "stream capture status");
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  if (capturing && T > capacity_)
    throw CudaError("forwardDevice: a CUDA graph capture of " + std::to_string(T) +
                    " tokens, more than any call before: run one uncaptured call of that size first");
  if (capturing && calibrationChanged)
    throw CudaError("forwardDevice: the calibration changed since the last uncaptured call (a capture cannot copy it "
                    "from the host): run one uncaptured call first");
  ensureWorkspace(T);
  Workspace& w = *ws_;
  check(cudaStreamWaitEvent(s, done_, capturing ? cudaEventWaitExternal : cudaEventWaitDefault),
        "ordering after the previous forward");
  const float* x = call.x;
  float* y = call.y;
  if (poison_ && !routeOnly) poison(T, s);
  if (host) {
    check(cudaEventRecord(stage_[0], s), "event");
    if (call.x || !call.logits) {
      check(cudaMemcpyAsync(w.x.as<float>(), call.x, size_t(T) * d_ * sizeof(float), cudaMemcpyHostToDevice, s),
            "x upload");
    }
    x = w.x.as<float>();
    y = w.y.as<float>();
  }
  if (call.logits)
    check(cudaMemcpyAsync(w.logits.as<float>(), call.logits, size_t(T) * E_ * sizeof(float), cudaMemcpyHostToDevice,
                          s),
          "logits upload");
  if (cfg_.selection == 3) {
    if (call.complexityMode == MOE_CUDA_COMPLEXITY_HOST)
      check(cudaMemcpyAsync(w.complexity.as<float>(), call.complexity, size_t(T) * sizeof(float),
                            cudaMemcpyHostToDevice, s),
            "complexity upload");
    if (calibrationChanged) {
      check(cudaMemcpyAsync(w.calib.as<double>(), call.calibState, 3 * sizeof(double), cudaMemcpyHostToDevice, s),
            "calibration upload");
      if (quantile)
        check(cudaMemcpyAsync(w.knots.as<double>(), call.knots, knots * sizeof(double), cudaMemcpyHostToDevice, s),
              "knots upload");
      uploadedCalibration_.assign(call.calibState, call.calibState + 3);
      uploadedCalibration_.insert(uploadedCalibration_.end(), call.knots, call.knots + knots);
    }
  }
  enqueueRoute(x, T, call.logits != nullptr, call, host, s, !routeOnly);
  if (host) check(cudaEventRecord(stage_[1], s), "event");
  enqueueAlign(T, !host, s);  // counts and the first bad token, also for a bare router
  if (host) enqueueStats(T, s);
  if (!routeOnly) {
    if (host) check(cudaEventRecord(stage_[2], s), "event");
    enqueueExperts(x, T, s);
    if (host) check(cudaEventRecord(stage_[3], s), "event");
    enqueueCombine(T, y, s);
    if (host) check(cudaEventRecord(stage_[4], s), "event");
  }
  check(capturing ? cudaEventRecordWithFlags(done_, s, cudaEventRecordExternal) : cudaEventRecord(done_, s), "event");
  if (!host) {
    // A running zscore moved the device's statistics without telling the host: upload them again next time.
    if (cfg_.selection == 3 && call.calibration == MOE_CUDA_CALIBRATION_ZSCORE) uploadedCalibration_.clear();
    return;
  }

  // Host mode: copy the results back and wait for them.
  const size_t TK = size_t(T) * maxK_, TE = size_t(T) * E_;
  auto download = [&](void* dst, const void* src, size_t bytes) {
    if (dst) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "download");
  };
  if (!routeOnly) download(call.y, y, size_t(T) * d_ * sizeof(float));
  download(call.indices, w.indices.as<void>(), TK * 4);
  download(call.weights, w.weights.as<void>(), TK * 4);
  download(call.k, w.k.as<void>(), size_t(T) * 4);
  download(call.counts, w.counts.as<void>(), size_t(E_) * 4);
  download(call.logitsOut, w.logits.as<void>(), TE * 4);
  download(call.probsOut, w.probs.as<void>(), TE * 4);
  if (cfg_.selection == 3 && call.complexityMode != MOE_CUDA_COMPLEXITY_NONE)
    download(call.complexityOut, w.complexity.as<void>(), size_t(T) * 4);
  if (cfg_.selection == 3) download(call.calibState, w.calib.as<void>(), 3 * sizeof(double));
  const bool calibrationMoved = cfg_.selection == 3 && call.calibration == MOE_CUDA_CALIBRATION_ZSCORE;
  download(call.routeStats, w.stats.as<void>(), 5 * sizeof(double));
  int32_t bad = 0;
  download(&bad, w.badToken.as<void>(), sizeof(int32_t));
  check(cudaStreamSynchronize(s), "forward");
  call.badToken = bad < T ? bad : -1;
  if (calibrationMoved) uploadedCalibration_.assign(call.calibState, call.calibState + 3);  // what the device holds
  for (int i = 0; i < 4; ++i) {
    float ms = 0;
    if (!routeOnly || i == 0) check(cudaEventElapsedTime(&ms, stage_[i], stage_[i + 1]), "stage timing");
    call.stageMs[i] = ms;
  }
}

// Never waits: hands out the last completed snapshot, then queues the next copy behind the latest forward.
void CudaLayer::drain(MoeCudaCounters& out) {
  std::lock_guard<std::mutex> lock(drainMutex_);
  out.calls = out.tokens = out.assignments = out.nonFinite = 0;
  for (int e = 0; e < E_; ++e) out.expertTokens[e] = 0;
  if (out.wait) {
    // A copy of the counters after every call enqueued so far, waited for; read below like any landed copy.
    check(cudaStreamWaitEvent(stream_, done_, 0), "counter snapshot ordering");
    check(cudaMemcpyAsync(snapshot_, counters_.as<void>(), counters_.bytes(), cudaMemcpyDeviceToHost, stream_),
          "counter snapshot");
    check(cudaEventRecord(snapshotReady_, stream_), "counter snapshot");
    check(cudaEventSynchronize(snapshotReady_), "counter snapshot");
    snapshotPending_ = true;
  }
  if (snapshotPending_) {
    const cudaError_t state = cudaEventQuery(snapshotReady_);
    if (state == cudaErrorNotReady) return;
    check(state, "counter snapshot");
    snapshotPending_ = false;
    uint64_t* fields[4] = {&out.calls, &out.tokens, &out.assignments, &out.nonFinite};
    for (int i = 0; i < 4 + E_; ++i) {
      const unsigned long long delta = snapshot_[i] - drained_[size_t(i)];
      drained_[size_t(i)] = snapshot_[i];
      if (i < 4) *fields[i] = delta;
      else out.expertTokens[i - 4] = delta;
    }
  }
  check(cudaStreamWaitEvent(stream_, done_, 0), "counter snapshot ordering");
  check(cudaMemcpyAsync(snapshot_, counters_.as<void>(), counters_.bytes(), cudaMemcpyDeviceToHost, stream_),
        "counter snapshot");
  check(cudaEventRecord(snapshotReady_, stream_), "counter snapshot");
  snapshotPending_ = true;
}

void CudaLayer::noteBytes() {
  weightBytes_.store(int64_t(experts_.gateUp.bytes() + experts_.down.bytes() + shared_.gateUp.bytes() +
                             shared_.down.bytes() + gate_.bytes()),
                     std::memory_order_relaxed);
  const Workspace& w = *ws_;
  const DeviceBuffer* all[] = {&w.x,      &w.xb,          &w.logits,  &w.raw,       &w.complexity, &w.indices,
                               &w.weights, &w.k,          &w.counts,  &w.probsNorm, &w.lse2,       &w.rowToken,
                               &w.rowWeight, &w.slotRow,  &w.hidden,  &w.out,       &w.y,          &w.sharedHidden,
                               &w.sharedOut, &w.sharedScale};
  int64_t bytes = 0;
  for (const DeviceBuffer* b : all) bytes += int64_t(b->bytes());
  workspaceBytes_.store(bytes, std::memory_order_relaxed);
}

void CudaLayer::info(MoeCudaLayerInfo& out) const {
  out.weightBytes = weightBytes_.load(std::memory_order_relaxed);
  out.workspaceBytes = workspaceBytes_.load(std::memory_order_relaxed);
  out.device = device_;
  std::snprintf(out.path, sizeof(out.path), hopper_ ? "wgmma sm90a bf16" : "mma.sync bf16");
  out.gemvMaxTokens = gemvMaxTokens_;
  out.forcedTile = forcedTile_;
}

void CudaLayer::captureForward(MoeCudaForward call, int replays) {
  if (!call.onDevice) throw CudaError("captureForward: device pointers only");
  cudaStream_t s = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  struct Release {
    cudaStream_t& s;
    cudaGraph_t& graph;
    cudaGraphExec_t& exec;
    ~Release() {
      if (exec) cudaGraphExecDestroy(exec);
      if (graph) cudaGraphDestroy(graph);
      if (s) cudaStreamDestroy(s);
    }
  } release{s, graph, exec};
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  call.stream = s;
  forward(call);  // the warm-up: sizes the workspace and uploads any calibration
  check(cudaStreamSynchronize(s), "warm-up");
  check(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), "graph capture");
  try {
    forward(call);
  } catch (...) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(s, &partial);
    if (partial) cudaGraphDestroy(partial);
    (void)cudaGetLastError();
    throw;
  }
  check(cudaStreamEndCapture(s, &graph), "graph capture");
  check(cudaGraphInstantiate(&exec, graph, 0), "graph instantiate");
  for (int i = 0; i < replays; ++i) check(cudaGraphLaunch(exec, s), "graph launch");
  check(cudaStreamSynchronize(s), "graph replay");
}

}  // namespace moe_cuda
