/**
 * Model files are untrusted: random mutations of a safetensors header, a .npy header, config.json fields of every
 * supported family and a sharded checkpoint's index must each load (with consistent sizes, and a finite forward) or
 * fail with one of the package's errors — never a raw TypeError/RangeError, a hang or a crash. Fresh seed per run
 * (MOE_TEST_SEED repeats one); a failure prints the mutated file or config.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ModelLoadError, MoELayer } from '../lib';
import { readNpy, writeNpy } from '../lib/models/npy';
import { openSafetensors, writeSafetensors } from '../lib/models/safetensors';
import { writeTinyCheckpoint, type TinyArch } from './helpers/checkpoint';
import { assertCleanRefusal } from './helpers/errors';
import { freshSeed, randn, rng } from './helpers/random';
import { tempDirs } from './helpers/tmp';

const SEED = freshSeed();
console.log(`fuzz-files.test seed ${SEED}`);
const tmpDir = tempDirs('moe-fuzz-');

/** Runs `load`; a package error is a clean refusal, anything else fails the test with `what` for the record. */
function loadsOrRefuses(load: () => void, what: () => string): 'loaded' | 'refused' {
  try {
    load();
    return 'loaded';
  } catch (err) {
    assertCleanRefusal(err, () => `input ${what()}`);
    return 'refused';
  }
}

/** A safetensors file's parsed header and its data section. */
function splitSafetensors(file: string): { header: SafetensorsHeader; data: Buffer } {
  const bytes = fs.readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as SafetensorsHeader;
  return { header, data: bytes.subarray(8 + headerLength) };
}

/** Writes `header` (as it is, unchecked) and `data` as a safetensors file. */
function joinSafetensors(file: string, header: SafetensorsHeader, data: Buffer): void {
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([length, json, data]));
}

type SafetensorsHeader = Record<string, Record<string, unknown>>;

/**
 * A copy of `header` with 1–2 fields (dtype, shape or data_offsets) of the entries named `targets` replaced by an
 * odd value, or one element of an array field by one of ODD_VALUES. `skip`: the chance that a change is not made.
 */
function mutateEntries(
  header: SafetensorsHeader,
  targets: readonly string[],
  odd: readonly unknown[],
  next: () => number,
  skip = 0,
): SafetensorsHeader {
  // (copies: an array picked into one header may have an element replaced next)
  const pick = <T>(values: readonly T[]) => structuredClone(values[Math.floor(next() * values.length)]);
  const h = structuredClone(header);
  for (let n = 1 + Math.floor(next() * 2); n > 0; n--) {
    const entry = h[pick(targets)];
    const field = pick(['dtype', 'shape', 'data_offsets']);
    const current = entry[field];
    if (skip > 0 && next() < skip) continue;
    if (Array.isArray(current) && next() < 0.5) current[Math.floor(next() * current.length)] = pick(ODD_VALUES);
    else entry[field] = pick(odd);
  }
  return h;
}

/** 1–4 byte changes within the first `span` bytes (random bytes, JSON/Python punctuation and digits, bit flips). */
function mutateBytes(original: Buffer, span: number, next: () => number): Buffer {
  const out = Buffer.from(original);
  const punctuation = ' {}[]()",:\'0123456789-.eE';
  for (let i = 1 + Math.floor(next() * 4); i > 0; i--) {
    const at = Math.floor(next() * Math.min(span, out.length));
    const kind = next();
    if (kind < 0.4) out[at] = Math.floor(next() * 256);
    else if (kind < 0.8) out[at] = punctuation.charCodeAt(Math.floor(next() * punctuation.length));
    else out[at] ^= 1 << Math.floor(next() * 8);
  }
  return next() < 0.1 ? out.subarray(0, Math.floor(next() * out.length)) : out;
}

function fuzzFile(file: string, headerBytes: number, read: (file: string) => void, rounds: number, seed: number) {
  const original = fs.readFileSync(file);
  const mutated = path.join(path.dirname(file), `mutated${path.extname(file)}`);
  const next = rng(seed);
  const seen = { loaded: 0, refused: 0 };
  for (let i = 0; i < rounds; i++) {
    const bytes = mutateBytes(original, headerBytes, next);
    fs.writeFileSync(mutated, bytes);
    seen[
      loadsOrRefuses(
        () => read(mutated),
        () => `${mutated} (base64) ${bytes.toString('base64')}`,
      )
    ]++;
  }
  // (about 1% of the mutations still load: enough to reach the readers' paths past the header checks)
  assert.ok(seen.refused > 0 && seen.loaded > 0, `both outcomes are reached: ${JSON.stringify(seen)}`);
}

