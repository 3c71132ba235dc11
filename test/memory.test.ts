/**
 * Where the packed weights live: buffers of 4 MiB and more go on transparent huge pages where the kernel offers
 * them (native/include/moe/aligned.h). Until step 26 those under glibc's mmap threshold (up to 32 MiB) came from
 * its heap, often already faulted in with 4 KiB pages: a third of an OLMoE layer's packed weights streamed
 * through 4 KiB pages (bench/RESULTS.md, step 26).
 * Checked in a child process, so that no other test's buffers come and go between its two readings of the
 * process's huge-page total. Skipped, and said so, where THP is off or an override build (a sanitizer's) is loaded.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const MiB = 1 << 20;

function thpSetting(name: string): string | undefined {
  try {
    return /\[([a-z+]+)\]/.exec(fs.readFileSync(`/sys/kernel/mm/transparent_hugepage/${name}`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

// The child: a layer of 4 experts with d=1024, f=2048 (bf16: 8 MiB of gate/up and 4 MiB of down panels each; fp32
// twice that), packed after the heap has held and freed 64 MiB, as a loader's temporaries leave it. Freeing a
// 16 MiB mapping first raises glibc's mmap threshold (to 16 MiB), so that the churn comes from the heap; the
// experts' weights sit above it, so that it cannot be trimmed. The heap's memory would then serve the panels
// with the 4 KiB pages the churn faulted in.
const CHILD = `
const fs = require('node:fs');
const { MoELayer, Router } = require('./lib');
const { native } = require('./lib/native');
const huge = () =>
  Number(/AnonHugePages:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/smaps_rollup', 'utf8'))[1]) * 1024;
const [E, d, f, dtype] = [4, 1024, 2048, process.argv[1]];
const fill = (n, seed, std) => {
  const a = new Float32Array(n);
  native().bench.fillNormal(a, seed, std);
  return a;
};
const settle = async () => {
  for (let i = 0; i < 3; i++) {
    global.gc();
    await new Promise((r) => setTimeout(r, 20));
  }
};
(async () => {
  let big = fill(4 << 20, 1, 1);
  big = null;
  await settle();
  let churn = Array.from({ length: 8 }, (_, i) => fill(2 << 20, 10 + i, 1));
  const experts = Array.from({ length: E }, (_, e) => ({
    w1: fill(f * d, 3 * e + 1, 0.03),
    w3: fill(f * d, 3 * e + 2, 0.03),
    w2: fill(d * f, 3 * e + 3, 0.02),
  }));
  churn = null;
  await settle();
  const gateWeight = fill(E * d, 99, 0.1);
  const router = new Router({ numExperts: E, hiddenSize: d, gateWeight, selection: { kind: 'topk', k: 2 } });
  const before = huge();
  const layer = new MoELayer({ router, experts, dtype });
  const y = layer.forward(fill(8 * d, 7, 1)).output;
  console.log(JSON.stringify({ before, after: huge(), finite: y.every(Number.isFinite) }));
})();
`;

test('packed expert weights of 4 MiB and more are on transparent huge pages', () => {
  const enabled = thpSetting('enabled'),
    defrag = thpSetting('defrag');
  if (process.env.MOE_NATIVE_ADDON) {
    console.log('  skipped: MOE_NATIVE_ADDON loads another build (a sanitizer build keeps its buffers on the heap)');
    return;
  }
  if (
    !['always', 'madvise'].includes(enabled ?? '') ||
    !['always', 'madvise', 'defer+madvise'].includes(defrag ?? '')
  ) {
    console.log(
      `  skipped: transparent huge pages are not granted on request here (enabled=${enabled}, defrag=${defrag})`,
    );
    return;
  }
  for (const dtype of ['bf16', 'fp32']) {
    const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', '-e', CHILD, dtype], {
      cwd: path.join(__dirname, '..'),
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.is(r.status, 0, r.stderr);
    const { before, after, finite } = JSON.parse(r.stdout) as { before: number; after: number; finite: boolean };
    assert.ok(finite);
    const packed = 4 * (dtype === 'bf16' ? 12 : 24) * MiB;
    // (a little under all of it: a huge page the kernel could not find would cost speed, not correctness)
    assert.ok(
      after - before >= 0.9 * packed,
      `${dtype}: ${(after - before) / MiB} MiB more on huge pages, packed ${packed / MiB} MiB`,
    );
  }
});

test.run();
