/**
 * bench/results/scale.json: its shape, and the pure steps that make it — a row from one phase's
 * measurements, the plan read from /metrics, the device budget read from /health, the checks the
 * issue asks for, the printed table. run.ts wires them to a real server.
 */
import type { LoadStats } from '../serve/clients.js';

export type CaseName = 'a' | 'b' | 'c';

/** A row of scale.json: one case at one concurrency, measured (or skipped, saying why). */
export type ScaleRow = {
  case: CaseName;
  engine: 'offload' | 'cpu';
  concurrency: number;
  /**
   * Tokens the server generated over the phase (ebserve_generation_tokens_total's increase, the
   * requests cut at its end included), per second: at concurrency 8 a 32-token request can take
   * longer than a phase, and counting only the streams that finished would miss most of them.
   */
  tokens_per_s: number | null;
  /** Offload: --host-budget; null for the cpu engine (every expert in the addon). */
  host_budget_bytes: number | null;
  /** Offload: tier A + tier B bytes (/health's engine_details); null for the cpu engine. */
  device_budget_bytes: number | null;
  /** Max of VmRSS (the server and any child process) sampled every 250 ms over the phase. */
  rss_max_bytes: number | null;
  /** ebserve_disk_read_bytes_total's increase over the phase, per second of it; null where the engine reads no store file. */
  disk_read_bytes_per_s: number | null;
  /** Each layer's level (ebserve_layer_rung) at the end of the phase; null without a controller. */
  plan_levels: number[] | null;
  /**
   * The server's own memory plan (/health's memory_* details: dense weights as held, host tier,
   * device tiers, canary caches, runtime allowance) plus the KV pages of `concurrency` requests at
   * full length: what rss_max_bytes should stay within; null when /health does not give it.
   */
  memory_plan_bytes: number | null;
  skipped?: string;
} & Partial<Omit<LoadStats, 'connectionErrorKinds' | 'tokens_per_s'>> & {
  /** The clients' count: completion tokens of the streams that finished within the phase, per second. */
  completed_tokens_per_s?: number;
  mean_batch?: number;
  disk_read_bytes?: number;
  rss_start_bytes?: number;
  rss_end_bytes?: number;
  measured_seconds?: number;
};

/** The server's counters (ebserve_*) a row is a difference of; disk null when /metrics has no disk series. */
export interface Counters {
  tokens: number;
  disk: number | null;
  batchSum: number;
  batchCount: number;
}

/** What one phase measured, beside the clients' summary. */
export interface PhaseMeasure {
  stats: LoadStats;
  seconds: number;
  rss: number[];
  /** Server counters before and after the phase (ebserve_*); disk null when /metrics has no disk series. */
  before: Counters;
  after: Counters;
  planLevels: number[] | null;
}

/** A measured row (pure). */
export function measuredRow(c: CaseName, engine: 'offload' | 'cpu', concurrency: number, budgets: Budgets, m: PhaseMeasure): ScaleRow {
  const { connectionErrorKinds: _kinds, tokens_per_s: completed, ...stats } = m.stats;
  const valid = m.rss.filter(Number.isFinite);
  const disk = m.before.disk !== null && m.after.disk !== null ? m.after.disk - m.before.disk : null;
  return {
    case: c,
    engine,
    concurrency,
    tokens_per_s: (m.after.tokens - m.before.tokens) / m.seconds,
    host_budget_bytes: budgets.host,
    device_budget_bytes: budgets.device,
    rss_max_bytes: valid.length ? Math.max(...valid) : null,
    disk_read_bytes_per_s: disk === null ? null : disk / m.seconds,
    plan_levels: m.planLevels,
    memory_plan_bytes: budgets.plan === null ? null : budgets.plan.bytes + concurrency * budgets.plan.kvBytesPerRequest,
    completed_tokens_per_s: completed,
    ...stats,
    mean_batch: (m.after.batchSum - m.before.batchSum) / Math.max(1, m.after.batchCount - m.before.batchCount),
    ...(disk === null ? {} : { disk_read_bytes: disk }),
    rss_start_bytes: m.rss[0],
    rss_end_bytes: m.rss[m.rss.length - 1],
    measured_seconds: m.seconds,
  };
}

