/**
 * The README's examples run as written: every ```js block is extracted and run in a child process from inside
 * the package (so `require('dynamic-moe-router-kit')` resolves to this checkout's dist/), with MODEL_DIR pointing
 * at a tiny Mixtral-layout checkpoint made here.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { writeTinyCheckpoint } from './helpers/checkpoint';

const repo = path.join(__dirname, '..');
const readme = fs.readFileSync(path.join(repo, 'README.md'), 'utf8');
const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
const scratch = fs.mkdtempSync(path.join(repo, '.tmp-readme-'));
const modelDir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-readme-model-'));
writeTinyCheckpoint(modelDir, 'mixtral', { hiddenSize: 32, intermediateSize: 16, numExperts: 8, topK: 2, seed: 9 });
test.after(() => {
  fs.rmSync(scratch, { recursive: true, force: true });
  fs.rmSync(modelDir, { recursive: true, force: true });
});

test('the README has runnable examples', () => {
  assert.ok(blocks.length >= 4, `found ${blocks.length} js blocks`);
});

blocks.forEach((code, i) => {
  test(`README example ${i + 1} runs: ${code
    .split('\n')
    .find((l) => l.trim() && !l.startsWith('const {'))
    ?.slice(0, 60)}`, () => {
    const file = path.join(scratch, `example-${i + 1}.js`);
    fs.writeFileSync(file, code);
    const r = spawnSync(process.execPath, [file], {
      cwd: repo,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, MODEL_DIR: modelDir },
    });
    assert.is(r.status, 0, `example ${i + 1} failed:\n${code}\n--- stderr ---\n${r.stderr}`);
    assert.ok(r.stdout.length > 0, 'prints something');
  });
});

test.run();
