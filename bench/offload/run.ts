/**
 * `make bench-offload`: expert offload on the embedded model, one run, every scheme through the
 * same store → link → device cache → engine path:
 *   bf16      the original bf16 experts (the store's exact level): plain offload, no compression
 *   int8      round-to-nearest int8, a scale per row            } baselines users would pick
 *   int4g64   round-to-nearest int4, a scale per 64 values      } instead (bench/offload/quant.ts)
 *   uniform   ebserve, one ladder level for every layer: the loosest whose canary top-1
 *             agreement is ≥ AGREEMENT_TARGET (found by a scan in this run)
 *   u-shape   ebserve with the u-shape policy: its floors and ceilings, the planner's order of moves
 *             (cheapest accuracy per byte first, by the measured sensitivity of profiles/tiny-moe.yaml
 *             when it exists, else the policy's prior), taken as far as canary agreement stays
 *             ≥ AGREEMENT_TARGET (a bisection over the move sequence)
 *   u-shape-fused  the same plan, tier A holding the compressed rungs, multiplied by the fused
 *             product (no decode; an entry costs its compressed bytes, so the same tier-A budget
 *             holds more experts)
 *   u-shape-symbols  the same plan, tier A holding each level as symbols where it fits 4 or 8 bits
 *             (the same weights at a byte a value, no decode in the product), rungs where not
 * Every run is the product's path: the native forward (src/model/native-forward.ts), experts
 * through the offload engine, multiplied by the CPU engine's kernels.
 * for device caches (tier A) of 1×, 2× and 4× the active experts per layer; tier B is off so every
 * scheme gets the same device memory (decoded experts only).
 *
 * Links are emulated by regime (see README.md beside this file): the compute time per token t_c
 * of the all-resident model and the bf16 scheme's link bytes per token B at 2× cache are measured
 * first; link2x = B / (2 t_c) and link10x = B / (10 t_c) are the bandwidths at which plain bf16
 * offload spends 2× and 10× the compute time per token on the link.
 *
 * Tokens/s are the median of REPEATS interleaved timed runs.
 *
 * Prints a table, writes bench/results/offload.json. A report, never an assertion.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { generate } from '../../src/model/generate.js';
import { KvCache } from '../../src/model/kv-cache.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../../src/model/load.js';
import { ladderReport } from '../../src/offload/ladder-report.js';
import { OffloadExpertEngine } from '../../src/offload/engine.js';
import type { TierAForm } from '../../src/offload/fetcher.js';
import { CopyLink, EmulatedLink, type Link } from '../../src/offload/link.js';
import { DEFAULT_LADDER, uniformPlan, type PrecisionPlan } from '../../src/offload/plan.js';
import { MATRICES } from '../../src/offload/source.js';
import { buildStore, type ExpertStore } from '../../src/offload/store.js';
import { TelemetryBus } from '../../src/offload/telemetry.js';
import { decodeTensor } from '../../src/codec/halfs-array.js';
import { plannerSensitivity } from '../../src/control/index.js';
import { planLevels } from '../../src/control/planner.js';
import { loadPolicy, resolvePolicy } from '../../src/control/policy.js';
import { loadProfile } from '../../src/control/profile.js';
import { dequantize, QuantizedStore, type QuantScheme } from './quant.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RESULTS = path.join(ROOT, 'bench', 'results', 'offload.json');
const CACHE_MULTIPLES = [1, 2, 4];
const DECODE_PROMPTS = 4; // the first prompts of the text canaries, 128 bytes each
const DECODE_TOKENS = 32;
const CANARY_STRIDE = 2; // agreement on every 2nd text canary (120 items × 32 positions)
const AGREEMENT_TARGET = 0.99;
/** Timed runs per (cache, scheme, link, prefetch); the table has their median (BENCH_OFFLOAD_REPEATS). */
const REPEATS = Math.max(1, Math.floor(Number(process.env.BENCH_OFFLOAD_REPEATS ?? 3)));

