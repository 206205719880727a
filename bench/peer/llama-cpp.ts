/**
 * llama.cpp, driven through node-llama-cpp's prebuilt CPU binaries (a pinned devDependency), as the
 * peer of bench/peer/run.ts and test/peer.llama-cpp.test.ts: load its binary (or say in one line
 * why it cannot), a model's greedy next token at every position of a list of token ids, and
 * greedy decode tokens/s for one or several sequences in one context.
 *
 * Token ids are fed as ids, never as text: the exported byte vocabulary tokenizes byte for byte
 * (the caller checks that llama.cpp's tokenize() gives ebserve's ids), but feeding ids keeps the
 * comparison about the forward pass alone.
 *
 * Also here: the weight bytes a decode token reads from a GGUF file (weightBytesPerToken).
 *
 * @example
 * const peer = await loadLlamaCpp(2);
 * if (!peer.ok) console.log(`llama.cpp skipped: ${peer.reason}`);
 * else { const m = await peer.llama.loadModel({ modelPath }); await greedyAtEveryPosition(m, [ids], 2); }
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { Llama, LlamaModel, Token } from 'node-llama-cpp';

import { readGgufHeader } from '../../src/model/gguf/index.js';

export interface LlamaCppInfo {
  /** node-llama-cpp's version (its package.json) and the llama.cpp release its binaries were built from. */
  node_llama_cpp: string;
  llama_cpp_release: string;
  build_type: string;
  /** llama.cpp's own system line (its CPU features). */
  system_info: string;
  cpu_math_cores: number;
}

export type LoadedLlamaCpp = { ok: true; llama: Llama; info: LlamaCppInfo } | { ok: false; reason: string };

/** The prebuilt CPU binary, no GPU, never a local build (that would take minutes and a compiler). */
export async function loadLlamaCpp(log: (line: string) => void = () => {}): Promise<LoadedLlamaCpp> {
  let mod: typeof import('node-llama-cpp');
  try {
    mod = await import('node-llama-cpp');
  } catch (e) {
    return { ok: false, reason: `node-llama-cpp is not installed (${firstLine(e)}); install the devDependencies` };
  }
  let llama: Llama;
  try {
    llama = await mod.getLlama({
      gpu: false,
      build: 'never',
      progressLogs: false,
      logLevel: mod.LlamaLogLevel.warn,
      logger: (level, message) => {
        const m = message.trim();
        if (m) log(`llama.cpp ${level}: ${m}`);
      },
    });
  } catch (e) {
    return { ok: false, reason: `node-llama-cpp's prebuilt CPU binary does not load here: ${firstLine(e)}` };
  }
  const release = llama.llamaCppRelease;
  return {
    ok: true,
    llama,
    info: {
      node_llama_cpp: packageVersion(),
      llama_cpp_release: `${release.repo}@${release.release}`,
      build_type: llama.buildType,
      system_info: llama.systemInfo.trim(),
      cpu_math_cores: llama.cpuMathCores,
    },
  };
}

/** node-llama-cpp's version: the package.json of the node_modules copy above this file (its exports hide the file). */
function packageVersion(): string {
  for (let dir = path.dirname(fileURLToPath(import.meta.url)); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, 'node_modules', 'node-llama-cpp', 'package.json');
    if (fs.existsSync(file)) return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version?: string }).version ?? 'unknown';
  }
  return 'unknown';
}

const firstLine = (e: unknown) => String((e as Error)?.message ?? e).split('\n')[0];

/**
 * llama.cpp's greedy next token after every prefix of each id list (position j of a list: the token
 * it would put after ids[0..j]), lists concatenated. One sequence, its cache cleared per list.
 */
export async function greedyAtEveryPosition(model: LlamaModel, lists: number[][], threads: number): Promise<Int32Array> {
  const longest = Math.max(...lists.map((l) => l.length));
  const ctx = await model.createContext({ contextSize: longest, batchSize: longest, threads, sequences: 1 });
  try {
    const seq = ctx.getSequence();
    const out: number[] = [];
    for (const ids of lists) {
      await seq.clearHistory();
      const res = await seq.controlledEvaluate(ids.map((t) => [t as Token, { generateNext: { token: true, options: { temperature: 0 } } }]));
      for (let j = 0; j < ids.length; j++) {
        const next = res[j]?.next?.token;
        if (next === undefined || next === null) throw new Error(`llama.cpp gave no next token at position ${j}`);
        out.push(next);
      }
    }
    return Int32Array.from(out);
  } finally {
    await ctx.dispose();
  }
}

/**
 * Greedy decode tokens/s of `prompts.length` sequences in one context (llama.cpp batches the
 * sequences' pending tokens into one decode): each prompt but its last token is evaluated first
 * (untimed), then `tokens` decode steps per sequence are timed — the first of them feeds the
 * prompt's last token. Best of `reps`.
 */
export async function decodeTokensPerSecond(model: LlamaModel, prompts: number[][], tokens: number, threads: number, reps: number): Promise<number> {
  const longest = Math.max(...prompts.map((p) => p.length)) + tokens;
  // contextSize is per sequence.
  const ctx = await model.createContext({ contextSize: longest, batchSize: longest, threads, sequences: prompts.length });
  try {
    const seqs = prompts.map(() => ctx.getSequence());
    let best = Infinity;
    for (let r = 0; r < reps; r++) {
      await Promise.all(seqs.map(async (s, i) => {
        await s.clearHistory();
        await s.evaluateWithoutGeneratingNewTokens(prompts[i].slice(0, -1) as Token[]);
      }));
      const start = performance.now();
      await Promise.all(seqs.map(async (s, i) => {
        let n = 0;
        for await (const _ of s.evaluate(prompts[i].slice(-1) as Token[], { temperature: 0 })) if (++n >= tokens) break;
      }));
      best = Math.min(best, (performance.now() - start) / 1000);
    }
    return (tokens * prompts.length) / best;
  } finally {
    await ctx.dispose();
  }
}

/**
 * The weight bytes one decode token reads from a GGUF file, by its tensor directory: all of every
 * dense tensor (attention, norms, router, output), one row of token_embd, and of each stacked
 * expert tensor (ne[2] experts) the `topK` experts the token routes to.
 */
export function weightBytesPerToken(file: string, topK: number): number {
  let bytes = 0;
  for (const t of readGgufHeader(file).tensors.values()) {
    if (t.name === 'token_embd.weight') bytes += t.byteLength / t.ne[1];
    else if (/_exps\.weight$/.test(t.name)) bytes += (t.byteLength * topK) / t.ne[2];
    else bytes += t.byteLength;
  }
  return bytes;
}
