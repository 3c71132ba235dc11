/**
 * bench/fidelity: top-p and threshold sweeps against static top-k on the OLMoE shape (lib/bench/fidelity.ts).
 *   npx tsx bench/fidelity.ts [--models olmoe|mixtral] [--tokens T]
 */
import { runFromCommandLine } from './run-suite';

if (require.main === module) runFromCommandLine(['fidelity'], 'olmoe');
