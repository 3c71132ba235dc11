/**
 * `moe-router profile`: the FLOP profile of one layer (a checkpoint's, or the synthetic default) under a routing
 * rule: static against dynamic FLOPs, the reduction, time per stage and the load of each expert.
 */
import { MoELayer } from '../layer';
import type { Selection } from '../types';
import { intOption, parseOptions, parseSelection, dtypeOption } from './args';
import { layerSource, syntheticInput, syntheticLayer } from './synthetic';

export const PROFILE_USAGE = `moe-router profile [--model DIR --layer N | --synthetic olmoe|mixtral] [--selection RULE]
                   [--tokens T] [--batches N] [--dtype fp32|bf16|fp8] [--threads N]

Profiles one layer under RULE (default: the model's own; see "moe-router run --help" for the grammar):
static vs dynamic FLOPs, FLOP reduction, time per stage and tokens per expert. Default: --synthetic olmoe.`;

export async function profileCommand(argv: string[]): Promise<void> {
  const v = parseOptions(argv, {
    model: { type: 'string' },
    layer: { type: 'string' },
    synthetic: { type: 'string' },
    selection: { type: 'string' },
    tokens: { type: 'string' },
    batches: { type: 'string' },
    dtype: { type: 'string' },
    threads: { type: 'string' },
  });
  if (v.help) {
    console.log(PROFILE_USAGE);
    return;
  }
  const tokens = intOption(v, 'tokens', 64, 1)!;
  const batches = intOption(v, 'batches', 3, 1)!;
  const threads = intOption(v, 'threads', undefined, 1);
  const dtype = dtypeOption(v);
  const selection: Selection | undefined = typeof v.selection === 'string' ? parseSelection(v.selection) : undefined;
  const source = layerSource(v);
  let layer: MoELayer;
  let label: string;
  const disposables: MoELayer[] = [];
  if (source.model !== undefined) {
    layer = MoELayer.fromPretrained(source.model, { layer: source.layer, dtype, selection, threads });
    label = `${source.model} layer ${source.layer}`;
  } else {
    const shape = source.shape;
    const { base, withRule } = syntheticLayer(shape, dtype, threads);
    layer = withRule(selection ?? { kind: 'topk', k: shape.k });
    disposables.push(base);
    label = `synthetic ${shape.name} (d=${shape.d}, f=${shape.f}, E=${shape.E}, top-${shape.k})`;
  }
  disposables.push(layer);
  try {
    const counts = new Float64Array(layer.numExperts);
    const stage = { gating: 0, dispatch: 0, expertGemm: 0, combine: 0, total: 0 };
    let computed = 0;
    let staticFlops = 0;
    let assignments = 0;
    layer.forward(syntheticInput(tokens, layer.hiddenSize, 999)); // warm-up: the arena grows once
    for (let b = 0; b < batches; b++) {
      const r = layer.forward(syntheticInput(tokens, layer.hiddenSize, 1000 + b));
      computed += r.stats.flopsComputed;
      staticFlops += r.stats.flopsStatic;
      assignments += r.routing.stats.assignments;
      r.stats.expertCounts.forEach((c, e) => (counts[e] += c));
      for (const key of Object.keys(stage) as (keyof typeof stage)[]) stage[key] += r.stats.stageSeconds[key] / batches;
    }
    const sorted = Array.from(counts, (c, e) => ({ e, c })).sort((a, b) => b.c - a.c);
    const mean = assignments / layer.numExperts;
    const ms = (s: number) => `${(s * 1e3).toFixed(2)} ms`;
    console.log(
      `profile of ${label}, rule ${layer.router.selection}, ${batches} batches of ${tokens} tokens, ${layer.dtype}` +
        ' (times: means over the batches)',
    );
    console.log('');
    console.log('| quantity | value |');
    console.log('|---|---|');
    console.log(
      `| mean experts per token | ${(assignments / (tokens * batches)).toFixed(2)} (static top-${layer.staticK}) |`,
    );
    console.log(`| static FLOPs per batch | ${(staticFlops / batches / 1e9).toFixed(3)} GFLOP |`);
    console.log(`| dynamic FLOPs per batch | ${(computed / batches / 1e9).toFixed(3)} GFLOP |`);
    console.log(`| FLOP reduction | ${((100 * (staticFlops - computed)) / staticFlops).toFixed(1)}% |`);
    console.log(
      `| gating / dispatch / expert GEMM / combine | ${ms(stage.gating)} / ${ms(stage.dispatch)} / ${ms(stage.expertGemm)} / ${ms(stage.combine)} |`,
    );
    console.log(`| forward (stage sum) | ${ms(stage.total)} |`);
    console.log(`| experts used | ${sorted.filter((s) => s.c > 0).length} of ${layer.numExperts} |`);
    console.log(
      `| tokens per expert min / mean / max | ${sorted[sorted.length - 1].c} / ${mean.toFixed(1)} / ${sorted[0].c} |`,
    );
    console.log(
      `| busiest experts | ${sorted
        .slice(0, 5)
        .map((s) => `#${s.e} (${s.c})`)
        .join(', ')} |`,
    );
  } finally {
    for (const l of disposables) l.dispose();
  }
}
