/**
 * `make bench-control`: a bandwidth trace replayed against the embedded model over an EMULATED
 * link, for ebserve's controller and for three static plans, one run. The link is scaled by
 * regime as in bench/offload: `link2x` is the bandwidth at which the tightest plan (the exact
 * bytes, a cache of 2× the active experts) spends twice its compute time per token on the link.
 *
 * Trace (multiples of link2x): steady 1× for 10 s, a 4× drop (0.25×) for 20 s, recovery 1× for
 * 10 s, then 20 s of oscillation between 1× and 0.25× every 2 s — long enough for the policy's
 * 3 s stable window to matter.
 *
 * SLA and floor, and how they were picked: the SLA is 1.5× the median decode step of the
 * tightest plan on the steady link (measured first, so the regime is the same on any machine:
 * the tightest plan meets it while the link is good and cannot while it is down); the accuracy
 * floor is the default profile's 0.97 top-1 agreement, which the loosest plan (every layer at
 * σ/2) falls below. The controller runs the u-shape policy (BENCH_CONTROL_POLICY=FILE for
 * another) with the sensitivity `ebserve profile`
 * measured (profiles/tiny-moe.yaml), without live canaries (their CPU time would be charged to
 * the trace); `controller+drop` is the same controller with the policy's drop rungs allowed (trim
 * and skip-moe past the loosest level, priced by the profile's sensitivity.drop); the agreement of every plan it used is scored afterwards on the canaries and
 * weighted by the tokens decoded under it.
 *
 * Prints a table, writes bench/results/control.json (with the controller's run step by step and
 * every decision that changed its plan) and draws that run in bench/results/control-trace.svg.
 * Every run is the product's path: the native forward (src/model/native-forward.ts) with the
 * offload engine's experts multiplied by the CPU engine's kernels.
 *
 * A report, never an assertion.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { CanaryRunner, type TextCanary } from '../../src/control/canaries.js';
import { bandwidthEstimate } from '../../src/control/estimators/bandwidth.js';
import { startControl, type Control } from '../../src/control/index.js';
import { loadPolicy } from '../../src/control/policy.js';
import { loadProfile } from '../../src/control/profile.js';
import { generate } from '../../src/model/generate.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../../src/model/load.js';
import { OffloadExpertEngine } from '../../src/offload/engine.js';
import { CopyLink, EmulatedLink } from '../../src/offload/link.js';
import { uniformPlan, type DropState, type PrecisionPlan } from '../../src/offload/plan.js';
import { buildStore, type ExpertStore } from '../../src/offload/store.js';
import { TelemetryBus } from '../../src/offload/telemetry.js';
import { canaryTarget } from '../../src/serve/canary-target.js';
import { resultJson } from './result-json.js';
import { timelineChart, type TimelineStep } from './timeline-chart.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
// BENCH_CONTROL_PLANS=controller,static-loosest replays only those (while tuning); the results
// then go to control-partial.json and control-trace-partial.svg, leaving the full run's alone.
const ONLY = process.env.BENCH_CONTROL_PLANS?.split(',');
const SUFFIX = ONLY ? '-partial' : '';
/** BENCH_CONTROL_HOLDS=1 keeps the controller's holds too, with every decision's inputs (to see why it held). */
const HOLDS = Boolean(process.env.BENCH_CONTROL_HOLDS);
const RESULTS = path.join(ROOT, 'bench', 'results', `control${SUFFIX}.json`);
const PICTURE = path.join(ROOT, 'bench', 'results', `control-trace${SUFFIX}.svg`);
const TRACE: { name: string; seconds: number; multiple: number | [number, number, number] }[] = [
  { name: 'steady', seconds: 10, multiple: 1 },
  { name: 'drop 4x', seconds: 20, multiple: 0.25 },
  { name: 'recovery', seconds: 10, multiple: 1 },
  { name: 'oscillation', seconds: 20, multiple: [1, 0.25, 2] }, // [high, low, seconds each]
];
const TRACE_SECONDS = TRACE.reduce((a, p) => a + p.seconds, 0);
const CANARY_ITEMS = 8;
/** The controller's policy (BENCH_CONTROL_POLICY to try another; it must share the default's ladder). */
const POLICY = path.resolve(process.env.BENCH_CONTROL_POLICY ?? path.join(ROOT, 'policies', 'u-shape.yaml'));

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
const text = fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as TextCanary);

type PlanName = 'controller' | 'controller+drop' | 'static-tightest' | 'static-loosest' | 'static-u-shape';
type Choice = number[] | 'controller' | 'controller+drop';

