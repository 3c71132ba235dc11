#!/usr/bin/env bash
# Builds the CPU addon with sanitizers (cmake-js into build-sanitize-KIND/, CMake option MOE_SANITIZE) and runs the
# test suites against it (MOE_NATIVE_ADDON), the sanitizer runtime preloaded into Node:
#   address  AddressSanitizer + UndefinedBehaviorSanitizer (default): every finding aborts the test process
#   thread   ThreadSanitizer: the run fails on any race report with an access in the addon, or one it cannot attribute
#            (scripts/tsan-gate.js); reports within Node's own (uninstrumented) internals are counted and kept
#   bash scripts/test-sanitized.sh [address|thread] [uvu file pattern]
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-address}
case "$kind" in
  address) sanitize=address,undefined runtime=libasan.so ;;
  thread) sanitize=thread runtime=libtsan.so ;;
  *) echo "usage: bash scripts/test-sanitized.sh [address|thread] [uvu file pattern]" >&2; exit 2 ;;
esac
# Every suite but those that never reach the addon in this process or would only re-test other tools under the
# sanitizer (packing and installing, the CLI's child processes, promtool and a Prometheus server, GPU tests).
skip='cli|cuda|package|readme|tsan-gate|observability-(logging|promtool|server)'
pattern=${2:-"^(?!($skip)\\.test\\.ts\$).*\\.test\\.ts\$"}

out=build-sanitize-$kind
cxx=$(command -v "${CXX:-g++}")
echo "== building the CPU addon with -fsanitize=$sanitize into $out/ ($cxx; log: $out.log)"
if ! npx cmake-js compile --out "$out" --CDMOE_CUDA=OFF --CDMOE_SANITIZE="$sanitize" \
  --CDCMAKE_CXX_COMPILER="$cxx" >"$out.log" 2>&1; then
  tail -n 40 "$out.log" >&2
  exit 1
fi
addon=$PWD/$out/Release/dynamic_moe_router_kit.node
preload=$("$cxx" -print-file-name="$runtime")
if [ ! -f "$preload" ]; then
  echo "no $runtime next to $cxx: install the compiler's sanitizer runtime" >&2
  exit 1
fi

echo "== tests against $addon, $runtime preloaded"
# Node itself leaks at exit by design (no leak check); a huge allocation must return null, as the impossible-allocation
# test expects from the real allocator.
export MOE_NATIVE_ADDON=$addon LD_PRELOAD=$preload
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# ThreadSanitizer writes its reports to files and the run goes on (no suppressions: TSan drops a whole report when
# any frame of either stack matches one, which could hide a race between the addon and Node's code).
reports=$PWD/$out/reports
rm -rf "$reports" && mkdir -p "$reports"
export TSAN_OPTIONS="log_path=$reports/tsan exitcode=0 history_size=7 allocator_may_return_null=1 report_signal_unsafe=0"
timeout 1200 node --import tsx node_modules/uvu/bin.js test "$pattern"
# (the gate itself runs without the sanitizer runtime)
if [ "$kind" = thread ]; then env -u LD_PRELOAD -u TSAN_OPTIONS node scripts/tsan-gate.js "$reports"; fi