/** A row for a case that did not run, and why. */
export function skippedRow(c: CaseName, engine: 'offload' | 'cpu', concurrency: number, reason: string, budgets: Budgets = { host: null, device: null, plan: null }): ScaleRow {
  return { case: c, engine, concurrency, tokens_per_s: null, host_budget_bytes: budgets.host, device_budget_bytes: budgets.device, rss_max_bytes: null, disk_read_bytes_per_s: null, plan_levels: null, memory_plan_bytes: null, skipped: reason };
}

/** A case's budgets: --host-budget, the device tiers and the server's memory plan (per request: its KV pages). */
export interface Budgets {
  host: number | null;
  device: number | null;
  plan: { bytes: number; kvBytesPerRequest: number } | null;
}

/** The server's memory plan from /health (its memory_* details), KV pages for `tokensPerRequest` tokens a request; null when absent. */
export function memoryPlanFromHealth(health: { engine_details?: Record<string, unknown> }, tokensPerRequest: number): Budgets['plan'] {
  const d = health.engine_details ?? {};
  const parts = ['memory_dense_bytes', 'memory_host_bytes', 'memory_device_bytes', 'memory_canary_bytes', 'memory_runtime_bytes'].map((k) => d[k]);
  const kv = d.memory_kv_bytes_per_token;
  if (!parts.every((x) => typeof x === 'number') || typeof kv !== 'number') return null;
  return { bytes: (parts as number[]).reduce((a, b) => a + b, 0), kvBytesPerRequest: kv * tokensPerRequest };
}

/** Each layer's level from a /metrics page (ebserve_layer_rung{layer="L"}), by layer; null when there is none (no controller). */
export function planLevelsFromMetrics(text: string): number[] | null {
  const levels: number[] = [];
  for (const m of text.matchAll(/^ebserve_layer_rung\{[^}]*layer="(\d+)"[^}]*\} (\S+)$/gm)) levels[Number(m[1])] = Number(m[2]);
  if (levels.length === 0) return null;
  for (let l = 0; l < levels.length; l++) if (levels[l] === undefined) throw new Error(`/metrics: ebserve_layer_rung has no series for layer ${l}`);
  return levels;
}

/** The offload engine's device budget from /health: tier A + tier B bytes; null when /health does not give them. */
export function deviceBudgetFromHealth(health: { engine_details?: Record<string, unknown> }): number | null {
  const d = health.engine_details ?? {};
  return typeof d.tier_a_bytes === 'number' && typeof d.tier_b_bytes === 'number' ? d.tier_a_bytes + d.tier_b_bytes : null;
}

/** Checkpoint facts scale.json opens with. */
export interface ScaleFacts {
  shape: string;
  layers: number;
  params: number;
  /** Bytes of the expert matrices' parameters (the store's source). */
  expert_params: number;
  checkpoint_bytes: number;
  /** The dense (non-expert) weights as f32: what the server holds besides the experts. */
  dense_f32_bytes: number;
}

/** Parameters and dense f32 bytes from a checkpoint's tensors' shapes and which of them are experts' (pure). */
export function countParams(tensors: { shape: number[]; expert: boolean }[]): { params: number; expert_params: number; dense_f32_bytes: number } {
  let params = 0;
  let expert = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    params += n;
    if (t.expert) expert += n;
  }
  return { params, expert_params: expert, dense_f32_bytes: 4 * (params - expert) };
}

export const GIB = 2 ** 30;
/** The allowance over dense f32 + host budget + device budget for case b's RSS. */
export const RSS_OVERHEAD_BYTES = 1.5 * GIB;

