/**
 * `moe-router run` end to end in a child process: checkpoint + x.npy in, y.npy and routing out, equal to the
 * in-process layer; bad arguments give one line and a non-zero exit.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MoELayer, readNpy, writeNpy } from '../lib';
import { parseSelection, UsageError } from '../lib/cli/args';
import { writeTinyCheckpoint } from './helpers/checkpoint';
import { freshSeed, randn } from './helpers/random';

const SEED = freshSeed();
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-cli-'));
test.after(() => fs.rmSync(root, { recursive: true, force: true }));
const main = path.join(__dirname, '..', 'lib', 'cli', 'main.ts');

function cli(...args: string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', main, ...args], { encoding: 'utf8', timeout: 60_000 });
}

test('run writes y.npy and the routing, equal to the in-process layer', () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'ck-')), 'olmoe', {
    hiddenSize: 32,
    intermediateSize: 16,
    numExperts: 8,
    topK: 2,
    seed: 5,
  });
  const x = randn(11 * 32, SEED);
  const input = path.join(root, 'x.npy');
  writeNpy(input, x, [11, 32]);
  const output = path.join(root, 'y.npy');
  const prefix = path.join(root, 'r');
  const r = cli(
    'run',
    '--model',
    ck.dir,
    '--layer',
    '1',
    '--input',
    input,
    '--output',
    output,
    '--selection',
    'topp:0.7',
    '--save-routing',
    prefix,
    '--threads',
    '2',
  );
  assert.is(r.status, 0, r.stderr);
  const expected = MoELayer.fromPretrained(ck.dir, { layer: 1, selection: { kind: 'topp', p: 0.7 } }).forward(x);
  const y = readNpy(output);
  assert.equal(y.shape, [11, 32]);
  assert.equal(Array.from(y.data), Array.from(expected.output));
  const indices = readNpy(`${prefix}.indices.npy`);
  assert.is(indices.dtype, 'int32');
  assert.equal(Array.from(indices.data), Array.from(expected.routing.indices));
  assert.equal(Array.from(readNpy(`${prefix}.weights.npy`).data), Array.from(expected.routing.weights));
});

test('bad arguments print one clear line and exit non-zero', () => {
  for (const [args, pattern] of [
    [['run', '--layer', '0'], /--model is required/],
    [['run', '--model', root, '--layer', 'x', '--input', 'a', '--output', 'b'], /--layer/],
    [
      ['run', '--model', path.join(root, 'missing'), '--layer', '0', '--input', 'a.npy', '--output', 'b.npy'],
      /not found|ENOENT|a\.npy/,
    ],
    [['frobnicate'], /unknown command/],
    [['run', '--bogus'], /bogus/],
  ] as const) {
    const r = cli(...args);
    assert.ok(r.status !== 0, `${args.join(' ')} exited 0`);
    assert.match(r.stderr, pattern as RegExp);
    assert.is(r.stderr.trim().split('\n').length, 1, `expected one line, got: ${r.stderr}`);
  }
});

test('validate reports the checkpoint and runs a forward; a damaged file fails with one line', () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'val-')), 'qwen2_moe', { hiddenSize: 32, intermediateSize: 16, numExperts: 8, topK: 2, seed: 6 });
  const ok = cli('validate', '--model', ck.dir, '--forward');
  assert.is(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /Qwen2MoeForCausalLM/);
  assert.match(ok.stdout, /experts\s+8 x SwiGLU d=32 f=16, top-2, shared expert/);
  assert.match(ok.stdout, /forward .* output finite/);
  const file = path.join(ck.dir, 'model.safetensors');
  fs.truncateSync(file, Math.floor(fs.statSync(file).size / 2));
  const bad = cli('validate', '--model', ck.dir);
  assert.ok(bad.status !== 0);
  assert.is(bad.stderr.trim().split('\n').length, 1, bad.stderr);
});

test('profile prints static against dynamic FLOPs for a checkpoint layer', () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'prof-')), 'mixtral', { hiddenSize: 32, intermediateSize: 16, numExperts: 8, topK: 2, seed: 7 });
  const r = cli('profile', '--model', ck.dir, '--layer', '0', '--selection', 'topp:0.3', '--tokens', '16', '--batches', '2');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /\| FLOP reduction \| -?\d+\.\d%/);
  assert.match(r.stdout, /tokens per expert min \/ mean \/ max/);
  const usage = cli('bench', '--benches', 'nope');
  assert.is(usage.status, 2);
  assert.match(usage.stderr, /unknown "nope"/);
});

test('--selection grammar', () => {
  assert.equal(parseSelection('topk:4'), { kind: 'topk', k: 4 });
  assert.equal(parseSelection('topp:0.5'), { kind: 'topp', p: 0.5 });
  assert.equal(parseSelection('threshold:0.1'), { kind: 'threshold', tau: 0.1 });
  assert.equal(parseSelection('dynamic:1-4:gradient_norm'), {
    kind: 'dynamic',
    minK: 1,
    maxK: 4,
    estimator: 'gradient_norm',
  });
  assert.throws(
    () => parseSelection('dynamic:4'),
    (e: Error) => e instanceof UsageError,
  );
  assert.throws(
    () => parseSelection('top:2'),
    (e: Error) => e instanceof UsageError,
  );
});

test.run();
