/**
 * Argument checks shared by the public classes. Each failure throws with a message that names the argument,
 * what it got and what it expects, before any native code runs.
 */
import { describe, RouterConfigurationError, ValidationError } from './errors';

type ErrorClass = new (message: string) => Error;

/** A positive (or non-negative) safe integer within [min, max]. */
export function requireInt(
  name: string,
  value: unknown,
  min: number,
  max: number,
  ErrorType: ErrorClass = RouterConfigurationError,
): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ErrorType(`${name}: expected an integer in [${min}, ${max}], got ${describe(value)}`);
  }
  return value;
}

/** A finite number within [min, max] (bounds inclusive unless `exclusiveMin`). */
export function requireNumber(
  name: string,
  value: unknown,
  min: number,
  max: number,
  exclusiveMin = false,
  ErrorType: ErrorClass = RouterConfigurationError,
): number {
  const ok =
    typeof value === 'number' && Number.isFinite(value) && value <= max && (exclusiveMin ? value > min : value >= min);
  if (!ok) {
    const lo = exclusiveMin ? `(${min}` : `[${min}`;
    throw new ErrorType(`${name}: expected a number in ${lo}, ${max}], got ${describe(value)}`);
  }
  return value as number;
}

function isDetached(arr: ArrayBufferView): boolean {
  const buffer = arr.buffer as ArrayBuffer & { detached?: boolean };
  if (typeof buffer.detached === 'boolean') return buffer.detached;
  if (arr.byteLength !== 0 || buffer.byteLength !== 0) return false;
  try {
    new Uint8Array(buffer); // throws TypeError on a detached buffer, not on an empty one
    return false;
  } catch {
    return true;
  }
}

/**
 * A Float32Array, not detached, whose length is `length` (or a positive multiple of `multipleOf`).
 * @throws ValidationError naming `name`.
 */
export function requireFloat32(
  name: string,
  value: unknown,
  shape: { length?: number; multipleOf?: number },
  ErrorType: ErrorClass = ValidationError,
): Float32Array {
  if (!(value instanceof Float32Array)) throw new ErrorType(`${name}: expected a Float32Array, got ${describe(value)}`);
  if (isDetached(value)) throw new ErrorType(`${name}: its ArrayBuffer is detached (was it transferred to a worker?)`);
  if (shape.length !== undefined && value.length !== shape.length) {
    throw new ErrorType(`${name}: expected ${shape.length} elements, got ${value.length}`);
  }
  if (shape.multipleOf !== undefined && (value.length === 0 || value.length % shape.multipleOf !== 0)) {
    throw new ErrorType(
      `${name}: expected a non-empty [T, ${shape.multipleOf}] row-major array (length a multiple of ${shape.multipleOf}), got length ${value.length}`,
    );
  }
  return value;
}

/** Throws unless every element is finite. Linear in the length: used on weights and small inputs only. */
export function requireFinite(name: string, arr: Float32Array, ErrorType: ErrorClass = ValidationError): void {
  // v * 0 is ±0 for every finite v and NaN for NaN and ±Infinity: four sums (independent chains) stay 0 unless one
  // element is not finite. About 5x faster than a test per element, which matters for weights (a checkpoint layer
  // has 10^8–10^9 of them); the slow loop runs only to name the element.
  let a = 0;
  let b = 0;
  let c = 0;
  let d = 0;
  const n = arr.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    a += arr[i] * 0;
    b += arr[i + 1] * 0;
    c += arr[i + 2] * 0;
    d += arr[i + 3] * 0;
  }
  for (; i < n; i++) a += arr[i] * 0;
  if (a + b + c + d === 0) return;
  for (let j = 0; j < n; j++) {
    if (!Number.isFinite(arr[j])) throw new ErrorType(`${name}: element ${j} is ${arr[j]}, expected finite values`);
  }
}

/** One of the allowed strings. */
export function requireOneOf<T extends string>(
  name: string,
  value: unknown,
  allowed: readonly T[],
  ErrorType: ErrorClass = RouterConfigurationError,
): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw new ErrorType(`${name}: expected one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${describe(value)}`);
  }
  return value as T;
}

/** A call's options: undefined gives {}, anything but an object is a ValidationError. */
export function callOptions<T extends object>(opts: T | undefined): T {
  if (opts === undefined) return {} as T;
  if (typeof opts !== 'object' || opts === null)
    throw new ValidationError(`options: expected an object (or nothing), got ${describe(opts)}`);
  return opts;
}
