/** Assertions shared by the test suites: an error of a class, with a message that matches and names things. */
import * as assert from 'uvu/assert';
import { BackendError } from '../../lib/errors';

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
 * A native error the binding did not raise on purpose (no ERR_MOE_* code: an argument the glue could not convert, a
 * std::exception from deep inside) reaches users as "native call failed": a validation gap, unless it is memory.
 */
export function unexpectedNative(err: unknown): boolean {
  return err instanceof BackendError && /native call failed/.test(err.message) && !/bad_alloc|alloc/i.test(err.message);
}
