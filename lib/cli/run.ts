/**
 * `moe-router run`: one MoE layer of a local HF checkpoint over x.npy, writing y.npy (and optionally the
 * routing). The CLI face of MoELayer.fromPretrained + forward.
 */
import { MoELayer } from '../layer';
import { readNpy, writeNpy } from '../models/npy';
import { ValidationError } from '../errors';
import { intOption, parseOptions, parseSelection, requireOption, UsageError, dtypeOption } from './args';

export const RUN_USAGE = `moe-router run --model DIR --layer N --input x.npy --output y.npy
               [--dtype fp32|bf16|fp8] [--selection topk:K|topp:P|threshold:TAU|dynamic:MIN-MAX[:ESTIMATOR]]
               [--save-routing PREFIX] [--threads N] [--backend cpu|cuda|auto]

Runs layer N of the Hugging Face checkpoint in DIR on x ([T, d] float32 .npy, C order) and writes y.
--backend cuda runs it on the GPU (bf16 weights; needs "npm run build:cuda"), auto where one is available.
--save-routing writes PREFIX.indices.npy (int32 [T, maxK], -1 padded) and PREFIX.weights.npy (float32).`;

export async function runCommand(argv: string[]): Promise<void> {
  const v = parseOptions(argv, {
    model: { type: 'string' },
    layer: { type: 'string' },
    input: { type: 'string' },
    output: { type: 'string' },
    dtype: { type: 'string' },
    selection: { type: 'string' },
    'save-routing': { type: 'string' },
    threads: { type: 'string' },
    backend: { type: 'string' },
  });
  if (v.help) {
    console.log(RUN_USAGE);
    return;
  }
  const dir = requireOption(v, 'model');
  const layerIndex = intOption(v, 'layer', undefined, 0);
  if (layerIndex === undefined) throw new UsageError('--layer is required');
  const input = requireOption(v, 'input');
  const output = requireOption(v, 'output');
  const dtype = v.dtype === undefined ? undefined : dtypeOption(v);
  const backend = v.backend ?? 'cpu';
  if (backend !== 'cpu' && backend !== 'cuda' && backend !== 'auto')
    throw new UsageError(`--backend: expected cpu, cuda or auto, got ${JSON.stringify(backend)}`);
  const selection = typeof v.selection === 'string' ? parseSelection(v.selection) : undefined;
  const threads = intOption(v, 'threads', undefined, 1);

  const x = readNpy(input);
  if (x.dtype !== 'float32' || x.shape.length !== 2) {
    throw new ValidationError(
      `${input}: expected a float32 [T, d] array, got ${x.dtype} with shape [${x.shape.join(', ')}]`,
    );
  }
  const layer = MoELayer.fromPretrained(dir, { layer: layerIndex, dtype, selection, threads, backend });
  try {
    if (x.shape[1] !== layer.hiddenSize) {
      throw new ValidationError(
        `${input}: expected [T, ${layer.hiddenSize}] for this model, got [${x.shape.join(', ')}]`,
      );
    }
    const { output: y, routing, stats } = await layer.forwardAsync(x.data as Float32Array);
    writeNpy(output, y, x.shape);
    const prefix = v['save-routing'];
    if (typeof prefix === 'string') {
      writeNpy(`${prefix}.indices.npy`, routing.indices, [routing.tokens, routing.maxK]);
      writeNpy(`${prefix}.weights.npy`, routing.weights, [routing.tokens, routing.maxK]);
    }
    const saved = stats.flopsStatic > 0 ? (100 * stats.flopsSaved) / stats.flopsStatic : 0;
    process.stderr.write(
      `moe-router run: ${routing.tokens} tokens, mean k ${routing.stats.meanK.toFixed(2)}, ` +
        `FLOPs saved ${saved.toFixed(1)}%, ${(stats.stageSeconds.total * 1e3).toFixed(2)} ms -> ${output}\n`,
    );
  } finally {
    layer.dispose();
  }
}
