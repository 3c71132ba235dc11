/**
 * bench/layer: the six workloads of the layer issue in fp32 and bf16, against the roofline measured in the same
 * run (lib/bench/layer.ts).  npx tsx bench/layer.ts [--models olmoe,mixtral] [--dtypes fp32,bf16] [--threads N]
 */
import { runFromCommandLine } from './run-suite';

export { buildLayer, timeForward, SHAPES } from '../lib/bench/layer';

if (require.main === module) runFromCommandLine(['layer']);
