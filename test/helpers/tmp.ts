/** Temporary folders for one test file, removed after its suite: `const tmpDir = tempDirs('moe-x-')`. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';

export function tempDirs(prefix: string): () => string {
  const dirs: string[] = [];
  test.after(() => {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    dirs.push(dir);
    return dir;
  };
}
