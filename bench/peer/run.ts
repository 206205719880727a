/**
 * `make bench-peer`: llama.cpp beside ebserve on the embedded model, in one run, twice over:
 * natively built here (bench/peer/build-llama-cpp.sh: GGML_NATIVE, OpenMP, Release; timed with its
 * own llama-bench, bench/peer/llama-bench.ts) and through node-llama-cpp's prebuilt CPU binaries
 * (bench/peer/llama-cpp.ts), which also give its top-1 agreement. Both are the same llama.cpp
 * source: the native build clones the git bundle node-llama-cpp ships its binaries' source in.
 * Then, where bench-scale's checkpoint is cached, the OLMoE-1B-7B shape (bench/peer/olmoe.ts: its
 * own positions, reference, llama.cpp files and rows, with model "olmoe-1b-7b").
 *
 * llama.cpp runs the embedded model exported to GGUF by ebserve's own exporter (src/model/gguf:
 * f32, q8_0, q4_0, written to build/peer/, never committed). ebserve runs its native forward
 * (what `--engine cpu` serves) on the checkpoint's bf16 experts, and on experts compressed at the
 * two codec bounds whose bytes are closest to q8_0's and q4_0's (1e-3 ≈ 0.9 and 1e-2 ≈ 0.5 bytes a
 * value, against 1.06 and 0.56), multiplied by the fused path without decoding; and the same two
 * bounds held as symbols (8 and 4 bits a value) multiplied by the integer product, the activations
 * quantized to 8 bits as llama.cpp's Q8_0 does (the "-int8" rows: llama.cpp's own arithmetic).
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
 *   build           llama.cpp's rows: "native" (llama-bench from build/llama.cpp) or "prebuilt"
 *                   (node-llama-cpp)
 *
 * Native rows (build "native"), on 1 and 2 threads, the same workload as the other rows' (decode
 * DECODE_TOKENS tokens after a prompt as long as the canary prompts' mean, P):
 *   tokens_per_s         concurrency 1: llama-bench's tg test of DECODE_TOKENS tokens at depth P
 *                        (-n DECODE_TOKENS -d P), its mean over NATIVE_BENCH.reps repetitions;
 *                        concurrency 8: llama-batched-bench, 8 sequences of a P-token prompt, then
 *                        DECODE_TOKENS tokens each, decoded together (its S_TG), best of REPS runs
 *   prompt_tokens_per_s, empty_context_tokens_per_s
 *                        concurrency 1 only: llama-bench at its defaults (pp NATIVE_BENCH.prompt,
 *                        tg NATIVE_BENCH.gen from an empty context), the figures ANCHORS.md gives;
 *                        decoding from an empty context is much faster on this small model (its
 *                        attention over the context is a large share of a token's work)
 *   top1_agreement       the prebuilt rows' figure for the same file: the same source and weights,
 *                        so the same maths (null where the prebuilt could not load); not measured
 *                        through the native binary
 * and `anchor_check` sets the native 1-thread figures beside ../shared/ANCHORS.md's independent
 * measurements of llama.cpp on this machine kind (ratio native / anchor).
 *
 * If a llama.cpp binary cannot load (or the native build is missing), one line says why and its
 * rows are left out.
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
import { EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../../src/model/load.js';
import type { CpuExpertEngine } from '../../src/offload/cpu-engine.js';
import { agreement, ebserveDecode, ebserveGreedy, type Row } from './ebserve.js';
import { scaleRows } from './olmoe.js';
import { decodeTokensPerSecond, greedyAtEveryPosition, loadLlamaCpp, weightBytesPerToken, type LlamaCppInfo } from './llama-cpp.js';
import { ANCHORS_EMBEDDED, anchorCheck, nativeLlamaCpp, runBatchedBench, runLlamaBench, type AnchorCheck, type BatchedBenchResult, type LlamaBenchResult, type NativeBuild } from './llama-bench.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RESULTS = path.join(ROOT, 'bench', 'results', 'peer.json');
const GGUF_DIR = path.join(ROOT, 'build', 'peer');
const LLAMA_TYPES: ExportType[] = ['f32', 'q8_0', 'q4_0'];
const EBSERVE_CASES: { bound?: number; int8?: boolean }[] = [{}, { bound: 1e-3 }, { bound: 1e-2 }, { bound: 1e-3, int8: true }, { bound: 1e-2, int8: true }];
/**
 * Decode threads. llama.cpp's are timed at 1 and 2: its ggml thread pool spins at every barrier,
 * so on this 2-core box 2 threads collapse (tens of times slower) whenever anything else runs,
 * while 1 thread does not. ebserve's native forward uses its default (the machine's cores).
 * Agreement does not depend on the thread count; llama.cpp computes it on 1 thread.
 */
