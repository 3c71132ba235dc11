#!/usr/bin/env node
// Sorts the ThreadSanitizer reports of scripts/test-sanitized.sh (files in the folder given) into the addon's and
// Node's own. Exits 1 when an access of a report has a frame in the addon, unless Node's code made the access (see
// addonAccess) (the stacks of where its threads or
// mutexes were created do not count: the first async call starts libuv's thread pool from inside the addon's
// method, so every later race between two of those threads names the addon there), or when it cannot be attributed: one access's stack
// was lost ("[failed to restore the stack]") and the other access is not in Node's code either. A race whose known
// access is inside Node (node+0x... frames: V8's platform, workers, libuv) is counted as Node's own, not failed:
// only the addon is instrumented, so TSan cannot see Node's synchronisation. (What this cannot tell apart: an addon
// access whose stack was lost, racing with Node's code. history_size=7 makes lost stacks rare.)
'use strict';
const fs = require('node:fs');
const path = require('node:path');

/**
 * Whether an access is the addon's: a frame of its stack is in the addon, unless the code that made the access —
 * the first frame outside TSan's own interceptors — is Node's (V8 tearing down one of its job states inside a
 * garbage collection that an addon call happened to trigger is V8's race with V8, whose synchronisation TSan
 * cannot see).
 */
function addonAccess(stack) {
  const first = stack.split('\n').find((line) => /^ {4}#\d/.test(line) && !/\(libtsan\.so/.test(line));
  if (first && /\(node\+0x/.test(first)) return false;
  return ours.test(stack);
}

const dir = process.argv[2];
const ours = /dynamic_moe_router_kit\.node|\/native\//;
let failed = 0;
let nodeOwn = 0;
for (const name of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
  const text = fs.readFileSync(path.join(dir, name), 'utf8');
  for (const report of text.split(/^={10,}$/m).filter((r) => r.includes('WARNING: ThreadSanitizer'))) {
    // the accesses' stacks: each header line ("Write of size 8 at ... by thread T3:", "Previous read ...") and its
    // frames up to the blank line
    const accesses = [
      ...report.matchAll(/^ {2}(?:Previous )?(?:[Aa]tomic )?(?:[Rr]ead|[Ww]rite)[^\n]*\n((?: {4}[^\n]*\n)*)/gm),
    ].map((m) => m[1]);
    const lost = accesses.filter((s) => s.includes('[failed to restore the stack]')).length;
    const inNode = accesses.filter((s) => /\(node\+0x/.test(s)).length;
    const verdict = accesses.some(addonAccess)
      ? 'in the addon'
      : lost > 0 && inNode === 0
        ? 'not attributable (a lost stack, the other access outside Node)'
        : undefined;
    if (verdict) {
      failed++;
      console.error(`ThreadSanitizer report ${verdict} (${name}):\n${report}`);
    } else nodeOwn++;
  }
}
console.log(
  `ThreadSanitizer: ${failed} report(s) in the addon or unattributable, ${nodeOwn} within Node's own internals (${dir})`,
);
process.exit(failed ? 1 : 0);
