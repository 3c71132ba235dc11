/** Assertions shared by the test suites: an error of a class, with a message that matches and names things. */
import * as assert from 'uvu/assert';
import { BackendError, DynamicMoEError } from '../../lib/errors';

/** `fn` must throw an `ErrorType` whose message matches `pattern` and contains every word of `mustMention`. */
export function throwsWith(
  fn: () => unknown,
  // eslint-disable-next-line @typescript-eslint/ban-types
  ErrorType: Function,
  pattern: RegExp,
  mustMention: string | string[] = [],
): void {
  try {
    fn();
  } catch (err) {
    assert.instance(err, ErrorType, `expected ${ErrorType.name}, got ${String(err)}`);
    const message = (err as Error).message;
    assert.match(message, pattern);
    for (const word of typeof mustMention === 'string' ? [mustMention] : mustMention) {
      assert.ok(message.includes(word), `message should name ${word}: ${message}`);
    }
    return;
  }
  assert.unreachable(`expected ${ErrorType.name} matching ${pattern}`);
}

/**
 * `fn` (a call of the binding itself, below the package's error classes) must throw the binding's validation error
 * (code ERR_MOE_VALIDATION) with a message that matches `pattern`.
 */
export function refusedNatively(fn: () => unknown, pattern: RegExp, what?: string): void {
  assert.throws(
    fn,
    (e: Error & { code?: string }) => e.code === 'ERR_MOE_VALIDATION' && pattern.test(e.message),
    what ?? String(pattern),
  );
}

/**
 * Fuzz tests: `err` must be a clean refusal, one of the package's errors — and not a native error the binding did not
 * raise on purpose (no ERR_MOE_* code: an argument the glue could not convert, a std::exception from deep inside),
 * which reaches users as "native call failed": a validation gap, unless it is memory. `what()` names the input.
 */
export function assertCleanRefusal(err: unknown, what: () => string): void {
  const unexpectedNative =
    err instanceof BackendError && /native call failed/.test(err.message) && !/bad_alloc|alloc/i.test(err.message);
  if (err instanceof DynamicMoEError && !unexpectedNative) return;
  assert.unreachable(`${what()}: ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
}
