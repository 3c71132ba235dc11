/**
 * Opens a Hugging Face checkpoint folder: `config.json` plus either one `model.safetensors` or shards listed in
 * `model.safetensors.index.json`. It hides the sharding from the architecture adapters, and checks that the index
 * cannot point outside the folder. Shards are opened (header only) the first time one of their tensors is used.
 * FP8 tensors are read with their scales applied (fp8-scales.ts), so adapters see float32 weights whatever the
 * checkpoint's storage.
 */
import * as fs from 'fs';
import * as path from 'path';
import { brief, ModelLoadError, ValidationError } from '../errors';
import { isFloat8Dtype } from './float8';
import {
  applyFp8Scaling,
  fp8BlockSize,
  fp8ScaleIndex,
  fp8ScalingOf,
  type Fp8Blocks,
  type Fp8Scaling,
} from './fp8-scales';
import { openSafetensors, type SafetensorsFile, type SafetensorsTensorInfo } from './safetensors';
import type { E4m3Matrix } from '../layer';

/** The columns an 'fp8' layer's scale covers (native/include/moe/gemm.h, kFp8Block). */
const E4M3_SCALE_COLUMNS = 128;

const CONFIG_FILE = 'config.json';
const SINGLE_FILE = 'model.safetensors';
const INDEX_FILE = 'model.safetensors.index.json';
/** config.json and the index are small; refuse anything larger than this instead of reading it into memory. */
const JSON_FILE_LIMIT = 64 * 1024 * 1024;

/** A checkpoint folder whose tensors can be looked up by their Hugging Face names. */
export interface Checkpoint {
  /** The folder, as given to {@link openCheckpoint}. */
  readonly dir: string;
  /** The parsed `config.json`. */
  readonly config: Record<string, unknown>;
  /** Every tensor name of the checkpoint (from the index, or from the single file's header). */
  tensorNames(): string[];
  has(name: string): boolean;
  /** @throws ModelLoadError when the tensor is missing or its shard is malformed. */
  info(name: string): SafetensorsTensorInfo;
  /**
   * How {@link readFloat32} scales the tensor: null for F32, BF16 and F16, the scale tensor and its layout for FP8.
   * Checks without reading data.
   * @throws ModelLoadError for another dtype, or an FP8 tensor without a fitting scale tensor.
   */
  scalingOf(name: string): Fp8Scaling | null;
  /**
   * Reads a tensor as float32 (row-major), FP8 tensors with their scales applied. With `expectedShape`, the
   * stored shape must equal it.
   * @throws ModelLoadError naming the tensor: missing, unsupported dtype, a shape other than `expectedShape`, or
   *   (FP8) a missing or malformed scale, or a non-finite weight.
   */
  readFloat32(name: string, expectedShape?: number[]): Float32Array;
  /**
   * Reads slice `index` along the first dimension of a tensor (one expert of a fused [E, ...] tensor) as float32,
   * FP8 with its scales, reading only that slice. `expectedShape` is the whole tensor's.
   * @throws ModelLoadError as readFloat32, or for an index outside [0, shape[0]).
   */
  readSlice(name: string, index: number, expectedShape?: number[]): Float32Array;
  /**
   * An F8_E4M3 matrix as stored, with its scales spread to one per row and 128 columns (what an 'fp8' layer packs,
   * so it computes with the checkpoint's own weights); null where that cannot hold them: another dtype, stacked
   * scales, or blocks whose width is not a multiple of 128 columns.
   * Also null for a scale past 3.4e38 / 448 (the float path then checks each weight).
   * @throws ModelLoadError as readFloat32, or for an E4M3 NaN byte.
   */
  readE4m3(name: string, expectedShape: [number, number]): E4m3Matrix | null;
  /**
   * Slice `index` along the first dimension of a U8 tensor, as stored (gpt-oss's MXFP4 blocks and scales).
   * @throws ModelLoadError for another dtype, a shape other than `expectedShape`, or an index out of range.
   */
  readU8Slice(name: string, index: number, expectedShape: number[]): Uint8Array;
  /** Closes every shard opened so far. */
  close(): void;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The file's text, read up to `limit` bytes whatever its stat says (a file of /proc reports size 0 and may yield
 * gigabytes): one byte more is an error.
 */