test('safetensors: mutated headers load with consistent sizes or give a package error', () => {
  const file = path.join(tmpDir(), 'model.safetensors');
  writeSafetensors(
    file,
    {
      w: { dtype: 'BF16', shape: [3, 4], data: randn(12, SEED) },
      b: { dtype: 'F32', shape: [2], data: randn(2, SEED + 1) },
      h: { dtype: 'F16', shape: [1, 2], data: randn(2, SEED + 2) },
    },
    { format: 'pt' },
  );
  const headerBytes = 8 + Number(fs.readFileSync(file).readBigUInt64LE(0));
  const read = (mutated: string) => {
    const st = openSafetensors(mutated);
    try {
      for (const name of st.tensorNames()) {
        const values = st.readFloat32(name);
        const elements = st.info(name).shape.reduce((a, b) => a * b, 1);
        assert.is(values.length, elements, `tensor ${name} has the elements of its shape`);
      }
    } finally {
      st.close();
    }
  };
  fuzzFile(file, headerBytes, read, 1500, SEED + 3);
});

test('safetensors: headers with odd field values (re-encoded, so the length is right) load consistently or are refused', () => {
  const file = path.join(tmpDir(), 'model.safetensors');
  writeSafetensors(file, {
    w: { dtype: 'F32', shape: [2, 3], data: randn(6, SEED + 10) },
    b: { dtype: 'BF16', shape: [4], data: randn(4, SEED + 11) },
  });
  const { header, data } = splitSafetensors(file);
  const next = rng(SEED + 12);
  const odd: unknown[] = [
    ...ODD_VALUES,
    'F16',
    'F32',
    'BF16',
    'I8',
    [2, 3],
    [3, 2],
    [6],
    [0, 24],
    [24, 32],
    [0, 8],
    [-8, 0],
  ];
  const mutated = path.join(path.dirname(file), 'fields.safetensors');
  const seen = { loaded: 0, refused: 0 };
  for (let i = 0; i < 600; i++) {
    const h = mutateEntries(header, ['w', 'b'], odd, next);
    joinSafetensors(mutated, h, data);
    const read = () => {
      const st = openSafetensors(mutated);
      try {
        for (const name of st.tensorNames()) {
          const info = st.info(name);
          if (!['F32', 'BF16', 'F16'].includes(info.dtype)) continue;
          const values = st.readFloat32(name);
          assert.is(
            values.length,
            info.shape.reduce((a, b) => a * b, 1),
            `tensor ${name} has the elements of its shape`,
          );
        }
      } finally {
        st.close();
      }
    };
    seen[loadsOrRefuses(read, () => JSON.stringify(h))]++;
  }
  assert.ok(seen.loaded > 0 && seen.refused > 0, `both outcomes are reached: ${JSON.stringify(seen)}`);
});

test('fused FP8 experts: mutated stack and scale entries load with a finite forward or give a package error', () => {
  const ck = writeTinyCheckpoint(tmpDir(), 'deepseek_v3', {
    hiddenSize: 16,
    intermediateSize: 8,
    numExperts: 4,
    topK: 2,
    fusedExperts: true,
    fp8: { dtype: 'F8_E4M3', scales: 'block', block: [4, 8] },
  });
  const file = path.join(ck.dir, 'model.safetensors');
  const { header, data } = splitSafetensors(file);
  const targets = Object.keys(header).filter((n) => n.startsWith('model.layers.0.mlp.experts.'));
  assert.equal(targets.length, 4, targets.join(' ')); // two stacks, two stacked scale tensors
  const next = rng(SEED + 13);
  const odd: unknown[] = [
    ...ODD_VALUES,
    ...['F8_E4M3', 'F8_E5M2', 'F32', 'BF16', 'U8'],
    ...[[4, 16, 16], [4, 16, 8], [4, 4, 2], [4, 4, 1], [2, 16, 16], [0, 16, 16], [4, 256], [16, 4, 16], [4]],
  ];
  const x = randn(3 * 16, SEED + 14);
  const seen = { loaded: 0, refused: 0, unchanged: 0 };
  for (let i = 0; i < 120; i++) {
    // (sometimes no change: such a round must load)
    const h = mutateEntries(header, targets, odd, next, 0.2);
    joinSafetensors(file, h, data);
    const load = () => {
      const moe = MoELayer.fromPretrained(ck.dir, { layer: 0, threads: 1 });
      try {
        assert.ok(moe.forward(x).output.every(Number.isFinite), 'a layer that loads gives a finite output');
      } finally {
        moe.dispose();
      }
    };
    if (JSON.stringify(h) === JSON.stringify(header)) {
      load(); // (unchanged, or changed to what it was)
      seen.unchanged++;
      continue;
    }
    seen[loadsOrRefuses(load, () => JSON.stringify(h))]++;
  }
  assert.ok(seen.unchanged > 0 && seen.refused > 0, `both outcomes are reached: ${JSON.stringify(seen)}`);
});

