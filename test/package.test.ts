/**
 * The "installed as a prebuilt npm binary" promise: `npm pack`, install the tarball into a fresh project with no
 * compiler reachable (PATH without one, CXX=false, CC=false, no build-from-source), then `require` and `import` both work there
 * and a route and a forward give the reference's result. Also checks what the tarball holds.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { referenceLayer } from '../lib/reference/layer';
import { referenceRoute } from '../lib/reference/routing';
import { relativeError } from './helpers/compare';

const repo = path.join(__dirname, '..');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-pack-'));
test.after(() => fs.rmSync(work, { recursive: true, force: true }));

/**
 * An environment in which no compiler can run: PATH is a folder holding only node, npm and sh (no gcc, g++, cc,
 * make or python), CXX and CC are `false`, and npm is not asked to build from source.
 */
const noCompilerEnv = (() => {
  const bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  const npmCli = fs.realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync(npmCli, path.join(bin, 'npm'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: bin, CXX: 'false', CC: 'false' };
  for (const key of Object.keys(env)) if (/^npm_config_build_from_source$/i.test(key)) delete env[key];
  return env;
})();

let tarball = '';

test('npm pack holds the prebuild, dist, native sources and monitoring, not tests or build trees', () => {
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', work], {
    cwd: repo,
    encoding: 'utf8',
    timeout: 120_000,
  });
  const info = JSON.parse(out)[0] as { filename: string; files: { path: string }[] };
  tarball = path.join(work, info.filename);
  const files = info.files.map((f) => f.path);
  assert.ok(
    files.some((f) => /^prebuilds\/linux-x64\/.+\.node$/.test(f)),
    'prebuild',
  );
  for (const needed of [
    'dist/index.js',
    'dist/index.mjs',
    'dist/index.d.ts',
    'binding.gyp',
    'native/cpu/gating.cc',
    'native/binding/addon.cc',
  ]) {
    assert.ok(files.includes(needed), needed);
  }
  // every file the source build runs (binding.gyp's commands: a source install without it fails at configure)
  const gyp = fs.readFileSync(path.join(repo, 'binding.gyp'), 'utf8');
  const gypScripts = [...gyp.matchAll(/node (scripts\/[\w.-]+\.js)/g)].map((m) => m[1]);
  assert.ok(gypScripts.length > 0, 'binding.gyp runs a script');
  for (const script of gypScripts) assert.ok(files.includes(script), `${script} (run by binding.gyp)`);
  for (const f of files)
    assert.not.match(f, /^(test|bench|build|build-cmake|node_modules)\//, `tarball must not hold ${f}`);
});

/** "GLIBC_2.16" -> ['GLIBC', [2, 16]] */
function versionOf(name: string): [string, number[]] | undefined {
  const m = /^([A-Z]+)_(\d+(?:\.\d+)*)$/.exec(name);
  return m ? [m[1], m[2].split('.').map(Number)] : undefined;
}
const newer = (a: number[], b: number[]) => {
  for (let i = 0; i < Math.max(a.length, b.length); i++)
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  return false;
};

test('the prebuild asks for no newer glibc or libstdc++ than the README states', () => {
  const readme = fs.readFileSync(path.join(repo, 'README.md'), 'utf8').replace(/\s+/g, ' ');
  const stated =
    /prebuild[^.]*? needs glibc (\d+\.\d+)\+ and the libstdc\+\+ of GCC \d+\+ \(GLIBCXX_([\d.]+), CXXABI_([\d.]+)\)/.exec(
      readme,
    );
  assert.ok(stated, "README's requirements name the prebuild's glibc and libstdc++ floor");
  const floor: Record<string, number[]> = {
    GLIBC: stated[1].split('.').map(Number),
    GLIBCXX: stated[2].split('.').map(Number),
    CXXABI: stated[3].split('.').map(Number),
    GCC: [4, 2], // libgcc_s: GCC 4.2's, which every one of those systems has
  };
  const dir = path.join(repo, 'prebuilds', 'linux-x64');
  const prebuilds = fs.readdirSync(dir).filter((f) => f.endsWith('.node'));
  assert.ok(prebuilds.length > 0, 'a prebuild exists');
  for (const file of prebuilds) {
    const dump = spawnSync('objdump', ['-p', path.join(dir, file)], { encoding: 'utf8' });
    if (dump.error) {
      console.log(`SKIP: objdump (binutils) is not available to read ${file}'s version needs`);
      return;
    }
    assert.is(dump.status, 0, dump.stderr);
    const needs = [...dump.stdout.matchAll(/^\s+0x[0-9a-f]+ 0x[0-9a-f]+ \d+ (\S+)$/gm)].map((m) => m[1]);
    assert.ok(
      needs.some((n) => n.startsWith('GLIBC_')),
      `${file}: version needs were read (${needs.join(' ')})`,
    );
    for (const need of needs) {
      const parsed = versionOf(need);
      assert.ok(parsed && floor[parsed[0]], `${file} needs ${need}, of a library the README does not name`);
      assert.not.ok(newer(parsed![1], floor[parsed![0]]), `${file} needs ${need}, newer than the README's floor`);
    }
  }
});

