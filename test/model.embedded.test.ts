// The embedded default model, loaded the way every user loads it: it reproduces the logits and
// greedy continuations the training run recorded (reference.json, PyTorch float32 from the same
// bf16 weights), generates the same text for the same seed, does held-out additions, and routes
// held-out text to every expert. bin/ebserve generate prints exactly the continuation.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { generate } from '../src/model/generate.js';
import { KvCache } from '../src/model/kv-cache.js';
import { EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../src/model/load.js';
import { ebserve } from './helpers/ebserve.js';

interface ReferencePrompt {
  prompt: string;
  prompt_bytes: number[];
  last_logits: number[];
  greedy_bytes: number[];
}
const reference = JSON.parse(fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'reference.json'), 'utf8')) as { prompts: ReferencePrompt[] };
const jsonl = <T>(file: string): T[] =>
  fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', file), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as T);

describe('the embedded model (models/ebserve-moe-8x)', function () {
  let m: LoadedModel;
  before(async function () {
    m = await loadModel(EMBEDDED_MODEL_DIR);
  });
  after(function () {
    m?.dispose();
  });

  it('is a Mixtral of 8 layers × 8 experts, top-2, d 128, context 256, read through the byte tokenizer', function () {
    const c = m.checkpoint.config;
    assert.deepEqual(
      [c.arch, c.numLayers, c.numExperts, c.topK, c.hiddenSize, c.maxPositions, c.tokenizer],
      ['mixtral', 8, 8, 2, 128, 256, 'bytes'],
    );
  });

  it('reproduces the training run\'s last-position logits and 32-byte greedy continuations', async function () {
    assert.ok(reference.prompts.length >= 3);
    for (const r of reference.prompts) {
      assert.deepEqual(m.tokenizer.encode(r.prompt), r.prompt_bytes);
      const c = m.checkpoint.config;
      const logits = await m.model.forward(r.prompt_bytes, KvCache.forModel(c));
      const scale = Math.max(...r.last_logits.map(Math.abs));
      const worst = Math.max(...r.last_logits.map((x, i) => Math.abs(x - logits[i])));
      assert.ok(worst <= 1e-4 * scale, `${JSON.stringify(r.prompt)}: logits differ by ${worst} (scale ${scale})`);
      const g = await generate(m.model, m.tokenizer, r.prompt, { maxTokens: r.greedy_bytes.length });
      assert.equal(g.text, Buffer.from(r.greedy_bytes).toString('utf8'), JSON.stringify(r.prompt));
    }
  });

  it('generates the same sampled text for the same seed, and other text for another', async function () {
    const run = (seed: number) => generate(m.model, m.tokenizer, 'The whale', { maxTokens: 24, temperature: 0.8, topP: 0.95, seed });
    const [a, b, c] = [await run(11), await run(11), await run(12)];
    assert.equal(a.text, b.text);
    assert.notEqual(a.text, c.text);
    assert.equal(a.completionTokens, 24);
  });

  it('adds held-out two-digit numbers: ≥ 90 % exact on 60 canaries', async function () {
    const items = jsonl<{ prompt: string; answer: string }>('arithmetic.jsonl');
    assert.equal(items.length, 400);
    const sample = items.filter((_, i) => i % 7 === 0).slice(0, 60);
    let right = 0;
    for (const it of sample) {
      const g = await generate(m.model, m.tokenizer, it.prompt, { maxTokens: 4, stop: ['\n'] });
      if (g.text === it.answer) right++;
    }
    assert.ok(right >= 0.9 * sample.length, `${right}/${sample.length} exact`);
  });

  it('routes held-out text to every expert of every layer (each ≥ 2 % of its layer\'s slots)', async function () {
    const c = m.checkpoint.config;
    const counts = Array.from({ length: c.numLayers }, () => new Array<number>(c.numExperts).fill(0));
    m.model.onRouting = (r) => r.ids.forEach((e) => counts[r.layer][e]++);
    try {
      const items = jsonl<{ prompt: string }>('text.jsonl').filter((_, i) => i % 8 === 0);
      for (const it of items) {
        await m.model.forward(m.tokenizer.encode(it.prompt), KvCache.forModel(c));
      }
    } finally {
      m.model.onRouting = undefined;
    }
    counts.forEach((row, l) => {
      const total = row.reduce((a, b) => a + b, 0);
      row.forEach((n, e) => assert.ok(n / total >= 0.02, `layer ${l} expert ${e}: ${((100 * n) / total).toFixed(2)} %`));
    });
  });
});

describe('ebserve generate', function () {
  let dir: string;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-generate-'));
  });
  after(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('prints only the greedy continuation on stdout, and the backend on stderr', async function () {
    const r = reference.prompts[0];
    const out = await ebserve('generate', '--prompt', r.prompt, '--max-tokens', String(r.greedy_bytes.length));
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, Buffer.from(r.greedy_bytes).toString('utf8'));
    assert.match(out.stderr, /backend (wasm|cpu|tensorflow)/);
  });

  it("prints PyTorch's greedy continuation with --engine cpu too, dense and compressed within 1e-4", async function () {
    const r = reference.prompts[0];
    for (const extra of [[], ['--bound', '1e-4']]) {
      const out = await ebserve('generate', '--engine', 'cpu', ...extra, '--prompt', r.prompt, '--max-tokens', String(r.greedy_bytes.length));
      assert.equal(out.code, 0, out.stderr);
      assert.equal(out.stdout, Buffer.from(r.greedy_bytes).toString('utf8'), extra.join(' '));
      assert.match(out.stderr, /engine cpu, experts (dense bf16 \(the checkpoint's own values\)|compressed within 0\.0001), whole forward pass native/);
    }
    const misuse = await ebserve('generate', '--bound', '1e-3', '--prompt', 'a');
    assert.equal(misuse.code, 2);
    assert.match(misuse.stderr, /--bound is a setting of --engine cpu/);
  });

  it('prints one JSON line per prompt with --prompts, skipping blank lines', async function () {
    const file = path.join(dir, 'prompts.txt');
    fs.writeFileSync(file, '12+34=\n\n48+27=\n');
    const out = await ebserve('generate', '--prompts', file, '--max-tokens', '4', '--stop', '\n');
    assert.equal(out.code, 0, out.stderr);
    const lines = out.stdout.trim().split('\n').map((l) => JSON.parse(l) as { prompt: string; text: string });
    assert.deepEqual(lines.map((l) => l.prompt), ['12+34=', '48+27=']);
    assert.deepEqual(lines.map((l) => l.text), ['46', '75']);
  });

  it('answers usage errors with exit 2 and a bad model folder with exit 1 naming the file', async function () {
    const both = await ebserve('generate', '--prompt', 'a', '--prompts', 'f');
    assert.equal(both.code, 2);
    assert.match(both.stderr, /exactly one of --prompt/);
    const temp = await ebserve('generate', '--prompt', 'a', '--temperature=-1');
    assert.equal(temp.code, 2);
    assert.match(temp.stderr, /--temperature must be a number/);
    const none = await ebserve('generate', '--model', dir, '--prompt', 'a');
    assert.equal(none.code, 1);
    assert.match(none.stderr, /config\.json/);
    assert.doesNotMatch(none.stderr, /\n\s+at /); // a message, not a stack trace
  });
});
