#!/usr/bin/env node
/**
 * A/B of two builds of the addon in one process: the same OLMoE-shaped layer (random weights) is timed under
 * each build, alternating in short rounds, so that the host's load swings hit both alike. Use it to decide a
 * kernel change on a shared machine, where two separate runs minutes apart differ by more than most changes:
 *
 *   cp build/Release/dynamic_moe_router_kit.node /tmp/A.node   # before the change
 *   (change, npm run build:native)
 *   node bench/ab-builds.js /tmp/A.node build/Release/dynamic_moe_router_kit.node
 *   DTYPE=1 TS=1,32,512 node bench/ab-builds.js ...            # bf16 (DTYPE=2: fp8), other batch sizes
 *   SHAPE=mixtral TS=32,256 node bench/ab-builds.js ...        # the Mixtral shape (several GB per build)
 *   GAP_MS=2 TS=1 node bench/ab-builds.js ...                   # each forward after 2 ms idle (a service between
 *                                                               # requests: the pool's workers have gone to sleep)
 *   STAGE=experts node bench/ab-builds.js ...                   # show the expert GEMM stage instead of the dispatch
 * Each cell also shows the median of the dispatch stage, or of the expert stage (native timestamps).
 */
'use strict';
const path = require('node:path');

const variants = process.argv.slice(2).map((p) => ({ name: p, addon: require(path.resolve(p)) }));
if (variants.length < 2) {
  console.error('usage: node bench/ab-builds.js A.node B.node [C.node ...]');
  process.exit(2);
}
const SHAPES = { olmoe: [2048, 1024, 64, 8], mixtral: [4096, 14336, 8, 2] };
const [d, f, E, k] = SHAPES[process.env.SHAPE ?? 'olmoe'];
const dtype = Number(process.env.DTYPE ?? 0);
const tokens = (process.env.TS ?? '1,32').split(',').map(Number);
const rounds = Number(process.env.ROUNDS ?? 40);
const gapMs = Number(process.env.GAP_MS ?? 0);
// The stage shown beside each time: the dispatch (gatherRows), or with STAGE=experts the expert GEMMs.
const stageName = process.env.STAGE === 'experts' ? 'experts' : 'dispatch';
const stage = stageName === 'experts' ? 4 : 3;
const idle = new Int32Array(new SharedArrayBuffer(4)); // (Atomics.wait on it: the thread sleeps, nothing runs)
const fill = variants[0].addon.bench.fillNormal;
const gate = new Float32Array(E * d);
fill(gate, 1, 0.02);
const config = { numExperts: E, hiddenSize: d, scoring: 0, selection: 0, k, p: 1, tau: 0, minK: k, maxK: k };
Object.assign(config, { nGroup: 0, topkGroup: 0, groupScore: 0, normalize: true, scale: 1 });
for (const v of variants) {
  v.router = new v.addon.NativeRouter(config, gate, null, 2, null);
  v.layer = new v.addon.NativeLayer(v.router, dtype, k, 2);
}
for (let e = 0; e < E; e++) {
  const w1 = new Float32Array(f * d);
  const w3 = new Float32Array(f * d);
  const w2 = new Float32Array(d * f);
  fill(w1, 3 * e + 1, 0.02);
  fill(w3, 3 * e + 2, 0.02);
  fill(w2, 3 * e + 3, 0.03);
  for (const v of variants) v.layer.setExpert(e, w1, w3, w2, f);
}
const median = (a) => [...a].sort((p, q) => p - q)[a.length >> 1];
for (const T of tokens) {
  const x = new Float32Array(T * d);
  fill(x, 9, 1);
  const out = [new Float32Array(T * d), new Int32Array(T * k), new Float32Array(T * k), new Int32Array(T)];
  const rest = [new Int32Array(E), new Float64Array(5), new Float64Array(7), null, null, 0];
  const times = variants.map(() => []);
  const stageMs = variants.map(() => []); // one stage's time, from the native stage timestamps
  for (let round = 0; round < rounds; round++) {
    variants.forEach((v, i) => {
      for (let r = 0; r < 3; r++) {
        if (gapMs > 0) Atomics.wait(idle, 0, 0, gapMs);
        const t0 = process.hrtime.bigint();
        v.layer.forward(x, T, ...out, ...rest);
        times[i].push(Number(process.hrtime.bigint() - t0) / 1e6);
        stageMs[i].push((rest[2][stage + 1] - rest[2][stage]) / 1e6);
      }
    });
  }
  const cells = variants.map(
    (v, i) =>
      `${path.basename(v.name)} ${median(times[i]).toFixed(2)} ms (min ${Math.min(...times[i]).toFixed(2)}; ` +
      `${stageName} ${median(stageMs[i]).toFixed(3)})`,
  );
  console.log(`${['fp32', 'bf16', 'fp8'][dtype]} T=${T}${gapMs > 0 ? ` (after ${gapMs} ms idle)` : ''}: ${cells.join('  ')}`);
}
