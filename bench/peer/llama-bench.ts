/**
 * llama.cpp built natively on this machine (bench/peer/build-llama-cpp.sh → build/llama.cpp/bin)
 * as the peer of bench/peer/run.ts: its `llama-bench` run on GGUF files, its JSONL output parsed
 * into one result per test (prompt processing "pp" or token generation "tg", per file and thread
 * count), and those results checked against the figures measured independently on this machine
 * kind (../shared/ANCHORS.md); its `llama-batched-bench` (several sequences decoding together in
 * one context) likewise.
 *
 * The parsing and the check are pure (test/peer.native.test.ts); runLlamaBench and
 * runBatchedBench spawn the binaries.
 *
 * @example
 * const bin = nativeLlamaCpp(ROOT);
 * if (bin.ok) {
 *   const results = runLlamaBench(bin.bench, { files: [f32, q8], threads: [1, 2], prompt: 512, gen: 128, reps: 5 });
 *   const check = anchorCheck(results, ANCHORS_EMBEDDED, (file) => path.basename(file).split('.')[1]);
 * }
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** One llama-bench test: a file at a thread count, prompt processing (pp) or generation (tg). */
export interface LlamaBenchResult {
  file: string;
  test: 'pp' | 'tg';
  /** Tokens per test: n_prompt for pp, n_gen for tg. */
  tokens: number;
  /** Tokens already in the context when the test starts (llama-bench's -d; 0 by default). */
  depth: number;
  threads: number;
  /** tokens/s: llama-bench's mean over its repetitions, their standard deviation, and each one. */
  avg_ts: number;
  stddev_ts: number;
  samples_ts: number[];
  build_commit: string;
  cpu_info: string;
  model_type: string;
}

/**
 * llama-bench's `-o jsonl` output (one JSON object a line; other lines ignored) as results. Tests
 * that mix a prompt and generation (-pg) are refused: the bench never asks for one, and its
 * tokens/s is neither a decode nor a prompt figure.
 */
export function parseLlamaBenchJsonl(text: string): LlamaBenchResult[] {
  const out: LlamaBenchResult[] = [];
  for (const { i, o, num, str } of jsonlRecords(text, 'llama-bench', () => true)) {
    const nPrompt = num('n_prompt');
    const nGen = num('n_gen');
    const depth = o.n_depth === undefined ? 0 : num('n_depth');
    if ((nPrompt > 0) === (nGen > 0)) {
      throw new Error(`llama-bench output line ${i + 1}: n_prompt ${nPrompt}, n_gen ${nGen}: not a plain pp or tg test`);
    }
    const samples = Array.isArray(o.samples_ts) ? (o.samples_ts as unknown[]).filter((x): x is number => typeof x === 'number') : [];
    out.push({
      file: str('model_filename'),
      test: nPrompt > 0 ? 'pp' : 'tg',
      tokens: nPrompt > 0 ? nPrompt : nGen,
      depth,
      threads: num('n_threads'),
      avg_ts: num('avg_ts'),
      stddev_ts: typeof o.stddev_ts === 'number' ? o.stddev_ts : 0,
      samples_ts: samples,
      build_commit: str('build_commit'),
      cpu_info: str('cpu_info'),
      model_type: str('model_type'),
    });
  }
  return out;
}

export interface LlamaBenchOptions {
  files: string[];
  threads: number[];
  /** Prompt tokens (pp test) and generated tokens (tg test); llama-bench's defaults are 512 and 128; 0 leaves that test out. */
  prompt: number;
  gen: number;
  /** Tokens in the context before each test (llama-bench's -d; default 0: an empty context). */
  depth?: number;
  /** Repetitions of each test (llama-bench's default is 5). */
  reps: number;
}

/** llama-bench's arguments for these options: every file × thread count, pp and tg, JSONL on stdout. */
export function llamaBenchArgs(o: LlamaBenchOptions): string[] {
  return [
    ...o.files.flatMap((f) => ['-m', f]),
    '-t', o.threads.join(','),
    '-p', String(o.prompt),
    '-n', String(o.gen),
    ...(o.depth ? ['-d', String(o.depth)] : []),
    '-r', String(o.reps),
    '-o', 'jsonl',
  ];
}

