/**
 * Where the packed weights live: buffers of 4 MiB and more go on transparent huge pages where the kernel offers
 * them (native/include/moe/aligned.h). Until step 26 those under glibc's mmap threshold (up to 32 MiB) came from
 * its heap, often already faulted in with 4 KiB pages: a third of an OLMoE layer's packed weights streamed
 * through 4 KiB pages (bench/RESULTS.md, step 26).
 * Checked in a child process, so that no other test's buffers come and go between its two readings of the
 * process's huge-page total. Skipped, and said so, where THP is not granted on request (off, 2 MiB pages off, the
 * process opted out, no direct compaction), where an override build (MOE_NATIVE_ADDON) is loaded, and where the
 * kernel fell back to small pages during the child's run (a fragmented machine: the code was right, the check
 * inconclusive). Under THP "always" every big buffer gets huge pages anyway, so there the test cannot tell the old
 * code from the new; "madvise", the Debian default, is where it can.
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

/** Why huge pages would not be granted on request here, or undefined when they would. */
function thpUnavailable(): string | undefined {
  const enabled = thpSetting('enabled'),
    defrag = thpSetting('defrag'),
    size2M = thpSetting('hugepages-2048kB/enabled'); // (Linux 6.8+: per page size; "inherit" follows `enabled`)
  if (!['always', 'madvise'].includes(enabled ?? '')) return `enabled=${enabled}`;
  if (size2M !== undefined && size2M !== 'inherit' && !['always', 'madvise'].includes(size2M))
    return `hugepages-2048kB/enabled=${size2M}`;
  if (!['always', 'madvise', 'defer+madvise'].includes(defrag ?? '')) return `defrag=${defrag}`;
  if (/^THP_enabled:\s*0/m.test(fs.readFileSync('/proc/self/status', 'utf8'))) return 'THP_enabled: 0 (prctl)';
  return undefined;
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
const fallbacks = () => Number(/^thp_fault_fallback (\\d+)/m.exec(fs.readFileSync('/proc/vmstat', 'utf8'))[1]);
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
  const [before, fellBack] = [huge(), fallbacks()];
  const layer = new MoELayer({ router, experts, dtype });
  const y = layer.forward(fill(8 * d, 7, 1)).output;
  const after = huge();
  console.log(JSON.stringify({ before, after, fallbacks: fallbacks() - fellBack, finite: y.every(Number.isFinite) }));
})();
`;

test('packed expert weights of 4 MiB and more are on transparent huge pages', () => {
  if (process.env.MOE_NATIVE_ADDON) {
    console.log(
      '  skipped: MOE_NATIVE_ADDON loads another build (an AddressSanitizer build keeps its buffers on the heap)',
    );
    return;
  }
  const unavailable = thpUnavailable();
  if (unavailable) {
    console.log(`  skipped: transparent huge pages are not granted on request here (${unavailable})`);
    return;
  }
  for (const dtype of ['bf16', 'fp32']) {
    const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', '-e', CHILD, dtype], {
      cwd: path.join(__dirname, '..'),
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.is(r.status, 0, r.stderr);
    const { before, after, fallbacks, finite } = JSON.parse(r.stdout) as Record<string, number> & { finite: boolean };
    assert.ok(finite);
    if (fallbacks > 0) {
      console.log(`  ${dtype}: inconclusive, the kernel fell back to small pages ${fallbacks} times meanwhile`);
      continue;
    }
    const packed = 4 * (dtype === 'bf16' ? 12 : 24) * MiB;
    // (a little under all of it: a huge page the kernel could not find would cost speed, not correctness)
    assert.ok(
      after - before >= 0.9 * packed,
      `${dtype}: ${(after - before) / MiB} MiB more on huge pages, packed ${packed / MiB} MiB`,
    );
  }
});

test.run();
