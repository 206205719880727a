/**
 * Builds the ServedModel the server runs: a checkpoint loaded through loadModel, with either every
 * expert resident or the offload engine (experts in host memory as precision-ladder rungs, a
 * device cache of N experts per layer, a plain host copy as the link), and every step's telemetry
 * going to the sink the server gives it (its /metrics subscribe there).
 *
 * With the offload engine the policy names the ladder the experts are stored at and the profile
 * the device budget, the link (a host copy, or an emulated one) and the SLA; the controller then
 * chooses every layer's level live (served-control.ts). `fixedLevel` instead pins every layer to
 * one level and runs no controller.
 *
 * This module imports TensorFlow.js; the CLI imports it only after the port is bound.
 *
 * @example
 * const m = await loadServedModel({ dir: EMBEDDED_MODEL_DIR, engine: 'offload', expertsPerLayer: 4 }, bus, log);
 */
import fs from 'node:fs';
import path from 'node:path';

import { currentBackend, type BackendName } from '../model/backend.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { ResidentExpertEngine } from '../model/engine.js';
import { GenerationSequence } from '../model/sequence.js';
import { checkpointExperts, loadModel, readExpert } from '../model/load.js';
import { checkSequence } from '../model/transformer.js';
import type { Policy } from '../control/policy.js';
import { checkProfileForModel, type Profile } from '../control/profile.js';
import { RoutingWindow } from '../control/routing/window.js';
import { createOffload, deviceBudget, levelCount, uniformPlan, type Ladder, type Link, type OffloadExpertEngine, type TelemetryBus } from '../offload/index.js';
import type { CpuExpertEngine } from '../offload/cpu-engine.js';
import type { ExpertStore } from '../offload/store.js';
import { ServedControl } from './served-control.js';
import { native } from '../codec/native.js';
import { describeDenseBytes, nativeForwardUnsupported, type DenseSymbols } from '../model/native-forward.js';
import { defaultCacheDir } from '../offload/store-file.js';
import type { ServingHooks } from './batcher.js';
import { ggufChatTemplate, loadChatTemplate } from './chat-template.js';
import { readGgufHeader } from '../model/gguf/reader.js';
import { isGgufPath } from '../model/gguf/checkpoint.js';
import type { EngineName, ServedModel } from './served-model.js';
import { denseHeldBytes, describeMemory, kvBytesPerToken, memoryDetails, RUNTIME_ALLOWANCE_BYTES, type MemoryPlan } from './memory-plan.js';

/** The startup log's words for each tier-A form (the profile's device.tier_a_form). */
const TIER_A_FORMS = {
  f32: 'decoded f32 experts (tier A)',
  fused: 'experts as they crossed, multiplied in place (tier A: rungs by the fused product, exact bf16 by the bf16 one)',
  symbols: 'experts as symbols where their level fits 4 or 8 bits, else as they crossed (tier A: symbols and rungs multiplied in place, exact bf16 by the bf16 product)',
} as const;

export interface ModelSpec {
  dir: string;
  engine: EngineName;
  /** Offload: the ladder (and, unless fixedLevel, the controller's rules). */
  policy: Policy;
  /** Offload: device budget, link and SLA. */
  profile: Profile;
  /** Offload: experts per layer the device cache holds (overrides the profile's device budget). */
  expertsPerLayer?: number;
  /** Offload: keep the experts on disk and at most this many bytes of them in host memory (the disk tier; overrides the profile's host.budget_bytes). */
  hostBudgetBytes?: number;
  /** Offload: every layer at this level, no controller. */
  fixedLevel?: number;
  /** Offload: the controller decides and reports but changes nothing. */
  dryRun?: boolean;
  backend?: BackendName;
  /** cpu: keep experts compressed within this absolute bound (the fused path); dense f32 without. */
  cpuBound?: number;
  /** The server's --max-batch, for the memory line's KV figure (default 8). */
  maxBatch?: number;
}

/** What level `level` of `ladder` means, in words. */
export function describeLevel(ladder: Ladder, level: number): string {
  const b = ladder.bounds;
  if (level >= b.length) return 'the exact bytes';
  return `error bound ${b[level]}${ladder.boundMode === 'sigma' ? 'σ' : ''} per tensor (${ladder.boundMode})`;
}

