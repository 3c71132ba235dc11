#!/usr/bin/env node
// Prints its arguments (compiler flags) when the C++ compiler node-gyp will use accepts them and compiles a use of
// the intrinsics they enable; prints nothing otherwise. binding.gyp asks it about the AMX flags (g++ 11+, clang 12+):
// an older compiler builds the addon without the AMX kernel, which cpu_features.cc then never chooses.
'use strict';
const { spawnSync } = require('node:child_process');

const flags = process.argv.slice(2);
const compiler = (process.env.CXX || 'g++').split(/\s+/).filter(Boolean);
const source = '#include <immintrin.h>\nvoid moe_probe() { _tile_zero(0); _tile_dpbf16ps(0, 1, 2); _tile_release(); }\n';
const result = spawnSync(compiler[0], [...compiler.slice(1), ...flags, '-x', 'c++', '-c', '-o', '/dev/null', '-'], {
  input: source,
  encoding: 'utf8',
});
process.stdout.write(result.status === 0 ? flags.join(' ') : '');
