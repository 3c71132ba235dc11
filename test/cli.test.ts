/**
 * `moe-router run` end to end in a child process: checkpoint + x.npy in, y.npy and routing out, equal to the
 * in-process layer; bad arguments give one line and a non-zero exit.
 */
import { spawn, spawnSync } from 'node:child_process';
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
    [['validate', '--model', root, '--dtype', 'fp16'], /--dtype: expected fp32, bf16 or fp8, got "fp16"/],
    [
      ['run', '--model', root, '--layer', '0', '--input', 'a.npy', '--output', 'b.npy', '--backend', 'gpu'],
      /--backend: expected cpu, cuda or auto, got "gpu"/,
    ],
    // checked before the demo builds its layer (seconds) or serve binds a port
    [['demo', '--port', '70000'], /--port: expected an integer in \[0, 65535\], got "70000"/],
    [['serve', '--health-port=-1'], /--health-port: expected an integer in \[0, 65535\]/],
    [['serve', '--model', root, '--synthetic', 'olmoe'], /--model and --synthetic: give one of them/],
    [['profile', '--selection', 'dynamic:4-1'], /expected 1 <= MIN <= MAX, got MIN=4 and MAX=1/],
    [['serve', '--synthetic', 'gpt5'], /--synthetic: expected olmoe or mixtral/],
  ] as const) {
    const r = cli(...args);
    assert.ok(r.status !== 0, `${args.join(' ')} exited 0`);
    assert.match(r.stderr, pattern as RegExp);
    assert.is(r.stderr.trim().split('\n').length, 1, `expected one line, got: ${r.stderr}`);
  }
});

test('validate reports the checkpoint and runs a forward; a damaged file fails with one line', () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'val-')), 'qwen2_moe', {
    hiddenSize: 32,
    intermediateSize: 16,
    numExperts: 8,
    topK: 2,
    seed: 6,
  });
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

test('validate names the expert storage of a fused FP8 checkpoint and its scales, and runs a forward', () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'val8-')), 'deepseek_v3', {
    hiddenSize: 32,
    intermediateSize: 16,
    numExperts: 8,
    topK: 2,
    seed: 8,
    dtype: 'BF16',
    fp8: { dtype: 'F8_E4M3', scales: 'block', block: [16, 16] },
    fusedExperts: true,
  });
  const ok = cli('validate', '--model', ck.dir, '--forward');
  assert.is(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /dtype BF16 \(router\), F8_E4M3 experts with block scales \(16 x 16\) \(fused experts\)/);
  assert.match(ok.stdout, /forward .* output finite/);
  assert.match(ok.stdout, /; --dtype fp8 dequantises and quantizes them again/);
  // the same layer packed as fp8 (fused stacks are dequantised and quantized again)
  const fp8 = cli('validate', '--model', ck.dir, '--forward', '--dtype', 'fp8');
  assert.is(fp8.status, 0, fp8.stderr);
  assert.match(fp8.stdout, /forward .* output finite/);
  // per-expert tensors with DeepSeek's 128 x 128 blocks: an fp8 layer packs them as stored
  const kept = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'val8k-')), 'deepseek_v3', {
    hiddenSize: 32,
    intermediateSize: 16,
    numExperts: 8,
    topK: 2,
    seed: 8,
    fp8: { dtype: 'F8_E4M3', scales: 'block', block: [128, 128] },
  });
  const keptRun = cli('validate', '--model', kept.dir, '--forward', '--dtype', 'fp8');
  assert.is(keptRun.status, 0, keptRun.stderr);
  assert.match(
    keptRun.stdout,
    /F8_E4M3 experts with block scales \(128 x 128\); --dtype fp8 keeps their bytes as stored/,
  );
});

test('validate counts a layer as dense by the model rule, not by the word "dense" in a path', () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'dense-')), 'deepseek_v3', {
    hiddenSize: 16,
    intermediateSize: 8,
    numExperts: 4,
    topK: 2,
    numLayers: 2,
    firstKDense: 1,
    seed: 9,
  });
  const good = cli('validate', '--model', ck.dir);
  assert.is(good.status, 0, good.stderr);
  assert.match(good.stdout, /layers\s+1 MoE, 1 dense of 2/);
  // layer 1's experts now disagree with the config: a problem in a folder named dense-*, not a dense layer
  fs.writeFileSync(path.join(ck.dir, 'config.json'), JSON.stringify({ ...ck.config, moe_intermediate_size: 7 }));
  const bad = cli('validate', '--model', ck.dir);
  assert.ok(bad.status !== 0, bad.stdout);
  assert.match(bad.stdout, /problem\s+layer 1: .*expected \[7, 16\]/);
});

