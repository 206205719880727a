/**
 * `make bench-model`: the embedded model (models/ebserve-moe-8x) on every TensorFlow.js backend
 * that starts on this machine, in one run — prefill tokens/s (a 128-token prompt in one forward)
 * and decode tokens/s (64 tokens, one forward each, KV cache on) — and, on the first backend, its
 * quality as this runtime computes it: bits per byte on the held-out text canaries' continuations
 * (teacher forcing) and greedy exact match on all 400 held-out additions. Prints a table and
 * writes bench/results/model.json. A report, never an assertion; progress goes to stderr.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { BackendName } from '../../src/model/backend.js';
import { generate } from '../../src/model/generate.js';
import { KvCache } from '../../src/model/kv-cache.js';
import { EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../../src/model/load.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const RESULTS = path.join(ROOT, 'bench', 'results', 'model.json');
const BACKENDS: BackendName[] = ['tensorflow', 'wasm', 'cpu'];
const PREFILL_TOKENS = 128;
const DECODE_TOKENS = 64;
const REPS = 3; // best of 3 after a warm-up

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);

interface Row {
  backend: BackendName;
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
  prefill_tokens: number;
  decode_tokens: number;
}

const canaries = <T>(file: string): T[] =>
  fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', file), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as T);

function newCache(m: LoadedModel): KvCache {
  const c = m.checkpoint.config;
  return KvCache.forModel(c);
}

async function best(fn: () => Promise<void>): Promise<number> {
  await fn();
  let s = Infinity;
  for (let r = 0; r < REPS; r++) {
    const t = performance.now();
    await fn();
    s = Math.min(s, (performance.now() - t) / 1000);
  }
  return s;
}

async function speed(m: LoadedModel, backend: BackendName): Promise<Row> {
  const prompt = m.tokenizer.encode(canaries<{ prompt: string }>('text.jsonl')[0].prompt).slice(0, PREFILL_TOKENS);
  const prefill = await best(async () => {
    await m.model.forward(prompt, newCache(m));
  });
  log(`${backend}: prefill ${PREFILL_TOKENS} tokens in ${prefill.toFixed(3)} s`);
  const decode = await best(async () => {
    const cache = newCache(m);
    let logits = await m.model.forward(prompt.slice(0, 8), cache);
    for (let i = 0; i < DECODE_TOKENS; i++) {
      let next = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[next]) next = v;
      logits = await m.model.forward([next], cache);
    }
  });
  log(`${backend}: decode ${DECODE_TOKENS} tokens in ${decode.toFixed(3)} s`);
  return { backend, prefill_tokens_per_s: PREFILL_TOKENS / prefill, decode_tokens_per_s: DECODE_TOKENS / decode, prefill_tokens: PREFILL_TOKENS, decode_tokens: DECODE_TOKENS };
}

async function quality(m: LoadedModel) {
  const text = canaries<{ corpus: string; prompt: string; continuation: string }>('text.jsonl');
  let nats = 0;
  let bytes = 0;
  for (const [i, item] of text.entries()) {
    const p = m.tokenizer.encode(item.prompt);
    const cont = m.tokenizer.encode(item.continuation);
    const tokens = [...p, ...cont];
    const V = m.checkpoint.config.vocabSize;
    const logits = await m.model.forward(tokens.slice(0, -1), newCache(m), true);
    for (let j = 0; j < cont.length; j++) {
      const row = logits.subarray((p.length - 1 + j) * V, (p.length + j) * V);
      let max = -Infinity;
      for (const v of row) max = Math.max(max, v);
      let z = 0;
      for (const v of row) z += Math.exp(v - max);
      nats += Math.log(z) + max - row[cont[j]];
    }
    bytes += cont.length;
    if ((i + 1) % 60 === 0) log(`quality: text canaries ${i + 1}/${text.length}`);
  }
  const arith = canaries<{ prompt: string; answer: string }>('arithmetic.jsonl');
  let right = 0;
  for (const [i, item] of arith.entries()) {
    const g = await generate(m.model, m.tokenizer, item.prompt, { maxTokens: 4, stop: ['\n'] });
    if (g.text === item.answer) right++;
    if ((i + 1) % 100 === 0) log(`quality: additions ${i + 1}/${arith.length}`);
  }
  return {
    text_canary_bits_per_byte: nats / bytes / Math.LN2,
    text_canary_bytes: bytes,
    arithmetic_exact_match: right / arith.length,
    arithmetic_items: arith.length,
  };
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  const skipped: Record<string, string> = {};
  let q: Awaited<ReturnType<typeof quality>> | undefined;
  let qualityBackend: BackendName | undefined;
  for (const backend of BACKENDS) {
    let m: LoadedModel;
    try {
      m = await loadModel(EMBEDDED_MODEL_DIR, { backend });
    } catch (e) {
      skipped[backend] = (e as Error).message.split('\n')[0];
      log(`${backend}: not available (${skipped[backend]})`);
      continue;
    }
    try {
      rows.push(await speed(m, backend));
      if (!q) {
        q = await quality(m);
        qualityBackend = backend;
      }
    } finally {
      m.dispose();
    }
  }
  const cpus = os.cpus();
  const result = {
    model: path.relative(ROOT, EMBEDDED_MODEL_DIR),
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? 'unknown', node: process.version },
    rows,
    skipped_backends: skipped,
    quality: q ? { backend: qualityBackend, ...q } : null,
  };
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, JSON.stringify(result, null, 2) + '\n');

  console.log(`\nembedded model on ${cpus.length} × ${result.machine.model}, Node ${process.version}`);
  console.log('| backend | prefill tokens/s (128-token prompt) | decode tokens/s (KV cache) |');
  console.log('|---|---|---|');
  for (const r of rows) console.log(`| ${r.backend} | ${r.prefill_tokens_per_s.toFixed(1)} | ${r.decode_tokens_per_s.toFixed(1)} |`);
  for (const [b, why] of Object.entries(skipped)) console.log(`| ${b} | not available: ${why.slice(0, 80)} | |`);
  if (q) {
    console.log(`\nquality on ${qualityBackend}: text canaries ${q.text_canary_bits_per_byte.toFixed(3)} bits/byte over ${q.text_canary_bytes} bytes; ` +
      `additions ${(100 * q.arithmetic_exact_match).toFixed(1)} % exact of ${q.arithmetic_items}`);
  }
  console.log(`wrote ${path.relative(ROOT, RESULTS)}`);
}

await main();
