#!/usr/bin/env bash
# The one call to make on a machine with an NVIDIA GPU (under 8 minutes): build the CUDA plugin, run the GPU
# correctness tests (test/cuda.test.ts: against the float64 TypeScript references and the CPU backend, outputs
# poisoned with NaN before every forward), then benchmark against anchors measured in the same call (PyTorch dense
# bf16 matmul, copy bandwidth, a Hugging Face Mixtral block). Prints a short table last.
#
# Needs: node 20+ (or .gpu/node.xz from bench/gpu/bundle.sh), cmake + nvcc (unless MOE_CHECK_SKIP_BUILD=1 and
# build-cuda/moe_cuda.so exists), python3 with torch for the anchors (skipped without it).
# Logs and JSON go to $OUT (a temporary folder when unset). MOE_CUDA_ARCHS picks the GPU targets (default: native).
# Optional: MOE_CHECK_HOPPER_VARIANTS="0 1 2 3" times those wgmma pipeline variants (sm_90); after the benchmark
# MOE_CHECK_AB_ENV="NAME=value ...[; NAME=value ...]" repeats tests and benchmark with each set of variables
# (opt-in variants against the default), MOE_CHECK_SANITIZE=1 runs the GPU tests once more under compute-sanitizer
# (memcheck; slow), MOE_CHECK_PROFILE=1 profiles a decode-sized forward with Nsight Compute (ncu, SOL section).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$(mktemp -d)}
export OUT
start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start))s"; }

NODE=${NODE:-$(command -v node || true)}
if [ -z "$NODE" ] && [ -f .gpu/node.xz ]; then
  xz -dc .gpu/node.xz >/tmp/moe-check-node && chmod +x /tmp/moe-check-node && NODE=/tmp/moe-check-node
fi
if [ -z "$NODE" ]; then
  echo "check.sh: node was not found (install Node 20+, or run bench/gpu/bundle.sh where node is)" >&2
  exit 1
fi
echo "== machine ($(elapsed))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
"$NODE" --version

echo "== build ($(elapsed))"
if [ "${MOE_CHECK_SKIP_BUILD:-0}" = 1 ] && [ -f build-cuda/moe_cuda.so ]; then
  echo "using the existing build-cuda/moe_cuda.so"
else
  cmake -S . -B build-cuda/cmake -DMOE_CUDA=ON "-DMOE_CUDA_ARCHS=${MOE_CUDA_ARCHS:-native}" -DCMAKE_BUILD_TYPE=Release \
    >"$OUT/build.log" 2>&1 &&
    cmake --build build-cuda/cmake --target moe_cuda -j "$(nproc)" >>"$OUT/build.log" 2>&1 ||
    { tail -n 40 "$OUT/build.log"; echo "check.sh: the CUDA plugin did not build" >&2; exit 1; }
fi
if [ ! -f build/Release/dynamic_moe_router_kit.node ] && [ -f .gpu/dynamic_moe_router_kit.node ]; then
  mkdir -p build/Release && cp .gpu/dynamic_moe_router_kit.node build/Release/
fi
if [ ! -f build/Release/dynamic_moe_router_kit.node ] && [ ! -d prebuilds ]; then
  npm run build:native >>"$OUT/build.log" 2>&1 || { echo "check.sh: the CPU addon did not build" >&2; exit 1; }
fi

if [ -f .gpu/cuda.test.js ]; then
  TEST=(.gpu/cuda.test.js)
  BENCH=(.gpu/bench.js)
else
  TEST=(--import tsx node_modules/uvu/bin.js test "cuda\.test\.ts$")
  BENCH=(--import tsx bench/gpu/bench.ts)
fi

echo "== correctness ($(elapsed))"
MOE_CUDA_POISON=1 timeout 240 "$NODE" "${TEST[@]}" 2>&1 | tee "$OUT/test.log"
test_rc=${PIPESTATUS[0]}

echo "== anchors: PyTorch ($(elapsed))"
if timeout 150 python3 bench/gpu/torch_anchors.py >"$OUT/anchors.json" 2>"$OUT/anchors.err"; then
  cat "$OUT/anchors.json"
  anchors="$OUT/anchors.json"
else
  tail -n 5 "$OUT/anchors.err"
  echo "(no PyTorch anchors: the ratios to torch stay empty)"
  anchors=""
fi

