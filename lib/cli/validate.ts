/**
 * `moe-router validate`: checks a Hugging Face checkpoint folder before anyone serves it — config, which layers
 * are sparse, every MoE tensor's name, shape and dtype, and whether the routing rule is supported — and with
 * --forward runs one forward of a layer.
 */
import { DynamicMoEError, ModelLoadError } from '../errors';
import { MoELayer } from '../layer';
import { isDenseLayerError, loadMoELayerWeights, resolveMoELayer, type LoadedMoELayer } from '../models/architectures';
import { openCheckpoint, type Checkpoint } from '../models/checkpoint';
import { routerOptionsFromConfig, textConfigOf } from '../models/router-config';
import { intOption, parseOptions, requireOption, dtypeOption } from './args';

export const VALIDATE_USAGE = `moe-router validate --model DIR [--layer N] [--forward] [--dtype fp32|bf16|fp8]

Checks config.json, the safetensors headers, every MoE layer's tensors (names, shapes, dtypes) and the routing
rule. --layer limits the check to one layer; --forward also runs one forward of it (default: the first MoE layer).`;

/**
 * The router's dtype, and the experts' where it differs (with how FP8 experts are scaled, and whether --dtype fp8
 * keeps their E4M3 bytes), and a fused layout.
 */
function storage(checkpoint: Checkpoint, weights: LoadedMoELayer): string {
  const { spec } = weights;
  const gptOss = spec.names.gptOss;
  const fused = weights.expertLayout !== 'per-expert';
  const router = checkpoint.info(fused && !gptOss ? spec.names.fused.gate : spec.names.gate).dtype;
  if (weights.expertLayout === 'MXFP4, interleaved')
    return (
      `dtype ${router} (router), MXFP4 experts (E2M1 with a power-of-two scale per 32 inputs, decoded exactly as ` +
      `read)${weights.expertE4m3(0) ? '; --dtype fp8 keeps their values exactly' : '; --dtype fp8 quantizes them again'}`
    );
  const expert = gptOss ? gptOss.gateUp : fused ? spec.names.fused.gateUp : spec.names.expert(0).w1;
  const experts = checkpoint.info(expert).dtype;
  const layout = fused ? ` (${weights.expertLayout} experts)` : '';
  if (experts === router) return `dtype ${router}${layout}`;
  const scaling = checkpoint.scalingOf(expert);
  const scales = scaling
    ? ` with ${scaling.kind} scales${scaling.kind === 'block' ? ` (${scaling.block.join(' x ')})` : ''}`
    : '';
  const fp8 =
    experts !== 'F8_E4M3'
      ? ''
      : weights.expertE4m3(0)
        ? '; --dtype fp8 keeps their bytes as stored'
        : '; --dtype fp8 dequantises and quantizes them again';
  return `dtype ${router} (router), ${experts} experts${scales}${layout}${fp8}`;
}

export async function validateCommand(argv: string[]): Promise<void> {
  const v = parseOptions(argv, {
    model: { type: 'string' },
    layer: { type: 'string' },
    forward: { type: 'boolean' },
    dtype: { type: 'string' },
  });
  if (v.help) {
    console.log(VALIDATE_USAGE);
    return;
  }
  const dir = requireOption(v, 'model');
  const dtype = dtypeOption(v);
  const only = intOption(v, 'layer', undefined, 0);
  const checkpoint = openCheckpoint(dir);
  const problems: string[] = [];
  let firstMoE: number | undefined;
  try {
    const cfg = checkpoint.config;
    // (a vision-language model's language layers are counted in its text_config)
    let text: Record<string, unknown>;
    try {
      text = textConfigOf(cfg);
    } catch (err) {
      throw new ModelLoadError(`${dir}: ${(err as Error).message}`, { cause: err });
    }
    const layers = typeof text.num_hidden_layers === 'number' ? text.num_hidden_layers : 0;
    console.log(`checkpoint  ${dir}`);
    console.log(
      `model       ${String((cfg.architectures as string[] | undefined)?.[0] ?? '?')} (model_type ${String(cfg.model_type)})`,
    );
    console.log(`tensors     ${checkpoint.tensorNames().length}`);
    let moe = 0;
    let dense = 0;
    for (let layer = 0; layer < layers; layer++) {
      if (only !== undefined && layer !== only) continue;
      try {
        const spec = resolveMoELayer(cfg, layer, checkpoint);
        const weights = loadMoELayerWeights(checkpoint, spec);
        const rule = routerOptionsFromConfig(cfg, weights.gateWeight, {
          bias: weights.bias,
          logitBias: weights.logitBias,
        });
        if (firstMoE === undefined) {
          firstMoE = layer;
          const sel = rule.selection!;
          console.log(
            `routing     ${rule.scoring} ${sel.kind}${'k' in sel ? ` k=${sel.k}` : ''}, normalize ${rule.normalize}, scale ${rule.scale}` +
              `${rule.groups ? `, groups ${rule.groups.nGroup}/${rule.groups.topkGroup} (${rule.groups.score})` : ''}` +
              `${weights.bias ? ', score-correction bias' : ''}${weights.logitBias ? ', router bias term' : ''}`,
          );
          const act = spec.activation;
          const ffn =
            act?.kind === 'gptOss'
              ? `clamped SwiGLU (alpha ${act.alpha}, limit ${act.limit}) with biases`
              : spec.weightInputs
                ? 'SwiGLU (the routing weight on its input)'
                : 'SwiGLU';
          console.log(
            `experts     ${spec.numExperts} x ${ffn} d=${spec.hiddenSize} f=${spec.intermediateSize}, top-${spec.topK}` +
              `${weights.shared ? `, shared expert f=${weights.shared.intermediateSize}` : ''}; ${storage(checkpoint, weights)}`,
          );
        }
        moe++;
      } catch (err) {
        if (isDenseLayerError(err)) dense++;
        else if (err instanceof DynamicMoEError) problems.push(`layer ${layer}: ${err.message}`);
        else throw err;
      }
    }
    console.log(
      `layers      ${moe} MoE, ${dense} dense${only !== undefined ? ` (checked layer ${only} only)` : ` of ${layers}`}`,
    );
  } finally {
    checkpoint.close();
  }
  if (problems.length) {
    for (const p of problems) console.log(`problem     ${p}`);
    throw new ModelLoadError(`${problems.length} problem(s) found in ${dir}; first: ${problems[0]}`);
  }
  if (firstMoE === undefined)
    throw new ModelLoadError(`${dir}: no MoE layer found${only !== undefined ? ` at layer ${only}` : ''}`);
  if (v.forward) {
    const layer = MoELayer.fromPretrained(dir, { layer: firstMoE, dtype });
    try {
      const x = new Float32Array(4 * layer.hiddenSize).map((_, i) => Math.sin(i * 0.37));
      const r = layer.forward(x);
      const finite = r.output.every(Number.isFinite);
      console.log(
        `forward     layer ${firstMoE}, 4 tokens, ${dtype}: ${(r.stats.stageSeconds.total * 1e3).toFixed(2)} ms, output ${finite ? 'finite' : 'NOT FINITE'}`,
      );
      if (!finite) throw new ModelLoadError(`${dir}: layer ${firstMoE} produced non-finite output; check the weights`);
    } finally {
      layer.dispose();
    }
  }
  console.log('result      ok');
}
