// `ebserve profile [--model DIR] [--policy FILE] [--base-profile FILE] [--out FILE] [--items N]
// [--experts N] [--error-models codec,gaussian] [--fresh]` — measures how each layer (and each
// layer group, and a sample of single experts) tolerates each ladder rung, under the codec's real
// error and the seed study's Gaussian noise, on the model's canaries; writes a profile whose
// `sensitivity` the controller's planner uses, the full study as JSON, and one SVG plot per error
// model (top-1 agreement versus layer, a line per bound). Resumes an interrupted run unless --fresh.
// It also runs the routing report over the text canaries and writes each layer's recommended
// tier-A size (the smallest LRU cache reaching --cache-target) as device.experts_by_layer: with a
// byte budget, tier A is split between the layers in those proportions. It measures the drop rungs
// too (each layer alone trimmed to top-(k − 1) or its MoE output zeroed: sensitivity.drop) and each
// layer's importance (1 − cos of its MoE block's input and output: layer_importance).
import fs from 'node:fs';
import path from 'node:path';

import YAML from 'yaml';

import { EMBEDDED_MODEL_DIR } from '../model/embedded.js';
import { integer, oneOf, parse } from './args.js';
import { targetFlag } from './routing-report.js';
import { DEFAULT_POLICY, DEFAULT_PROFILE } from './check-config.js';

/** Summed per-layer losses at which whole plans are scored to fit the profile's loss_scale. */
const PLAN_LOSSES = [0.01, 0.02, 0.04, 0.08];

export const usage = `usage: ebserve profile [--model DIR] [--policy FILE] [--base-profile FILE] [--out FILE] [--items N]
                       [--experts N] [--error-models codec,gaussian] [--cache-target T] [--fresh]
  --model DIR          checkpoint folder (default: the embedded model)
  --policy FILE        whose ladder and layer groups to measure (default policies/u-shape.yaml)
  --base-profile FILE  link, device and SLA settings copied into the output (default profiles/cpu.yaml)
  --out FILE           the profile to write (default profiles/tiny-moe.yaml); beside it FILE's stem
                       + .study.json and -codec.svg / -gaussian.svg
  --items N            canary items of each kind per measurement (default 16)
  --experts N          single experts sampled, spread over the layers (default 8)
  --cache-target T     hit rate each layer's tier-A size must reach on the canaries' routing, in
                       (0, 1] (default 0.9); written as device.experts_by_layer
  --fresh              ignore the state of an interrupted run`;

