/**
 * Seeded pseudo-random numbers for tests, so fixtures and expected values are the same on every run and machine.
 * mulberry32 gives uniform 32-bit values; Box–Muller turns pairs of them into normal samples.
 */

/** Returns a generator of uniform numbers in [0, 1) fully determined by `seed` (any 32-bit integer). */
export function rng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Returns `n` normal samples with mean 0 and standard deviation `std`, determined by `seed`. */
export function randn(n: number, seed: number, std = 1): Float32Array {
  const uniform = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = 1 - uniform(); // in (0, 1], so the log is finite
    const u2 = uniform();
    const radius = Math.sqrt(-2 * Math.log(u1)) * std;
    out[i] = radius * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = radius * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** Returns `n` uniform samples in [lo, hi), determined by `seed`. */
export function randu(n: number, seed: number, lo = 0, hi = 1): Float32Array {
  const uniform = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * uniform();
  return out;
}

/** A fresh seed for one test run; tests print it so a failure can be replayed with the same data. */
export function freshSeed(): number {
  const fromEnv = Number(process.env.MOE_TEST_SEED);
  if (Number.isSafeInteger(fromEnv) && fromEnv > 0) return fromEnv >>> 0;
  return (Date.now() ^ Math.floor(Math.random() * 0x7fffffff)) >>> 0;
}
