/**
 * The pieces of the Prometheus text format, spelled as prom-client's registry spells them, shared by the families
 * that print themselves (series-family.ts, bucketed-histogram.ts) and the one-pass writer (exposition.ts).
 */

/** Names and help escape backslash and newline. */
export const escapeString = (s: string): string => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');

/** Label values escape backslash, newline and the double quote. */
export const escapeLabelValue = (v: string | number): string | number =>
  typeof v === 'string' ? escapeString(v).replace(/"/g, '\\"') : v;

/** A sample value: prom-client writes NaN as `Nan` (sic) and infinities as `+Inf` / `-Inf`. */
export function valueString(v: number): string {
  if (Number.isNaN(v)) return 'Nan';
  if (!Number.isFinite(v)) return v < 0 ? '-Inf' : '+Inf';
  return `${v}`;
}

/** `name="value"` pairs of a label set, in its key order. */
export function formatLabels(labels: Record<string, string | number>): string[] {
  return Object.keys(labels).map((name) => `${name}="${escapeLabelValue(labels[name])}"`);
}

/** A family's `# HELP` and `# TYPE` lines (no newline after them). */
export const familyHeader = (name: string, help: string, type: string): string =>
  `# HELP ${escapeString(name)} ${escapeString(help)}\n# TYPE ${escapeString(name)} ${type}`;
