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
