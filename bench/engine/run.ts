/**
 * `make bench-engine`: the expert engines on two workloads, in one run.
 *   embedded — the embedded model's greedy decode (8-token prompt, then DECODE_TOKENS tokens one
 *     forward each), best of REPS: (a) the TensorFlow.js model with its resident tfjs engine,
 *     (b) the CPU engine on the dense weights (the checkpoint's bf16 bits, widened in registers) (the whole forward in the addon), (c) the same,
 *     fused on compressed experts at eb 1e-3 and (d) 1e-2, (e) the 1e-3 streams held as symbols
 *     (8 bits a value there, the same weights, no decode in the product) and (f) the 1e-2 ones (4
 *     bits a value), (g) both multiplied by the integer product (activations quantized to 8 bits
 *     per 32 values, llama.cpp's Q8_0; int8 rows); with the time per token
 *     split into the routed experts' FFN and everything else.
 *   mixtral-expert — one decode token through the two active experts of a Mixtral-8x7B layer
 *     (2 × three 4096×14336 matrices, N(0, 0.02) bf16 weights: 704 MB, larger than any cache
 *     here, so memory bandwidth is what it measures), engines as above (tfjs: tf.matMul on the
 *     first backend that holds the tensors).
 * Also the run's memcpy bandwidth (Buffer.copy of 512 MB, one thread) and the share of it each
 * engine's weight reads reach. Prints a table, writes bench/results/engine.json. A report, never
 * an assertion; progress on stderr.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as tf from '@tensorflow/tfjs';

import { native } from '../../src/codec/native.js';
import { KvCache } from '../../src/model/kv-cache.js';
import { EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../../src/model/load.js';
import { compressedExpert, CpuExpertEngine, type NativeExpert } from '../../src/offload/cpu-engine.js';
import { combineExperts, swigluTensors, type ExpertEngine, type ExpertMatrices } from '../../src/offload/expert-engine.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RESULTS = path.join(ROOT, 'bench', 'results', 'engine.json');
const DECODE_TOKENS = 192;
const REPS = 5;
const MIXTRAL = { d: 4096, ff: 14336, experts: 2 };
const ENGINES = ['tfjs', 'cpu', 'cpu-fused-1e-3', 'cpu-fused-1e-2', 'cpu-symbols-1e-3', 'cpu-symbols-1e-2', 'cpu-symbols-int8-1e-3', 'cpu-symbols-int8-1e-2'] as const;
type EngineName = (typeof ENGINES)[number];
const boundOf = (e: EngineName) => (e.endsWith('-1e-3') ? 1e-3 : e.endsWith('-1e-2') ? 1e-2 : undefined);
const symbolsOf = (e: EngineName) => e.startsWith('cpu-symbols');
const int8Of = (e: EngineName) => e.startsWith('cpu-symbols-int8');

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

interface Row {
  workload: 'embedded' | 'mixtral-expert';
  engine: EngineName;
  tokens_per_s: number;
  bytes_per_token: number;
  memcpy_fraction: number;
  expert_seconds_per_token?: number;
  other_seconds_per_token?: number;
  /** The native forward: JavaScript between its per-layer calls (part of other_seconds_per_token). */
  js_seconds_per_token?: number;
  note?: string;
}

function memcpyGbps(): number {
  const a = Buffer.alloc(512 << 20, 1);
  const b = Buffer.alloc(512 << 20);
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const t = performance.now();
    a.copy(b);
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  return a.length / best / 1e9;
}

/** The tfjs engine with its compute timed (the model awaits each call, so they never overlap). */
class TimedEngine implements ExpertEngine {
  seconds = 0;
  constructor(private readonly inner: ExpertEngine) {}
  async compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number) {
    const t = performance.now();
    const out = await this.inner.compute(layer, hidden, ids, weights, T);
    this.seconds += (performance.now() - t) / 1000;
    return out;
  }
  dispose() {
    this.inner.dispose();
  }
}

