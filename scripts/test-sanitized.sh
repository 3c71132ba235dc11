#!/usr/bin/env bash
# Builds the CPU addon with sanitizers (cmake-js into build-sanitize-KIND/, CMake option MOE_SANITIZE) and runs the
# test suites that reach native code against it (MOE_NATIVE_ADDON), the sanitizer runtime preloaded into Node:
#   address  AddressSanitizer + UndefinedBehaviorSanitizer (default)
#   thread   ThreadSanitizer (Node's own internals suppressed: scripts/tsan-node.supp)
# Every finding aborts the test process (no recovery), so the run fails.
#   bash scripts/test-sanitized.sh [address|thread] [uvu file pattern]
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-address}
case "$kind" in
  address) sanitize=address,undefined runtime=libasan.so ;;
  thread) sanitize=thread runtime=libtsan.so ;;
  *) echo "usage: bash scripts/test-sanitized.sh [address|thread] [uvu file pattern]" >&2; exit 2 ;;
esac
native_tests='^(router|router-errors|layer|robustness|estimators|models|models-hf|pretrained|fuzz-files|fuzz-api|workers|isa|serial-queue|observability-(metrics|exposition|tracing|health))\.test\.ts$'
pattern=${2:-$native_tests}

out=build-sanitize-$kind
echo "== building the CPU addon with -fsanitize=$sanitize into $out/ (log: $out.log)"
if ! npx cmake-js compile --out "$out" --CDMOE_CUDA=OFF --CDMOE_SANITIZE="$sanitize" >"$out.log" 2>&1; then
  tail -n 40 "$out.log" >&2
  exit 1
fi
addon=$PWD/$out/Release/dynamic_moe_router_kit.node
preload=$("${CXX:-g++}" -print-file-name="$runtime")
if [ ! -f "$preload" ]; then
  echo "no $runtime next to ${CXX:-g++}: install the compiler's sanitizer runtime" >&2
  exit 1
fi

echo "== tests against $addon, $runtime preloaded"
# Node itself leaks at exit by design (no leak check); a huge allocation must return null, as the impossible-allocation
# test expects from the real allocator.
export MOE_NATIVE_ADDON=$addon LD_PRELOAD=$preload
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# ThreadSanitizer writes its reports to files and the run goes on: only the addon is instrumented, so Node's own
# threads (workers, V8's platform) can look racy to it in ways no suppression list keeps up with. The run fails on any
# report with a frame in the addon; the others are counted and listed.
reports=$PWD/$out/reports
rm -rf "$reports" && mkdir -p "$reports"
export TSAN_OPTIONS="suppressions=$PWD/scripts/tsan-node.supp log_path=$reports/tsan exitcode=0 allocator_may_return_null=1 report_signal_unsafe=0"
node --import tsx node_modules/uvu/bin.js test "$pattern"
if [ "$kind" = thread ]; then
  ours=$(grep -l -e 'dynamic_moe_router_kit\.node' -e '/native/' "$reports"/* 2>/dev/null || true)
  if [ -n "$ours" ]; then
    echo "ThreadSanitizer reported a race in the addon:" >&2
    for f in $ours; do cat "$f" >&2; done
    exit 1
  fi
  others=$(cat "$reports"/* 2>/dev/null | grep -c 'WARNING: ThreadSanitizer' || true)
  echo "ThreadSanitizer: no report in the addon ($others in Node's own internals, not ours: $reports)"
fi