/** The done-when checks, from the rows (pure); NaN / null where a row is missing or skipped. */
export function scaleChecks(rows: ScaleRow[], denseF32Bytes: number) {
  const row = (c: CaseName, n: number) => rows.find((r) => r.case === c && r.concurrency === n && !r.skipped);
  const a1 = row('a', 1)?.tokens_per_s ?? NaN;
  const a8 = row('a', 8)?.tokens_per_s ?? NaN;
  const bRows = rows.filter((r) => r.case === 'b' && !r.skipped);
  const bBound = bRows.length ? denseF32Bytes + (bRows[0].host_budget_bytes ?? 0) + (bRows[0].device_budget_bytes ?? 0) + RSS_OVERHEAD_BYTES : NaN;
  const bRss = bRows.length ? Math.max(...bRows.map((r) => r.rss_max_bytes ?? NaN)) : NaN;
  const plan = (c: CaseName) => rows.filter((r) => r.case === c && !r.skipped && r.plan_levels).map((r) => r.plan_levels!);
  const plansA = plan('a');
  const plansB = plan('b');
  return {
    a_tokens_per_s_at_1: a1,
    a_tokens_per_s_at_1_at_least_5: a1 >= 5,
    a_batching_gain_at_8: a8 / a1,
    a_batching_gain_at_8_at_least_3: a8 / a1 >= 3,
    b_rss_max_bytes: bRss,
    b_rss_bound_bytes: bBound,
    b_rss_within_bound: bRss <= bBound,
    /** Per row: RSS within the server's own memory plan (null where there is no plan). */
    rss_within_plan: rows.filter((r) => !r.skipped).map((r) => ({ case: r.case, concurrency: r.concurrency, within: r.memory_plan_bytes === null || r.rss_max_bytes === null ? null : r.rss_max_bytes <= r.memory_plan_bytes })),
    b_disk_read_bytes_per_s: bRows.map((r) => r.disk_read_bytes_per_s),
    /** Per concurrency: does case b's plan (end of phase) differ from case a's? */
    b_plan_differs_from_a: plansA.length && plansB.length ? plansB.map((p, i) => JSON.stringify(p) !== JSON.stringify(plansA[Math.min(i, plansA.length - 1)])) : null,
  };
}

const mb = (b: number | null | undefined) => (b === null || b === undefined || !Number.isFinite(b) ? '—' : (b / 1e6).toFixed(1));
const fixed = (x: number | null | undefined, d: number) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(d));

/** The markdown table run.ts prints (pure). */
export function scaleTable(rows: ScaleRow[]): string[] {
  const out = [
    '| case | engine | concurrency | tokens/s | finished tokens/s | p50 s | p95 s | inter-token p95 ms | TTFT p50 ms | mean batch | host budget MB | device budget MB | RSS max MB | RSS plan MB | disk read MB/s | plan levels |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    if (r.skipped) {
      out.push(`| ${r.case} | ${r.engine} | ${r.concurrency} | skipped: ${r.skipped.replace(/\|/g, '/')} | | | | | | | | | | | | |`);
      continue;
    }
    out.push(
      `| ${r.case} | ${r.engine} | ${r.concurrency} | ${fixed(r.tokens_per_s, 2)} | ${fixed(r.completed_tokens_per_s, 2)} | ${fixed(r.latency_p50_s, 3)} | ${fixed(r.latency_p95_s, 3)} | ${fixed((r.inter_token_p95_s ?? NaN) * 1e3, 1)} | ${fixed((r.ttft_p50_s ?? NaN) * 1e3, 1)} | ${fixed(r.mean_batch, 2)} | ` +
        `${mb(r.host_budget_bytes)} | ${mb(r.device_budget_bytes)} | ${mb(r.rss_max_bytes)} | ${mb(r.memory_plan_bytes)} | ${mb(r.disk_read_bytes_per_s)} | ${r.plan_levels ? r.plan_levels.join(' ') : '—'} |`,
    );
  }
  return out;
}