/** The profile's dense section as the native forward takes it (undefined: as stored). */
export function denseSymbolsOf(profile: Profile): DenseSymbols | undefined {
  const d = profile.dense;
  return d?.form === 'symbols' ? { lmHead: d.lm_head ?? false, int8Activations: d.int8_activations ?? false, bits: d.bits ?? 8 } : undefined;
}

async function loadCpu(spec: ModelSpec, id: string, telemetry: TelemetryBus, log: (line: string) => void) {
  const m = await loadModel(spec.dir, { backend: spec.backend, cpu: { bound: spec.cpuBound, telemetry }, denseSymbols: denseSymbolsOf(spec.profile) });
  const c = m.checkpoint.config;
  log(`ebserve serve: model ${id} (${spec.dir}): ${c.arch}, ${c.numLayers} layers × ${c.numExperts} experts (top-${c.topK}), d ${c.hiddenSize}, context ${c.maxPositions} tokens, ${c.tokenizer} tokenizer`);
  log(
    `ebserve serve: engine cpu: all ${c.numLayers * c.numExperts} experts in the addon, ` +
      (spec.cpuBound === undefined ? (m.engine as CpuExpertEngine).describeForm() : `compressed within ${spec.cpuBound} (abs) and multiplied in place (fused decoder: ${native.info().fusedDecoder})`),
  );
  return m;
}

/** Nothing is served: canary work runs at once (a loader used without a server). */
const UNSERVED: ServingHooks = { stepBoundary: async () => {}, betweenSteps: (task) => task() };

/**
 * Loads `spec` and logs what was loaded, one line each. `serving` is the batch scheduler's hooks:
 * the controller's canaries run between its steps. Errors name the file, tensor or flag.
 */
