/**
 * bench-peer's pieces for every model it runs: the row it writes, ebserve's greedy token at every
 * position and its decode tokens/s (both through the native forward the server runs), and the
 * agreement of two runs' tokens.
 */
import { KvCache } from '../../src/model/kv-cache.js';
import type { LoadedModel } from '../../src/model/load.js';

export interface Row {
  system: 'llama.cpp' | 'ebserve';
  /** embedded (this repository's model), or a bench-scale shape (olmoe-1b-7b). */
  model: string;
  /**
   * llama.cpp: its GGUF's type (f32 | q8_0 | q4_0 written by ebserve's exporter; Q4_0 | Q4_K_M |
   * Q8_0 made by llama-quantize). ebserve: bf16 (as stored) | eb1e-3 | eb1e-2 (codec bound, fused) |
   * ebB-int8 (experts as symbols within B, the integer product; on the bench-scale shapes the
   * attention projections and the LM head as 8-bit symbols too).
   */
  weights: string;
  bytes_per_token: number;
  /** null: a native row whose prebuilt counterpart could not load. */
  top1_agreement: number | null;
  tokens_per_s: number;
  concurrency: number;
  /** llama.cpp: its decode threads; ebserve: omitted (its default, the machine's cores). */
  threads?: number;
  /** llama.cpp: built natively here (llama-bench) or node-llama-cpp's prebuilt binary; ebserve: omitted. */
  build?: 'native' | 'prebuilt';
  /** Native rows (×1): llama-bench's prompt-processing tokens/s (pp512) and decode tokens/s from an empty context (tg128). */
  prompt_tokens_per_s?: number;
  empty_context_tokens_per_s?: number;
  /** The resident set of the process that ran the row (ebserve: this one, after the row; null: not measured). */
  rss_max_bytes?: number | null;
  /** The memory limit the row ran under (null: none). */
  memory_limit_bytes?: number | null;
}

const argmax = (l: Float32Array, from = 0, n = l.length) => {
  let best = 0;
  for (let v = 1; v < n; v++) if (l[from + v] > l[from + best]) best = v;
  return best;
};

/** ebserve's greedy next token at every position of each id list (lists concatenated). */
export async function ebserveGreedy(m: LoadedModel, lists: number[][]): Promise<Int32Array> {
  const V = m.checkpoint.config.vocabSize;
  const out: number[] = [];
  for (const ids of lists) {
    const logits = await m.model.forward(ids, KvCache.forModel(m.checkpoint.config), true);
    for (let j = 0; j < ids.length; j++) out.push(argmax(logits, j * V, V));
  }
  return Int32Array.from(out);
}

/**
 * ebserve's greedy decode tokens/s for the prompts decoding together (forwardBatch, its batching):
 * each prompt but its last token first (untimed), then `tokens` steps, the first feeding the
 * prompt's last token. Best of `reps`.
 */
export async function ebserveDecode(m: LoadedModel, prompts: number[][], tokens: number, reps: number): Promise<number> {
  const c = m.checkpoint.config;
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const caches = prompts.map(() => KvCache.forModel(c));
    await m.model.forwardBatch(prompts.map((p, i) => ({ tokens: p.slice(0, -1), cache: caches[i], allLogits: false })));
    let next = prompts.map((p) => p[p.length - 1]);
    const start = performance.now();
    for (let s = 0; s < tokens; s++) {
      const logits = await m.model.forwardBatch(next.map((t, i) => ({ tokens: [t], cache: caches[i], allLogits: false })));
      next = logits.map((l) => argmax(l));
    }
    best = Math.min(best, (performance.now() - start) / 1000);
  }
  return (tokens * prompts.length) / best;
}

/** The share of positions where two runs' greedy tokens are the same. */
export function agreement(a: Int32Array, b: Int32Array): number {
  if (a.length !== b.length) throw new Error(`agreement of ${a.length} against ${b.length} positions`);
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}
