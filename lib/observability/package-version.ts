/**
 * This package's version, for `service.version` in logs and the tracer's version. Read once from package.json,
 * which sits two folders above both lib/observability/ (tsx) and dist/observability/ (compiled).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

let cachedVersion: string | undefined;

/** The `version` of this package's package.json, or '0.0.0' when it cannot be read. */
export function packageVersion(): string {
  if (cachedVersion === undefined) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as {
        version?: unknown;
      };
      cachedVersion = typeof pkg.version === 'string' ? pkg.version : '0.0.0';
    } catch {
      cachedVersion = '0.0.0';
    }
  }
  return cachedVersion;
}