test('npy: mutated headers load with consistent sizes or give a package error', () => {
  const file = path.join(tmpDir(), 'x.npy');
  writeNpy(file, randn(6, SEED + 4), [2, 3]);
  const read = (mutated: string) => {
    const { shape, data } = readNpy(mutated);
    assert.is(
      data.length,
      shape.reduce((a, b) => a * b, 1),
      'the data has the elements of its shape',
    );
  };
  fuzzFile(file, 128, read, 1500, SEED + 5);
});

// (frozen: shared by every test and round, so a mutation meant for one copy throws instead of spreading)
const ODD_VALUES: readonly unknown[] = Object.freeze(
  [
    ...[null, true, false, '', 'x', '8', 'softmax', 'sigmoid', 'greedy', 'noaux_tc', [], [1], [0, 1], {}, { a: 1 }],
    ...[0, -1, 1, 2, 3, 7, 64, 1.5, -0.5, 1e-30, 0.001, 1e9, 2 ** 31, -(2 ** 31), 2 ** 53, 1e308],
  ].map((v) => (typeof v === 'object' && v !== null ? Object.freeze(v) : v)),
);

test('config.json: mutated fields of every family load with a finite forward or give a package error', () => {
  const families: TinyArch[] = [
    'mixtral',
    'olmoe',
    'qwen2_moe',
    'qwen3_moe',
    'qwen3_next',
    'deepseek_v2',
    'deepseek_v3',
    'glm4_moe',
    'ernie4_5_moe',
  ];
  const next = rng(SEED + 6);
  const pick = <T>(values: readonly T[]) => values[Math.floor(next() * values.length)];
  const x = randn(3 * 16, SEED + 7);
  for (const arch of families) {
    const ck = writeTinyCheckpoint(tmpDir(), arch, { hiddenSize: 16, intermediateSize: 8, numExperts: 8, topK: 2 });
    const configFile = path.join(ck.dir, 'config.json');
    const keys = Object.keys(ck.config);
    const seen = { loaded: 0, refused: 0 };
    for (let i = 0; i < 150; i++) {
      const config: Record<string, unknown> = { ...ck.config };
      for (let n = 1 + Math.floor(next() * 3); n > 0; n--) {
        const key = pick(keys);
        if (next() < 0.15) delete config[key];
        else config[key] = pick(ODD_VALUES);
      }
      fs.writeFileSync(configFile, JSON.stringify(config));
      const layer = pick([-1, 0, 1, 2]);
      const load = () => {
        const moe = MoELayer.fromPretrained(ck.dir, { layer, threads: 1 });
        const y = moe.forward(x).output;
        assert.ok(y.every(Number.isFinite), 'a layer that loads gives a finite output');
      };
      seen[loadsOrRefuses(load, () => `${arch} layer ${layer}, config ${JSON.stringify(config)}`)]++;
    }
    assert.ok(seen.loaded > 0 && seen.refused > 0, `${arch}: ${JSON.stringify(seen)}`);
  }
});