function median(xs: number[]): number {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

type SchemeName = 'bf16' | 'int8' | 'int4g64' | 'uniform' | 'u-shape' | 'u-shape-fused' | 'u-shape-symbols';
interface Scheme {
  name: SchemeName;
  store: ExpertStore;
  plan: PrecisionPlan;
  /** How tier A holds codec levels (default f32). */
  tierAForm?: TierAForm;
}

interface Row {
  cache_multiple: number;
  scheme: SchemeName;
  plan_levels: number[];
  link_bytes_per_token: number;
  hit_rate_a: number;
  hit_rate_b: number;
  prefetch_hit_rate: number;
  top1_agreement: number;
  max_weight_error: number;
  tokens_per_s_link2x: number;
  tokens_per_s_link10x: number;
  tokens_per_s_link2x_no_prefetch: number;
}

const textCanaries = fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl'), 'utf8').split('\n').filter(Boolean)
  .map((l) => JSON.parse(l) as { prompt: string; continuation: string });

function newCache(m: LoadedModel): KvCache {
  const c = m.checkpoint.config;
  return KvCache.forModel(c);
}

/** Greedy next-byte predictions at every continuation position of the (strided) text canaries. */
async function canaryArgmax(m: LoadedModel): Promise<Int32Array> {
  const out: number[] = [];
  const V = m.checkpoint.config.vocabSize;
  for (let i = 0; i < textCanaries.length; i += CANARY_STRIDE) {
    const p = m.tokenizer.encode(textCanaries[i].prompt);
    const q = m.tokenizer.encode(textCanaries[i].continuation);
    const tokens = [...p, ...q].slice(0, -1);
    const logits = await m.model.forward(tokens, newCache(m), true);
    for (let j = p.length - 1; j < tokens.length; j++) {
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[j * V + v] > logits[j * V + best]) best = v;
      out.push(best);
    }
  }
  return Int32Array.from(out);
}

function agreement(a: Int32Array, b: Int32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

interface RunResult {
  decodeTokens: number;
  decodeSeconds: number;
  decodeBytes: number;
  engine: OffloadExpertEngine;
}

/**
 * Who multiplies the experts (BENCH_OFFLOAD_COMPUTE): tfjs, or the CPU engine in the addon
 * reading the device cache's f32 buffers. The resident reference computes the same way, so the
 * links are scaled to the same compute.
 */
const COMPUTE = (process.env.BENCH_OFFLOAD_COMPUTE ?? 'cpu') as 'tfjs' | 'cpu';

/** Generates DECODE_TOKENS after each of the first DECODE_PROMPTS canary prompts, from a cold cache. */
async function run(scheme: Scheme, tierAExperts: number, link: Link, prefetch: boolean, strictLevels = false): Promise<RunResult> {
  const bus = new TelemetryBus();
  let pending = 0;
  const r = { decodeTokens: 0, decodeSeconds: 0, decodeBytes: 0 };
  bus.on((s) => {
    if (s.kind === 'transfer') pending += s.bytes;
    else if (s.kind === 'token') {
      // A step without prompt tokens is a decode step; moves since the last step are its bytes.
      if (s.prefillTokens === 0) {
        r.decodeTokens++;
        r.decodeSeconds += s.seconds;
        r.decodeBytes += pending;
      }
      pending = 0;
    }
  });
  let engine!: OffloadExpertEngine;
  const decodedBytes = scheme.store.expertValues(0, 0) * 4;
  const m = await loadModel(EMBEDDED_MODEL_DIR, {
    engine: () =>
      (engine = new OffloadExpertEngine({
        store: scheme.store, link, budget: { tierABytes: tierAExperts * decodedBytes, tierBBytes: 0 }, telemetry: bus, plan: scheme.plan, prefetch, strictLevels, compute: COMPUTE, tierAForm: scheme.tierAForm,
      })),
  });
  try {
    for (let i = 0; i < DECODE_PROMPTS; i++) {
      await generate(m.model, m.tokenizer, textCanaries[i].prompt, { maxTokens: DECODE_TOKENS });
    }
    return { ...r, engine };
  } finally {
    m.dispose();
  }
}

/** Max |w − ŵ| over the experts, at the plan's levels. */
function maxWeightError(scheme: Scheme, report: ReturnType<typeof ladderReport>, source: ReturnType<typeof checkpointExperts>): number {
  if (scheme.store instanceof QuantizedStore) {
    let worst = 0;
    for (let l = 0; l < scheme.store.numLayers; l++) {
      for (let e = 0; e < scheme.store.numExperts; e++) {
        const raw = source.readExpert(l, e);
        for (const mName of MATRICES) {
          const x = decodeTensor(raw[mName].bytes, raw[mName].dtype);
          const y = dequantize(scheme.store.expert(l, e)[mName].exact!, raw[mName].shape, scheme.store.scheme as QuantScheme);
          for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i] - y[i]));
        }
      }
    }
    return worst;
  }
  return Math.max(...scheme.plan.levels.map((lv, l) => report[l].levels[lv].maxError));
}

