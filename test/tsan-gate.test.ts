/**
 * scripts/tsan-gate.js, which decides whether a ThreadSanitizer run (scripts/test-sanitized.sh thread) fails: on
 * reports written in TSan's format, a race is the addon's when one of its accesses has a frame in the addon, not when
 * only the stacks that created its threads do; a lost stack against an access outside Node cannot be attributed.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const gate = path.join(__dirname, '..', 'scripts', 'tsan-gate.js');
const addonFrame =
  '    #1 moe::ThreadPool::run_impl(int) native/runtime/thread_pool.cc:40 (dynamic_moe_router_kit.node+0x1234)';
const nodeFrame =
  '    #1 v8::platform::tracing::TracingController::GetCategoryGroupEnabled(char const*) <null> (node+0x1d60db8)';
const libcFrame = '    #1 __GI___strdup string/strdup.c:42 (libc.so.6+0x9e9a9)';
const lostFrame = '    [failed to restore the stack]';

function report(first: string, second: string, createdIn = nodeFrame): string {
  return [
    '==================',
    'WARNING: ThreadSanitizer: data race (pid=1)',
    '  Read of size 8 at 0x7b1000036000 by thread T14:',
    '    #0 strcmp sanitizer_common_interceptors.inc:457 (libtsan.so+0x62cc8)',
    first,
    '',
    '  Previous write of size 8 at 0x7b1000036000 by thread T13:',
    '    #0 malloc tsan_interceptors_posix.cpp:647 (libtsan.so+0x3ebb8)',
    second,
    '',
    '  Thread T14 (tid=2, running) created by thread T10 at:',
    '    #0 pthread_create tsan_interceptors_posix.cpp:1001 (libtsan.so+0x5e686)',
    createdIn,
    '',
    'SUMMARY: ThreadSanitizer: data race',
    '==================',
    '',
  ].join('\n');
}

function verdict(...reports: string[]): number | null {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-tsan-'));
  try {
    fs.writeFileSync(path.join(dir, 'tsan.1'), reports.join(''));
    return spawnSync(process.execPath, [gate, dir], { encoding: 'utf8' }).status;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('a race with an access in the addon fails the run; one between Node frames does not', () => {
  assert.is(verdict(report(addonFrame, nodeFrame)), 1, 'read in the addon');
  assert.is(verdict(report(nodeFrame, addonFrame)), 1, 'previous write in the addon');
  assert.is(verdict(report(nodeFrame, nodeFrame)), 0, "Node's own");
  assert.is(verdict(report(nodeFrame, libcFrame, addonFrame)), 0, 'the addon only where the thread was created');
  assert.is(verdict(report(nodeFrame, nodeFrame), report(addonFrame, addonFrame)), 1, 'one of several reports');
  assert.is(verdict(), 0, 'no reports');
});

test("an access made by Node's code is Node's, even with the addon further down its stack", () => {
  // V8 destroying a job state in a GC that an addon call triggered, racing with V8's own worker
  const v8CalledFromAddon = `${nodeFrame}\n${addonFrame.replace('#1', '#2')}`;
  assert.is(verdict(report(v8CalledFromAddon, nodeFrame)), 0);
  // an access made by a library the addon called (libc, libstdc++) stays the addon's
  const libcCalledFromAddon = `${libcFrame}\n${addonFrame.replace('#1', '#2')}`;
  assert.is(verdict(report(libcCalledFromAddon, nodeFrame)), 1);
  assert.is(verdict(report(v8CalledFromAddon, addonFrame)), 1, 'the other access in the addon');
});

test('a lost stack fails the run unless the other access is in Node', () => {
  assert.is(verdict(report(lostFrame, libcFrame)), 1);
  assert.is(verdict(report(lostFrame, nodeFrame)), 0);
  assert.is(verdict(report(lostFrame, addonFrame)), 1);
});

test.run();
