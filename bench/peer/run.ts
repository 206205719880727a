/**
 * `make bench-peer`: llama.cpp (node-llama-cpp's prebuilt CPU binaries, bench/peer/llama-cpp.ts)
 * beside ebserve on the embedded model, in one run.
 *
 * llama.cpp runs the embedded model exported to GGUF by ebserve's own exporter (src/model/gguf:
 * f32, q8_0, q4_0, written to build/peer/, never committed). ebserve runs its native forward
 * (what `--engine cpu` serves) on the checkpoint's bf16 experts, and on experts compressed at the
 * two codec bounds whose bytes are closest to q8_0's and q4_0's (1e-3 ≈ 0.9 and 1e-2 ≈ 0.5 bytes a
 * value, against 1.06 and 0.56), multiplied by the fused path without decoding.
 *
 * Per row:
 *   top1_agreement  the share of canary positions (every position of every text canary, prompt +
 *                   continuation, as token ids) where the row's greedy next token is ebserve's
 *                   uncompressed forward's; llama.cpp gets ebserve's token ids (its own tokenizer
 *                   is checked to give the same ids, and the run says if it does not)
 *   tokens_per_s    greedy decode after a canary prompt, DECODE_TOKENS steps per sequence, best of
 *                   REPS (llama.cpp on 1 and 2 threads, see LLAMA_THREADS; ebserve on its
 *                   default); at concurrency 1, and 8 sequences decoding together
 *                   (llama.cpp: 8 sequences of one context; ebserve: forwardBatch, its batching)
 *   bytes_per_token the weight bytes one decode token reads: every dense tensor, one embedding row,
 *                   top-k of each layer's experts (llama.cpp: from the GGUF's tensor sizes;
 *                   ebserve: its expert bytes as stored plus its dense tensors, bf16 where exact)
 *
 * If llama.cpp's binary cannot load, one line says why and only ebserve's rows are written.
 * Env: BENCH_PEER_CANARIES=N uses the first N text canaries (default all), BENCH_PEER_TOKENS the
 * decode steps. Prints a table, writes bench/results/peer.json. A report, never an assertion;
 * progress on stderr.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { native } from '../../src/codec/native.js';
import { exportGguf, readGgufHeader, type ExportType } from '../../src/model/gguf/index.js';
import { KvCache } from '../../src/model/kv-cache.js';
import { EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../../src/model/load.js';
import type { CpuExpertEngine } from '../../src/offload/cpu-engine.js';
import { decodeTokensPerSecond, greedyAtEveryPosition, loadLlamaCpp, weightBytesPerToken, type LlamaCppInfo } from './llama-cpp.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RESULTS = path.join(ROOT, 'bench', 'results', 'peer.json');
const GGUF_DIR = path.join(ROOT, 'build', 'peer');
const LLAMA_TYPES: ExportType[] = ['f32', 'q8_0', 'q4_0'];
const EBSERVE_BOUNDS = [undefined, 1e-3, 1e-2];
/**
 * Decode threads. llama.cpp's are timed at 1 and 2: its ggml thread pool spins at every barrier,
 * so on this 2-core box 2 threads collapse (tens of times slower) whenever anything else runs,
 * while 1 thread does not. ebserve's native forward uses its default (the machine's cores).
 * Agreement does not depend on the thread count; llama.cpp computes it on 1 thread.
 */
const LLAMA_THREADS = [1, 2];
const CONCURRENCIES = [1, 8];
const REPS = 3;
const CANARIES = envInt('BENCH_PEER_CANARIES', Infinity);
const DECODE_TOKENS = envInt('BENCH_PEER_TOKENS', 96);

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!(Number.isInteger(n) && n >= 1)) throw new Error(`${name} must be a whole number ≥ 1, got ${JSON.stringify(v)}`);
  return n;
}

interface Row {
  system: 'llama.cpp' | 'ebserve';
  model: 'embedded';
  /** f32 | q8_0 | q4_0 (llama.cpp's GGUF), or ebserve's: bf16 (as stored) | eb1e-3 | eb1e-2 (codec bound). */
  weights: string;
  bytes_per_token: number;
  top1_agreement: number;
  tokens_per_s: number;
  concurrency: number;
  /** llama.cpp: its decode threads; ebserve: omitted (its default, the machine's cores). */
  threads?: number;
}

const textCanaries = fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl'), 'utf8').split('\n').filter(Boolean)
  .map((l) => JSON.parse(l) as { prompt: string; continuation: string });

/** ebserve's greedy next token at every position of each id list (lists concatenated). */
async function ebserveGreedy(m: LoadedModel, lists: number[][]): Promise<Int32Array> {
  const V = m.checkpoint.config.vocabSize;
  const out: number[] = [];
  for (const ids of lists) {
    const logits = await m.model.forward(ids, KvCache.forModel(m.checkpoint.config), true);
    for (let j = 0; j < ids.length; j++) {
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[j * V + v] > logits[j * V + best]) best = v;
      out.push(best);
    }
  }
  return Int32Array.from(out);
}

