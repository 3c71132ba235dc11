/**
 * The embedded default layer of the CLI: an OLMoE- or Mixtral-shaped layer with seeded random normal weights,
 * built without downloads. Its gate (std 0.05) routes about as peakedly as a trained router.
 */
import { buildLayer, SHAPES, type LayerShape } from '../bench/layer';
import { intOption, UsageError } from './args';
import type { MoELayer, WeightDType } from '../layer';
import { native } from '../native';
import { Router } from '../router';
import type { Selection } from '../types';

export function syntheticShape(name: string): LayerShape {
  const shape = SHAPES.find((s) => s.name.toLowerCase() === name.toLowerCase());
  if (!shape) throw new UsageError(`--synthetic: expected olmoe or mixtral, got ${JSON.stringify(name)}`);
  return shape;
}

/** `--model DIR --layer N`, or `--synthetic NAME` (default olmoe), checked before anything slow starts. */
export function layerSource(
  values: Record<string, unknown>,
): { model: string; layer: number; shape?: undefined } | { model?: undefined; shape: LayerShape } {
  if (typeof values.model !== 'string') {
    return { shape: syntheticShape(typeof values.synthetic === 'string' ? values.synthetic : 'olmoe') };
  }
  if (values.synthetic !== undefined) throw new UsageError('--model and --synthetic: give one of them');
  const layer = intOption(values, 'layer', undefined, 0);
  if (layer === undefined) throw new UsageError('--layer is required with --model');
  return { model: values.model, layer };
}

/** The shape's layer (weights packed once) and a factory for the same weights under another rule. */
export function syntheticLayer(shape: LayerShape, dtype: WeightDType, threads?: number) {
  const t = threads ?? native().backendInfo().threads;
  const base = buildLayer(shape, dtype, t, 1);
  const gate = new Float32Array(shape.E * shape.d);
  native().bench.fillNormal(gate, 4242, 0.05);
  const withRule = (selection: Selection): MoELayer =>
    base.withRouter(
      new Router({
        numExperts: shape.E,
        hiddenSize: shape.d,
        gateWeight: gate,
        selection,
        normalize: true,
        threads: t,
      }),
      {
        staticK: shape.k,
      },
    );
  return { base, withRule };
}

/** Seeded inputs [T, d]. */
export function syntheticInput(tokens: number, d: number, seed: number): Float32Array {
  const x = new Float32Array(tokens * d);
  native().bench.fillNormal(x, seed, 1);
  return x;
}