async function embedded(engine: EngineName, memcpy: number): Promise<Row> {
  const bound = boundOf(engine);
  const m: LoadedModel = await loadModel(EMBEDDED_MODEL_DIR, engine === 'tfjs' ? { nativeForward: false } : { cpu: { bound, symbols: symbolsOf(engine), int8Activations: int8Of(engine) } });
  try {
    const c = m.checkpoint.config;
    const timed = engine === 'tfjs' ? new TimedEngine(m.engine) : undefined;
    const prompt = m.tokenizer.encode('Call me Ishmael. Some years ago').slice(0, 8);
    let best = { seconds: Infinity, expert: 0, other: 0, js: 0 };
    for (let r = 0; r <= REPS; r++) {
      const cache = KvCache.forModel(c);
      let logits = await m.model.forward(prompt, cache, false, timed);
      if (timed) timed.seconds = 0;
      const nf = m.model.nativeForward?.stats;
      const before = nf ? { ...nf } : undefined;
      const start = performance.now();
      for (let i = 0; i < DECODE_TOKENS; i++) {
        let next = 0;
        for (let v = 1; v < logits.length; v++) if (logits[v] > logits[next]) next = v;
        logits = await m.model.forward([next], cache, false, timed);
      }
      const seconds = (performance.now() - start) / 1000;
      const expert = timed ? timed.seconds : nf!.expertSeconds - before!.expertSeconds;
      const other = timed ? seconds - timed.seconds : nf!.nativeSeconds - before!.nativeSeconds + nf!.otherSeconds - before!.otherSeconds;
      // The native forward's JavaScript between its per-layer calls (its round trips to the engine).
      const js = timed ? 0 : nf!.otherSeconds - before!.otherSeconds;
      if (r > 0 && seconds < best.seconds) best = { seconds, expert, other, js };
    }
    const perExpert = engine === 'tfjs' ? 3 * c.hiddenSize * c.expertFfnSize * 4 : (m.engine as CpuExpertEngine).expertBytes();
    const bytes = c.numLayers * c.topK * perExpert;
    const tps = DECODE_TOKENS / best.seconds;
    log(`embedded ${engine}: ${tps.toFixed(1)} tokens/s, expert FFN ${((best.expert / DECODE_TOKENS) * 1e3).toFixed(3)} ms/token, JS between layer calls ${((best.js / DECODE_TOKENS) * 1e3).toFixed(3)} ms/token`);
    return {
      workload: 'embedded', engine, tokens_per_s: tps, bytes_per_token: bytes, memcpy_fraction: (bytes * tps) / (memcpy * 1e9),
      expert_seconds_per_token: best.expert / DECODE_TOKENS, other_seconds_per_token: best.other / DECODE_TOKENS, js_seconds_per_token: best.js / DECODE_TOKENS,
    };
  } finally {
    m.dispose();
  }
}

/** N(0, 0.02) as bf16 bits (xorshift + Box-Muller). */
function bf16Gaussian(n: number, seed: number): Uint16Array {
  let s = seed >>> 0 || 1;
  const u = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) + 0.5) / 4294967296;
  };
  const out = new Uint16Array(n);
  const f = new Float32Array(1);
  const bits = new Uint32Array(f.buffer);
  const bf16 = (v: number) => {
    f[0] = v;
    return (bits[0] + 0x7fff + ((bits[0] >>> 16) & 1)) >>> 16; // round to nearest even
  };
  for (let i = 0; i < n; i += 2) {
    const m = Math.sqrt(-2 * Math.log(u())) * 0.02;
    const a = 2 * Math.PI * u();
    out[i] = bf16(m * Math.cos(a));
    if (i + 1 < n) out[i + 1] = bf16(m * Math.sin(a));
  }
  return out;
}

/** bf16 bits → f32 values (exact). */
const toF32 = (h: Uint16Array) => {
  const f = new Float32Array(h.length);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < h.length; i++) u[i] = h[i] << 16;
  return f;
};