/** ebserve's greedy decode tokens/s for the prompts decoding together (forwardBatch), as decodeTokensPerSecond measures llama.cpp. */
async function ebserveDecode(m: LoadedModel, prompts: number[][]): Promise<number> {
  const c = m.checkpoint.config;
  const argmax = (l: Float32Array) => {
    let best = 0;
    for (let v = 1; v < l.length; v++) if (l[v] > l[best]) best = v;
    return best;
  };
  let best = Infinity;
  for (let r = 0; r < REPS; r++) {
    const caches = prompts.map(() => KvCache.forModel(c));
    await m.model.forwardBatch(prompts.map((p, i) => ({ tokens: p.slice(0, -1), cache: caches[i], allLogits: false })));
    let next = prompts.map((p) => p[p.length - 1]);
    const start = performance.now();
    for (let s = 0; s < DECODE_TOKENS; s++) {
      const logits = await m.model.forwardBatch(next.map((t, i) => ({ tokens: [t], cache: caches[i], allLogits: false })));
      next = logits.map(argmax);
    }
    best = Math.min(best, (performance.now() - start) / 1000);
  }
  return (DECODE_TOKENS * prompts.length) / best;
}

/**
 * ebserve's weight bytes per decode token: its experts as the engine holds them (top-k per layer)
 * plus the dense tensors as the native forward holds them (read from the f32 GGUF's directory:
 * matrices bf16 when their rows are whole 32-value blocks, as bf16IfExact keeps them; norms and
 * the embedding row f32).
 */
function ebserveBytesPerToken(m: LoadedModel, f32Gguf: string): number {
  const c = m.checkpoint.config;
  let bytes = c.numLayers * c.topK * (m.engine as CpuExpertEngine).expertBytes();
  for (const t of readGgufHeader(f32Gguf).tensors.values()) {
    if (/_exps\.weight$/.test(t.name)) continue;
    if (t.name === 'token_embd.weight') bytes += t.byteLength / t.ne[1];
    else if (t.ne.length >= 2 && t.ne[0] % 32 === 0) bytes += t.byteLength / 2;
    else bytes += t.byteLength;
  }
  return bytes;
}

function agreement(a: Int32Array, b: Int32Array): number {
  if (a.length !== b.length) throw new Error(`agreement of ${a.length} against ${b.length} positions`);
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

/** The GGUF of `type`, exported again when missing or older than the checkpoint. */
function gguf(type: ExportType): string {
  const out = path.join(GGUF_DIR, `ebserve-moe-8x.${type}.gguf`);
  const newest = Math.max(...fs.readdirSync(EMBEDDED_MODEL_DIR).map((f) => fs.statSync(path.join(EMBEDDED_MODEL_DIR, f)).mtimeMs));
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < newest) {
    fs.mkdirSync(GGUF_DIR, { recursive: true });
    const r = exportGguf({ dir: EMBEDDED_MODEL_DIR, out, type });
    log(`exported ${path.relative(ROOT, out)}: ${(r.bytes / 1e6).toFixed(1)} MB, ${JSON.stringify(r.types)}`);
  }
  return out;
}

