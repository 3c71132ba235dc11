/**
 * Reader and writer for the safetensors format (8-byte little-endian header length, a JSON header, then raw
 * tensor bytes). Checkpoints come from the internet, so the reader treats every file as untrusted: it reads only
 * the header when opening, checks every field before use, and reads one tensor's bytes at a time on request.
 * Float tensors (F32, BF16, F16, F8_E4M3, F8_E5M2) are read as float32; an FP8 tensor's scales are another
 * tensor's, which checkpoint.ts applies. The writer exists mostly to create test fixtures; it converts float32 data
 * to any of those dtypes.
 */
import * as fs from 'fs';
import * as os from 'os';
import { brief, ModelLoadError, ValidationError } from '../errors';
import { bf16ArrayToFloat32, f16ArrayToFloat32, float32ToBf16Bits, float32ToF16Bits } from './float16';
import { f8ArrayToFloat32, isFloat8Dtype, numberToF8Bits } from './float8';

export { bf16BitsToFloat32, f16BitsToFloat32, float32ToBf16Bits, float32ToF16Bits } from './float16';

/** Dtypes that {@link SafetensorsFile.readFloat32} converts to float32. */
export type SupportedDtype = 'F32' | 'BF16' | 'F16' | 'F8_E4M3' | 'F8_E5M2';

/** Element sizes of every dtype the safetensors format defines with whole-byte elements. */
const DTYPE_BYTES: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  F8_E8M0: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
  C64: 8,
};

const SUPPORTED_DTYPES: readonly SupportedDtype[] = ['F32', 'BF16', 'F16', 'F8_E4M3', 'F8_E5M2'];
const SUPPORTED_LIST = 'F32, BF16, F16, F8_E4M3 or F8_E5M2';
const HEADER_LENGTH_LIMIT = 100 * 1024 * 1024;
const MAX_RANK = 8;
const MAX_ELEMENTS = 2 ** 40;
const MAX_NAME_LENGTH = 1024;
/** fs.readSync reads at most 2^31 - 1 bytes per call; larger tensors are read in chunks of this size. */
const READ_CHUNK_BYTES = 1 << 30;

/** Dtype, shape and size in bytes of one tensor as declared in a safetensors header. */
export interface SafetensorsTensorInfo {
  /** The dtype string from the header, e.g. 'BF16'; F32, BF16, F16, F8_E4M3 and F8_E5M2 can be read. */
  dtype: string;
  shape: number[];
  byteLength: number;
}

/** An open safetensors file whose header has been validated. */
export interface SafetensorsFile {
  readonly path: string;
  /** The `__metadata__` map of the header (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensor names in header order. */
  tensorNames(): string[];
  has(name: string): boolean;
  /** @throws ModelLoadError when the tensor is not in the file. */
  info(name: string): SafetensorsTensorInfo;
  /**
   * Reads one tensor and returns it as float32, row-major in its declared shape (FP8 values as stored, unscaled).
   * @throws ModelLoadError when the tensor is missing, its dtype is not a float one listed above, or the file is
   *   short.
   */
  readFloat32(name: string): Float32Array;
  /**
   * Reads slice `index` of a tensor along its first dimension (one expert of a fused [E, ...] tensor) as float32,
   * reading only that slice's bytes.
   * @throws ModelLoadError as readFloat32, or for an index outside [0, shape[0]).
   */
  readFloat32Slice(name: string, index: number): Float32Array;
  /** The tensor's bytes as stored (E4M3 weights for layers that keep them). @throws ModelLoadError as readFloat32. */
  readBytes(name: string): Uint8Array;
  /**
   * Slice `index` along the first dimension as stored bytes (one expert of gpt-oss's MXFP4 blocks or scales), any
   * dtype. @throws ModelLoadError as readFloat32Slice.
   */
  readBytesSlice(name: string, index: number): Uint8Array;
  /** Closes the file descriptor; later reads throw ModelLoadError. Calling it twice is harmless. */
  close(): void;
}

interface TensorEntry extends SafetensorsTensorInfo {
  /** Offset of the first byte within the data section (after the header). */
  begin: number;
}