export async function loadServedModel(spec: ModelSpec, telemetry: TelemetryBus, log: (line: string) => void, serving: ServingHooks = UNSERVED): Promise<ServedModel> {
  const ladder = spec.policy.storeLadder;
  const finest = levelCount(ladder) - 1;
  const level = spec.fixedLevel ?? finest;
  if (!(Number.isInteger(level) && level >= 0 && level <= finest)) throw new RangeError(`--level must be one of 0..${finest}, got ${level}`);
  const id = path.basename(path.resolve(spec.dir));
  // The expert store's cache (and the canaries' reference file): beside the model, or beside a GGUF file.
  const cacheDir = defaultCacheDir(isGgufPath(spec.dir) ? path.dirname(spec.dir) : spec.dir);
  // Before the weights: a template that does not parse fails the load at once. A GGUF file
  // carries its own (metadata tokenizer.chat_template), read from its header alone.
  const chatTemplate = isGgufPath(spec.dir) ? ggufChatTemplate(spec.dir, readGgufHeader(spec.dir).metadata) : await loadChatTemplate(spec.dir);
  let link: Link | undefined;
  let offloaded: { engine: OffloadExpertEngine; store: ExpertStore } | undefined;
  let details: Record<string, string | number | boolean> = {};
  // What the experts' tiers hold (the memory line); the dense weights are counted once loaded.
  let tiers: Pick<MemoryPlan, 'hostBytes' | 'hostHolds' | 'deviceBytes'> | undefined;

  const engine = async (checkpoint: Checkpoint) => {
    const c = checkpoint.config;
    const backend = currentBackend();
    log(`ebserve serve: model ${id} (${spec.dir}): ${c.arch}, ${c.numLayers} layers × ${c.numExperts} experts (top-${c.topK}), d ${c.hiddenSize}, context ${c.maxPositions} tokens, ${c.tokenizer} tokenizer`);
    if (backend) log(`ebserve serve: TensorFlow.js backend ${backend.name} (${backend.reason})`);
    if (spec.engine === 'resident') {
      log(`ebserve serve: engine resident (all ${c.numLayers * c.numExperts} experts as TensorFlow.js tensors; no link, no compression)`);
      details = { experts_resident: c.numLayers * c.numExperts };
      tiers = { hostBytes: 4 * c.numLayers * c.numExperts * 3 * c.hiddenSize * c.expertFfnSize, hostHolds: 'every expert as f32 tensors', deviceBytes: 0 };
      return new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, (l, e) => readExpert(checkpoint, l, e));
    }
    const d = spec.profile.device;
    const expertsPerLayer = spec.expertsPerLayer ?? d.experts_per_layer;
    if (expertsPerLayer !== undefined && !(Number.isInteger(expertsPerLayer) && expertsPerLayer >= 1 && expertsPerLayer <= c.numExperts)) {
      throw new RangeError(`experts per layer must be a whole number in 1..${c.numExperts} (the model's experts per layer), got ${expertsPerLayer}`);
    }
    // The budget needs only the layer count and an expert's size, which the config gives before
    // the store exists (createOffload opens the store itself).
    const expertValues = 3 * c.hiddenSize * c.expertFfnSize;
    // Tier A per layer (the routing report's sizes), unless --experts-per-layer overrides the profile.
    const expertsByLayer = spec.expertsPerLayer === undefined ? d.experts_by_layer : undefined;
    if (expertsByLayer) checkProfileForModel(spec.profile, { numLayers: c.numLayers, numExperts: c.numExperts, topK: c.topK });
    const budget = deviceBudget(
      expertsPerLayer !== undefined
        ? { expertsPerLayer, tierBBytes: spec.expertsPerLayer !== undefined ? 0 : d.tier_b_bytes }
        : { deviceMemoryBudgetBytes: d.memory_budget_bytes, tierBFraction: d.tier_b_fraction, expertsByLayer, tierBBytes: d.tier_b_bytes },
      { numLayers: c.numLayers, expertValues: () => expertValues },
    );
    const fixed = spec.fixedLevel !== undefined;
    log(
      `ebserve serve: engine offload: device cache of ${(budget.tierABytes / 1e6).toFixed(1)} MB ${TIER_A_FORMS[d.tier_a_form ?? 'f32']}${d.int8_activations ? ` (activations in 8 bits, ${native.info().intDot} integer dot)` : ''} + ${(budget.tierBBytes / 1e6).toFixed(1)} MB compressed rungs (tier B); ` +
        `ladder of policy ${spec.policy.name}: ${ladder.bounds.join(', ')} (${ladder.boundMode})${ladder.exact ? ' + exact' : ''}; ` +
        (fixed ? `every layer fixed at level ${level} (${describeLevel(ladder, level)}), no controller` : 'levels chosen live by the controller'),
    );
    const em = spec.profile.link.emulated;
    const hostBudgetBytes = spec.hostBudgetBytes ?? spec.profile.host?.budget_bytes;
    const offload = await createOffload(checkpointExperts(checkpoint), {
      ladder,
      cacheDir,
      budget,
      plan: uniformPlan(c.numLayers, level),
      emulatedLink: em ? { bytesPerSecond: em.bytes_per_second, latencySeconds: em.latency_seconds } : undefined,
      tierAForm: d.tier_a_form ?? 'f32',
      int8Activations: d.int8_activations,
      hostBudget: hostBudgetBytes === undefined ? undefined : { bytes: hostBudgetBytes, minExperts: c.topK },
      telemetry,
      log,
    });
    link = offload.link;
    offloaded = { engine: offload.engine, store: offload.opened.store };
    tiers = hostBudgetBytes === undefined
      ? { hostBytes: offload.opened.store.totalBytes(), hostHolds: 'every level of every expert', deviceBytes: budget.tierABytes + budget.tierBBytes }
      : { hostBytes: hostBudgetBytes, hostHolds: `at most the host budget; the store file's ${(fs.statSync(offload.opened.file).size / 1e9).toFixed(2)} GB on disk`, deviceBytes: budget.tierABytes + budget.tierBBytes };
    details = {
      experts_per_layer: expertsPerLayer ?? (expertsByLayer && d.memory_budget_bytes === undefined ? 'by layer' : 'from memory budget'), tier_a_bytes: budget.tierABytes,
      ...(expertsByLayer ? { experts_by_layer: expertsByLayer.join(',') } : {}), tier_b_bytes: budget.tierBBytes, tier_a_form: d.tier_a_form ?? 'f32',
      ...(d.int8_activations ? { int8_activations: true } : {}),
      policy: spec.policy.name, profile: spec.profile.name, controller: fixed ? 'off' : spec.dryRun ? 'dry-run' : 'on',
      ...(fixed ? { level, level_meaning: describeLevel(ladder, level), level_fixed: true } : {}),
      link: offload.link.name, link_emulated: offload.link.emulated,
      experts_on: hostBudgetBytes === undefined ? 'host memory' : 'disk',
      ...(hostBudgetBytes === undefined ? {} : { host_budget_bytes: hostBudgetBytes }),
    };
    return offload.engine;
  };

  const m = spec.engine === 'cpu' ? await loadCpu(spec, id, telemetry, log) : await loadModel(spec.dir, { backend: spec.backend, engine, denseSymbols: denseSymbolsOf(spec.profile) });
  if (spec.engine === 'cpu') {
    const cpu = m.engine as CpuExpertEngine;
    const cc = m.checkpoint.config;
    details = { experts_resident: cc.numLayers * cc.numExperts, cpu_bound: spec.cpuBound ?? `none (${cpu.describeForm()})` };
    tiers = { hostBytes: cpu.heldBytes(), hostHolds: `every expert in the addon, ${cpu.describeForm()}`, deviceBytes: 0 };
  }
  const unsupported = nativeForwardUnsupported(m.checkpoint.config);
  const nf = m.model.nativeForward;
  details = { ...details, native_forward: Boolean(nf), ...(nf ? { dense_form: nf.denseForm } : {}) };
  log(`ebserve serve: forward ${nf ? 'native (the addon, layer by layer; experts through the engine)' : `on TensorFlow.js ${m.backend.name} (${unsupported ?? 'asked for'})`}`);
  if (nf) log(`ebserve serve: dense weights ${(nf.heldBytes / 1e6).toFixed(1)} MB, ${nf.denseForm}: ${describeDenseBytes(nf.tensors)}`);
  else if (spec.profile.dense?.form === 'symbols') log(`ebserve serve: profile ${spec.profile.name}'s dense symbols not used: the TensorFlow.js forward holds the dense weights as f32`);
  let control: ServedControl | undefined;
  if (offloaded && spec.fixedLevel === undefined) {
    try {
      // Reads or computes the canaries' references before anything is served (see ServedControl.open).
      control = await ServedControl.open({ model: m, store: offloaded.store, engine: offloaded.engine, telemetry, policy: spec.policy, profile: spec.profile, dryRun: spec.dryRun ?? false, serving, cacheDir, log });
    } catch (e) {
      m.dispose();
      throw e;
    }
  }
  const memory: MemoryPlan = {
    // Without the native forward, TensorFlow.js holds every dense tensor as f32.
    denseBytes: m.model.nativeForward?.heldBytes ?? denseHeldBytes(m.checkpoint.config, () => 'F32'),
    ...(tiers ?? { hostBytes: 0, hostHolds: 'none', deviceBytes: 0 }),
    canaryBytes: control?.canaryCacheBytes ?? 0,
    kvBytesPerToken: kvBytesPerToken(m.checkpoint.config),
    runtimeBytes: RUNTIME_ALLOWANCE_BYTES,
  };
  log(`ebserve serve: ${describeMemory(memory, spec.maxBatch ?? 8, m.checkpoint.config.maxPositions)}`);
  details = { ...details, ...memoryDetails(memory) };
  // The model's own routing of served steps (not the canaries' forwards, which run between steps),
  // for the routing report of GET /admin/routing, /metrics and the dashboard.
  const c = m.checkpoint.config;
  const routing = new RoutingWindow({ numLayers: c.numLayers, numExperts: c.numExperts, topK: c.topK });
  let inServedStep = false;
  m.model.onRouting = (r) => {
    if (inServedStep) routing.observe(r);
  };
  const served: ServedModel = {
    id,
    dir: spec.dir,
    backend: m.backend,
    engine: spec.engine,
    contextTokens: m.checkpoint.config.maxPositions,
    linkEmulated: link?.emulated ?? false,
    details,
    memory,
    countTokens: (text) => m.tokenizer.encode(text).length,
    tokenizer: m.tokenizer,
    vocabSize: m.checkpoint.config.vocabSize,
    chatTemplate,
    sequence: (prompt, opts) => new GenerationSequence(m.checkpoint.config, m.tokenizer, prompt, opts),
    forwardBatch: async (steps) => {
      inServedStep = true;
      try {
        return await m.model.forwardBatch(steps);
      } finally {
        inServedStep = false;
      }
    },
    routing,
    checkStep: (step) => checkSequence(m.checkpoint.config, step),
    control,
    dispose: () => {
      control?.stop();
      m.dispose();
    },
  };
  return served;
}

