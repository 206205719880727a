/**
 * bench-peer's OLMoE-1B-7B rows: bench-scale's cached synthetic checkpoint (`make bench-scale`
 * synthesizes it once; without it these rows are left out and the run says why), ebserve in
 * process against llama.cpp's native build, one run, ratios within it.
 *
 * Positions: the checkpoint's own text canaries (prompt + continuation, as token ids), taken until
 * they hold ≥ POSITIONS positions. Reference: ebserve's forward on the weights as stored (bf16),
 * its greedy next token at every one of them, computed once and cached (referenceTokens); every
 * row's top1_agreement is against it.
 *
 * llama.cpp: the checkpoint exported to an f16 GGUF by ebserve's exporter, then made Q4_0, Q4_K_M
 * and Q8_0 by the native build's llama-quantize at its defaults (its mixes: Q4_0's output tensor
 * is Q6_K), as a user makes them; the three files are cached in the bench cache
 * (CACHE/bench-peer/), the 13 GB f16 file deleted once they exist. Agreement through
 * node-llama-cpp's prebuilt binary (the same source, so the same maths; token ids fed as ids);
 * tokens/s from the native llama-bench on 2 threads (×1: tg of `decodeTokens` at the canary
 * prompts' mean depth, mean of its repetitions) and llama-batched-bench (×8, best of `reps`).
 *
 * ebserve: FORMS below (BENCH_PEER_SCALE_FORMS picks them; default the first), each loaded once
 * (every expert compressed in process: minutes), the native forward with every expert resident in
 * the CPU engine; ×1 and ×8 (forwardBatch), best of `reps`. One form at a time fits this 24 GB
 * machine beside the run's other memory (a second 8-bit form in the same process was killed).
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';

import { exportGguf } from '../../src/model/gguf/index.js';
import { openCheckpoint } from '../../src/model/checkpoint.js';
import { loadModel, type LoadedModel, type LoadOptions } from '../../src/model/load.js';
import { loadTokenizer } from '../../src/model/tokenizer.js';
import type { CpuExpertEngine } from '../../src/offload/cpu-engine.js';
import { cacheRoot, checkpointProblem, modelDir } from '../scale/cache.js';
import { agreement, ebserveDecode, ebserveGreedy, type Row } from './ebserve.js';
import { greedyAtEveryPosition, loadLlamaCpp, weightBytesPerToken } from './llama-cpp.js';
import { runBatchedBench, runLlamaBench, type NativeLlamaCpp } from './llama-bench.js';

const SHAPE = 'olmoe-1b-7b';
/**
 * Frees a disposed model now: its native arrays go with their JS handles, so a collection frees
 * them (node --expose-gc), their finalizers running on a later turn of the event loop.
 */
async function collect(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 3 && gc; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
}
const POSITIONS = 2048;
const LLAMA_TYPES = ['Q4_0', 'Q4_K_M', 'Q8_0'] as const;
const LLAMA_THREADS = 2;

/**
 * ebserve's forms: the experts as symbols within the bound (4 bits a value where at most 1/64 of
 * them are patches, else 8), the attention projections and the LM head as 8-bit symbols at their
 * own tight bounds, all multiplied by the integer product (activations in 8 bits, as llama.cpp's
 * Q8_0 activations); routers, norms and embeddings as stored.
 */
const FORMS: Record<string, LoadOptions> = {
  'eb4e-3-int8': { cpu: { bound: 4e-3, symbols: true, int8Activations: true }, denseSymbols: { int8Activations: true, lmHead: true } },
  'eb2e-3-int8': { cpu: { bound: 2e-3, symbols: true, int8Activations: true }, denseSymbols: { int8Activations: true, lmHead: true } },
  // The attention projections as 4-bit symbols (the LM head at 8).
  'eb4e-3-int8-attn4': { cpu: { bound: 4e-3, symbols: true, int8Activations: true }, denseSymbols: { int8Activations: true, lmHead: true, bits: 4 } },
};

export interface ScaleOptions {
  nat: NativeLlamaCpp;
  decodeTokens: number;
  reps: number;
  concurrencies: number[];
  log: (line: string) => void;
}

export type ScaleResult =
  | { rows: Row[]; positions: number; texts: number; depth: number; model_dir: string; gguf: Record<string, string>; llama_cpp_skipped?: string }
  | { skipped: string };

/** ebserve's weight bytes per decode token: top-k experts per layer as held, every dense tensor as the native forward holds it but one embedding row. */
function ebserveBytesPerToken(m: LoadedModel): number {
  const c = m.checkpoint.config;
  const tensors = m.model.nativeForward!.tensors;
  // A tied LM head is the embedding, read whole every token.
  const tied = !tensors.some((t) => t.role === 'lm_head');
  const dense = tensors.reduce((n, t) => n + (t.role === 'embeddings' && !tied ? t.bytes / c.vocabSize : t.bytes), 0);
  return c.numLayers * c.topK * (m.engine as CpuExpertEngine).expertBytes() + dense;
}

