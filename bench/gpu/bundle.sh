#!/usr/bin/env bash
# Prepares .gpu/ for a GPU machine that has no Node toolchain: the GPU test and benchmark bundled into single
# files (esbuild) and this machine's node binary (xz). bench/gpu/check.sh uses them when present; carry .gpu and
# build-cuda/moe_cuda.so along with the working tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu
for entry in test/cuda.test.ts bench/gpu/bench.ts; do
  node_modules/.bin/esbuild "$entry" --bundle --platform=node --target=node20 --format=cjs --log-level=error \
    --outfile=".gpu/$(basename "$entry" .ts).js"
done
# The CPU addon, for a machine without a C++ toolchain: the local build, else the bundled prebuild.
addon=$( (ls build/Release/dynamic_moe_router_kit.node prebuilds/linux-x64/*.node 2>/dev/null || true) | head -n 1)
cp "$addon" .gpu/dynamic_moe_router_kit.node
[ -f .gpu/node.xz ] || xz -T0 -6 -c "$(command -v node)" >.gpu/node.xz
ls -la .gpu