const LLAMA_THREADS = [1, 2];
const CONCURRENCIES = [1, 8];
/** The native llama-bench run: llama-bench's defaults (pp512, tg128, 5 repetitions), on 1 and 2 threads. */
const NATIVE_BENCH = { prompt: 512, gen: 128, reps: 5, threads: LLAMA_THREADS };
const REPS = 3;
const CANARIES = envInt('BENCH_PEER_CANARIES', Infinity);
const DECODE_TOKENS = envInt('BENCH_PEER_TOKENS', 96);
/** Decode steps per sequence on the OLMoE shape (tens of tokens a second, not thousands). */
const SCALE_DECODE_TOKENS = envInt('BENCH_PEER_SCALE_TOKENS', 32);

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!(Number.isInteger(n) && n >= 1)) throw new Error(`${name} must be a whole number ≥ 1, got ${JSON.stringify(v)}`);
  return n;
}

/** The weights of an exported GGUF by its name (build/peer/ebserve-moe-8x.TYPE.gguf). */
const weightsOfFile = (file: string) => path.basename(file).replace(/^ebserve-moe-8x\./, '').replace(/\.gguf$/, '');

const textCanaries = fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl'), 'utf8').split('\n').filter(Boolean)
  .map((l) => JSON.parse(l) as { prompt: string; continuation: string });

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

  for (const { bound, int8 } of EBSERVE_CASES) {
    const m = bound === undefined ? ebserveRef : await loadModel(EMBEDDED_MODEL_DIR, { cpu: { bound, symbols: int8, int8Activations: int8 } });
    const weights = bound === undefined ? 'bf16' : `eb${bound.toExponential()}${int8 ? '-int8' : ''}`;
    const top1 = bound === undefined ? 1 : agreement(reference, await ebserveGreedy(m, lists));
    const bytes = ebserveBytesPerToken(m, f32File);
    for (const n of CONCURRENCIES) {
      const tps = await ebserveDecode(m, prompts.slice(0, n), DECODE_TOKENS, REPS);
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
              rows.push({ system: 'llama.cpp', model: 'embedded', weights: type, bytes_per_token: bytes, top1_agreement: top1, tokens_per_s: tps, concurrency: n, threads, build: 'prebuilt' });
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

  // The native build, after everything else of this run has stopped (its 2-thread figures need the cores).
  type Batched = BatchedBenchResult & { weights: string };
  let nativeInfo: (NativeBuild & { bench: typeof NATIVE_BENCH & { depth: number; decode: number }; cpu_info: string; results: LlamaBenchResult[]; batched_bench: { prompt: number; gen: number; runs: number; results: Batched[] }; load_average: number[] }) | { skipped: string };
  let anchors: AnchorCheck[] = [];
  const nat = nativeLlamaCpp(ROOT);
  if (!nat.ok) {
    nativeInfo = { skipped: nat.reason };
    log(`llama.cpp native skipped: ${nat.reason}`);
  } else {
    const files = LLAMA_TYPES.map(gguf);
    const nativeLoad = os.loadavg()[0];
    // The canary prompts' mean length: the context the other rows decode after.
    const depth = Math.round(prompts.reduce((a, p) => a + p.length, 0) / prompts.length);
    log(`llama.cpp native (${nat.build.commit.slice(0, 12)}, ${nat.build.cmake_flags}): llama-bench pp${NATIVE_BENCH.prompt} tg${NATIVE_BENCH.gen}, tg${DECODE_TOKENS}@d${depth}, ×${NATIVE_BENCH.reps} on ${NATIVE_BENCH.threads.join(', ')} threads (load average ${os.loadavg()[0].toFixed(1)})`);
    try {
      const defaults = runLlamaBench(nat.bench, { files, ...NATIVE_BENCH });
      const atDepth = runLlamaBench(nat.bench, { files, threads: NATIVE_BENCH.threads, prompt: 0, gen: DECODE_TOKENS, depth, reps: NATIVE_BENCH.reps });
      const results = [...defaults, ...atDepth];
      for (const f of files) {
        const type = weightsOfFile(f);
        const prebuilt = rows.find((r) => r.build === 'prebuilt' && r.weights === type);
        for (const threads of NATIVE_BENCH.threads) {
          const at = (test: 'pp' | 'tg', d: number) => results.find((r) => r.file === f && r.threads === threads && r.test === test && r.depth === d);
          const tg = at('tg', depth);
          const tg0 = at('tg', 0);
          const pp = at('pp', 0);
          if (!tg || !tg0 || !pp) throw new Error(`llama-bench gave no pp/tg result for ${path.basename(f)} on ${threads} threads`);
          rows.push({ system: 'llama.cpp', model: 'embedded', weights: type, bytes_per_token: weightBytesPerToken(f, c.topK), top1_agreement: prebuilt?.top1_agreement ?? null, tokens_per_s: tg.avg_ts, concurrency: 1, threads, build: 'native', prompt_tokens_per_s: pp.avg_ts, empty_context_tokens_per_s: tg0.avg_ts });
          log(`llama.cpp native ${type}, ${threads} thread${threads > 1 ? 's' : ''}: decode ${tg.avg_ts.toFixed(0)} ± ${tg.stddev_ts.toFixed(0)} tokens/s at depth ${depth} (${tg0.avg_ts.toFixed(0)} ± ${tg0.stddev_ts.toFixed(0)} from empty), prompt ${pp.avg_ts.toFixed(0)} ± ${pp.stddev_ts.toFixed(0)}`);
        }
      }
      // Several sequences together: llama-batched-bench (one run per case, no repetitions of its own: best of REPS).
      const batchedPrompt = depth;
      const batched: Batched[] = [];
      for (const f of files) {
        const type = weightsOfFile(f);
        const prebuilt = rows.find((r) => r.build === 'prebuilt' && r.weights === type);
        for (const threads of NATIVE_BENCH.threads) {
          const best = new Map<number, BatchedBenchResult>();
          for (let r = 0; r < REPS; r++) {
            // A run that misses a case (seen once in many: one result of two, exit status 0) is
            // logged and left out; the case's figure is the best of the runs that gave it.
            let got: BatchedBenchResult[];
            try {
              got = runBatchedBench(nat.batchedBench, { file: f, threads, prompt: batchedPrompt, gen: DECODE_TOKENS, sequences: CONCURRENCIES });
            } catch (e) {
              log(`llama.cpp native ${type}, ${threads} thread${threads > 1 ? 's' : ''}: batched-bench run ${r + 1} of ${REPS} left out: ${(e as Error).message.split('\n')[0]}`);
              continue;
            }
            for (const b of got) if ((best.get(b.sequences)?.decode_ts ?? -1) < b.decode_ts) best.set(b.sequences, b);
          }
          for (const b of best.values()) batched.push({ ...b, weights: type });
          const at8 = best.get(8);
          if (at8) {
            rows.push({ system: 'llama.cpp', model: 'embedded', weights: type, bytes_per_token: weightBytesPerToken(f, c.topK), top1_agreement: prebuilt?.top1_agreement ?? null, tokens_per_s: at8.decode_ts, concurrency: 8, threads, build: 'native' });
          }
          log(`llama.cpp native ${type}, ${threads} thread${threads > 1 ? 's' : ''}, batched-bench pp${batchedPrompt} tg${DECODE_TOKENS}: ${[...best.values()].map((b) => `×${b.sequences} ${b.decode_ts.toFixed(0)}`).join(', ')} decode tokens/s`);
        }
      }
      anchors = anchorCheck(results, ANCHORS_EMBEDDED, weightsOfFile);
      nativeInfo = {
        ...nat.build, bench: { ...NATIVE_BENCH, depth, decode: DECODE_TOKENS }, cpu_info: results[0]?.cpu_info ?? '', results: results.map((r) => ({ ...r, file: path.relative(ROOT, r.file) })),
        batched_bench: { prompt: batchedPrompt, gen: DECODE_TOKENS, runs: REPS, results: batched },
        /** 1-minute load average before and after the native runs. */
        load_average: [nativeLoad, os.loadavg()[0]],
      };
    } catch (e) {
      nativeInfo = { skipped: `llama-bench failed: ${(e as Error).message}` };
      log(`llama.cpp native skipped: ${(e as Error).message}`);
    }
  }

  // The bench-scale shape (bench/peer/olmoe.ts), last: its llama.cpp rows need the cores alone too.
  log('olmoe-1b-7b: ebserve and llama.cpp on bench-scale\'s cached checkpoint');
  const scale = await scaleRows({ nat, decodeTokens: SCALE_DECODE_TOKENS, reps: 2, concurrencies: CONCURRENCIES, log });
  if ('skipped' in scale) log(`olmoe-1b-7b skipped: ${scale.skipped}`);
  else rows.push(...scale.rows);

  const cpus = os.cpus();
  const result = {
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', simd: native.info().simd, fused_decoder: native.info().fusedDecoder, node: process.version, platform: `${os.platform()} ${os.arch()}` },
    llama_cpp: llamaInfo,
    llama_cpp_native: nativeInfo,
    /** The native build's 1-thread figures against ../shared/ANCHORS.md's (ratio native / anchor). */
    anchor_check: anchors,
    llama_cpp_tokenizer_matches: tokenizerAgrees ?? null,
    canary_texts: texts.length,
    canary_positions: positions,
    decode_tokens: DECODE_TOKENS,
    llama_cpp_threads: LLAMA_THREADS,
    /** 1-minute load average of the machine before and after the run (others' work shares these cores). */
    load_average: [loadBefore[0], os.loadavg()[0]],
    reps: REPS,
    /** The bench-scale shape's run: its positions, the llama.cpp files; its rows are in `rows` (model olmoe-1b-7b). */
    scale: 'skipped' in scale ? scale : { ...scale, rows: undefined, decode_tokens: SCALE_DECODE_TOKENS },
    rows,
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');
  console.log(`\n${cpus.length} × ${result.machine.model}; ${'skipped' in llamaInfo ? `llama.cpp skipped: ${llamaInfo.skipped}` : `llama.cpp ${llamaInfo.llama_cpp_release} via node-llama-cpp ${llamaInfo.node_llama_cpp}`}`);
  console.log(`top-1 agreement with ebserve's uncompressed forward over ${positions} positions of ${texts.length} canary texts; decode ${DECODE_TOKENS} tokens/sequence; load average ${result.load_average.map((x) => x.toFixed(1)).join(' → ')}`);
  if (!('skipped' in nativeInfo)) console.log(`llama.cpp native: ${nativeInfo.commit.slice(0, 12)} built in ${nativeInfo.incremental ? `${nativeInfo.first_build_seconds ?? '?'} s (then ${nativeInfo.build_seconds} s incremental)` : `${nativeInfo.build_seconds} s`} (${nativeInfo.cmake_flags}); ×1: llama-bench tg${DECODE_TOKENS} at depth ${nativeInfo.bench.depth}, mean of ${NATIVE_BENCH.reps} (empty context: its default tg${NATIVE_BENCH.gen}; prompt: pp${NATIVE_BENCH.prompt}); ×8: llama-batched-bench pp${nativeInfo.batched_bench.prompt} tg${nativeInfo.batched_bench.gen}, best of ${nativeInfo.batched_bench.runs}`);
  else console.log(`llama.cpp native skipped: ${nativeInfo.skipped}`);
  console.log(`| system | build | weights | threads | weight kB/token | top-1 agree | decode tokens/s ×1 | decode tokens/s ×8 | decode tg${NATIVE_BENCH.gen}, empty context | prompt tokens/s pp${NATIVE_BENCH.prompt} |`);
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  const order = (r: Row) => (r.system === 'ebserve' ? 0 : r.build === 'native' ? 1 : 2);
  const at8 = (r: Row) => rows.find((x) => x.model === r.model && x.system === r.system && x.build === r.build && x.weights === r.weights && x.threads === r.threads && x.concurrency === 8);
  for (const r of rows.filter((x) => x.model === 'embedded' && x.concurrency === 1).sort((a, b) => order(a) - order(b))) {
    const many = at8(r);
    const top1 = r.top1_agreement === null ? '—' : `${(100 * r.top1_agreement).toFixed(2)} %`;
    console.log(`| ${r.system} | ${r.build ?? '—'} | ${r.weights} | ${r.threads ?? 'default'} | ${(r.bytes_per_token / 1e3).toFixed(1)} | ${top1} | ${r.tokens_per_s.toFixed(0)} | ${many ? many.tokens_per_s.toFixed(0) : '—'} | ${r.empty_context_tokens_per_s?.toFixed(0) ?? '—'} | ${r.prompt_tokens_per_s?.toFixed(0) ?? '—'} |`);
  }
  if (anchors.length > 0) {
    console.log(`\nllama.cpp native against ../shared/ANCHORS.md (same peer, measured independently on this machine kind; llama-bench defaults: tg${NATIVE_BENCH.gen}, pp${NATIVE_BENCH.prompt}):`);
    console.log('| weights | threads | decode here | decode anchor | ratio | prompt here | prompt anchor | ratio |');
    console.log('|---|---|---|---|---|---|---|---|');
    for (const a of anchors) {
      console.log(`| ${a.weights} | ${a.threads} | ${a.decode.native.toFixed(0)} | ${a.decode.anchor} | ${a.decode.ratio.toFixed(2)} | ${a.prompt.native.toFixed(0)} | ${a.prompt.anchor} | ${a.prompt.ratio.toFixed(2)} |`);
    }
  }
  if ('skipped' in scale) console.log(`\nolmoe-1b-7b skipped: ${scale.skipped}`);
  else {
    console.log(`\nolmoe-1b-7b (bench-scale's synthetic checkpoint): top-1 agreement with ebserve's forward on its bf16 weights over ${scale.positions} positions of ${scale.texts} canaries; decode ${SCALE_DECODE_TOKENS} tokens/sequence after a ${scale.depth}-token prompt${scale.llama_cpp_skipped ? `; llama.cpp skipped: ${scale.llama_cpp_skipped}` : ''}`);
    console.log('| system | weights | threads | weight MB/token | top-1 agree | decode tokens/s ×1 | decode tokens/s ×8 |');
    console.log('|---|---|---|---|---|---|---|');
    for (const r of rows.filter((x) => x.model !== 'embedded' && x.concurrency === 1).sort((a, b) => order(a) - order(b))) {
      const top1 = r.top1_agreement === null ? '—' : `${(100 * r.top1_agreement).toFixed(2)} %`;
      console.log(`| ${r.system} | ${r.weights} | ${r.threads ?? 'default'} | ${(r.bytes_per_token / 1e6).toFixed(0)} | ${top1} | ${r.tokens_per_s.toFixed(2)} | ${at8(r)?.tokens_per_s.toFixed(2) ?? '—'} |`);
    }
  }
  console.log(`wrote ${path.relative(ROOT, RESULTS)} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

await main();