test('model.safetensors.index.json: mutated entries load or give a package error', () => {
  const ck = writeTinyCheckpoint(tmpDir(), 'olmoe', {
    hiddenSize: 16,
    intermediateSize: 8,
    numExperts: 8,
    topK: 2,
    sharded: true,
  });
  const indexFile = path.join(ck.dir, 'model.safetensors.index.json');
  const original = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, unknown> };
  const names = Object.keys(original.weight_map);
  const shards = [...new Set(Object.values(original.weight_map))];
  const next = rng(SEED + 8);
  const odd = [...ODD_VALUES, ...shards, '../config.json', '/etc/hostname', 'missing.safetensors', 'config.json'];
  const seen = { loaded: 0, refused: 0 };
  for (let i = 0; i < 150; i++) {
    const index: Record<string, unknown> = { ...original, weight_map: { ...original.weight_map } };
    const map = index.weight_map as Record<string, unknown>;
    const kind = next();
    let outside = false;
    if (kind < 0.6) {
      const shard = odd[Math.floor(next() * odd.length)];
      outside = shard === '../config.json' || shard === '/etc/hostname';
      map[names[Math.floor(next() * names.length)]] = shard;
    } else if (kind < 0.8) delete map[names[Math.floor(next() * names.length)]];
    else index.weight_map = odd[Math.floor(next() * odd.length)];
    fs.writeFileSync(indexFile, JSON.stringify(index));
    const load = () => void MoELayer.fromPretrained(ck.dir, { layer: 1, threads: 1 }).forward(randn(16, SEED + i));
    const outcome = loadsOrRefuses(load, () => JSON.stringify(index));
    seen[outcome]++;
    // a shard outside the checkpoint folder is refused, whichever tensor names it
    if (outside) assert.is(outcome, 'refused', `a shard outside the folder: ${JSON.stringify(index)}`);
  }
  assert.ok(seen.refused > 0, JSON.stringify(seen));
});

test('JSON nested 100,000 deep anywhere, and a config.json that stats as empty but reads on and on, are package errors', () => {
  const deep = '['.repeat(100_000) + ']'.repeat(100_000);
  const ck = writeTinyCheckpoint(tmpDir(), 'olmoe', {
    hiddenSize: 16,
    intermediateSize: 8,
    numExperts: 8,
    topK: 2,
    sharded: true,
  });
  const configFile = path.join(ck.dir, 'config.json');
  const indexFile = path.join(ck.dir, 'model.safetensors.index.json');
  const config = fs.readFileSync(configFile, 'utf8');
  const index = fs.readFileSync(indexFile, 'utf8');
  const load = () => void MoELayer.fromPretrained(ck.dir, { layer: 1, threads: 1 });
  // the JSON text with `key` (or, for an object, its first entry) replaced by `deep`
  const withDeep = (text: string, key: string) => {
    const parsed = JSON.parse(text) as Record<string, unknown>;
    const marker = 'DEEP-VALUE-MARKER';
    const value = parsed[key];
    if (typeof value === 'object' && value !== null) (value as Record<string, unknown>)[Object.keys(value)[0]] = marker;
    else parsed[key] = marker;
    return JSON.stringify(parsed).replace(JSON.stringify(marker), deep);
  };
  const cases: [string, () => void][] = [
    ['config.json is a deep array', () => fs.writeFileSync(configFile, deep)],
    ['a config field is a deep array', () => fs.writeFileSync(configFile, withDeep(config, 'num_hidden_layers'))],
    ['a weight_map entry is a deep array', () => fs.writeFileSync(indexFile, withDeep(index, 'weight_map'))],
  ];
  for (const [what, write] of cases) {
    fs.writeFileSync(configFile, config);
    fs.writeFileSync(indexFile, index);
    write();
    assert.ok(
      fs.readFileSync(configFile, 'utf8') !== config || fs.readFileSync(indexFile, 'utf8') !== index,
      `${what}: written`,
    );
    assert.is(
      loadsOrRefuses(load, () => what),
      'refused',
      what,
    );
  }
  // a safetensors header: a deep shape, and a header that is a deep array
  const file = path.join(tmpDir(), 'deep.safetensors');
  for (const header of [`{"w":{"dtype":"F32","shape":${deep},"data_offsets":[0,4]}}`, deep]) {
    const json = Buffer.from(header);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(4)]));
    assert.is(
      loadsOrRefuses(
        () => openSafetensors(file).close(),
        () => header.slice(0, 40),
      ),
      'refused',
    );
  }
  // /proc/self/pagemap stats as a 0-byte regular file and reads gigabytes: the size limit must hold anyway
  if (fs.existsSync('/proc/self/pagemap')) {
    fs.writeFileSync(indexFile, index);
    fs.rmSync(configFile);
    fs.symlinkSync('/proc/self/pagemap', configFile);
    assert.throws(load, (e: Error) => e instanceof ModelLoadError && /config\.json is over \d+ bytes/.test(e.message));
  }
});

test.run();