/** Runs llama-bench; throws with the tail of its stderr when it fails or prints no result. */
export function runLlamaBench(bin: string, o: LlamaBenchOptions): LlamaBenchResult[] {
  const r = spawnSync(bin, llamaBenchArgs(o), { encoding: 'utf8', maxBuffer: 64 << 20 });
  const tail = () => (r.stderr ?? '').trim().split('\n').slice(-8).join('\n');
  if (r.error) throw new Error(`${bin}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${bin} exited ${r.status ?? r.signal}:\n${tail()}`);
  const results = parseLlamaBenchJsonl(r.stdout);
  const want = o.files.length * o.threads.length * ((o.prompt > 0 ? 1 : 0) + (o.gen > 0 ? 1 : 0));
  if (results.length !== want) throw new Error(`${bin} printed ${results.length} results, not ${want}:\n${tail()}`);
  return results;
}

/** One llama-batched-bench case: `sequences` prompts of `prompt` tokens, then `gen` tokens each, decoded together. */
export interface BatchedBenchResult {
  prompt: number;
  gen: number;
  sequences: number;
  threads: number;
  /** Generation tokens/s over all the sequences (its S_TG), and prompt tokens/s (its S_PP). */
  decode_ts: number;
  prompt_ts: number;
}

/** llama-batched-bench's `--output-format jsonl` output (one JSON object a line; its log lines ignored). */
export function parseBatchedBenchJsonl(text: string): BatchedBenchResult[] {
  const out: BatchedBenchResult[] = [];
  for (const { num } of jsonlRecords(text, 'llama-batched-bench', (line) => line.includes('"speed_tg"'))) {
    out.push({ prompt: num('pp'), gen: num('tg'), sequences: num('pl'), threads: num('n_threads'), decode_ts: num('speed_tg'), prompt_ts: num('speed_pp') });
  }
  return out;
}

export interface BatchedBenchOptions {
  file: string;
  threads: number;
  prompt: number;
  gen: number;
  sequences: number[];
}

/** llama-batched-bench's arguments: a context just large enough for the largest case (each sequence its own prompt). */
export function batchedBenchArgs(o: BatchedBenchOptions): string[] {
  const ctx = Math.max(...o.sequences) * (o.prompt + o.gen);
  return [
    '-m', o.file,
    '-c', String(ctx), '-b', String(ctx), '-ub', '512',
    '-t', String(o.threads), '-tb', String(o.threads),
    '-npp', String(o.prompt), '-ntg', String(o.gen), '-npl', o.sequences.join(','),
    '--output-format', 'jsonl',
  ];
}

/** Runs llama-batched-bench once (it does no repetitions of its own); throws when it fails or prints no result per case. */
export function runBatchedBench(bin: string, o: BatchedBenchOptions): BatchedBenchResult[] {
  const r = spawnSync(bin, batchedBenchArgs(o), { encoding: 'utf8', maxBuffer: 64 << 20 });
  const all = `${r.stdout ?? ''}\n${r.stderr ?? ''}`;
  const tail = () => (r.stderr ?? '').trim().split('\n').slice(-8).join('\n');
  if (r.error) throw new Error(`${bin}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${bin} exited ${r.status ?? r.signal}:\n${tail()}`);
  const results = parseBatchedBenchJsonl(all);
  if (results.length !== o.sequences.length) throw new Error(`${bin} printed ${results.length} results, not ${o.sequences.length}:\n${tail()}`);
  return results;
}

export interface NativeBuild {
  /** The llama.cpp commit built and how (build/llama.cpp/build.json, written by build-llama-cpp.sh). */
  commit: string;
  cmake_flags: string;
  /** This build's seconds; when it was incremental, first_build_seconds is the full build's (null: unknown). */
  build_seconds: number;
  incremental?: boolean;
  first_build_seconds?: number | null;
  compiler?: string;
}

