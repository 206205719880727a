// `ebserve routing-report [--model DIR] [--prompts FILE] [--segment L] [--target T] [--policy lru|lfu]
// [--json] [--svg FILE]` — how well a model suits expert offloading, layer by layer, from its own
// routing over a corpus: SRP over segments of L tokens, the hit rate of every cache size from top-k
// to all experts (the paper's segment cache beside the LRU and LFU caches ebserve runs), and the
// smallest cache whose hit rate under the running policy reaches the target (src/control/routing).
// The corpus is the model's text canaries (prompt + continuation, one sequence each) unless
// --prompts gives a text file: one sequence per non-empty line. A sequence longer than the model's
// context is cut into context-long pieces. Each sequence runs as one forward pass (teacher-forced:
// its routing is what decoding it token by token would route).
import fs from 'node:fs';
import path from 'node:path';

import type { LayerTrace, RoutingReport } from '../control/routing/index.js';
import { EMBEDDED_MODEL_DIR } from '../model/embedded.js';
import type { LoadedModel } from '../model/load.js';
import { oneOf, parse, UsageError, wholeNumber } from './args.js';
import { readInput } from './files.js';

export const usage = `usage: ebserve routing-report [--model DIR] [--prompts FILE] [--segment L] [--target T]
                              [--policy lru|lfu] [--json] [--svg FILE]
  --model DIR      checkpoint folder (default: the embedded model)
  --prompts FILE   the corpus: one sequence per non-empty line (default: the model's text canaries)
  --segment L      segment length in tokens, for SRP and the segment cache's look-ahead (default 16)
  --target T       hit rate the recommended cache must reach, in (0, 1] (default 0.9)
  --policy P       the device cache's policy the recommendation is read from: lru (default) or lfu
  --json           print {layers: [{layer, srp, sch: [{cache, hit_rate, lru_hit_rate, lfu_hit_rate}],
                   recommended_cache}], …} instead of a table
  --svg FILE       also write a plot of hit rate against cache size, one chart per layer`;

/** The text canaries of a model folder, each prompt and continuation as one text. */
export function canaryCorpus(dir: string): string[] {
  const file = path.join(dir, 'canaries', 'text.jsonl');
  if (!fs.existsSync(file)) throw new Error(`${file}: no text canaries; give a corpus with --prompts FILE`);
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((line) => {
    const c = JSON.parse(line) as { prompt: string; continuation: string };
    return c.prompt + c.continuation;
  });
}

/**
 * Every layer's routing of `texts` by `m` (one sequence per text, cut at the context), through the
 * model's onRouting hook. The model's hook is restored afterwards.
 */
export async function corpusRouting(m: LoadedModel, texts: string[]): Promise<LayerTrace[]> {
  const { KvCache } = await import('../model/kv-cache.js');
  const { TraceRecorder } = await import('../control/routing/index.js');
  const c = m.checkpoint.config;
  const recorder = new TraceRecorder({ numLayers: c.numLayers, numExperts: c.numExperts, topK: c.topK });
  const before = m.model.onRouting;
  m.model.onRouting = (r) => recorder.observe(r);
  try {
    for (const text of texts) {
      const tokens = m.tokenizer.encode(text);
      for (let at = 0; at < tokens.length; at += c.maxPositions) {
        await m.model.forward(tokens.slice(at, at + c.maxPositions), KvCache.forModel(c));
        recorder.endSequence();
      }
    }
  } finally {
    m.model.onRouting = before;
  }
  return recorder.traces();
}

/** --target as a hit rate in (0, 1], or the default. */
export function targetFlag(command: string, value: unknown, fallback = 0.9): number {
  if (value === undefined) return fallback;
  const t = typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
  if (!(t > 0 && t <= 1)) throw new UsageError(`${command}: --target must be a hit rate in (0, 1], got ${String(value)}`);
  return t;
}

/** The report as a table: per layer SRP, the recommendation, and each cache's LRU / LFU / SCH hit rates. */
function table(r: RoutingReport): string {
  const sizes = r.layers[0]?.sch.map((p) => p.cache) ?? [];
  const pct = (x: number) => (x * 100).toFixed(1).padStart(5);
  const lines = [
    `segment ${r.segment} tokens, target hit rate ${r.target} (read off ${r.recommended_by.toUpperCase()}), ${r.tokens} tokens`,
    '',
    `layer  SRP    rec  hit rate % by cache size (LRU / LFU / SCH)`,
    `${' '.repeat(17)}${sizes.map((c) => String(c).padStart(18)).join('')}`,
  ];
  for (const l of r.layers) {
    const cells = l.sch.map((p) => `${pct(p.lru_hit_rate)}/${pct(p.lfu_hit_rate)}/${pct(p.hit_rate)}`.padStart(18));
    lines.push(`${String(l.layer).padStart(5)}  ${l.srp.toFixed(3)}  ${String(l.recommended_cache).padStart(3)}${cells.join('')}`);
  }
  return lines.join('\n');
}

export async function routingReportCommand(argv: string[]): Promise<number> {
  const { values, help } = parse('routing-report', argv, {
    model: { type: 'string' },
    prompts: { type: 'string' },
    segment: { type: 'string' },
    target: { type: 'string' },
    policy: { type: 'string' },
    json: { type: 'boolean' },
    svg: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, []);
  if (help) {
    console.log(usage);
    return 0;
  }
  // Every flag is checked before the model loads: a typo fails at once.
  const segment = wholeNumber('routing-report', 'segment', values.segment, 1 << 20, 16);
  const target = targetFlag('routing-report', values.target);
  const policy = oneOf('routing-report', 'policy', values.policy, ['lru', 'lfu'] as const, 'lru');
  const dir = (values.model as string | undefined) ?? EMBEDDED_MODEL_DIR;
  const texts = values.prompts !== undefined
    ? (await readInput(values.prompts as string)).toString('utf8').split(/\r?\n/).filter((line) => line.trim().length > 0)
    : canaryCorpus(dir);
  if (!texts.length) throw new UsageError(`routing-report: --prompts ${String(values.prompts)} holds no non-empty line`);

  const { loadModel } = await import('../model/load.js');
  const { longestSequence, routingChart, routingReport } = await import('../control/routing/index.js');
  const m = await loadModel(dir, { cpu: {} });
  let report: RoutingReport;
  try {
    const traces = await corpusRouting(m, texts);
    const longest = longestSequence(traces[0]);
    if (segment > longest) throw new UsageError(`routing-report: --segment must be from 1 to ${longest} (the corpus's longest sequence, in tokens), got ${segment}`);
    report = routingReport(traces, { segment, target, policy });
  } finally {
    m.dispose();
  }
  const corpus = values.prompts !== undefined ? path.resolve(values.prompts as string) : `${path.join(dir, 'canaries', 'text.jsonl')} (text canaries)`;
  if (values.json) console.log(JSON.stringify({ model: path.resolve(dir), corpus, sequences: texts.length, ...report }));
  else console.log(`${path.basename(path.resolve(dir))}: ${corpus}, ${texts.length} sequences\n${table(report)}`);
  if (values.svg !== undefined) {
    const { writeOutput } = await import('./files.js');
    await writeOutput(values.svg as string, Buffer.from(routingChart(report, `${path.basename(path.resolve(dir))}: expert cache hit rate by size (segment ${segment}, target ${target})`)));
    process.stderr.write(`ebserve routing-report: wrote ${values.svg as string}\n`);
  }
  return 0;
}