function readAtMost(file: string, limit: number, role: string): string {
  const fd = fs.openSync(file, 'r');
  try {
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      // (whole MiB reads, a little past the limit at most: some /proc files refuse reads of odd sizes)
      const chunk = Buffer.allocUnsafe(1 << 20);
      const n = fs.readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      chunks.push(n === chunk.length ? chunk : chunk.subarray(0, n));
      total += n;
      if (total > limit) throw new ModelLoadError(`${file}: ${role} is over ${limit} bytes, expected at most ${limit}`);
    }
    return Buffer.concat(chunks, total).toString('utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads and parses a JSON file that must hold an object. */
function readJsonObject(file: string, role: string): Record<string, unknown> {
  let text: string;
  try {
    const stat = fs.statSync(file);
    // (a named pipe would block the read below)
    if (!stat.isFile()) throw new ModelLoadError(`${file}: ${role} is not a regular file`);
    const size = stat.size;
    if (size > JSON_FILE_LIMIT) {
      throw new ModelLoadError(`${file}: ${role} is ${size} bytes, expected at most ${JSON_FILE_LIMIT}`);
    }
    text = readAtMost(file, JSON_FILE_LIMIT, role);
  } catch (err) {
    if (err instanceof ModelLoadError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'file not found' : (err as Error).message;
    throw new ModelLoadError(`${file}: cannot read ${role} (${reason})`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ModelLoadError(`${file}: ${role} is not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (!isPlainObject(parsed)) {
    throw new ModelLoadError(`${file}: ${role} must be a JSON object, got ${brief(parsed)}`);
  }
  return parsed;
}

/** Accepts only a plain file name that stays inside the checkpoint folder. */
function checkShardName(indexFile: string, tensor: string, shard: unknown): string {
  const expected = 'a plain file name inside the checkpoint folder (no "/", "\\", ".." or absolute path)';
  const plain =
    typeof shard === 'string' &&
    shard.length > 0 &&
    shard.length <= 255 &&
    shard !== '.' &&
    shard !== '..' &&
    !/[/\\\0]/.test(shard) &&
    !path.isAbsolute(shard) &&
    !path.win32.isAbsolute(shard);
  if (!plain) {
    throw new ModelLoadError(
      `${indexFile}: weight_map entry for tensor ${brief(tensor)} names shard ${brief(shard)}, expected ${expected}`,
    );
  }
  return shard;
}

function readWeightMap(indexFile: string): Map<string, string> {
  const index = readJsonObject(indexFile, 'the shard index');
  const weightMap = index.weight_map;
  if (!isPlainObject(weightMap)) {
    throw new ModelLoadError(`${indexFile}: "weight_map" is ${brief(weightMap)}, expected an object tensor -> shard`);
  }
  const shardOf = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(weightMap))
    shardOf.set(tensor, checkShardName(indexFile, tensor, shard));
  return shardOf;
}

class HfCheckpoint implements Checkpoint {
  private readonly openShards = new Map<string, SafetensorsFile>();
  private closed = false;
  private fp8Blocks: Fp8Blocks | undefined;

  constructor(
    readonly dir: string,
    readonly config: Record<string, unknown>,
    /** Tensor name -> shard file name; null for a single-file checkpoint. */
    private readonly shardOf: Map<string, string> | null,
    private readonly single: SafetensorsFile | null,
  ) {}

  tensorNames(): string[] {
    return this.shardOf ? [...this.shardOf.keys()] : this.single!.tensorNames();
  }

  has(name: string): boolean {
    return this.shardOf ? this.shardOf.has(name) : this.single!.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    return this.fileOf(name).info(name);
  }

  readFloat32(name: string, expectedShape?: number[]): Float32Array {
    const shape = this.checkShape(name, expectedShape);
    const scaling = this.scalingOf(name);
    const values = this.fileOf(name).readFloat32(name);
    if (!scaling) return values;
    const scales = this.fileOf(scaling.scaleName).readFloat32(scaling.scaleName);
    const where = `${this.dir}: tensor ${brief(name)}`;
    if (!scaling.stacked) {
      applyFp8Scaling(values, shape, scales, scaling, where);
      return values;
    }
    // (slice by slice: each expert's matrix with its own scales)
    const matrix = shape.slice(1);
    const n = values.length / shape[0];
    const m = scales.length / shape[0];
    for (let i = 0; i < shape[0]; i++)
      applyFp8Scaling(values.subarray(i * n, (i + 1) * n), matrix, scales.subarray(i * m, (i + 1) * m), scaling, where);
    return values;
  }

  readSlice(name: string, index: number, expectedShape?: number[]): Float32Array {
    const shape = this.checkShape(name, expectedShape);
    const scaling = this.scalingOf(name);
    const values = this.fileOf(name).readFloat32Slice(name, index);
    if (!scaling) return values;
    if (!scaling.stacked && scaling.kind !== 'tensor') {
      // (a row or block of a 2-D tensor's scales does not line up with a slice; the adapters slice only stacks)
      throw new ModelLoadError(`${this.dir}: tensor ${brief(name)} has ${scaling.kind} scales; read it whole`);
    }
    const scaleFile = this.fileOf(scaling.scaleName);
    const scales = scaling.stacked
      ? scaleFile.readFloat32Slice(scaling.scaleName, index)
      : scaleFile.readFloat32(scaling.scaleName);
    applyFp8Scaling(values, shape.slice(1), scales, scaling, `${this.dir}: slice ${index} of tensor ${brief(name)}`);
    return values;
  }

  readE4m3(name: string, expectedShape: [number, number]): E4m3Matrix | null {
    const [rows, cols] = this.checkShape(name, expectedShape);
    if (this.info(name).dtype !== 'F8_E4M3') return null;
    const scaling = this.scalingOf(name)!;
    if (scaling.stacked || (scaling.kind === 'block' && scaling.block[1] % E4M3_SCALE_COLUMNS !== 0)) return null;
    const stored = this.fileOf(scaling.scaleName).readFloat32(scaling.scaleName);
    // (a scale whose product with 448, the largest E4M3 value, is not a finite float32: the float path reads the
    // tensor, and names an element that overflows if one does)
    if (stored.some((v) => !Number.isFinite(Math.fround(v * 448)))) return null;
    const data = this.fileOf(name).readBytes(name);
    const nan = data.findIndex((b) => (b & 0x7f) === 0x7f);
    if (nan >= 0) {
      throw new ModelLoadError(
        `${this.dir}: tensor ${brief(name)}: element ${nan} is an E4M3 NaN code; expected finite weights`,
      );
    }
    const groups = Math.ceil(cols / E4M3_SCALE_COLUMNS);
    const scales = new Float32Array(rows * groups);
    for (let r = 0; r < rows; r++)
      for (let g = 0; g < groups; g++)
        scales[r * groups + g] = stored[fp8ScaleIndex(scaling, cols, r, g * E4M3_SCALE_COLUMNS)];
    return { data, scales };
  }

  readU8Slice(name: string, index: number, expectedShape: number[]): Uint8Array {
    this.checkShape(name, expectedShape);
    const { dtype } = this.info(name);
    if (dtype !== 'U8') throw new ModelLoadError(`${this.dir}: tensor ${brief(name)} has dtype ${dtype}, expected U8`);
    return this.fileOf(name).readBytesSlice(name, index);
  }

  /** The tensor's shape, which must equal `expected` when that is given. */
  private checkShape(name: string, expected?: number[]): number[] {
    const { shape } = this.fileOf(name).info(name);
    if (expected !== undefined && !(shape.length === expected.length && shape.every((d, i) => d === expected[i]))) {
      throw new ModelLoadError(
        `${this.dir}: tensor ${brief(name)} has shape [${shape.join(', ')}], expected [${expected.join(', ')}]`,
      );
    }
    return shape;
  }

  scalingOf(name: string): Fp8Scaling | null {
    const { dtype, shape } = this.info(name);
    if (dtype === 'F32' || dtype === 'BF16' || dtype === 'F16') return null;
    if (!isFloat8Dtype(dtype)) {
      throw new ModelLoadError(
        `${this.dir}: tensor ${brief(name)} has dtype ${dtype}, expected F32, BF16, F16, ` +
          `or F8_E4M3 / F8_E5M2 with a scale tensor`,
      );
    }
    // (a vision-language model may state its quantisation in text_config only)
    const text = this.config.text_config;
    const quantised =
      this.config.quantization_config === undefined && typeof text === 'object' && text !== null && !Array.isArray(text)
        ? (text as Record<string, unknown>)
        : this.config;
    this.fp8Blocks ??= fp8BlockSize(quantised, path.join(this.dir, CONFIG_FILE));
    return fp8ScalingOf(this, name, shape, this.fp8Blocks);
  }

  close(): void {
    this.closed = true;
    this.single?.close();
    for (const shard of this.openShards.values()) shard.close();
    this.openShards.clear();
  }

  private fileOf(name: string): SafetensorsFile {
    if (this.closed) throw new ModelLoadError(`${this.dir}: checkpoint is closed; cannot use tensor ${brief(name)}`);
    if (!this.has(name)) throw new ModelLoadError(`${this.dir}: checkpoint has no tensor named ${brief(name)}`);
    if (this.single) return this.single;
    const shardName = this.shardOf!.get(name)!;
    let shard = this.openShards.get(shardName);
    if (!shard) {
      shard = openSafetensors(path.join(this.dir, shardName));
      this.openShards.set(shardName, shard);
    }
    if (!shard.has(name)) {
      throw new ModelLoadError(
        `${this.dir}: ${INDEX_FILE} places tensor ${brief(name)} in ${shardName}, but that shard does not contain it`,
      );
    }
    return shard;
  }
}

/**
 * Opens a Hugging Face checkpoint folder. Reads `config.json`, then `model.safetensors` if present, otherwise
 * `model.safetensors.index.json`, whose `weight_map` (tensor name -> shard file) must name plain files inside
 * `dir`. Shards are opened lazily; close the checkpoint to release their file descriptors.
 * @throws ValidationError when `dir` is not a non-empty string.
 * @throws ModelLoadError when the folder, config or weights are missing or malformed.
 */
export function openCheckpoint(dir: string): Checkpoint {
  if (typeof dir !== 'string' || dir.length === 0) {
    throw new ValidationError(`openCheckpoint: dir must be a non-empty string, got ${brief(dir)}`);
  }
  let isDir = false;
  try {
    isDir = fs.statSync(dir).isDirectory();
  } catch (err) {
    throw new ModelLoadError(`${dir}: checkpoint folder not found (${(err as Error).message})`, { cause: err });
  }
  if (!isDir) throw new ModelLoadError(`${dir}: checkpoint path is not a folder`);
  const config = readJsonObject(path.join(dir, CONFIG_FILE), CONFIG_FILE);
  const singlePath = path.join(dir, SINGLE_FILE);
  if (fs.existsSync(singlePath)) return new HfCheckpoint(dir, config, null, openSafetensors(singlePath));
  const indexPath = path.join(dir, INDEX_FILE);
  if (fs.existsSync(indexPath)) return new HfCheckpoint(dir, config, readWeightMap(indexPath), null);
  throw new ModelLoadError(`${dir}: no weights found; expected ${SINGLE_FILE} or ${INDEX_FILE}`);
}