/** The GGUF files of LLAMA_TYPES, made once (f16 export, then llama-quantize) and cached. */
export function llamaFiles(dir: string, quantize: string, log: (line: string) => void): Record<string, string> {
  const out = path.join(cacheRoot(), 'bench-peer');
  const file = (type: string) => path.join(out, `${SHAPE}.${type}.gguf`);
  const missing = LLAMA_TYPES.filter((t) => !fs.existsSync(file(t)));
  if (missing.length > 0) {
    fs.mkdirSync(out, { recursive: true });
    const f16 = file('f16');
    if (!fs.existsSync(f16)) {
      log(`${SHAPE}: exporting ${f16} (f16, ~13 GB, minutes)`);
      const r = exportGguf({ dir, out: f16 + '.part', type: 'f16' });
      fs.renameSync(f16 + '.part', f16);
      log(`${SHAPE}: exported ${(r.bytes / 1e9).toFixed(2)} GB, ${JSON.stringify(r.types)}`);
    }
    for (const type of missing) {
      const start = performance.now();
      const r = spawnSync(quantize, [f16, file(type) + '.part', type, String(LLAMA_THREADS)], { encoding: 'utf8', maxBuffer: 64 << 20 });
      if (r.status !== 0) throw new Error(`llama-quantize ${type} exited ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().split('\n').slice(-4).join(' | ')}`);
      fs.renameSync(file(type) + '.part', file(type));
      log(`${SHAPE}: llama-quantize ${type} in ${((performance.now() - start) / 1000).toFixed(0)} s: ${(fs.statSync(file(type)).size / 1e9).toFixed(2)} GB`);
    }
    fs.rmSync(f16);
  }
  return Object.fromEntries(LLAMA_TYPES.map((t) => [t, file(t)]));
}

/** BENCH_PEER_SCALE_FORMS: FORMS' names, comma-separated (default: the first; "" runs none). */
function formsFromEnv(env: string | undefined): string[] {
  if (env === undefined) return [Object.keys(FORMS)[0]];
  const forms = env.split(',').map((f) => f.trim()).filter(Boolean);
  for (const f of forms) if (!FORMS[f]) throw new Error(`BENCH_PEER_SCALE_FORMS: no form ${f} (${Object.keys(FORMS).join(', ')})`);
  return forms;
}

/**
 * The reference's greedy token at every position of `lists`: ebserve's forward on the weights as
 * stored (bf16; 14 GB resident, minutes), computed once and cached beside the llama.cpp files,
 * keyed by the checkpoint's config and the token lists.
 */
export async function referenceTokens(dir: string, lists: number[][], log: (line: string) => void): Promise<Int32Array> {
  const key = createHash('sha256').update(fs.readFileSync(path.join(dir, 'config.json'))).update(JSON.stringify(lists)).digest('hex').slice(0, 16);
  const file = path.join(cacheRoot(), 'bench-peer', `${SHAPE}.reference-${key}.json`);
  if (fs.existsSync(file)) return Int32Array.from(JSON.parse(fs.readFileSync(file, 'utf8')) as number[]);
  const positions = lists.reduce((a, l) => a + l.length, 0);
  log(`${SHAPE}: reference, ebserve's forward on the weights as stored, at ${positions} positions of ${lists.length} canaries (cached in ${file})`);
  const reference = await loadModel(dir, { cpu: {} });
  try {
    const ref = await ebserveGreedy(reference, lists);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, JSON.stringify([...ref]));
    return ref;
  } finally {
    reference.dispose();
    await collect();
  }
}

