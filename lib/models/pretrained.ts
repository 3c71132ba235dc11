/**
 * `MoELayer.fromPretrained`: one sparse layer of a local Hugging Face checkpoint folder, with the model's own
 * routing rule (or an override), experts packed one at a time so peak memory stays near one expert in fp32.
 */
import { ModelLoadError } from '../errors';
import { MoELayer, type WeightDType } from '../layer';
import { Router } from '../router';
import type { GroupLimit, Selection } from '../types';
import { resolveMoELayer, loadMoELayerWeights } from './architectures';
import { openCheckpoint } from './checkpoint';

export interface FromPretrainedOptions {
  /** Decoder layer index; it must be a sparse (MoE) layer. */
  layer: number;
  /**
   * Weight storage: 'fp32' (default on the CPU), 'bf16' (always on the CUDA backend) or 'fp8' (CPU: E4M3 with a
   * scale per row and 128 inputs; an E4M3 checkpoint's own bytes and scales where they fit that, see
   * Checkpoint.readE4m3, else quantized at load).
   */
  dtype?: WeightDType;
  /** Replaces the model's rule, e.g. `{ kind: 'topp', p: 0.5, maxK: 4 }` on a top-2 model. */
  selection?: Selection;
  normalize?: boolean;
  scale?: number;
  groups?: GroupLimit | null;
  threads?: number;
  /**
   * 'cpu' (default), 'cuda' (weights uploaded once to the GPU as bf16) or 'auto'. gpt-oss and Llama 4 layers run on
   * the CPU only: 'cuda' refuses them (ValidationError), 'auto' builds them there.
   */
  backend?: import('../cuda').BackendName;
}

/**
 * Loads layer `opts.layer` of the checkpoint in `dir` (config.json plus model.safetensors or shards).
 * @throws ModelLoadError for a missing/malformed file, an unsupported architecture, a dense layer or a tensor
 *   whose shape disagrees with the config; ValidationError for a bad layer index.
 */
export function loadPretrainedLayer(dir: string, opts: FromPretrainedOptions): MoELayer {
  const checkpoint = openCheckpoint(dir);
  try {
    const spec = resolveMoELayer(checkpoint.config, opts.layer, checkpoint);
    const weights = loadMoELayerWeights(checkpoint, spec);
    if (spec.requiresBias && !weights.bias) {
      throw new ModelLoadError(
        `${dir}: layer ${opts.layer} routes with e_score_correction_bias, which the checkpoint lacks`,
      );
    }
    const router = Router.fromConfig(checkpoint.config, weights.gateWeight, {
      bias: weights.bias,
      logitBias: weights.logitBias,
      selection: opts.selection,
      normalize: opts.normalize,
      scale: opts.scale,
      groups: opts.groups,
      threads: opts.threads,
      backend: opts.backend,
    });
    const shared = weights.shared;
    // ('fp8' on the CPU: the checkpoint's E4M3 bytes as they are, where they fit; on 'auto' with a GPU the layer
    // falls back to the CPU for fp8 before packing anything)
    const e4m3 = opts.dtype === 'fp8';
    try {
      const sharedE4m3 = e4m3 && shared ? weights.sharedE4m3() : null;
      return new MoELayer({
        router,
        dtype: opts.dtype,
        intermediateSize: spec.intermediateSize,
        experts: (e) => (e4m3 ? weights.expertE4m3(e) : null) ?? weights.expert(e),
        sharedExperts: shared && {
          ...(sharedE4m3 ?? { w1: shared.w1, w3: shared.w3, w2: shared.w2 }),
          intermediateSize: shared.intermediateSize,
          gate: shared.gate,
        },
        staticK: spec.topK,
        threads: opts.threads,
        activation: spec.activation,
        weightInputs: spec.weightInputs,
      });
    } catch (err) {
      router.dispose(); // (a CUDA router's GPU memory goes now, not at some garbage collection)
      throw err;
    }
  } finally {
    checkpoint.close();
  }
}
