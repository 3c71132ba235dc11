#!/usr/bin/env node
// `npm test` runs this first: it compiles the TypeScript and builds the native addon when no loadable binary
// is present (a fresh clone where `npm install` skipped scripts, or sources changed since the last build).
'use strict';
const { execSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const run = (cmd) => execSync(cmd, { cwd: root, stdio: 'inherit' });

function newestSource(dir) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestSource(p) : fs.statSync(p).mtimeMs);
  }
  return newest;
}

const built = path.join(root, 'build', 'Release', 'dynamic_moe_router_kit.node');
const stale = !fs.existsSync(built) || fs.statSync(built).mtimeMs < Math.max(newestSource(path.join(root, 'native')), fs.statSync(path.join(root, 'binding.gyp')).mtimeMs);
if (stale && !fs.existsSync(path.join(root, 'prebuilds'))) run('npx node-gyp rebuild -j max');
else if (stale) run('npx node-gyp rebuild -j max');
run('npm run build:ts --silent');
