/**
 * Builds the ServedModel the server runs: a checkpoint loaded through loadModel, with either every
 * expert resident or the offload engine (experts in host memory as precision-ladder rungs, a
 * device cache of N experts per layer, a plain host copy as the link), and every step's telemetry
 * going to the sink the server gives it (its /metrics subscribe there).
 *
 * The offload level is fixed for the life of the process: one level for every layer, by default
 * the finest the store holds (its exact bytes). Choosing levels live is the controller's job,
 * which this build does not have yet; the startup log says so.
 *
 * This module imports TensorFlow.js; the CLI imports it only after the port is bound.
 *
 * @example
 * const m = await loadServedModel({ dir: EMBEDDED_MODEL_DIR, engine: 'offload', expertsPerLayer: 4 }, bus, log);
 */
import path from 'node:path';

import { currentBackend, type BackendName } from '../model/backend.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { ResidentExpertEngine } from '../model/engine.js';
import { generate } from '../model/generate.js';
import { checkpointExperts, loadModel, readExpert } from '../model/load.js';
import type { MoeTransformer } from '../model/transformer.js';
import { createOffload, deviceBudget, DEFAULT_LADDER, levelCount, uniformPlan, type Link, type TelemetrySink } from '../offload/index.js';
import { defaultCacheDir } from '../offload/store-file.js';
import type { EngineName, ServeGenerateOptions, ServedModel } from './served-model.js';

export interface ModelSpec {
  dir: string;
  engine: EngineName;
  /** Offload: experts per layer the device cache holds (default 4). */
  expertsPerLayer?: number;
  /** Offload: the level every layer is fetched at (default: the finest, the exact bytes). */
  level?: number;
  backend?: BackendName;
}

/** The finest level of the default ladder (the exact bytes): what --level defaults to. */
export const FINEST_LEVEL = levelCount(DEFAULT_LADDER) - 1;

/** What level `level` of the default ladder means, in words. */
export function describeLevel(level: number): string {
  const b = DEFAULT_LADDER.bounds;
  if (level >= b.length) return 'the exact bytes';
  return `error bound ${b[level]}σ per tensor (${DEFAULT_LADDER.boundMode}-relative)`;
}

/** Loads `spec` and logs what was loaded, one line each. Errors name the file, tensor or flag. */
export async function loadServedModel(spec: ModelSpec, telemetry: TelemetrySink, log: (line: string) => void): Promise<ServedModel> {
  const level = spec.level ?? FINEST_LEVEL;
  if (!(Number.isInteger(level) && level >= 0 && level <= FINEST_LEVEL)) throw new RangeError(`--level must be one of 0..${FINEST_LEVEL}, got ${level}`);
  const expertsPerLayer = spec.expertsPerLayer ?? 4;
  const id = path.basename(path.resolve(spec.dir));
  let link: Link | undefined;
  let details: Record<string, string | number | boolean> = {};

  const engine = async (checkpoint: Checkpoint) => {
    const c = checkpoint.config;
    const backend = currentBackend();
    log(`ebserve serve: model ${id} (${spec.dir}): ${c.arch}, ${c.numLayers} layers × ${c.numExperts} experts (top-${c.topK}), d ${c.hiddenSize}, context ${c.maxPositions} tokens, ${c.tokenizer} tokenizer`);
    if (backend) log(`ebserve serve: TensorFlow.js backend ${backend.name} (${backend.reason})`);
    if (spec.engine === 'resident') {
      log(`ebserve serve: engine resident (all ${c.numLayers * c.numExperts} experts as TensorFlow.js tensors; no link, no compression)`);
      details = { experts_resident: c.numLayers * c.numExperts };
      return new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, (l, e) => readExpert(checkpoint, l, e));
    }
    if (!(Number.isInteger(expertsPerLayer) && expertsPerLayer >= 1 && expertsPerLayer <= c.numExperts)) {
      throw new RangeError(`--experts-per-layer must be a whole number in 1..${c.numExperts} (the model's experts per layer), got ${expertsPerLayer}`);
    }
    // The budget needs only the layer count and an expert's size, which the config gives before
    // the store exists (createOffload opens the store itself).
    const expertValues = 3 * c.hiddenSize * c.expertFfnSize;
    const budget = deviceBudget({ expertsPerLayer }, { numLayers: c.numLayers, expertValues: () => expertValues });
    log(
      `ebserve serve: engine offload: ${expertsPerLayer} of ${c.numExperts} experts per layer in the device cache (${(budget.tierABytes / 1e6).toFixed(1)} MB decoded), ` +
        `every layer at level ${level} of 0..${FINEST_LEVEL} (${describeLevel(level)}); the level is fixed: no controller in this build chooses levels live`,
    );
    const offload = await createOffload(checkpointExperts(checkpoint), {
      cacheDir: defaultCacheDir(spec.dir),
      budget,
      plan: uniformPlan(c.numLayers, level),
      telemetry,
      log,
    });
    link = offload.link;
    details = { experts_per_layer: expertsPerLayer, level, level_meaning: describeLevel(level), level_fixed: true, link: offload.link.name, link_emulated: offload.link.emulated };
    return offload.engine;
  };

  const m = await loadModel(spec.dir, { backend: spec.backend, engine });
  const served: ServedModel = {
    id,
    dir: spec.dir,
    backend: m.backend,
    engine: spec.engine,
    contextTokens: m.checkpoint.config.maxPositions,
    linkEmulated: link?.emulated ?? false,
    details,
    countTokens: (text) => m.tokenizer.encode(text).length,
    generate: (prompt, opts) => generate(opts.onToken ? perToken(m.model, opts.onToken) : m.model, m.tokenizer, prompt, withoutHook(opts)),
    dispose: () => m.dispose(),
  };
  return served;
}

/**
 * The model seen through a hook on forward. generate has no per-token callback (onText fires
 * when text becomes final, which stop strings and multi-byte characters delay), but every forward
 * pass it runs yields exactly one sampled token — the prompt's pass the first, each decode pass
 * the next — so a forward's return is the moment a token exists.
 */
function perToken(model: MoeTransformer, onToken: () => void): MoeTransformer {
  return new Proxy(model, {
    get(target, prop) {
      if (prop === 'forward') {
        return async (...args: Parameters<MoeTransformer['forward']>) => {
          const logits = await target.forward(...args);
          onToken();
          return logits;
        };
      }
      return Reflect.get(target, prop, target);
    },
  });
}

function withoutHook(opts: ServeGenerateOptions) {
  const { onToken: _hook, ...rest } = opts;
  return rest;
}