function loadError(file: string, what: string, seen: unknown, expected: string): ModelLoadError {
  return new ModelLoadError(`${file}: ${what}: got ${brief(seen)}, expected ${expected}`);
}

function requireLittleEndianHost(): void {
  if (os.endianness() !== 'LE') {
    throw new ModelLoadError('safetensors data is little-endian; big-endian hosts are not supported');
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseShape(file: string, name: string, value: unknown): number[] {
  const expected = `an array of at most ${MAX_RANK} non-negative integers`;
  if (!Array.isArray(value) || value.length > MAX_RANK) {
    throw loadError(file, `tensor ${brief(name)} has an invalid "shape"`, value, expected);
  }
  let elements = 1;
  for (const dim of value) {
    if (typeof dim !== 'number' || !Number.isSafeInteger(dim) || dim < 0) {
      throw loadError(file, `tensor ${brief(name)} has an invalid dimension in "shape"`, value, expected);
    }
    elements *= dim;
    if (elements > MAX_ELEMENTS) {
      throw loadError(file, `tensor ${brief(name)} is too large`, value, `at most 2^40 elements`);
    }
  }
  return value as number[];
}

function parseEntry(file: string, name: string, value: unknown, dataBytes: number): TensorEntry {
  if (name.length === 0 || name.length > MAX_NAME_LENGTH) {
    throw loadError(file, 'invalid tensor name', name, `a string of 1 to ${MAX_NAME_LENGTH} characters`);
  }
  if (!isPlainObject(value)) {
    throw loadError(file, `tensor ${brief(name)} entry is not an object`, value, '{dtype, shape, data_offsets}');
  }
  const dtype = value.dtype;
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, dtype)) {
    throw loadError(file, `tensor ${brief(name)} has an unknown "dtype"`, dtype, Object.keys(DTYPE_BYTES).join('|'));
  }
  const shape = parseShape(file, name, value.shape);
  const offsets = value.data_offsets;
  const offsetsExpected = `[begin, end] integers with 0 <= begin <= end <= ${dataBytes} (data section size)`;
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o): o is number => typeof o === 'number' && Number.isSafeInteger(o)) ||
    offsets[0] < 0 ||
    offsets[0] > offsets[1] ||
    offsets[1] > dataBytes
  ) {
    throw loadError(file, `tensor ${brief(name)} has invalid "data_offsets"`, offsets, offsetsExpected);
  }
  const [begin, end] = offsets as [number, number];
  const byteLength = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
  if (end - begin !== byteLength) {
    throw loadError(
      file,
      `tensor ${brief(name)} (${dtype} ${brief(shape)}) has a byte range of the wrong size`,
      end - begin,
      `${byteLength} bytes (product of shape x ${DTYPE_BYTES[dtype]} bytes)`,
    );
  }
  return { dtype, shape: shape.slice(), byteLength, begin };
}

function checkNoOverlap(file: string, entries: Map<string, TensorEntry>): void {
  const ranges = [...entries].filter(([, e]) => e.byteLength > 0).sort(([, a], [, b]) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    const [prevName, prev] = ranges[i - 1];
    const [name, entry] = ranges[i];
    if (entry.begin < prev.begin + prev.byteLength) {
      throw loadError(
        file,
        `tensors ${brief(prevName)} and ${brief(name)} overlap`,
        [entry.begin, entry.begin + entry.byteLength],
        `a range starting at or after ${prev.begin + prev.byteLength}`,
      );
    }
  }
}

function parseHeader(file: string, headerBytes: Uint8Array, dataBytes: number) {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new ModelLoadError(`${file}: header is not valid UTF-8 JSON (${reason}); expected a JSON object`, {
      cause: err,
    });
  }
  if (!isPlainObject(json)) throw loadError(file, 'header is not a JSON object', json, 'a JSON object');
  const metadata: Record<string, string> = Object.create(null);
  const entries = new Map<string, TensorEntry>();
  for (const [name, value] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(value)) throw loadError(file, '"__metadata__" is not an object', value, 'an object');
      for (const [key, text] of Object.entries(value)) {
        if (typeof text !== 'string') {
          throw loadError(file, `"__metadata__" value for ${brief(key)} is not a string`, text, 'a string');
        }
        metadata[key] = text;
      }
      continue;
    }
    entries.set(name, parseEntry(file, name, value, dataBytes));
  }
  checkNoOverlap(file, entries);
  return { metadata: Object.freeze(metadata), entries };
}