async function main(): Promise<void> {
  if (COMPUTE !== 'tfjs' && COMPUTE !== 'cpu') throw new Error(`BENCH_OFFLOAD_COMPUTE is tfjs or cpu, got ${COMPUTE}`);
  log(`the native forward; experts computed by ${COMPUTE === 'cpu' ? 'the CPU engine' : 'TensorFlow.js'}`);
  const resident = await loadModel(EMBEDDED_MODEL_DIR, COMPUTE === 'cpu' ? { cpu: {} } : {});
  const source = checkpointExperts(resident.checkpoint);
  const L = resident.checkpoint.config.numLayers;
  const active = resident.checkpoint.config.topK;
  log(`building the expert store (ladder ${DEFAULT_LADDER.bounds.join(', ')} ${DEFAULT_LADDER.boundMode} + exact)`);
  const store = await buildStore(source, DEFAULT_LADDER);
  const report = ladderReport(store, source);

  // Compute time per token of the all-resident model: decode steps only (a prompt's first forward
  // is its prefill).
  let residentDecode = 0;
  let residentTokens = 0;
  await generate(resident.model, resident.tokenizer, textCanaries[0].prompt, { maxTokens: 8 }); // warm-up
  for (let i = 0; i < DECODE_PROMPTS; i++) {
    const cache = newCache(resident);
    let logits = await resident.model.forward(resident.tokenizer.encode(textCanaries[i].prompt), cache);
    const t = performance.now();
    for (let k = 0; k < DECODE_TOKENS - 1; k++) {
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      logits = await resident.model.forward([best], cache);
    }
    residentDecode += (performance.now() - t) / 1000;
    residentTokens += DECODE_TOKENS - 1;
  }
  const computeSeconds = residentDecode / residentTokens;
  log(`resident: ${(computeSeconds * 1000).toFixed(2)} ms per decode token`);

  log('reference predictions on the text canaries (all-resident model)');
  const reference = await canaryArgmax(resident);
  const agreementOf = async (s: Scheme): Promise<number> => {
    const bus = new TelemetryBus();
    const m = await loadModel(EMBEDDED_MODEL_DIR, {
      engine: () => new OffloadExpertEngine({ store: s.store, link: new CopyLink(), budget: { tierABytes: 1e12, tierBBytes: 0 }, telemetry: bus, plan: s.plan, prefetch: false, strictLevels: true }),
    });
    try {
      return agreement(reference, await canaryArgmax(m));
    } finally {
      m.dispose();
    }
  };

  // The uniform scheme: the loosest single level meeting the agreement target.
  const scan: { level: number; agreement: number }[] = [];
  let uniformLevel = store.exact;
  for (let level = 0; level < store.exact; level++) {
    const a = await agreementOf({ name: 'uniform', store, plan: uniformPlan(L, level) });
    scan.push({ level, agreement: a });
    log(`uniform level ${level} (${DEFAULT_LADDER.bounds[level]} σ): agreement ${(100 * a).toFixed(2)} %`);
    if (a >= AGREEMENT_TARGET) {
      uniformLevel = level;
      break;
    }
  }
  // The u-shape scheme: the planner's own sequence of moves under the u-shape policy, as far as
  // the agreement target allows.
  const policy = loadPolicy(path.join(ROOT, 'policies', 'u-shape.yaml'));
  const resolved = resolvePolicy(policy, L);
  const profileFile = path.join(ROOT, 'profiles', 'tiny-moe.yaml');
  const profile = fs.existsSync(profileFile) ? loadProfile(profileFile) : undefined;
  const sens = profile ? plannerSensitivity(policy, profile, L) : { table: resolved.prior, source: 'policy prior' as const };
  log(`u-shape: floors [${resolved.floor.join(' ')}], sensitivity from the ${sens.source}${profile ? ` (${path.relative(ROOT, profileFile)})` : ''}`);
  const moves = planLevels({
    levelBytes: Array.from({ length: L }, (_, l) => store.layerLevelBytes(l)), fetchesPerToken: new Array(L).fill(1),
    bandwidth: 1, overhead: 0, computeSeconds: 0, slaSeconds: 1e-12, sensitivity: sens.table, floor: resolved.floor, ceiling: resolved.ceiling,
  }).moves;
  const prefix = (k: number) => {
    const lv = [...resolved.ceiling];
    for (const m of moves.slice(0, k)) lv[m.layer] = m.to;
    return lv;
  };
  let lo = 0;
  let hi = moves.length;
  const prefixScan: { moves: number; levels: number[]; agreement: number }[] = [];
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    const a = await agreementOf({ name: 'u-shape', store, plan: { version: 0, levels: prefix(mid) } });
    prefixScan.push({ moves: mid, levels: prefix(mid), agreement: a });
    log(`u-shape: ${mid} of ${moves.length} moves [${prefix(mid).join(' ')}]: agreement ${(100 * a).toFixed(2)} %`);
    if (a >= AGREEMENT_TARGET) lo = mid;
    else hi = mid - 1;
  }
  const uShape = prefix(lo);
  const schemes: Scheme[] = [
    { name: 'bf16', store, plan: uniformPlan(L, store.exact) },
    ...(['int8', 'int4g64'] as const).map((q) => {
      const qs = new QuantizedStore(store, source, q);
      return { name: q, store: qs, plan: uniformPlan(L, qs.exact) } as Scheme;
    }),
    { name: 'uniform', store, plan: uniformPlan(L, uniformLevel) },
    { name: 'u-shape', store, plan: { version: 0, levels: uShape } },
    ...(COMPUTE === 'cpu'
      ? ([
          { name: 'u-shape-fused', store, plan: { version: 0, levels: uShape }, tierAForm: 'fused' },
          { name: 'u-shape-symbols', store, plan: { version: 0, levels: uShape }, tierAForm: 'symbols' },
        ] as Scheme[])
      : []),
  ];
  const known = new Map(prefixScan.map((x) => [x.levels.join(), x.agreement]));
  const quality = new Map<SchemeName, { agreement: number; maxError: number }>();
  for (const s of schemes) {
    const a = s.name === 'uniform' ? scan[scan.length - 1]?.agreement ?? 1 : (s.name.startsWith('u-shape') ? known.get(uShape.join()) : undefined) ?? (await agreementOf(s));
    quality.set(s.name, { agreement: a, maxError: maxWeightError(s, report, source) });
    log(`${s.name} [${s.plan.levels.join(' ')}]: agreement ${(100 * a).toFixed(2)} %, max weight error ${quality.get(s.name)!.maxError.toExponential(2)}`);
  }

  // Link regimes from bf16 offload at 2× cache.
  const bf16 = schemes[0];
  const probe = await run(bf16, 2 * active * L, new CopyLink(), true);
  const bf16Bytes = probe.decodeBytes / probe.decodeTokens;
  const link2x = bf16Bytes / (2 * computeSeconds);
  const link10x = bf16Bytes / (10 * computeSeconds);
  log(`bf16 at 2× cache moves ${(bf16Bytes / 1e3).toFixed(1)} kB per token: link2x = ${(link2x / 1e6).toFixed(2)} MB/s, link10x = ${(link10x / 1e6).toFixed(2)} MB/s`);

  const rows: Row[] = [];
  for (const multiple of CACHE_MULTIPLES) {
    const experts = multiple * active * L;
    for (const s of schemes) {
      const copy = await run(s, experts, new CopyLink(), true);
      const st = copy.engine.fetcher.stats;
      // Timed runs REPEATS times, interleaved (on, off, on10, on, off, …) so drift on a shared VM
      // hits each alike; the median of each goes in the table.
      const on2: number[] = [];
      const off2: number[] = [];
      const on10: number[] = [];
      const rate = (r: RunResult) => r.decodeTokens / r.decodeSeconds;
      for (let k = 0; k < REPEATS; k++) {
        on2.push(rate(await run(s, experts, new EmulatedLink({ bytesPerSecond: link2x }), true)));
        off2.push(rate(await run(s, experts, new EmulatedLink({ bytesPerSecond: link2x }), false)));
        on10.push(rate(await run(s, experts, new EmulatedLink({ bytesPerSecond: link10x }), true)));
      }
      const q = quality.get(s.name)!;
      const row: Row = {
        cache_multiple: multiple,
        scheme: s.name,
        plan_levels: s.plan.levels,
        link_bytes_per_token: copy.decodeBytes / copy.decodeTokens,
        hit_rate_a: st.aHits / Math.max(1, st.aHits + st.aMisses),
        hit_rate_b: st.bHits / Math.max(1, st.bHits + st.bMisses),
        prefetch_hit_rate: copy.engine.prefetchHitRate(),
        top1_agreement: q.agreement,
        max_weight_error: q.maxError,
        tokens_per_s_link2x: median(on2),
        tokens_per_s_link10x: median(on10),
        tokens_per_s_link2x_no_prefetch: median(off2),
      };
      rows.push(row);
      log(`${multiple}× ${s.name}: ${(row.link_bytes_per_token / 1e3).toFixed(1)} kB/token, ${row.tokens_per_s_link2x.toFixed(1)} / ${row.tokens_per_s_link10x.toFixed(1)} tok/s on link2x / link10x`);
    }
  }
  resident.dispose();

  const cpus = os.cpus();
  const result = {
    model: path.relative(ROOT, EMBEDDED_MODEL_DIR),
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', node: process.version },
    ladder: DEFAULT_LADDER,
    link_emulated: true,
    forward: 'native',
    tier_a_forms: { 'u-shape-fused': 'compressed rungs, fused product', 'u-shape-symbols': 'symbols where a level fits 4 or 8 bits, else compressed rungs', others: COMPUTE === 'cpu' ? 'f32' : 'tfjs tensors' },
    compute_seconds_per_token: computeSeconds,
    expert_compute: COMPUTE,
    resident_tokens_per_s: 1 / computeSeconds,
    bf16_bytes_per_token_2x: bf16Bytes,
    link2x_bytes_per_s: link2x,
    link10x_bytes_per_s: link10x,
    agreement_target: AGREEMENT_TARGET,
    canary_positions: reference.length,
    uniform_scan: scan,
    u_shape: { policy: 'policies/u-shape.yaml', sensitivity: sens.source, profile: profile ? path.relative(ROOT, profileFile) : null, moves: moves.length, taken: lo, scan: prefixScan },
    decode: { prompts: DECODE_PROMPTS, tokens_per_prompt: DECODE_TOKENS, repeats: REPEATS },
    rows,
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');

  console.log(`\nembedded model, ${cpus.length} × ${result.machine.model}; resident decode ${(1 / computeSeconds).toFixed(1)} tokens/s; ` +
    `links EMULATED: link2x ${(link2x / 1e6).toFixed(2)} MB/s, link10x ${(link10x / 1e6).toFixed(2)} MB/s`);
  console.log(`top-1 agreement over ${reference.length} canary positions; uniform = loosest level with ≥ ${100 * AGREEMENT_TARGET} %: level ${uniformLevel}; u-shape levels [${uShape.join(' ')}]`);
  console.log('| cache | scheme | link kB/token | vs bf16 | hit A | prefetch hit | top-1 agree | max weight err | tok/s link2x | tok/s link10x | tok/s link2x no prefetch |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const base = rows.find((x) => x.cache_multiple === r.cache_multiple && x.scheme === 'bf16')!;
    console.log(`| ${r.cache_multiple}× | ${r.scheme} | ${(r.link_bytes_per_token / 1e3).toFixed(1)} | ${base.link_bytes_per_token > 0 ? (r.link_bytes_per_token / base.link_bytes_per_token).toFixed(3) : '—'} | ${r.hit_rate_a.toFixed(3)} | ${r.prefetch_hit_rate.toFixed(3)} | ${(100 * r.top1_agreement).toFixed(2)} % | ${r.max_weight_error.toExponential(2)} | ${r.tokens_per_s_link2x.toFixed(1)} | ${r.tokens_per_s_link10x.toFixed(1)} | ${r.tokens_per_s_link2x_no_prefetch.toFixed(1)} |`);
  }
  console.log(`wrote ${path.relative(ROOT, RESULTS)} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

await main();
