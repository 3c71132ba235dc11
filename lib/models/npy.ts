/**
 * Minimal reader and writer for NumPy `.npy` files holding little-endian float32 or int32 arrays in C order.
 * Used to exchange activations, router logits and reference outputs with Python (e.g. golden values from the
 * Hugging Face implementation). The reader validates the magic, header and data size instead of trusting them.
 */
import * as fs from 'fs';
import * as os from 'os';
import { brief, ValidationError } from '../errors';

/** An array read from a `.npy` file. */
export interface NpyArray {
  shape: number[];
  dtype: 'float32' | 'int32';
  data: Float32Array | Int32Array;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
/** NumPy itself refuses headers over 10000 bytes by default; allow more, but not an unbounded read. */
const MAX_HEADER_BYTES = 1 << 20;
/** fs.writeSync writes at most 2^31 - 1 bytes per call. */
const WRITE_CHUNK_BYTES = 1 << 30;
const DESCR_TO_DTYPE: Readonly<Record<string, NpyArray['dtype']>> = { '<f4': 'float32', '<i4': 'int32' };

type PyValue = string | boolean | number | PyValue[] | { [key: string]: PyValue };

/** Parses the Python literal subset NumPy writes in headers: dicts, tuples/lists, strings, ints, True/False. */
class PyLiteralParser {
  private pos = 0;

  constructor(private readonly text: string) {}

  parseAll(): PyValue {
    const value = this.value();
    this.skipSpace();
    if (this.pos !== this.text.length) this.fail('end of header');
    return value;
  }

  private value(): PyValue {
    this.skipSpace();
    const c = this.text[this.pos];
    if (c === '{') return this.dict();
    if (c === '(' || c === '[') return this.sequence(c === '(' ? ')' : ']');
    if (c === "'" || c === '"') return this.string();
    const word = /^(True|False|-?\d+)/.exec(this.text.slice(this.pos, this.pos + 32));
    if (!word) this.fail('a value');
    this.pos += word[0].length;
    if (word[0] === 'True' || word[0] === 'False') return word[0] === 'True';
    return Number(word[0]);
  }

  private dict(): { [key: string]: PyValue } {
    const result: { [key: string]: PyValue } = Object.create(null);
    this.pos++;
    for (;;) {
      this.skipSpace();
      if (this.eat('}')) return result;
      const key = this.string();
      this.skipSpace();
      if (!this.eat(':')) this.fail("':'");
      result[key] = this.value();
      this.skipSpace();
      if (this.eat('}')) return result;
      if (!this.eat(',')) this.fail("',' or '}'");
    }
  }

  private sequence(close: string): PyValue[] {
    const items: PyValue[] = [];
    this.pos++;
    for (;;) {
      this.skipSpace();
      if (this.eat(close)) return items;
      items.push(this.value());
      this.skipSpace();
      if (this.eat(close)) return items;
      if (!this.eat(',')) this.fail(`',' or '${close}'`);
    }
  }

  private string(): string {
    const quote = this.text[this.pos];
    if (quote !== "'" && quote !== '"') this.fail('a quoted string');
    const end = this.text.indexOf(quote, this.pos + 1);
    if (end < 0 || this.text.slice(this.pos + 1, end).includes('\\')) this.fail('a simple quoted string');
    const value = this.text.slice(this.pos + 1, end);
    this.pos = end + 1;
    return value;
  }

  private eat(c: string): boolean {
    if (this.text[this.pos] !== c) return false;
    this.pos++;
    return true;
  }

  private skipSpace(): void {
    while (this.pos < this.text.length && /\s/.test(this.text[this.pos])) this.pos++;
  }