/** A plan as a map key (its levels, and its drop rungs when it drops), and back. */
const planKey = (p: PrecisionPlan) => `${p.levels.join(',')}${p.drop ? `|${p.drop.join(',')}` : ''}`;
const keyPlan = (key: string, version: number): PrecisionPlan => {
  const [levels, drop] = key.split('|');
  return { version, levels: levels.split(',').map(Number), ...(drop ? { drop: drop.split(',') as DropState[] } : {}) };
};

interface TraceRun {
  tokens: number;
  underSla: number;
  bytes: number;
  decisions: number;
  /** Decode tokens per distinct plan (levels joined). */
  tokensPerPlan: Map<string, number>;
  phases: { name: string; tokens: number; underSla: number }[];
  /** Every decode step: seconds since the trace started, its time, the link's multiple, the plan. */
  timeline: TimelineStep[];
  /** The controller's decisions that changed the plan. */
  /** levels on the planner's scale (−1 trim, −2 skip-moe), drop the same in words. */
  changes: { t: number; action: string; reason: string; levels: number[]; drop?: DropState[]; inputs?: unknown }[];
}

/** Replays the trace once with `levels` fixed, or with the controller choosing. */
async function replay(m: LoadedModel, store: ExpertStore, link2x: number, sla: number, levels: Choice): Promise<TraceRun> {
  const bus = new TelemetryBus();
  const link = new EmulatedLink({ bytesPerSecond: link2x });
  const decoded = store.expertValues(0, 0) * 4;
  const engine = new OffloadExpertEngine({
    store, link, telemetry: bus, budget: { tierABytes: 2 * 2 * store.numLayers * decoded, tierBBytes: 0 },
    plan: typeof levels === 'string' ? uniformPlan(store.numLayers, store.exact) : { version: 1, levels },
  });
  const run: TraceRun = { tokens: 0, underSla: 0, bytes: 0, decisions: 0, tokensPerPlan: new Map(), phases: [], timeline: [], changes: [] };
  let start = performance.now();
  let multiple = 1;
  let control: Control | undefined;
  if (typeof levels === 'string') {
    const policy = loadPolicy(POLICY);
    policy.canaries = { ...policy.canaries, every_ms: 0 };
    if (levels === 'controller+drop') policy.drop = { trim: true, skip_moe: true };
    const profile = loadProfile(path.join(ROOT, 'profiles', 'tiny-moe.yaml'));
    profile.sla = { ...profile.sla, p95_inter_token_seconds: sla };
    profile.link = { prior_bytes_per_second: link2x };
    control = startControl({ policy, profile, store, engine, telemetry: bus, topK: m.checkpoint.config.topK });
    control.controller.decisions$.subscribe((d) => {
      if (d.action === 'hold' && !HOLDS) return;
      if (d.action !== 'hold') run.decisions++;
      run.changes.push({ t: (performance.now() - start) / 1000, action: d.action, reason: d.reason, levels: d.levels, ...(d.drop ? { drop: d.drop } : {}), ...(HOLDS ? { inputs: d.inputs } : {}) });
    });
  }
  let phase = { name: '', tokens: 0, underSla: 0 };
  let pendingBytes = 0;
  bus.on((s) => {
    if (s.kind === 'transfer') pendingBytes += s.bytes;
    if (s.kind === 'token') {
      if (s.prefillTokens === 0) {
        run.tokens++;
        phase.tokens++;
        run.bytes += pendingBytes;
        if (s.seconds <= sla) {
          run.underSla++;
          phase.underSla++;
        }
        const key = planKey(engine.currentPlan);
        const st = control?.controller.state$.value;
        run.timeline.push({
          t: (performance.now() - start) / 1000, seconds: s.seconds, multiple, levels: [...engine.currentPlan.levels],
          // What the controller believed after this step: the link (as a multiple of link2x) and how far its model was off.
          ...(st ? { estimatedMultiple: bandwidthEstimate(st.bandwidth) / link2x, modelRatio: st.modelError.ratios.at(st.modelError.ratios.length - 1) } : {}),
        });
        run.tokensPerPlan.set(key, (run.tokensPerPlan.get(key) ?? 0) + 1);
      }
      pendingBytes = 0;
    }
  });
  let decoding = true;
  const loop = (async () => {
    for (let i = 0; decoding; i++) await generate(m.model, m.tokenizer, text[i % text.length].prompt, { maxTokens: 32, engine });
  })();
  start = performance.now();
  const setMultiple = (x: number) => {
    multiple = x;
    link.setBandwidth(link2x * x);
  };
  for (const p of TRACE) {
    phase = { name: p.name, tokens: 0, underSla: 0 };
    run.phases.push(phase);
    const end = performance.now() + p.seconds * 1000;
    if (typeof p.multiple === 'number') {
      setMultiple(p.multiple);
      await new Promise((r) => setTimeout(r, p.seconds * 1000));
    } else {
      const [hi, lo, each] = p.multiple;
      for (let k = 0; performance.now() < end; k++) {
        setMultiple(k % 2 === 0 ? hi : lo);
        await new Promise((r) => setTimeout(r, Math.min(each * 1000, end - performance.now())));
      }
    }
  }
  decoding = false;
  await loop;
  control?.stop();
  engine.dispose();
  return run;
}