/** Reads exactly `target.length` bytes at `position`, in chunks small enough for fs.readSync. */
function readExactly(fd: number, target: Uint8Array, position: number, file: string, what: string): void {
  let done = 0;
  while (done < target.length) {
    const want = Math.min(READ_CHUNK_BYTES, target.length - done);
    const got = fs.readSync(fd, target, done, want, position + done);
    if (got === 0) {
      throw loadError(file, `file ended while reading ${what}`, done, `${target.length} bytes`);
    }
    done += got;
  }
}

class SafetensorsReader implements SafetensorsFile {
  private fd: number | null;

  constructor(
    readonly path: string,
    fd: number,
    private readonly dataStart: number,
    readonly metadata: Readonly<Record<string, string>>,
    private readonly entries: Map<string, TensorEntry>,
  ) {
    this.fd = fd;
  }

  tensorNames(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    const entry = this.entry(name);
    return { dtype: entry.dtype, shape: entry.shape.slice(), byteLength: entry.byteLength };
  }

  readFloat32(name: string): Float32Array {
    const entry = this.entry(name);
    return this.readRange(name, entry, 0, entry.byteLength, `tensor ${brief(name)}`);
  }

  readBytes(name: string): Uint8Array {
    const entry = this.entry(name);
    if (this.fd === null) throw new ModelLoadError(`${this.path}: file is closed; cannot read tensor ${brief(name)}`);
    let out: Uint8Array;
    try {
      out = new Uint8Array(entry.byteLength);
    } catch (err) {
      throw new ModelLoadError(
        `${this.path}: tensor ${brief(name)} (${entry.byteLength} bytes) does not fit in memory`,
        {
          cause: err,
        },
      );
    }
    readExactly(this.fd, out, this.dataStart + entry.begin, this.path, `tensor ${brief(name)}`);
    return out;
  }

  readFloat32Slice(name: string, index: number): Float32Array {
    const entry = this.entry(name);
    const sliceBytes = this.sliceBytes(name, entry, index);
    return this.readRange(name, entry, index * sliceBytes, sliceBytes, `slice ${index} of tensor ${brief(name)}`);
  }

  readBytesSlice(name: string, index: number): Uint8Array {
    const entry = this.entry(name);
    const sliceBytes = this.sliceBytes(name, entry, index);
    const what = `slice ${index} of tensor ${brief(name)}`;
    if (this.fd === null) throw new ModelLoadError(`${this.path}: file is closed; cannot read ${what}`);
    const out = new Uint8Array(sliceBytes);
    readExactly(this.fd, out, this.dataStart + entry.begin + index * sliceBytes, this.path, what);
    return out;
  }

  /** The bytes of one slice along the first dimension, after checking `index` against it. */
  private sliceBytes(name: string, entry: TensorEntry, index: number): number {
    const outer = entry.shape[0];
    if (entry.shape.length === 0 || !Number.isSafeInteger(index) || index < 0 || index >= outer) {
      const expected = entry.shape.length === 0 ? 'a tensor of rank 1 or more' : `an integer in [0, ${outer - 1}]`;
      throw loadError(this.path, `slice of tensor ${brief(name)} (shape ${brief(entry.shape)})`, index, expected);
    }
    return entry.byteLength / outer;
  }

