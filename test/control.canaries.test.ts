// The canary runner on the embedded model: the exact plan agrees with the reference everywhere
// (KL ≈ 0, additions right); the loosest plan agrees less and diverges more; the references come
// from one batched pass; the runner yields to serving before every item, scores exactly the plan it is given (strict levels), and refuses
// to run twice at once.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fs from 'node:fs';
import path from 'node:path';

import { CanaryRunner, type ArithmeticCanary, type TextCanary } from '../src/control/canaries.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../src/model/load.js';
import { OffloadExpertEngine } from '../src/offload/engine.js';
import { CopyLink } from '../src/offload/link.js';
import { DEFAULT_LADDER, uniformPlan } from '../src/offload/plan.js';
import { buildStore, type ExpertStore } from '../src/offload/store.js';
import { canaryTarget } from '../src/serve/canary-target.js';

const jsonl = <T>(f: string): T[] => fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as T);

describe('canary runner (embedded model)', function () {
  let m: LoadedModel;
  let store: ExpertStore;
  let runner: CanaryRunner;
  let engine: OffloadExpertEngine;
  let yields = 0;
  const strict = () => new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * store.expertValues(0, 0) * 4, tierBBytes: 0 }, prefetch: false, strictLevels: true });
  before(async function () {
    m = await loadModel(EMBEDDED_MODEL_DIR);
    store = await buildStore(checkpointExperts(m.checkpoint), DEFAULT_LADDER);
    engine = strict();
    const reference = strict();
    reference.setPlan(uniformPlan(8, store.exact));
    runner = new CanaryRunner({
      target: canaryTarget(m), engine, referenceEngine: reference, items: 6,
      text: jsonl<TextCanary>('text.jsonl'), arithmetic: jsonl<ArithmeticCanary>('arithmetic.jsonl'),
      // As serving's step boundary does: a turn of the event loop (I/O gets in there).
      yieldToServing: async () => {
        yields++;
        await new Promise((r) => setImmediate(r));
      },
    });
  });
  after(function () {
    m?.dispose();
  });

  it('gives the exact plan full agreement, no divergence and right additions', async function () {
    const r = await runner.score({ version: 7, levels: new Array(8).fill(store.exact) });
    assert.equal(r.planVersion, 7);
    assert.equal(r.top1Agreement, 1);
    assert.ok(r.kl! < 1e-6, `KL ${r.kl}`);
    assert.equal(r.exactMatch, 1);
  });

  it('scores the loosest plan lower, and exactly that plan (not a tighter cached copy)', async function () {
    const loose = await runner.score({ version: 8, levels: new Array(8).fill(0) });
    assert.ok(loose.top1Agreement < 0.99, `agreement ${loose.top1Agreement}`);
    assert.ok(loose.kl! > 1e-3, `KL ${loose.kl}`);
    // The engine held the exact level from the run before: strict levels means it was not used.
    const again = await runner.score({ version: 9, levels: new Array(8).fill(store.exact) });
    assert.equal(again.top1Agreement, 1);
  });

  it('lets I/O in between items: a request arriving mid-run is answered long before the run ends', async function () {
    const server = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    try {
      let answered = Infinity;
      const first = yields;
      const run = runner.score({ version: 12, levels: new Array(8).fill(2) });
      // Ask once the run is under way (its second item), with ten items still to go.
      while (yields < first + 2) await new Promise((r) => setImmediate(r));
      const asked = performance.now();
      const reply = fetch(`http://127.0.0.1:${port}/`).then(async (res) => {
        await res.text();
        answered = performance.now();
      });
      await run;
      const ended = performance.now();
      await reply;
      assert.ok(answered < ended, `answered ${(answered - asked).toFixed(0)} ms after asking, the run ended ${(ended - asked).toFixed(0)} ms after`);
    } finally {
      server.close();
    }
  });

  it('hands canary work to its gate one forward step at a time, with the same logits and answers as in one piece', async function () {
    const pieces: number[] = [];
    const gate = <T,>(work: () => Promise<T>) => {
      pieces.push(performance.now());
      return work();
    };
    const chunked = canaryTarget(m, gate, 16);
    const whole = canaryTarget(m);
    const tokens = m.tokenizer.encode('It is a truth universally acknowledged, that a single man');
    const a = await chunked.logits(tokens, engine);
    assert.equal(pieces.length, Math.ceil(tokens.length / 16), 'one piece per 16-token chunk');
    assert.deepEqual(a, await whole.logits(tokens, engine));
    pieces.length = 0;
    const answer = await chunked.greedy('48+27=', 4, '\n', engine);
    assert.equal(answer, await whole.greedy('48+27=', 4, '\n', engine));
    assert.ok(pieces.length >= 2, `the prompt and each token a piece of its own (${pieces.length})`);
  });

  it('computes its references in one batched pass over every item, not item by item', async function () {
    const target = canaryTarget(m);
    const calls = { logits: 0, logitsBatch: [] as number[] };
    const counted = {
      ...target,
      logits: (tokens: number[], e: Parameters<typeof target.logits>[1]) => (calls.logits++, target.logits(tokens, e)),
      logitsBatch: (lists: number[][], e: Parameters<typeof target.logits>[1], from?: number[]) => (calls.logitsBatch.push(lists.length), target.logitsBatch(lists, e, from)),
    };
    const reference = strict();
    reference.setPlan(uniformPlan(8, store.exact));
    const fresh = new CanaryRunner({ target: counted, referenceEngine: reference, items: 6, text: jsonl<TextCanary>('text.jsonl') });
    const refs = await fresh.references();
    assert.deepEqual(calls, { logits: 0, logitsBatch: [6] });
    assert.deepEqual(refs, await runner.references(), 'the same references as the runner above');
  });

  it('yields to serving before every item, and refuses a second run at once', async function () {
    const before = yields;
    const p = runner.score({ version: 10, levels: new Array(8).fill(3) });
    await assert.rejects(runner.score({ version: 11, levels: new Array(8).fill(3) }), /already under way/);
    await p;
    assert.equal(yields - before, 6 + 6, 'once per text item and per addition');
    assert.equal(runner.busy, false);
  });
});