# Optional (MOE_CHECK_HOPPER_VARIANTS="0 1 2 3", an sm_90 GPU): each listed pipeline variant of the sm_90a wgmma
# tile (cuda/grouped_gemm_sm90.cu, launchVariant) in processes of its own: the GEMM tile test, then the TFLOP/s of
# the two large batches (last column of "by tile"), 20 iterations each as in the full benchmark.
if [ -n "${MOE_CHECK_HOPPER_VARIANTS:-}" ] && nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | grep -q '^9\.0'; then
  for v in $MOE_CHECK_HOPPER_VARIANTS; do
    echo "== wgmma pipeline variant $v ($(elapsed))"
    MOE_CUDA_HOPPER_VARIANT=$v MOE_CUDA_POISON=1 MOE_CUDA_TEST_ONLY='GEMM tile' timeout 120 "$NODE" "${TEST[@]}" 2>&1 |
      tee -a "$OUT/hopper-test.log" | grep -E "Passed|Failed|Error" | head -n 4
    for row in mixtral:4096 olmoe:4096; do
      MOE_CUDA_HOPPER_VARIANT=$v MOE_BENCH_ONLY=$row MOE_BENCH_ITERATIONS=20 timeout 120 "$NODE" "${BENCH[@]}" $anchors 2>&1 |
        tee -a "$OUT/hopper-bench.log" | grep -E "^\| (mixtral|olmoe) " || echo "(variant $v, $row failed: see hopper-bench.log)"
    done
  done
fi

echo "== benchmark ($(elapsed))"
timeout 240 "$NODE" "${BENCH[@]}" $anchors 2>&1 | tee "$OUT/bench.log" | grep -v '^{' 
bench_rc=${PIPESTATUS[0]}

# Optional (MOE_CHECK_AB_ENV="NAME=value ...", e.g. MOE_CUDA_GEMV_T1_BLOCKS=8; several sets separated by ';'): the GPU
# tests and the benchmark once more with each set of variables, to compare opt-in variants with the rows above in
# the same call. The A/B benchmark runs the rows of MOE_CHECK_AB_ROWS (default: every row with T <= 64, what the
# opt-ins change; "all" for every row).
if [ -n "${MOE_CHECK_AB_ENV:-}" ]; then
  ab_default=mixtral:1,mixtral:4,mixtral:8,mixtral:32,mixtral:64,olmoe:1,olmoe:4,olmoe:8,olmoe:32,olmoe:64
  ab_rows=${MOE_CHECK_AB_ROWS:-$ab_default}
  [ "$ab_rows" = all ] && ab_rows=""
  ab=0
  IFS=';' read -r -a ab_sets <<<"$MOE_CHECK_AB_ENV"
  for ab_env in "${ab_sets[@]}"; do
    [ -z "${ab_env// /}" ] && continue
    ab=$((ab + 1))
    echo "== again with $ab_env ($(elapsed))"
    env $ab_env MOE_CUDA_POISON=1 timeout 240 "$NODE" "${TEST[@]}" 2>&1 | tee "$OUT/ab-test-$ab.log" |
      grep -E "Passed|Failed|Error" | head -n 4
    env $ab_env MOE_BENCH_ROWS="$ab_rows" timeout 240 "$NODE" "${BENCH[@]}" $anchors 2>&1 |
      tee "$OUT/ab-bench-$ab.log" | grep -E "^\| (mixtral|olmoe) "
  done
fi
if [ "${MOE_CHECK_SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
  echo "== compute-sanitizer memcheck ($(elapsed))"
  MOE_CUDA_POISON=1 timeout 300 compute-sanitizer --tool memcheck --print-limit 20 "$NODE" "${TEST[@]}" \
    >"$OUT/sanitize.log" 2>&1
  grep -E "ERROR SUMMARY|Invalid|Passed|Total" "$OUT/sanitize.log" | tail -n 8
fi
if [ "${MOE_CHECK_PROFILE:-0}" = 1 ] && command -v ncu >/dev/null 2>&1; then
  echo "== ncu: one OLMoE-shaped decode forward ($(elapsed))"
  MOE_BENCH_ONLY=olmoe:1 timeout 300 ncu --section SpeedOfLight --target-processes all "$NODE" "${BENCH[@]}" \
    >"$OUT/ncu.log" 2>&1
  grep -E "^  [a-zA-Z_]+.*\(|Duration|Memory Throughput|Compute \(SM\)" "$OUT/ncu.log" | head -n 60
fi
echo "correctness: $([ "$test_rc" = 0 ] && echo PASS || echo "FAIL ($test_rc)"); benchmark exit $bench_rc; $(elapsed) in all"
[ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ]
