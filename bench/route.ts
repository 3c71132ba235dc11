/** bench/route: µs per route() against the float64 reference in the same run (lib/bench/route.ts). */
import { runFromCommandLine } from './run-suite';

if (require.main === module) runFromCommandLine(['route']);
