/**
 * Correlation ids that follow a request across awaits, timers and callbacks, through AsyncLocalStorage, so every
 * log record of one request carries the same `correlation_id` without passing it by hand.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';

interface CorrelationStore {
  id: string | undefined;
}

const storage = new AsyncLocalStorage<CorrelationStore>();

/** Runs `fn` (and everything it starts, sync or async) with `id` as the current correlation id. */
export function withCorrelationId<T>(id: string, fn: () => T): T {
  return storage.run({ id }, fn);
}

/**
 * Sets the current correlation id for the rest of the current synchronous execution and everything it schedules
 * from now on (timers, promises, callbacks), as a request handler does at its start. It never changes the id seen
 * by work started before the call, nor by concurrent requests that inherited the same earlier id: each call enters
 * a context of its own (an id set at startup does not leak from one request into another). So an async helper that
 * sets an id after its own first `await` sets it for the rest of the helper only, not for the caller awaiting it:
 * set the id at the request's start, or run the request in {@link withCorrelationId}.
 */
export function setCorrelationId(id: string): void {
  storage.enterWith({ id });
}

/** Clears the current correlation id, in the same scope as {@link setCorrelationId} (records carry `null`). */
export function clearCorrelationId(): void {
  if (storage.getStore()?.id !== undefined) storage.enterWith({ id: undefined });
}

/** The current correlation id, or undefined. */
export function getCorrelationId(): string | undefined {
  return storage.getStore()?.id;
}

/** A fresh random correlation id (a UUID v4). */
export function newCorrelationId(): string {
  return randomUUID();
}