async function main() {
  const loadBefore = os.loadavg();
  const ebserveRef = await loadModel(EMBEDDED_MODEL_DIR, { cpu: {} });
  const c = ebserveRef.checkpoint.config;
  const texts = textCanaries.slice(0, CANARIES).map((t) => t.prompt + t.continuation);
  // Every position: the ids of prompt + continuation but the last (whose next token is not in the text).
  const lists = texts.map((t) => ebserveRef.tokenizer.encode(t).slice(0, -1));
  const positions = lists.reduce((a, l) => a + l.length, 0);
  const prompts = textCanaries.slice(0, Math.max(...CONCURRENCIES)).map((t) => ebserveRef.tokenizer.encode(t.prompt));
  if (Math.max(...prompts.map((p) => p.length)) + DECODE_TOKENS > c.maxPositions) throw new Error(`BENCH_PEER_TOKENS=${DECODE_TOKENS} runs past the model's ${c.maxPositions} positions`);
  log(`reference: ebserve's uncompressed forward at ${positions} positions of ${texts.length} text canaries`);
  const reference = await ebserveGreedy(ebserveRef, lists);
  const f32File = gguf('f32');
  const rows: Row[] = [];

  for (const bound of EBSERVE_BOUNDS) {
    const m = bound === undefined ? ebserveRef : await loadModel(EMBEDDED_MODEL_DIR, { cpu: { bound } });
    const weights = bound === undefined ? 'bf16' : `eb${bound.toExponential()}`;
    const top1 = bound === undefined ? 1 : agreement(reference, await ebserveGreedy(m, lists));
    const bytes = ebserveBytesPerToken(m, f32File);
    for (const n of CONCURRENCIES) {
      const tps = await ebserveDecode(m, prompts.slice(0, n));
      rows.push({ system: 'ebserve', model: 'embedded', weights, bytes_per_token: bytes, top1_agreement: top1, tokens_per_s: tps, concurrency: n });
      log(`ebserve ${weights} ×${n}: ${tps.toFixed(1)} tokens/s, ${(bytes / 1e6).toFixed(3)} MB/token, top-1 ${(100 * top1).toFixed(2)} %`);
    }
    if (m !== ebserveRef) m.dispose();
  }

  let llamaInfo: LlamaCppInfo | { skipped: string };
  let tokenizerAgrees: boolean | undefined;
  const peer = await loadLlamaCpp((line) => log(line));
  if (!peer.ok) {
    llamaInfo = { skipped: peer.reason };
    log(`llama.cpp skipped: ${peer.reason}`);
  } else {
    llamaInfo = peer.info;
    log(`llama.cpp ${peer.info.llama_cpp_release} (node-llama-cpp ${peer.info.node_llama_cpp}, ${peer.info.build_type}): ${peer.info.system_info}`);
    try {
      for (const type of LLAMA_TYPES) {
        const file = gguf(type);
        const model = await peer.llama.loadModel({ modelPath: file });
        try {
          if (tokenizerAgrees === undefined) {
            tokenizerAgrees = texts.every((t) => {
              const a = model.tokenize(t, false);
              const b = ebserveRef.tokenizer.encode(t);
              return a.length === b.length && a.every((x, i) => x === b[i]);
            });
            log(`llama.cpp's tokenizer ${tokenizerAgrees ? 'gives' : 'does NOT give'} ebserve's ids on the ${texts.length} canary texts (ids are fed directly either way)`);
          }
          const top1 = agreement(reference, await greedyAtEveryPosition(model, lists, 1));
          const bytes = weightBytesPerToken(file, c.topK);
          log(`llama.cpp ${type}: top-1 ${(100 * top1).toFixed(2)} %, ${(bytes / 1e6).toFixed(3)} MB/token`);
          for (const threads of LLAMA_THREADS) {
            for (const n of CONCURRENCIES) {
              const tps = await decodeTokensPerSecond(model, prompts.slice(0, n), DECODE_TOKENS, threads, REPS);
              rows.push({ system: 'llama.cpp', model: 'embedded', weights: type, bytes_per_token: bytes, top1_agreement: top1, tokens_per_s: tps, concurrency: n, threads });
              log(`llama.cpp ${type} ×${n}, ${threads} thread${threads > 1 ? 's' : ''}: ${tps.toFixed(1)} tokens/s (load average ${os.loadavg()[0].toFixed(1)})`);
            }
          }
        } finally {
          await model.dispose();
        }
      }
    } finally {
      await peer.llama.dispose();
    }
  }
  ebserveRef.dispose();

  const cpus = os.cpus();
  const result = {
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', simd: native.info().simd, fused_decoder: native.info().fusedDecoder, node: process.version, platform: `${os.platform()} ${os.arch()}` },
    llama_cpp: llamaInfo,
    llama_cpp_tokenizer_matches: tokenizerAgrees ?? null,
    canary_texts: texts.length,
    canary_positions: positions,
    decode_tokens: DECODE_TOKENS,
    llama_cpp_threads: LLAMA_THREADS,
    /** 1-minute load average of the machine before and after the run (others' work shares these cores). */
    load_average: [loadBefore[0], os.loadavg()[0]],
    reps: REPS,
    rows,
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');
  console.log(`\n${cpus.length} × ${result.machine.model}; ${'skipped' in llamaInfo ? `llama.cpp skipped: ${llamaInfo.skipped}` : `llama.cpp ${llamaInfo.llama_cpp_release} via node-llama-cpp ${llamaInfo.node_llama_cpp}`}`);
  console.log(`top-1 agreement with ebserve's uncompressed forward over ${positions} positions of ${texts.length} canary texts; decode ${DECODE_TOKENS} tokens/sequence; load average ${result.load_average.map((x) => x.toFixed(1)).join(' → ')}`);
  console.log('| system | weights | threads | weight kB/token | top-1 agree | tokens/s ×1 | tokens/s ×8 |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows.filter((x) => x.concurrency === 1)) {
    const at8 = rows.find((x) => x.system === r.system && x.weights === r.weights && x.threads === r.threads && x.concurrency === 8);
    console.log(`| ${r.system} | ${r.weights} | ${r.threads ?? 'default'} | ${(r.bytes_per_token / 1e3).toFixed(1)} | ${(100 * r.top1_agreement).toFixed(2)} % | ${r.tokens_per_s.toFixed(0)} | ${at8 ? at8.tokens_per_s.toFixed(0) : '—'} |`);
  }
  console.log(`wrote ${path.relative(ROOT, RESULTS)} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

await main();
