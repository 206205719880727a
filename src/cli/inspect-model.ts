// `ebserve inspect-model [DIR] [--bound X [--rungs N] [--bound-mode abs|rel|sigma]] [--no-exact]
// [--no-cache] [--json]` — compresses a checkpoint's experts into a precision ladder (or loads them
// from the disk cache beside the model) and prints, per layer and level, the bytes an expert
// costs, the ratio against its original bytes, and the max and RMS error of the decoded weights:
// what a ladder costs before serving with it.
import { ladderBounds } from '../codec/index.js';
import { EMBEDDED_MODEL_DIR } from '../model/embedded.js';
import { DEFAULT_LADDER, type Ladder } from '../offload/plan.js';
import { integer, oneOf, parse, positiveNumber, UsageError } from './args.js';

export const usage = `usage: ebserve inspect-model [DIR] [--bound X [--rungs N] [--bound-mode abs|rel|sigma]] [--no-exact] [--no-cache] [--json]
  DIR              a Hugging Face checkpoint folder (default: the embedded model)
  --bound X        the ladder's finest bound; rungs are X·2^(N−1) … 2X, X (default: ${DEFAULT_LADDER.bounds.join(', ')} σ)
  --rungs N        rungs in the ladder (default 5)
  --bound-mode M   abs (default with --bound), rel (× value range) or sigma (× each tensor's σ)
  --no-exact       no exact level (the original bytes) on top of the rungs
  --no-cache       neither read nor write the expert store's disk cache (DIR/.ebserve-cache)`;

export async function inspectModelCommand(argv: string[]): Promise<number> {
  const { values, positionals, help } = parseArgs(argv);
  if (help) {
    console.log(usage);
    return 0;
  }
  let ladder: Ladder = { ...DEFAULT_LADDER, exact: !values['no-exact'] };
  if (values.bound !== undefined) {
    const finest = positiveNumber('inspect-model', 'bound', values.bound);
    const rungs = integer('inspect-model', 'rungs', values.rungs, 1, 16, 5);
    ladder = { bounds: ladderBounds(finest, rungs), boundMode: oneOf('inspect-model', 'bound-mode', values['bound-mode'], ['abs', 'rel', 'sigma'] as const, 'abs'), exact: !values['no-exact'] };
  } else if (values.rungs !== undefined || values['bound-mode'] !== undefined) {
    throw new UsageError('inspect-model: --rungs and --bound-mode go with --bound');
  }
  const dir = positionals[0] ?? EMBEDDED_MODEL_DIR;
  // Loaded here: the model side pulls in TensorFlow.js, which the codec commands should not pay for.
  const { openCheckpoint } = await import('../model/checkpoint.js');
  const { checkpointExperts } = await import('../model/load.js');
  const { openStore, defaultCacheDir } = await import('../offload/store-file.js');
  const { progressBar } = await import('../offload/progress.js');
  const { ladderReport } = await import('../offload/ladder-report.js');
  const { tierMemory } = await import('../serve/memory-plan.js');
  const ckpt = openCheckpoint(dir);
  try {
    const source = checkpointExperts(ckpt);
    const bar = progressBar('compressing experts');
    const opened = await openStore(source, ladder, values['no-cache'] ? null : defaultCacheDir(dir), (p) => bar(p.done, p.total, `layer ${p.layer} expert ${p.expert}`));
    if (opened.from === 'built') bar.done();
    for (const n of opened.notes) process.stderr.write(`ebserve inspect-model: ${n}\n`);
    const check = progressBar('measuring errors');
    const report = ladderReport(opened.store, source, (l) => check(l + 1, opened.store.numLayers, `layer ${l}`));
    check.done();
    const memory = tierMemory(ckpt, opened.store);
    if (values.json) {
      console.log(JSON.stringify({ model: dir, ladder, store: { from: opened.from, file: opened.file || null, bytes: opened.store.totalBytes() }, memory, layers: report }, null, 2));
      return 0;
    }
    console.log(`${dir}: ${ckpt.config.arch}, ${ckpt.config.numLayers} layers × ${ckpt.config.numExperts} experts, ladder ${ladder.bounds.join(', ')} (${ladder.boundMode})${ladder.exact ? ' + exact' : ''}`);
    console.log(`one expert: ${report[0].originalBytesPerExpert} bytes as stored (${Object.values(source.readExpert(0, 0)).map((t) => t.dtype)[0]})`);
    console.log('layer  level  bound          max abs bound  bytes/expert  ratio   max error   RMS error');
    for (const r of report) {
      for (const lv of r.levels) {
        console.log(`${String(r.layer).padEnd(5)}  ${String(lv.level).padEnd(5)}  ${lv.label.padEnd(13)}  ${lv.maxBound.toExponential(3).padEnd(13)}  ${lv.bytesPerExpert.toFixed(0).padStart(12)}  ${lv.ratio.toFixed(2).padStart(5)}   ${lv.maxError.toExponential(3)}   ${lv.rmsError.toExponential(3)}`);
      }
    }
    const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB`;
    console.log('what each tier holds when served:');
    const r = memory.dense_by_role;
    console.log(`  dense weights      ${mb(memory.dense_bytes)} (as the native forward holds them: bf16 matrices where stored as bf16): attention ${mb(r.attention)}, LM head ${mb(r.lm_head)}, embeddings ${mb(r.embeddings)}, routers ${mb(r.router)}, norms ${mb(r.norm)}${r.shared_experts ? `, shared experts ${mb(r.shared_experts)}` : ''}`);
    console.log(`                     with a profile's dense.form symbols: attention about ${mb(r.attention_symbols)} (8-bit symbols at per-tensor bounds); with dense.lm_head the LM head about ${mb(r.lm_head_symbols)}`);
    console.log(`  host tier          ${mb(memory.host_bytes)}: every level of every expert (serve --host-budget BYTES keeps them in the store file and at most BYTES in memory)`);
    console.log(`  device tier A      every expert, fused form (the bytes that crossed): ${memory.tier_a_bytes_by_level.map((b, k) => `level ${k} ${mb(b)}`).join(', ')}`);
    console.log(`  KV cache           ${(memory.kv_bytes_per_token / 1e3).toFixed(1)} kB a token of context, per sequence`);
    return 0;
  } finally {
    ckpt.close();
  }
}

function parseArgs(argv: string[]) {
  const positionals = argv.filter((a, i) => !a.startsWith('-') && !(i > 0 && ['--bound', '--rungs', '--bound-mode'].includes(argv[i - 1])));
  return parse('inspect-model', argv, {
    bound: { type: 'string' },
    rungs: { type: 'string' },
    'bound-mode': { type: 'string' },
    'no-exact': { type: 'boolean' },
    'no-cache': { type: 'boolean' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  }, positionals.length ? ['DIR'] : []);
}
