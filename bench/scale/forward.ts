/**
 * `make bench-scale-forward`: bench-scale's cached OLMoE-1B-7B shape in process, no server: the
 * native forward with every expert resident in the CPU engine, one sequence decoding greedily, per
 * form of the weights:
 *   fused-1e-3        experts compressed within 1e-3 (abs), the fused product (what
 *                     `serve --engine cpu --bound 1e-3`, bench-scale's case c, serves)
 *   symbols-int8-4e-3 experts within 4e-3 (σ/5 of these N(0, 0.02) weights) held as 4-bit symbols,
 *                     the attention projections as 8-bit symbols at their own bounds, both
 *                     multiplied by the integer product (activations in 8 bits); the LM head bf16
 * The checkpoint must be in the cache (`make bench-scale` synthesizes it once;
 * BENCH_SCALE_LAYERS=2 takes the 2-layer cut). Each form loads the model again (compressing every
 * expert: minutes at full depth). BENCH_SCALE_FORMS picks forms (comma-separated),
 * BENCH_SCALE_TOKENS the decode length (default 32). Prints a table, writes
 * bench/results/scale-forward.json; progress on stderr. A report, never an assertion.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { native } from '../../src/codec/native.js';
import { KvCache } from '../../src/model/kv-cache.js';
import { loadModel, type LoadOptions } from '../../src/model/load.js';
import type { CpuExpertEngine } from '../../src/offload/cpu-engine.js';
import { cacheRoot, checkpointProblem, layersFromEnv, modelDir } from './cache.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RESULTS = path.join(ROOT, 'bench', 'results', 'scale-forward.json');
const SHAPE = 'olmoe-1b-7b';
const PROMPT = 'Call me Ishmael. Some years ago';

const FORMS: Record<string, LoadOptions> = {
  'fused-1e-3': { cpu: { bound: 1e-3 } },
  'symbols-int8-4e-3': { cpu: { bound: 4e-3, symbols: true, int8Activations: true }, denseSymbols: { int8Activations: true } },
};

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(7)}s] ${msg}\n`);

interface Row {
  form: string;
  experts: string;
  dense: string;
  load_seconds: number;
  rss_bytes: number;
  tokens_per_s: number;
  /** Per decode token: the addon's own time (attention, projections, routers, LM head), the experts', the JavaScript between. */
  native_ms_per_token: number;
  expert_ms_per_token: number;
  other_ms_per_token: number;
}

async function run(form: string, dir: string, tokens: number): Promise<Row> {
  const start = performance.now();
  log(`${form}: loading ${dir} (every expert compressed in process)`);
  const m = await loadModel(dir, FORMS[form]);
  try {
    const loadSeconds = (performance.now() - start) / 1000;
    const forward = m.model.nativeForward;
    if (!forward) throw new Error(`${dir}: the native forward does not cover this model`);
    const c = m.checkpoint.config;
    const cache = KvCache.forModel(c);
    const argmax = (l: Float32Array) => l.reduce((best, v, i, a) => (v > a[best] ? i : best), 0);
    let logits = await m.model.forward(m.tokenizer.encode(PROMPT), cache);
    const before = { ...forward.stats };
    const t = performance.now();
    for (let i = 0; i < tokens; i++) logits = await m.model.forward([argmax(logits)], cache);
    const seconds = (performance.now() - t) / 1000;
    const per = (k: 'nativeSeconds' | 'expertSeconds' | 'otherSeconds') => (1000 * (forward.stats[k] - before[k])) / tokens;
    const row: Row = {
      form, experts: (m.engine as CpuExpertEngine).describeForm(), dense: forward.denseForm, load_seconds: loadSeconds, rss_bytes: process.memoryUsage().rss,
      tokens_per_s: tokens / seconds, native_ms_per_token: per('nativeSeconds'), expert_ms_per_token: per('expertSeconds'), other_ms_per_token: per('otherSeconds'),
    };
    log(`${form}: ${row.tokens_per_s.toFixed(2)} tokens/s (native ${row.native_ms_per_token.toFixed(1)} + experts ${row.expert_ms_per_token.toFixed(1)} + other ${row.other_ms_per_token.toFixed(1)} ms a token)`);
    return row;
  } finally {
    m.dispose();
  }
}

async function main() {
  const layers = layersFromEnv(process.env.BENCH_SCALE_LAYERS);
  const dir = modelDir(cacheRoot(), SHAPE, layers);
  const problem = checkpointProblem(dir);
  if (problem) throw new Error(`${dir}: ${problem}; \`make bench-scale\` synthesizes it (BENCH_SCALE_LAYERS=${layers ?? ''} for the cut)`);
  const tokens = Number(process.env.BENCH_SCALE_TOKENS ?? 32);
  if (!(Number.isInteger(tokens) && tokens >= 1)) throw new Error(`BENCH_SCALE_TOKENS must be a whole number ≥ 1, got ${process.env.BENCH_SCALE_TOKENS}`);
  const forms = (process.env.BENCH_SCALE_FORMS ?? Object.keys(FORMS).join(',')).split(',').map((f) => f.trim());
  for (const f of forms) if (!FORMS[f]) throw new Error(`BENCH_SCALE_FORMS: no form ${f} (${Object.keys(FORMS).join(', ')})`);
  const rows: Row[] = [];
  for (const f of forms) rows.push(await run(f, dir, tokens));
  const cpus = os.cpus();
  const result = {
    shape: SHAPE, layers: layers ?? null, model_dir: dir, decode_tokens: tokens, prompt: PROMPT,
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', int_dot: native.info().intDot, fused_decoder: native.info().fusedDecoder },
    rows,
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');
  console.log(`\n${SHAPE}${layers ? ` cut to ${layers} layers` : ''}, one sequence, ${tokens} greedy tokens after a ${PROMPT.split(' ').length}-word prompt; ${cpus.length} × ${result.machine.model}, integer dot ${result.machine.int_dot}`);
  console.log('| form | experts | tokens/s | native ms/token | experts ms/token | other ms/token | load s | RSS GB |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(`| ${r.form} | ${r.experts} | ${r.tokens_per_s.toFixed(2)} | ${r.native_ms_per_token.toFixed(1)} | ${r.expert_ms_per_token.toFixed(1)} | ${r.other_ms_per_token.toFixed(1)} | ${r.load_seconds.toFixed(0)} | ${(r.rss_bytes / 1e9).toFixed(2)} |`);
  console.log(`wrote ${path.relative(ROOT, RESULTS)}`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