async function main(): Promise<void> {
  const m = await loadModel(EMBEDDED_MODEL_DIR);
  const store = await buildStore(checkpointExperts(m.checkpoint), loadPolicy(path.join(ROOT, 'policies', 'u-shape.yaml')).storeLadder);
  const L = store.numLayers;
  const decoded = store.expertValues(0, 0) * 4;

  // The regime: compute time and the tightest plan's link bytes per token (2× cache, copy link).
  const bus = new TelemetryBus();
  let compute = 0;
  let steps = 0;
  let bytes = 0;
  bus.on((s) => {
    if (s.kind === 'transfer') bytes += s.bytes;
    if (s.kind === 'token' && s.prefillTokens === 0) {
      compute += s.computeSeconds;
      steps++;
    }
  });
  const probe = new OffloadExpertEngine({ store, link: new CopyLink(), telemetry: bus, budget: { tierABytes: 4 * L * decoded, tierBBytes: 0 }, plan: uniformPlan(L, store.exact) });
  for (let i = 0; i < 6; i++) await generate(m.model, m.tokenizer, text[i].prompt, { maxTokens: 32, engine: probe });
  probe.dispose();
  const tc = compute / steps;
  const link2x = bytes / steps / (2 * tc);
  // The SLA: 1.5× the tightest plan's median decode step on the steady link.
  const steady: number[] = [];
  const bus2 = new TelemetryBus();
  bus2.on((s) => s.kind === 'token' && s.prefillTokens === 0 && steady.push(s.seconds));
  const tight = new OffloadExpertEngine({ store, link: new EmulatedLink({ bytesPerSecond: link2x }), telemetry: bus2, budget: { tierABytes: 4 * L * decoded, tierBBytes: 0 }, plan: uniformPlan(L, store.exact) });
  for (let i = 0; i < 6; i++) await generate(m.model, m.tokenizer, text[i].prompt, { maxTokens: 32, engine: tight });
  tight.dispose();
  steady.sort((a, b) => a - b);
  const sla = 1.5 * steady[Math.floor(steady.length / 2)];
  const floor = loadProfile(path.join(ROOT, 'profiles', 'cpu.yaml')).accuracy_floor ?? 0.97;
  log(`compute ${(tc * 1000).toFixed(1)} ms/token; link2x ${(link2x / 1e6).toFixed(2)} MB/s (EMULATED); SLA ${(sla * 1000).toFixed(1)} ms p95 inter-token; floor ${floor}`);

  const all: [PlanName, Choice][] = [
    ['controller', 'controller'],
    ['controller+drop', 'controller+drop'],
    ['static-tightest', new Array(L).fill(store.exact)],
    ['static-loosest', new Array(L).fill(0)],
    // The u-shape prior's shape: middle layers at the finest rung, shallow and deep quarters one looser.
    ['static-u-shape', Array.from({ length: L }, (_, l) => (l < L / 4 || l >= (3 * L) / 4 ? store.exact - 2 : store.exact - 1))],
  ];
  const plans = all.filter(([name]) => !ONLY || ONLY.includes(name));
  const runs = new Map<PlanName, TraceRun>();
  for (const [name, levels] of plans) {
    log(`${name}: replaying the trace (${TRACE_SECONDS} s)`);
    const r = await replay(m, store, link2x, sla, levels);
    runs.set(name, r);
    log(`${name}: ${r.tokens} tokens, ${(100 * r.underSla / r.tokens).toFixed(1)} % under the SLA; ${r.phases.map((p) => `${p.name} ${(100 * p.underSla / Math.max(1, p.tokens)).toFixed(0)} %`).join(', ')}`);
  }

  // Agreement of every plan used, on the canaries (strict levels), token-weighted per run.
  const strict = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * decoded, tierBBytes: 0 }, prefetch: false, strictLevels: true });
  const reference = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * decoded, tierBBytes: 0 }, prefetch: false, strictLevels: true, plan: uniformPlan(L, store.exact) });
  const runner = new CanaryRunner({ target: canaryTarget(m), engine: strict, referenceEngine: reference, text, items: CANARY_ITEMS });
  const scores = new Map<string, number>();
  const agreementOf = async (key: string) => {
    if (!scores.has(key)) scores.set(key, (await runner.score(keyPlan(key, scores.size + 1))).top1Agreement);
    return scores.get(key)!;
  };
  const rows = [];
  for (const [name] of plans) {
    const r = runs.get(name)!;
    let weighted = 0;
    for (const [key, n] of r.tokensPerPlan) weighted += n * (await agreementOf(key));
    rows.push({
      plan: name,
      sla_attainment: r.underSla / r.tokens,
      canary_agreement: weighted / r.tokens,
      link_bytes_per_token: r.bytes / r.tokens,
      decisions: r.decisions,
      tokens: r.tokens,
      distinct_plans: r.tokensPerPlan.size,
      // Each plan the run decoded under: its levels, tokens and canary agreement.
      plans: [...r.tokensPerPlan].map(([key, n]) => ({ ...keyPlan(key, 0), version: undefined, tokens: n, canary_agreement: scores.get(key)! })),
      phases: r.phases.map((p) => ({ name: p.name, tokens: p.tokens, sla_attainment: p.underSla / Math.max(1, p.tokens) })),
      // The decisions that changed a controller's plan, and the controller's run step by step (what the chart draws).
      ...(name.startsWith('controller') ? { changes: r.changes } : {}),
      ...(name === 'controller' ? { timeline: r.timeline } : {}),
    });
  }
  strict.dispose();
  reference.dispose();
  m.dispose();

  const cpus = os.cpus();
  const result = {
    model: path.relative(ROOT, EMBEDDED_MODEL_DIR),
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', node: process.version },
    link_emulated: true,
    forward: 'native',
    controller_policy: path.relative(ROOT, POLICY),
    link2x_bytes_per_s: link2x,
    compute_seconds_per_token: tc,
    sla_seconds: sla,
    canary_floor: floor,
    canary_items: CANARY_ITEMS,
    trace: TRACE,
    rows,
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, resultJson(result));
  const ladder = loadPolicy(POLICY).ladder;
  const levelNames = [...ladder.bounds.map((b) => `${b}${ladder.bound_mode === 'sigma' ? 'σ' : ''}`), ...(ladder.exact ? ['exact'] : [])];
  const cr = runs.get('controller');
  if (cr) fs.writeFileSync(PICTURE, timelineChart({ title: `controller on the trace (link EMULATED): ${(100 * cr.underSla / cr.tokens).toFixed(1)} % of steps under the SLA`, steps: cr.timeline, slaSeconds: sla, traceSeconds: TRACE_SECONDS, levelNames }));
  console.log(`\nembedded model, ${cpus.length} × ${result.machine.model}; link EMULATED, link2x ${(link2x / 1e6).toFixed(2)} MB/s; SLA p95 ${(sla * 1000).toFixed(1)} ms; canary floor ${floor}`);
  console.log('| plan | SLA attainment | canary agreement | link kB/token | decisions | per phase (attainment) |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.plan} | ${(100 * r.sla_attainment).toFixed(1)} % | ${(100 * r.canary_agreement).toFixed(2)} % | ${(r.link_bytes_per_token / 1e3).toFixed(1)} | ${r.decisions} | ${r.phases.map((p) => `${p.name} ${(100 * p.sla_attainment).toFixed(0)} %`).join(', ')} |`);
  }
  const c = rows.find((r) => r.plan === 'controller');
  const t = rows.find((r) => r.plan === 'static-tightest');
  const l = rows.find((r) => r.plan === 'static-loosest');
  if (c) console.log(`${c.sla_attainment >= 0.95 && c.canary_agreement >= floor ? 'PASS' : 'MISS'}  controller: ${(100 * c.sla_attainment).toFixed(1)} % under the SLA (>= 95 %), agreement ${(100 * c.canary_agreement).toFixed(2)} % (>= floor)`);
  const cd = rows.find((r) => r.plan === 'controller+drop');
  if (cd) console.log(`${cd.canary_agreement >= floor ? 'PASS' : 'MISS'}  controller+drop: ${(100 * cd.sla_attainment).toFixed(1)} % under the SLA${c ? ` (controller ${(100 * c.sla_attainment).toFixed(1)} %)` : ''}, agreement ${(100 * cd.canary_agreement).toFixed(2)} % (>= floor)`);
  if (t) console.log(`${t.sla_attainment < 0.8 ? 'PASS' : 'MISS'}  static tightest: ${(100 * t.sla_attainment).toFixed(1)} % under the SLA (< 80 %)`);
  if (l) console.log(`${l.canary_agreement < floor ? 'PASS' : 'MISS'}  static loosest: agreement ${(100 * l.canary_agreement).toFixed(2)} % (< floor)`);
  console.log(`wrote ${path.relative(ROOT, RESULTS)} and ${path.relative(ROOT, PICTURE)} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

await main();