  private fail(expected: string): never {
    throw new SyntaxError(`expected ${expected} at character ${this.pos}`);
  }
}

function npyError(file: string, what: string): ValidationError {
  return new ValidationError(`${file}: ${what}`);
}

function readAt(fd: number, target: Uint8Array, position: number): number {
  let done = 0;
  while (done < target.length) {
    const got = fs.readSync(fd, target, done, target.length - done, position + done);
    if (got === 0) break;
    done += got;
  }
  return done;
}

function parseHeader(file: string, text: string): { dtype: NpyArray['dtype']; shape: number[] } {
  let header: PyValue;
  try {
    header = new PyLiteralParser(text).parseAll();
  } catch (err) {
    throw npyError(
      file,
      `header is not a Python dict literal (${(err as Error).message}): ${text.trim().slice(0, 80)}`,
    );
  }
  if (typeof header !== 'object' || Array.isArray(header)) throw npyError(file, 'header is not a dict');
  const { descr, fortran_order: fortranOrder, shape } = header as Record<string, PyValue | undefined>;
  const dtype = typeof descr === 'string' && Object.hasOwn(DESCR_TO_DTYPE, descr) ? DESCR_TO_DTYPE[descr] : undefined;
  if (dtype === undefined) {
    throw npyError(file, `unsupported dtype descr ${brief(descr)}, expected '<f4' or '<i4'`);
  }
  if (fortranOrder !== false) {
    throw npyError(file, `fortran_order is ${brief(fortranOrder)}, expected False (C order only)`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
    throw npyError(file, `shape is ${brief(shape)}, expected a tuple of non-negative integers`);
  }
  return { dtype, shape: shape as number[] };
}

/**
 * Reads a `.npy` file (format 1.0, 2.0 or 3.0) holding '<f4' (float32) or '<i4' (int32) data in C order.
 * The returned data has `product(shape)` elements in a fresh, aligned buffer.
 * @throws ValidationError naming the file when it cannot be read, the magic or version is wrong, the header is
 *   malformed or too long, the dtype or order is unsupported, or the data size differs from the shape.
 */
export function readNpy(path: string): NpyArray {
  if (os.endianness() !== 'LE') throw new ValidationError('readNpy: big-endian hosts are not supported');
  let fd: number;
  try {
    // non-blocking, so a named pipe in its place is refused below instead of blocking the open
    fd = fs.openSync(path, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  } catch (err) {
    throw new ValidationError(`${path}: cannot open .npy file (${(err as Error).message})`, { cause: err });
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw npyError(path, 'not a regular file');
    const fileSize = stat.size;
    const preamble = new Uint8Array(12);
    const got = readAt(fd, preamble, 0);
    if (got < 10 || MAGIC.some((b, i) => preamble[i] !== b)) {
      throw npyError(path, 'not a .npy file: missing the "\\x93NUMPY" magic');
    }
    const major = preamble[6];
    if (major < 1 || major > 3) {
      throw npyError(path, `unsupported .npy format version ${major}.${preamble[7]}, expected 1.0, 2.0 or 3.0`);
    }
    const view = new DataView(preamble.buffer);
    if (major > 1 && got < 12) throw npyError(path, `file too short (${fileSize} bytes) for a version ${major} header`);
    const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    const headerStart = major === 1 ? 10 : 12;
    if (headerLength > MAX_HEADER_BYTES || headerStart + headerLength > fileSize) {
      throw npyError(
        path,
        `header length ${headerLength} is invalid, expected at most ${Math.min(MAX_HEADER_BYTES, fileSize - headerStart)}`,
      );
    }
    const headerBytes = new Uint8Array(headerLength);
    readAt(fd, headerBytes, headerStart);
    let text: string;
    try {
      text = new TextDecoder(major === 3 ? 'utf-8' : 'latin1', { fatal: true }).decode(headerBytes);
    } catch (err) {
      throw new ValidationError(`${path}: header is not valid text`, { cause: err });
    }
    const { dtype, shape } = parseHeader(path, text);
    const elements = shape.reduce((a, b) => a * b, 1);
    const dataStart = headerStart + headerLength;
    const dataBytes = fileSize - dataStart;
    if (!Number.isSafeInteger(elements) || dataBytes !== elements * 4) {
      throw npyError(
        path,
        `data is ${dataBytes} bytes, expected ${elements * 4} (shape (${shape.join(', ')}) of 4-byte ${dtype})`,
      );
    }
    const buffer = new ArrayBuffer(dataBytes);
    if (readAt(fd, new Uint8Array(buffer), dataStart) !== dataBytes) throw npyError(path, 'file shrank while reading');
    const data = dtype === 'float32' ? new Float32Array(buffer) : new Int32Array(buffer);
    return { shape, dtype, data };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes `data` (row-major, `shape`) as a `.npy` file: format 1.0 ('<f4' or '<i4', C order), with the header
 * padded by spaces so the data starts at a multiple of 64 bytes. Uses format 2.0 only if the header would exceed
 * 65535 bytes.
 * @throws ValidationError when `data` is not a Float32Array/Int32Array or its length is not product(shape).
 */
export function writeNpy(path: string, data: Float32Array | Int32Array, shape: number[]): void {
  if (os.endianness() !== 'LE') throw new ValidationError('writeNpy: big-endian hosts are not supported');
  if (!(data instanceof Float32Array) && !(data instanceof Int32Array)) {
    throw new ValidationError(`writeNpy: data must be a Float32Array or Int32Array`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new ValidationError(`writeNpy: shape ${brief(shape)} must be a list of non-negative integers`);
  }
  const elements = shape.reduce((a, b) => a * b, 1);
  if (elements !== data.length) {
    throw new ValidationError(`writeNpy: data has ${data.length} elements, expected ${elements} for shape [${shape}]`);
  }
  const descr = data instanceof Float32Array ? '<f4' : '<i4';
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  let major = 1;
  let headerStart = 10;
  let total = Math.ceil((headerStart + dict.length + 1) / 64) * 64;
  if (total - headerStart > 0xffff) {
    major = 2;
    headerStart = 12;
    total = Math.ceil((headerStart + dict.length + 1) / 64) * 64;
  }
  const headerLength = total - headerStart;
  const prefix = Buffer.alloc(headerStart);
  Buffer.from(MAGIC).copy(prefix, 0);
  prefix[6] = major;
  prefix[7] = 0;
  if (major === 1) prefix.writeUInt16LE(headerLength, 8);
  else prefix.writeUInt32LE(headerLength, 8);
  const header = Buffer.from(dict + ' '.repeat(headerLength - dict.length - 1) + '\n', 'latin1');
  const body = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const fd = fs.openSync(path, 'w');
  try {
    for (const bytes of [prefix, header, body]) {
      let written = 0;
      while (written < bytes.length) {
        written += fs.writeSync(fd, bytes, written, Math.min(WRITE_CHUNK_BYTES, bytes.length - written));
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}