test('validate reads the text_config of a vision-language config for its layers', () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'vl-')), 'qwen3_5_moe', {
    hiddenSize: 16,
    intermediateSize: 8,
    numExperts: 4,
    topK: 2,
    numLayers: 3,
    seed: 10,
    fusedExperts: true,
  });
  const ok = cli('validate', '--model', ck.dir);
  assert.is(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /layers\s+3 MoE, 0 dense of 3/);
  assert.match(ok.stdout, /\(fused experts\)/);
  fs.writeFileSync(path.join(ck.dir, 'config.json'), JSON.stringify({ ...ck.config, text_config: null }));
  const bad = cli('validate', '--model', ck.dir);
  assert.ok(bad.status !== 0);
  assert.match(bad.stderr, /text_config: expected the language model's fields, got null/);
});

test('profile prints static against dynamic FLOPs for a checkpoint layer', () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'prof-')), 'mixtral', {
    hiddenSize: 32,
    intermediateSize: 16,
    numExperts: 8,
    topK: 2,
    seed: 7,
  });
  const r = cli(
    'profile',
    '--model',
    ck.dir,
    '--layer',
    '0',
    '--selection',
    'topp:0.3',
    '--tokens',
    '16',
    '--batches',
    '2',
  );
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /\| FLOP reduction \| -?\d+\.\d%/);
  assert.match(r.stdout, /tokens per expert min \/ mean \/ max/);
  const usage = cli('bench', '--benches', 'nope');
  assert.is(usage.status, 2);
  assert.match(usage.stderr, /unknown "nope"/);
  const format = cli('serve', '--synthetic', 'olmoe', '--log-format', 'jsno');
  assert.is(format.status, 2, format.stderr);
  assert.match(format.stderr, /--log-format jsno: expected json or pretty/);
});

test('serve answers /metrics, /health and /ready under load and stops on SIGTERM with system.shutdown', async () => {
  const ck = writeTinyCheckpoint(fs.mkdtempSync(path.join(root, 'serve-')), 'olmoe', {
    hiddenSize: 32,
    intermediateSize: 16,
    numExperts: 8,
    topK: 2,
    seed: 8,
  });
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      main,
      'serve',
      '--model',
      ck.dir,
      '--layer',
      '0',
      '--metrics-port',
      '0',
      '--health-port',
      '0',
      '--load',
      '50',
      '--tokens',
      '4',
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b) => (stdout += b));
  child.stderr.on('data', (b) => (stderr += b));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    const deadline = Date.now() + 30_000;
    while (!/serving (\S+), (\S+) and (\S+)/.test(stderr) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    const [, metricsUrl, healthUrl, readyUrl] = /serving (\S+), (\S+) and (\S+)/.exec(stderr) ?? [];
    assert.ok(metricsUrl, `no URLs printed: ${stderr}`);
    let ready = await fetch(readyUrl);
    while (ready.status !== 200 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      ready = await fetch(readyUrl);
    }
    assert.is(ready.status, 200);
    await new Promise((r) => setTimeout(r, 400)); // let the synthetic traffic run
    const metrics = await (await fetch(metricsUrl)).text();
    const requests = /dynamic_moe_routing_requests_total\{[^}]*status="success"[^}]*\} (\d+)/.exec(metrics);
    assert.ok(requests && Number(requests[1]) > 0, `expected traffic in:\n${metrics.slice(0, 2000)}`);
    assert.is((await fetch(healthUrl)).status, 200);
    assert.is((await fetch(metricsUrl.replace('/metrics', '/nope'))).status, 404);
  } finally {
    child.kill('SIGTERM');
  }
  assert.is(await exited, 0, stderr);
  const events = stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).event.type);
  assert.ok(
    events.includes('system.start') && events.includes('model.load') && events.at(-1) === 'system.shutdown',
    events.join(','),
  );
});

test('serve reports a missing --layer before it binds its ports', async () => {
  const net = await import('node:net');
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  const port = (taken.address() as { port: number }).port;
  try {
    const r = cli('serve', '--model', root, '--metrics-port', String(port), '--health-port', String(port));
    assert.is(r.status, 2, r.stderr);
    assert.match(r.stderr, /usage: --layer is required with --model/, 'not EADDRINUSE: nothing was bound');
  } finally {
    await new Promise((resolve) => taken.close(resolve));
  }
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
  // estimators the commands cannot feed (no attention, no LM logits), and stray parts
  for (const bad of [
    'dynamic:1-4:attention_entropy',
    'dynamic:1-4:perplexity_proxy',
    'topk:2:junk',
    'dynamic:1-4:router_entropy:x',
  ])
    assert.throws(
      () => parseSelection(bad),
      (e: Error) => e instanceof UsageError,
      bad,
    );
});

test.run();