  /** `byteLength` bytes of the tensor from `byteOffset` (whole elements), as float32. */
  private readRange(name: string, entry: TensorEntry, byteOffset: number, byteLength: number, what: string) {
    if (!(SUPPORTED_DTYPES as readonly string[]).includes(entry.dtype)) {
      throw loadError(this.path, `tensor ${brief(name)} has an unsupported dtype`, entry.dtype, SUPPORTED_LIST);
    }
    if (this.fd === null) throw new ModelLoadError(`${this.path}: file is closed; cannot read ${what}`);
    requireLittleEndianHost();
    const elements = byteLength / DTYPE_BYTES[entry.dtype];
    let raw: ArrayBuffer;
    let out: Float32Array;
    try {
      // A fresh ArrayBuffer starts at offset 0, so an F32 view over it is always aligned and needs no copy.
      raw = new ArrayBuffer(byteLength);
      out = entry.dtype === 'F32' ? new Float32Array(raw) : new Float32Array(elements);
    } catch (err) {
      throw new ModelLoadError(`${this.path}: ${what} (${byteLength} bytes) does not fit in memory`, { cause: err });
    }
    readExactly(this.fd, new Uint8Array(raw), this.dataStart + entry.begin + byteOffset, this.path, what);
    if (entry.dtype === 'BF16') bf16ArrayToFloat32(new Uint16Array(raw), out);
    else if (entry.dtype === 'F16') f16ArrayToFloat32(new Uint16Array(raw), out);
    else if (isFloat8Dtype(entry.dtype)) f8ArrayToFloat32(new Uint8Array(raw), entry.dtype, out);
    return out;
  }

  close(): void {
    if (this.fd !== null) {
      const fd = this.fd;
      this.fd = null;
      fs.closeSync(fd);
    }
  }

  private entry(name: string): TensorEntry {
    const entry = this.entries.get(name);
    if (!entry) throw new ModelLoadError(`${this.path}: no tensor named ${brief(name)} in this file`);
    return entry;
  }
}

/**
 * Opens a safetensors file and validates its header. Only the 8-byte length prefix and the JSON header are read;
 * tensor data is read later by {@link SafetensorsFile.readFloat32}.
 *
 * Checks: file at least 8 bytes; header length in [1, 100 MiB] and within the file; header is a UTF-8 JSON object;
 * `__metadata__` (optional) maps strings to strings; each tensor has a known `dtype`, a `shape` of at most 8
 * non-negative integers with at most 2^40 elements, and `data_offsets` [begin, end] inside the data section whose
 * length equals elements x dtype size; tensors do not overlap; names have 1 to 1024 characters.
 * Tensors of other dtypes (integers, F64, ...) are listed but fail when read.
 *
 * @throws ModelLoadError naming the file, the problem, the value seen and what was expected.
 */