async function mixtral(memcpy: number): Promise<Row[]> {
  const { d, ff, experts: E } = MIXTRAL;
  log(`mixtral-expert: making ${E} experts of 3 × ${d}×${ff} bf16 weights`);
  // bf16 weights, as f32 once: every engine reads these same values (none writes them).
  const weightsOf = (seed: number) => toF32(bf16Gaussian(d * ff, seed));
  const f32 = Array.from({ length: E }, (_, e): ExpertMatrices => ({ gate: weightsOf(3 * e + 1), up: weightsOf(3 * e + 2), down: weightsOf(3 * e + 3) }));
  const x = Float32Array.from(toF32(bf16Gaussian(d, 99)), (v) => v * 50);
  const ids = Int32Array.from({ length: E }, (_, i) => i);
  const weights = Float32Array.from({ length: E }, () => 1 / E);
  const rows: Row[] = [];
  // Two warm-ups (first touches of fresh buffers fault pages in), then the best of 2 × REPS.
  const time = async (fn: () => Promise<unknown>) => {
    await fn();
    await fn();
    let best = Infinity;
    for (let r = 0; r < 2 * REPS; r++) {
      const t = performance.now();
      await fn();
      best = Math.min(best, (performance.now() - t) / 1000);
    }
    return best;
  };
  for (const engine of ENGINES) {
    let row: Row | undefined;
    if (engine === 'tfjs') {
      try {
        const tensors = f32.map((m) => swigluTensors(m, d, ff));
        const s = await time(async () => combineExperts(d, x, ids, weights, 1, (e) => tensors[e]));
        tf.dispose(tensors.flatMap((t) => [t.gateT, t.upT, t.downT]));
        row = { workload: 'mixtral-expert', engine, tokens_per_s: 1 / s, bytes_per_token: E * 3 * d * ff * 4, memcpy_fraction: 0, note: `tf.matMul on ${tf.getBackend()}` };
      } catch (e) {
        log(`mixtral-expert tfjs: ${(e as Error).message}`);
        continue;
      }
    } else {
      const bound = boundOf(engine);
      const experts: NativeExpert[] = f32.map((m) => (bound === undefined ? m : compressedExpert(m, d, ff, bound, symbolsOf(engine), int8Of(engine))));
      const eng = new CpuExpertEngine(d, ff, [experts]);
      const s = await time(() => eng.compute(0, x, ids, weights, 1));
      row = { workload: 'mixtral-expert', engine, tokens_per_s: 1 / s, bytes_per_token: E * eng.expertBytes(), memcpy_fraction: 0 };
    }
    row.memcpy_fraction = (row.bytes_per_token * row.tokens_per_s) / (memcpy * 1e9);
    log(`mixtral-expert ${engine}: ${row.tokens_per_s.toFixed(2)} tokens/s, ${(row.bytes_per_token / 1e6).toFixed(0)} MB/token`);
    rows.push(row);
  }
  return rows;
}

async function main() {
  const memcpy = memcpyGbps();
  log(`memcpy ${memcpy.toFixed(1)} GB/s (one thread); fused decoder: ${native.info().fusedDecoder}`);
  const rows: Row[] = [];
  for (const e of ENGINES) rows.push(await embedded(e, memcpy));
  rows.push(...(await mixtral(memcpy)));
  const cpus = os.cpus();
  const result = {
    memcpy_gbps: memcpy,
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', simd: native.info().simd, fused_decoder: native.info().fusedDecoder, int_dot: native.info().intDot },
    decode_tokens: DECODE_TOKENS,
    reps: REPS,
    rows,
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');
  console.log(`\n${cpus.length} × ${result.machine.model}, ${result.machine.simd}, fused decoder ${result.machine.fused_decoder}, integer dot ${result.machine.int_dot}; memcpy ${memcpy.toFixed(1)} GB/s`);
  console.log('| workload | engine | tokens/s | weight MB/token | × fewer bytes than f32 | share of memcpy | expert FFN ms/token | rest ms/token |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    // The tfjs engine reads f32 weights (the embedded CPU row reads the checkpoint's bf16 bits).
    const f32 = (rows.find((x) => x.workload === r.workload && x.engine === 'tfjs') ?? rows.find((x) => x.workload === r.workload && x.engine === 'cpu'))!.bytes_per_token;
    const ms = (s?: number) => (s === undefined ? '—' : (s * 1e3).toFixed(3));
    console.log(`| ${r.workload} | ${r.engine} | ${r.tokens_per_s.toFixed(r.tokens_per_s < 100 ? 2 : 1)} | ${(r.bytes_per_token / 1e6).toFixed(2)} | ${(f32 / r.bytes_per_token).toFixed(2)} | ${r.memcpy_fraction.toFixed(2)} | ${ms(r.expert_seconds_per_token)} | ${ms(r.other_seconds_per_token)} |`);
  }
  console.log(`wrote ${path.relative(ROOT, RESULTS)} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

await main();
