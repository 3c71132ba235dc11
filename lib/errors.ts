/**
 * Error classes. They keep the names of the earlier Python edition so that ported code recognises them; all
 * share {@link DynamicMoEError}. Messages name the argument, the value received and what was expected.
 */

/** Base class of every error this package throws on purpose. */
export class DynamicMoEError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A router option is missing, out of range or inconsistent with another. */
export class RouterConfigurationError extends DynamicMoEError {}

/** An input has the wrong type, length or shape, or holds NaN/Inf. */
export class ValidationError extends DynamicMoEError {}

/** Tokens could not be dispatched to experts (e.g. expert weights missing). */
export class ExpertDispatchError extends DynamicMoEError {}

/** A checkpoint folder, config or tensor file could not be read or is malformed. */
export class ModelLoadError extends DynamicMoEError {}

/** The requested backend is unavailable, or the native addon failed. */
export class BackendError extends DynamicMoEError {}

/** Describes a value briefly for an error message. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (ArrayBuffer.isView(value)) {
    const len = 'length' in value ? (value as unknown as { length: number }).length : value.byteLength;
    return `${value.constructor.name}(${len})`;
  }
  if (Array.isArray(value)) return `array(${value.length})`;
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? value.slice(0, 57) + '...' : value);
  if (typeof value === 'object') return value.constructor?.name ?? 'object';
  return String(value);
}

/**
 * "expected a Router, got …" for a failed instanceof check. A value whose class has the expected name but is not
 * this module's class comes from another copy of the package (two installed side by side, e.g. as dependencies of
 * two libraries): the message says so rather than "expected a Router, got Router".
 */
export function expectedInstance(article: 'a' | 'an', name: string, value: unknown): string {
  const got = describe(value);
  if (got !== name) return `expected ${article} ${name}, got ${got}`;
  return (
    `expected ${article} ${name} of this copy of dynamic-moe-router-kit, got one made by another copy ` +
    '(two copies are installed: "npm ls dynamic-moe-router-kit" lists them; build routers and layers with one)'
  );
}

/**
 * A value from an untrusted file as JSON-like text of at most `limit` characters, for an error message. Walks only
 * as far as the text it shows (a JSON.stringify of a 64 MB header, or of an array nested 100,000 deep, would cost
 * the whole structure or overflow the stack) and never throws.
 */
export function brief(value: unknown, limit = 80): string {
  let out = '';
  const write = (v: unknown, depth: number): void => {
    if (out.length > limit) return;
    if (typeof v === 'object' && v !== null && depth >= 16) {
      out += describe(v);
    } else if (Array.isArray(v)) {
      out += '[';
      for (let i = 0; i < v.length && out.length <= limit; i++) {
        if (i) out += ',';
        write(v[i], depth + 1);
      }
      out += ']';
    } else if (typeof v === 'object' && v !== null && !ArrayBuffer.isView(v)) {
      out += '{';
      let first = true;
      for (const key in v) {
        if (!Object.hasOwn(v, key)) continue;
        if (out.length > limit) break;
        out += `${first ? '' : ','}${JSON.stringify(key.length > limit ? key.slice(0, limit) : key)}:`;
        first = false;
        write((v as Record<string, unknown>)[key], depth + 1);
      }
      out += '}';
    } else if (typeof v === 'string') {
      out += JSON.stringify(v.length > limit ? v.slice(0, limit) : v);
    } else if (typeof v === 'bigint') {
      out += v.toString();
    } else if (typeof v === 'object' && v !== null) {
      out += describe(v);
    } else {
      out += String(v);
    }
  };
  write(value, 0);
  return out.length > limit ? `${out.slice(0, limit - 3)}...` : out;
}

/** Whether an error is that of a call on a disposed layer or router (ExpertDispatchError, or the binding's code). */
export function isDisposedError(error: unknown): boolean {
  return error instanceof ExpertDispatchError || (error as { code?: unknown } | null)?.code === 'ERR_MOE_DISPOSED';
}