export async function scaleRows(o: ScaleOptions): Promise<ScaleResult> {
  const dir = modelDir(cacheRoot(), SHAPE);
  const problem = checkpointProblem(dir);
  if (problem) return { skipped: `${dir}: ${problem} (\`make bench-scale\` synthesizes it)` };
  const { log } = o;
  const rows: Row[] = [];

  const ckpt = openCheckpoint(dir);
  const c = ckpt.config;
  ckpt.close();
  const tokenizer = await loadTokenizer(dir, c);
  const canaries = fs.readFileSync(path.join(dir, 'canaries', 'text.jsonl'), 'utf8').split('\n').filter(Boolean)
    .map((l) => JSON.parse(l) as { prompt: string; continuation: string });
  const lists: number[][] = [];
  for (let i = 0, n = 0; i < canaries.length && n < POSITIONS; i++) {
    const ids = tokenizer.encode(canaries[i].prompt + canaries[i].continuation).slice(0, -1);
    lists.push(ids);
    n += ids.length;
  }
  const positions = lists.reduce((a, l) => a + l.length, 0);
  const prompts = canaries.slice(0, Math.max(...o.concurrencies)).map((t) => tokenizer.encode(t.prompt));
  const depth = Math.round(prompts.reduce((a, p) => a + p.length, 0) / prompts.length);
  const ref = await referenceTokens(dir, lists, log);

  for (const weights of formsFromEnv(process.env.BENCH_PEER_SCALE_FORMS)) {
    const form = FORMS[weights];
    const start = performance.now();
    const m = await loadModel(dir, form);
    try {
      log(`${SHAPE}: ebserve ${weights} loaded in ${((performance.now() - start) / 1000).toFixed(0)} s: experts ${(m.engine as CpuExpertEngine).describeForm()}; dense ${m.model.nativeForward?.denseForm}`);
      const top1 = agreement(ref, await ebserveGreedy(m, lists));
      const bytes = ebserveBytesPerToken(m);
      for (const n of o.concurrencies) {
        const tps = await ebserveDecode(m, prompts.slice(0, n), o.decodeTokens, o.reps);
        rows.push({ system: 'ebserve', model: SHAPE, weights, bytes_per_token: bytes, top1_agreement: top1, tokens_per_s: tps, concurrency: n, rss_max_bytes: process.memoryUsage().rss, memory_limit_bytes: null });
        log(`${SHAPE}: ebserve ${weights} ×${n}: ${tps.toFixed(2)} tokens/s, ${(bytes / 1e6).toFixed(0)} MB/token, top-1 ${(100 * top1).toFixed(2)} %`);
      }
    } finally {
      m.dispose();
      await collect();
    }
  }

  const done = { positions, texts: lists.length, depth, model_dir: dir };
  if (!o.nat.ok) return { rows, ...done, gguf: {}, llama_cpp_skipped: o.nat.reason };
  if (!o.nat.quantize) return { rows, ...done, gguf: {}, llama_cpp_skipped: 'the native build has no llama-quantize (bench/peer/build-llama-cpp.sh builds it)' };
  const files = llamaFiles(dir, o.nat.quantize, log);
  // Agreement through node-llama-cpp's prebuilt binary, every file first (then it lets go of its memory).
  const top1s = new Map<string, number | null>();
  const peer = await loadLlamaCpp(log);
  try {
    for (const type of LLAMA_TYPES) {
      if (!peer.ok) {
        top1s.set(type, null);
        continue;
      }
      const model = await peer.llama.loadModel({ modelPath: files[type] });
      try {
        top1s.set(type, agreement(ref, await greedyAtEveryPosition(model, lists, LLAMA_THREADS)));
      } finally {
        await model.dispose();
      }
    }
  } finally {
    if (peer.ok) await peer.llama.dispose();
  }
  for (const type of LLAMA_TYPES) {
    const file = files[type];
    const top1 = top1s.get(type) ?? null;
    const bytes = weightBytesPerToken(file, c.topK);
    const [tg] = runLlamaBench(o.nat.bench, { files: [file], threads: [LLAMA_THREADS], prompt: 0, gen: o.decodeTokens, depth, reps: o.reps });
    rows.push({ system: 'llama.cpp', model: SHAPE, weights: type, bytes_per_token: bytes, top1_agreement: top1, tokens_per_s: tg.avg_ts, concurrency: 1, threads: LLAMA_THREADS, build: 'native', rss_max_bytes: null, memory_limit_bytes: null });
    let best = 0;
    for (let r = 0; r < o.reps; r++) {
      for (const b of runBatchedBench(o.nat.batchedBench, { file, threads: LLAMA_THREADS, prompt: depth, gen: o.decodeTokens, sequences: o.concurrencies.filter((n) => n > 1) })) best = Math.max(best, b.decode_ts);
    }
    const many = Math.max(...o.concurrencies);
    rows.push({ system: 'llama.cpp', model: SHAPE, weights: type, bytes_per_token: bytes, top1_agreement: top1, tokens_per_s: best, concurrency: many, threads: LLAMA_THREADS, build: 'native', rss_max_bytes: null, memory_limit_bytes: null });
    log(`${SHAPE}: llama.cpp ${type}: ×1 ${tg.avg_ts.toFixed(2)} ± ${tg.stddev_ts.toFixed(2)}, ×${many} ${best.toFixed(2)} tokens/s, top-1 ${top1 === null ? '—' : `${(100 * top1).toFixed(2)} %`}`);
  }
  return { rows, ...done, gguf: Object.fromEntries(Object.entries(files).map(([t, f]) => [t, path.basename(f)])) };
}
