/**
 * A small reader of the Prometheus text exposition format, so tests can assert on families, label sets and values
 * of a real scrape instead of matching substrings.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  /** Family name -> TYPE. */
  types: Map<string, string>;
  /** Family name -> HELP text. */
  help: Map<string, string>;
  samples: Sample[];
}

export function parseExposition(text: string): Exposition {
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let m = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (m) {
      types.set(m[1], m[2]);
      continue;
    }
    m = /^# HELP (\S+) (.*)$/.exec(line);
    if (m) {
      help.set(m[1], m[2]);
      continue;
    }
    if (line.startsWith('#')) continue;
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (let l = labelRe.exec(m[2] ?? ''); l; l = labelRe.exec(m[2] ?? ''))
      labels[l[1]] = l[2].replace(/\\"/g, '"').replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
    const raw = m[3];
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number(raw);
    samples.push({ name: m[1], labels, value });
  }
  return { types, help, samples };
}

/** Samples of `name` whose labels include all of `match`. */
export function find(exp: Exposition, name: string, match: Record<string, string> = {}): Sample[] {
  return exp.samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

/** The single value of `name` with labels including `match`; throws when there is not exactly one. */
export function value(exp: Exposition, name: string, match: Record<string, string> = {}): number {
  const found = find(exp, name, match);
  if (found.length !== 1)
    throw new Error(`expected one sample of ${name} ${JSON.stringify(match)}, found ${found.length}`);
  return found[0].value;
}