export async function profileCommand(argv: string[]): Promise<number> {
  const { values, help } = parse('profile', argv, {
    model: { type: 'string' },
    policy: { type: 'string' },
    'base-profile': { type: 'string' },
    out: { type: 'string' },
    items: { type: 'string' },
    experts: { type: 'string' },
    'error-models': { type: 'string' },
    'cache-target': { type: 'string' },
    fresh: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  }, []);
  if (help) {
    console.log(usage);
    return 0;
  }
  const items = integer('profile', 'items', values.items, 1, 240, 16);
  const sample = integer('profile', 'experts', values.experts, 0, 4096, 8);
  const cacheTarget = targetFlag('profile', values['cache-target']);
  const models = ((values['error-models'] as string | undefined) ?? 'codec,gaussian').split(',').map((m) => oneOf('profile', 'error-models', m, ['codec', 'gaussian'] as const));
  const dir = (values.model as string | undefined) ?? EMBEDDED_MODEL_DIR;
  const out = path.resolve((values.out as string | undefined) ?? path.join(path.dirname(DEFAULT_PROFILE), 'tiny-moe.yaml'));
  const stem = out.replace(/\.ya?ml$/, '');

  const { loadPolicy, resolvePolicy } = await import('../control/policy.js');
  const { loadProfile } = await import('../control/profile.js');
  const policy = loadPolicy((values.policy as string | undefined) ?? DEFAULT_POLICY);
  const base = loadProfile((values['base-profile'] as string | undefined) ?? DEFAULT_PROFILE);
  const { loadModel, checkpointExperts } = await import('../model/load.js');
  const { openStore, defaultCacheDir } = await import('../offload/store-file.js');
  const { progressBar } = await import('../offload/progress.js');
  const { CanaryRunner } = await import('../control/canaries.js');
  const { PerturbedEngine, measureDrops, measureImportance, plansAtLosses, runProfile, scorePlans, sensitivityTable } = await import('../control/profiler.js');
  const { lineChart } = await import('../control/plot.js');
  const { canaryTarget } = await import('../serve/canary-target.js');

  let engine: InstanceType<typeof PerturbedEngine> | undefined;
  const opened: { store?: Awaited<ReturnType<typeof openStore>>['store'] } = {};
  const m = await loadModel(dir, {
    engine: async (ckpt) => {
      const bar = progressBar('compressing experts');
      const o = await openStore(checkpointExperts(ckpt), policy.storeLadder, defaultCacheDir(dir), (p) => bar(p.done, p.total, `layer ${p.layer} expert ${p.expert}`));
      if (o.from === 'built') bar.done();
      opened.store = o.store;
      return (engine = new PerturbedEngine(o.store));
    },
  });
  try {
    const store = opened.store!;
    const L = store.numLayers;
    const canaryDir = path.join(dir, 'canaries');
    const jsonl = <T>(f: string): T[] => (fs.existsSync(path.join(canaryDir, f)) ? fs.readFileSync(path.join(canaryDir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as T) : []);
    const text = jsonl<{ prompt: string; continuation: string }>('text.jsonl');
    if (!text.length) throw new Error(`${canaryDir}/text.jsonl: no text canaries to profile with`);
    const runner = new CanaryRunner({ target: canaryTarget(m), referenceEngine: engine!, text, arithmetic: jsonl('arithmetic.jsonl'), items });
    // Tier A per layer: the routing report's recommendation over the same canaries (the
    // uncompressed model's routing; the engine perturbs nothing yet).
    const { corpusRouting } = await import('./routing-report.js');
    const { routingReport } = await import('../control/routing/index.js');
    const routing = routingReport(await corpusRouting(m, text.map((t) => t.prompt + t.continuation)), { segment: 16, target: cacheTarget, policy: 'lru' });
    const expertsByLayer = routing.layers.map((l) => l.recommended_cache);
    process.stderr.write(`ebserve profile: tier A per layer for a ${cacheTarget} LRU hit rate on the canaries' routing: ${expertsByLayer.join(', ')} experts\n`);
    const r = resolvePolicy(policy, L);
    const groups = [...new Set(r.group)].map((name) => ({ name, layers: r.group.flatMap((g, l) => (g === name ? [l] : [])) }));
    const experts = Array.from({ length: Math.min(sample, L * store.numExperts) }, (_, i) => {
      const layer = Math.floor((i * L) / Math.max(1, sample)) % L;
      return [layer, (i * 3 + layer) % store.numExperts] as [number, number];
    });
    const statePath = `${stem}.state.json`;
    fs.mkdirSync(path.dirname(out), { recursive: true });
    if (values.fresh) fs.rmSync(statePath, { force: true });
    const settingsKey = JSON.stringify({ model: path.resolve(dir), hash: store.checkpointHash, ladder: policy.ladder, items, experts, models, groups });
    const bar = progressBar('profiling');
    let resumedCells = 0;
    const cells = await runProfile({
      store, runner, engine: engine!, groups, experts, models, statePath, settingsKey,
      onCell: (done, total, cell, resumed) => {
        if (resumed) resumedCells++;
        bar(done, total, `${cell.model} ${cell.target.kind} ${'layer' in cell.target ? cell.target.layer : ''} rung ${cell.level}`);
      },
    });
    bar.done(`${cells.length} measurements${resumedCells ? ` (${resumedCells} resumed from ${statePath})` : ''}`);

    const sensitivity = sensitivityTable(cells, store, 'codec');
    const measured = { error_model: 'codec' as const, metric: '1 - top1_agreement' as const, bound_mode: policy.ladder.bound_mode, bounds: policy.ladder.bounds, exact: policy.ladder.exact, layers: sensitivity };
    // Whole plans: the planner's own moves (this policy's floors, the table as the planner reads
    // it), cut where the summed cost first reaches each loss in PLAN_LOSSES.
    const { plannerSensitivity } = await import('../control/index.js');
    const { planLevels } = await import('../control/planner.js');
    const table = plannerSensitivity(policy, { ...base, sensitivity: measured }, L).table;
    const moves = planLevels({
      levelBytes: Array.from({ length: L }, (_, l) => store.layerLevelBytes(l)), fetchesPerToken: new Array(L).fill(1), bandwidth: 1, overhead: 0,
      computeSeconds: 0, slaSeconds: 1e-12, sensitivity: table, floor: r.floor, ceiling: r.ceiling,
    }).moves;
    const plans = plansAtLosses(moves, table, r.ceiling, PLAN_LOSSES);
    const planBar = progressBar('scoring whole plans');
    const scored = models.includes('codec') ? await scorePlans(runner, engine!, table, plans, (done, total) => planBar(done, total, `plan ${done} of ${total}`)) : { cells: [], lossScale: undefined };
    planBar.done(scored.lossScale === undefined ? 'no loss scale' : `loss scale ${scored.lossScale.toFixed(3)} (measured / summed over ${scored.cells.length} plans)`);
    const dropBar = progressBar('dropping layers');
    const drop = await measureDrops(runner, engine!, L, (done, total) => dropBar(done, total, `drop ${done} of ${total}`));
    dropBar.done(`trim ${drop.trim.join(', ')}; skip-moe ${drop.skip_moe.join(', ')}`);
    const importance = await measureImportance(runner, engine!, L, m.checkpoint.config.hiddenSize);
    process.stderr.write(`ebserve profile: layer importance (1 − cos of each MoE block's input and output): ${importance.join(', ')}\n`);
    // The recommendation splits a byte budget; it replaces one size for every layer.
    const { experts_per_layer: perLayer, ...device } = base.device;
    if (perLayer !== undefined) process.stderr.write(`ebserve profile: device.experts_per_layer ${perLayer} replaced by experts_by_layer (tier A: ${expertsByLayer.reduce((a, b) => a + b, 0)} experts in all)\n`);
    const profile = {
      ...Object.fromEntries(Object.entries(base).filter(([k]) => !['file', 'modelDir', 'sensitivity'].includes(k))),
      device: { ...device, experts_by_layer: expertsByLayer },
      name: path.basename(stem),
      description: `measured by ebserve profile on ${path.basename(dir)} (${items} canary items per measurement)`,
      model: path.relative(path.dirname(out), dir) || '.',
      sensitivity: { ...measured, ...(scored.lossScale === undefined ? {} : { loss_scale: Number(scored.lossScale.toFixed(4)) }), drop },
      layer_importance: { metric: '1 - cos(moe_in, moe_out)', layers: importance },
    };
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, `# Written by \`ebserve profile\`: per-layer sensitivity measured on the canaries (1 − top-1 agreement with\n# the uncompressed model when that layer alone runs at a level). Study: ${path.basename(stem)}.study.json\n${flowNumbers(profile)}`);
    fs.writeFileSync(`${stem}.study.json`, `${JSON.stringify({ model: dir, ladder: policy.ladder, items, groups, experts, cells, plans: scored.cells, lossScale: scored.lossScale, drop, importance }, null, 1)}\n`);
    const plots: string[] = [];
    for (const model of models) {
      const series = policy.ladder.bounds.map((b, level) => ({
        name: `${b}${policy.ladder.bound_mode === 'abs' ? '' : ` ${policy.ladder.bound_mode}`}`,
        points: cells.filter((c) => c.model === model && c.target.kind === 'layer' && c.level === level).map((c) => [(c.target as { layer: number }).layer, c.top1Agreement] as [number, number]),
      }));
      const file = `${stem}-${model}.svg`;
      fs.writeFileSync(file, lineChart({ title: `${path.basename(dir)}: top-1 agreement with one layer under ${model === 'codec' ? 'the codec\'s error' : 'Gaussian noise N(0, eb²)'}`, xLabel: 'layer', yLabel: 'top-1 agreement', series }));
      plots.push(file);
    }
    fs.rmSync(statePath, { force: true });
    process.stderr.write(`ebserve profile: wrote ${out}, ${stem}.study.json, ${plots.join(', ')}\n`);
    return 0;
  } finally {
    m.dispose();
  }
}

/** YAML with every list of plain values on one line (a sensitivity row reads as a row). */
function flowNumbers(value: unknown): string {
  const doc = new YAML.Document(value);
  YAML.visit(doc, {
    Seq(_, node) {
      if (node.items.every((i) => YAML.isScalar(i))) node.flow = true;
    },
  });
  return doc.toString({ lineWidth: 0 });
}