test('the tarball installs without a compiler, and require and import both work', () => {
  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  for (const tool of ['g++', 'gcc', 'cc', 'make', 'python3']) {
    const found = spawnSync('sh', ['-c', `command -v ${tool}`], { env: noCompilerEnv, encoding: 'utf8' });
    assert.is.not(found.status, 0, `${tool} must not be reachable, found ${found.stdout}`);
  }
  const install = spawnSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], {
    cwd: app,
    env: noCompilerEnv,
    encoding: 'utf8',
    timeout: 300_000,
  });
  assert.is(install.status, 0, `npm install failed:\n${install.stderr}`);
  const pkgDir = path.join(app, 'node_modules', 'dynamic-moe-router-kit');
  assert.not.ok(fs.existsSync(path.join(pkgDir, 'build', 'Release')), 'nothing was compiled');

  const E = 8;
  const d = 24;
  const f = 8;
  const T = 5;
  const wave = (n: number, s: number) => Array.from({ length: n }, (_, i) => Math.sin(i * s + 0.3) * 0.3);
  const gate = wave(E * d, 0.7);
  const x = wave(T * d, 0.13);
  const experts = Array.from({ length: E }, (_, e) => ({
    w1: wave(f * d, 0.21 + e),
    w3: wave(f * d, 0.37 + e),
    w2: wave(d * f, 0.53 + e),
  }));
  const cjs = `
    const { Router, MoELayer, backendInfo } = require('dynamic-moe-router-kit');
    const data = ${JSON.stringify({ gate, x, experts })};
    const router = new Router({ numExperts: ${E}, hiddenSize: ${d}, gateWeight: Float32Array.from(data.gate), selection: { kind: 'topk', k: 2 }, normalize: true });
    const layer = new MoELayer({ router, experts: data.experts.map((e) => ({ w1: Float32Array.from(e.w1), w3: Float32Array.from(e.w3), w2: Float32Array.from(e.w2) })) });
    const r = layer.forward(Float32Array.from(data.x));
    console.log(JSON.stringify({ backend: backendInfo().backend, indices: Array.from(r.routing.indices), weights: Array.from(r.routing.weights), k: Array.from(r.routing.k), output: Array.from(r.output) }));
  `;
  fs.writeFileSync(path.join(app, 'check.cjs'), cjs);
  const run = spawnSync(process.execPath, ['check.cjs'], {
    cwd: app,
    env: noCompilerEnv,
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.is(run.status, 0, run.stderr);
  const got = JSON.parse(run.stdout);
  assert.is(got.backend, 'cpu');
  const cfg = {
    numExperts: E,
    hiddenSize: d,
    scoring: 'softmax' as const,
    selection: 'topk' as const,
    k: 2,
    p: 1,
    tau: 0,
    minK: 2,
    maxK: 2,
    nGroup: 0,
    topkGroup: 0,
    groupScore: 'top2sum' as const,
    normalize: true,
    scale: 1,
  };
  const routing = referenceRoute(cfg, x, gate);
  assert.equal(got.indices, Array.from(routing.indices));
  const ref = referenceLayer(x, T, d, (e) => ({ ...experts[e], f }), { ...routing, maxK: 2 });
  assert.ok(relativeError(got.output, ref) < 1e-5, `output error ${relativeError(got.output, ref)}`);

  fs.writeFileSync(
    path.join(app, 'check.mjs'),
    `import { Router } from 'dynamic-moe-router-kit';\nimport kit from 'dynamic-moe-router-kit';\nconsole.log(typeof Router, typeof kit.MoELayer);\n`,
  );
  const esm = spawnSync(process.execPath, ['check.mjs'], {
    cwd: app,
    env: noCompilerEnv,
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.is(esm.status, 0, esm.stderr);
  assert.is(esm.stdout.trim(), 'function function');
});

test.run();
