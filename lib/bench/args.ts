/** The value after `--name` on the bench's command line, or `fallback` (the benches' own flags, no parser). */
export function benchArg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}
