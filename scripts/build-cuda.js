#!/usr/bin/env node
// npm run build:cuda: builds the optional CUDA plugin (cuda/ -> build-cuda/moe_cuda.so) with CMake and nvcc.
// Fails with a clear message when nvcc or cmake is missing. MOE_CUDA_ARCHS overrides the GPU targets (default:
// sm_80/86/89, sm_90a and compute_90 PTX; "native" builds for the GPUs of this machine only).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

function which(cmd) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const p = path.join(dir, cmd);
    if (dir && fs.existsSync(p)) return p;
  }
  return null;
}

const nvcc = process.env.CUDACXX || which('nvcc') || ['/usr/local/cuda/bin/nvcc'].find((p) => fs.existsSync(p));
if (!nvcc) {
  console.error(
    'build:cuda: nvcc (the CUDA toolkit compiler) was not found on PATH, in CUDACXX or at /usr/local/cuda/bin/nvcc.\n' +
      'Install the CUDA toolkit (12.x or 13.x) to build the GPU plugin. The CPU package does not need it.',
  );
  process.exit(1);
}
if (!which('cmake')) {
  console.error('build:cuda: cmake was not found on PATH; install CMake 3.18 or newer.');
  process.exit(1);
}

const buildDir = path.join(root, 'build-cuda', 'cmake');
const configure = [
  '-S',
  root,
  '-B',
  buildDir,
  '-DMOE_CUDA=ON',
  '-DCMAKE_BUILD_TYPE=Release',
  `-DCMAKE_CUDA_COMPILER=${nvcc}`,
];
// Unset: back to CMakeLists' default targets, even where an earlier override sits in the build folder's cache.
configure.push(process.env.MOE_CUDA_ARCHS ? `-DMOE_CUDA_ARCHS=${process.env.MOE_CUDA_ARCHS}` : '-UMOE_CUDA_ARCHS');
for (const args of [
  configure,
  ['--build', buildDir, '--target', 'moe_cuda', '-j', String(require('node:os').cpus().length)],
]) {
  const r = spawnSync('cmake', args, { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`build:cuda: cmake ${args.join(' ')} failed (exit ${r.status})`);
    process.exit(r.status || 1);
  }
}
console.log(`build:cuda: built ${path.join(root, 'build-cuda', 'moe_cuda.so')}`);