export function openSafetensors(path: string): SafetensorsFile {
  let fd: number;
  try {
    // non-blocking, so a named pipe in its place is refused below instead of blocking the open
    fd = fs.openSync(path, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  } catch (err) {
    throw new ModelLoadError(`${path}: cannot open safetensors file (${(err as Error).message})`, { cause: err });
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw loadError(path, 'not a regular file', 'another kind of file', 'a regular file');
    const fileSize = stat.size;
    if (fileSize < 8) throw loadError(path, 'file too short for the 8-byte header length', fileSize, '>= 8 bytes');
    const prefix = new Uint8Array(8);
    readExactly(fd, prefix, 0, path, 'the header length');
    const headerLength = new DataView(prefix.buffer).getBigUint64(0, true);
    if (headerLength === 0n || headerLength > BigInt(HEADER_LENGTH_LIMIT)) {
      throw loadError(path, 'invalid header length', headerLength, `1 to ${HEADER_LENGTH_LIMIT} bytes (100 MiB)`);
    }
    const headerBytes = Number(headerLength);
    if (8 + headerBytes > fileSize) {
      throw loadError(path, 'header length runs past the end of the file', headerBytes, `<= ${fileSize - 8} bytes`);
    }
    const header = new Uint8Array(headerBytes);
    readExactly(fd, header, 8, path, 'the header');
    const { metadata, entries } = parseHeader(path, header, fileSize - 8 - headerBytes);
    return new SafetensorsReader(path, fd, 8 + headerBytes, metadata, entries);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/** One tensor to write: float32 values, converted to `dtype` on the way out. */
export interface SafetensorsTensorInput {
  dtype: SupportedDtype;
  shape: number[];
  data: Float32Array;
}

/** One tensor to write as raw bytes, U8 (e.g. MXFP4 blocks and scales). */
export interface SafetensorsBytesInput {
  dtype: 'U8';
  shape: number[];
  data: Uint8Array;
}

function encodeTensor(name: string, tensor: SafetensorsTensorInput | SafetensorsBytesInput): Uint8Array {
  const { dtype, shape, data } = tensor;
  if (dtype !== 'U8' && !(SUPPORTED_DTYPES as readonly string[]).includes(dtype)) {
    throw new ValidationError(
      `writeSafetensors: tensor ${brief(name)}: dtype ${brief(dtype)}, expected ${SUPPORTED_LIST}`,
    );
  }
  const validShape =
    Array.isArray(shape) && shape.length <= MAX_RANK && shape.every((d) => Number.isSafeInteger(d) && d >= 0);
  if (!validShape) {
    throw new ValidationError(
      `writeSafetensors: tensor ${brief(name)}: shape ${brief(shape)}, expected <= 8 integers >= 0`,
    );
  }
  const elements = shape.reduce((a, b) => a * b, 1);
  if (dtype === 'U8') {
    if (!(data instanceof Uint8Array) || data.length !== elements)
      throw new ValidationError(
        `writeSafetensors: tensor ${brief(name)}: data has ${brief(data)}, expected a Uint8Array of ${elements} bytes (shape ${brief(shape)})`,
      );
    return data;
  }
  if (!(data instanceof Float32Array) || data.length !== elements) {
    const seen = data instanceof Float32Array ? `${data.length} elements` : brief(data);
    throw new ValidationError(
      `writeSafetensors: tensor ${brief(name)}: data has ${seen}, expected a Float32Array of ${elements} (shape ${brief(shape)})`,
    );
  }
  if (dtype === 'F32') {
    requireLittleEndianHost();
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (isFloat8Dtype(dtype)) return Uint8Array.from(data, (v) => numberToF8Bits(v, dtype));
  const encoded = new Uint16Array(elements);
  const convert = dtype === 'BF16' ? float32ToBf16Bits : float32ToF16Bits;
  for (let i = 0; i < elements; i++) encoded[i] = convert(data[i]);
  return new Uint8Array(encoded.buffer);
}

/**
 * Writes tensors (in the object's key order) to a safetensors file. Float32 data is converted to each tensor's
 * dtype, rounding to nearest-even (F16 and FP8 including subnormals; FP8 values are written as given: scale them
 * first). The JSON header is padded with spaces to a multiple of 8 bytes so the data section is 8-byte aligned.
 * @throws ValidationError when a tensor's data length does not match its shape or its dtype is not a float one or U8.
 */
export function writeSafetensors(
  path: string,
  tensors: Record<string, SafetensorsTensorInput | SafetensorsBytesInput>,
  metadata?: Record<string, string>,
): void {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = { ...metadata };
  const payloads: Uint8Array[] = [];
  let offset = 0;
  for (const [name, tensor] of Object.entries(tensors)) {
    if (name === '__metadata__' || name.length === 0 || name.length > MAX_NAME_LENGTH) {
      throw new ValidationError(`writeSafetensors: invalid tensor name ${brief(name)}`);
    }
    const bytes = encodeTensor(name, tensor);
    header[name] = { dtype: tensor.dtype, shape: tensor.shape.slice(), data_offsets: [offset, offset + bytes.length] };
    payloads.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  const padding = (8 - (Buffer.byteLength(json, 'utf8') % 8)) % 8;
  json += ' '.repeat(padding);
  const headerBytes = Buffer.from(json, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  const fd = fs.openSync(path, 'w');
  try {
    for (const bytes of [prefix, headerBytes, ...payloads]) writeAll(fd, bytes);
  } finally {
    fs.closeSync(fd);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let written = 0;
  while (written < bytes.length) {
    written += fs.writeSync(fd, bytes, written, Math.min(READ_CHUNK_BYTES, bytes.length - written));
  }
}