/** quantize: llama-quantize, null where the build predates it (a build of llama-bench and llama-batched-bench only). */
export type NativeLlamaCpp = { ok: true; bench: string; batchedBench: string; quantize: string | null; build: NativeBuild } | { ok: false; reason: string };

/** The native llama-bench, llama-batched-bench and llama-quantize build-llama-cpp.sh left under `root`/build/llama.cpp, or why there are none. */
export function nativeLlamaCpp(root: string): NativeLlamaCpp {
  const dir = path.join(root, 'build', 'llama.cpp');
  const bench = path.join(dir, 'bin', 'llama-bench');
  const batchedBench = path.join(dir, 'bin', 'llama-batched-bench');
  const stamp = path.join(dir, 'build.json');
  for (const f of [bench, batchedBench, stamp]) {
    if (!fs.existsSync(f)) return { ok: false, reason: `no native build: ${path.relative(root, f)} is missing (run bench/peer/build-llama-cpp.sh, as make bench-peer does)` };
  }
  const build = JSON.parse(fs.readFileSync(stamp, 'utf8')) as NativeBuild;
  const quantize = path.join(dir, 'bin', 'llama-quantize');
  return { ok: true, bench, batchedBench, quantize: fs.existsSync(quantize) ? quantize : null, build };
}

/** A figure measured independently on this machine kind: decode (tg) and prompt (pp) tokens/s. */
export interface Anchor {
  weights: string;
  threads: number;
  decode: number;
  prompt: number;
}

/**
 * ../shared/ANCHORS.md, "llama.cpp on this machine kind (measured here: native build, 2 threads,
 * synthetic weights)": the embedded model, f32 / q8_0 on 1 thread, decode 2,515 / 3,222 tokens/s,
 * prompt 8,306 / 9,718 tokens/s (llama-bench).
 */
export const ANCHORS_EMBEDDED: Anchor[] = [
  { weights: 'f32', threads: 1, decode: 2515, prompt: 8306 },
  { weights: 'q8_0', threads: 1, decode: 3222, prompt: 9718 },
];

export interface AnchorCheck {
  weights: string;
  threads: number;
  decode: { native: number; anchor: number; ratio: number };
  prompt: { native: number; anchor: number; ratio: number };
}

/**
 * Each anchor beside the native result (empty context) of the same weights and thread count (ratio = native /
 * anchor; 1 means the bench measures what was measured independently). `weightsOf` names a
 * result's file's weights (f32, q8_0, …). An anchor with no result is left out.
 */
export function anchorCheck(results: LlamaBenchResult[], anchors: Anchor[], weightsOf: (file: string) => string): AnchorCheck[] {
  const out: AnchorCheck[] = [];
  for (const a of anchors) {
    const find = (test: 'pp' | 'tg') => results.find((r) => r.test === test && r.depth === 0 && r.threads === a.threads && weightsOf(r.file) === a.weights);
    const tg = find('tg');
    const pp = find('pp');
    if (!tg || !pp) continue;
    out.push({
      weights: a.weights,
      threads: a.threads,
      decode: { native: tg.avg_ts, anchor: a.decode, ratio: tg.avg_ts / a.decode },
      prompt: { native: pp.avg_ts, anchor: a.prompt, ratio: pp.avg_ts / a.prompt },
    });
  }
  return out;
}

/**
 * The JSON objects of a tool's JSONL output (lines starting with "{" that `keep` accepts; log lines
 * ignored), each with readers that name the tool, the line and the key when a value is missing or
 * not a finite number. A line that is not JSON fails the same way.
 */
function* jsonlRecords(text: string, tool: string, keep: (line: string) => boolean) {
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line.startsWith('{') || !keep(line)) continue;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch (e) {
      throw new Error(`${tool} output line ${i + 1} is not JSON: ${(e as Error).message}`);
    }
    const num = (k: string): number => {
      const v = o[k];
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${tool} output line ${i + 1}: ${k} is ${JSON.stringify(v)}, not a number`);
      return v;
    };
    const str = (k: string): string => (typeof o[k] === 'string' ? (o[k] as string) : '');
    yield { i, o, num, str };
  }
}
