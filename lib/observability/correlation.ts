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
 * Sets the current correlation id. Inside {@link withCorrelationId} it replaces that scope's id; elsewhere it
 * applies to the rest of the current synchronous execution and to everything it schedules.
 */
export function setCorrelationId(id: string): void {
  const store = storage.getStore();
  if (store) store.id = id;
  else storage.enterWith({ id });
}

/** Clears the current correlation id (records then carry `correlation_id: null`). */
export function clearCorrelationId(): void {
  const store = storage.getStore();
  if (store) store.id = undefined;
}

/** The current correlation id, or undefined. */
export function getCorrelationId(): string | undefined {
  return storage.getStore()?.id;
}

/** A fresh random correlation id (a UUID v4). */
export function newCorrelationId(): string {
  return randomUUID();
}
