#!/usr/bin/env node
// `npm test` and `npm pack` (prepack: a publish never ships a missing or stale prebuild) run this first. It (re)builds what is missing or older than its sources — the bundled prebuild
// (prebuildify, which moves its fresh build out of build/Release) and any stale build/Release — then the
// TypeScript in dist/.
'use strict';
const { execSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
// (the builds' output goes to stderr: `npm pack --json`, whose prepack this also is, keeps a clean stdout)
const run = (cmd) => execSync(cmd, { cwd: root, stdio: [0, 2, 2] });

function newest(p) {
  const stat = fs.statSync(p);
  if (!stat.isDirectory()) return stat.mtimeMs;
  return Math.max(0, ...fs.readdirSync(p).map((name) => newest(path.join(p, name))));
}

function oldest(files) {
  return files.length ? Math.min(...files.map((f) => fs.statSync(f).mtimeMs)) : 0;
}

const sources = Math.max(newest(path.join(root, 'native')), newest(path.join(root, 'binding.gyp')));
const built = path.join(root, 'build', 'Release', 'dynamic_moe_router_kit.node');
const prebuildDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const prebuilds = fs.existsSync(prebuildDir) ? fs.readdirSync(prebuildDir).map((f) => path.join(prebuildDir, f)) : [];
// node-gyp-build prefers build/Release over prebuilds/, so a stale local build must not survive either.
const prebuildStale = prebuilds.length === 0 || oldest(prebuilds) < sources;
const localStale = fs.existsSync(built) && fs.statSync(built).mtimeMs < sources;
if (prebuildStale || localStale) run('npm run build:prebuild');
run('npm run build:ts --silent');
