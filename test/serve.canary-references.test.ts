// The canaries' references, computed once in one batched pass and kept in a file beside the
// expert store: the batched logits are the one-at-a-time ones bit for bit; the file round-trips,
// and a truncated, bit-flipped or foreign one is refused by name and recomputed; a server started
// twice on a copy of the embedded model computes them before it serves the first time and reads
// them the second.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { CanaryRunner, computeReferences, type Reference, type TextCanary } from '../src/control/canaries.js';
import { KvCache } from '../src/model/kv-cache.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel, type LoadedModel } from '../src/model/load.js';
import { OffloadExpertEngine } from '../src/offload/engine.js';
import { CopyLink } from '../src/offload/link.js';
import { DEFAULT_LADDER, uniformPlan } from '../src/offload/plan.js';
import { buildStore, type ExpertStore } from '../src/offload/store.js';
import { readOrComputeReferences, readReferenceFile, ReferenceFileError, referenceFileName, referenceKey, writeReferenceFile } from '../src/serve/canary-references.js';
import { canaryTarget } from '../src/serve/canary-target.js';
import { loadServedModel } from '../src/serve/load-model.js';
import { startServer } from '../src/serve/server.js';
import { embeddedSpec } from './serve/helpers.js';

const text = fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as TextCanary);

describe('canary references (embedded model)', function () {
  let m: LoadedModel;
  let store: ExpertStore;
  let reference: OffloadExpertEngine;
  let tmp: string;
  before(async function () {
    m = await loadModel(EMBEDDED_MODEL_DIR);
    store = await buildStore(checkpointExperts(m.checkpoint), DEFAULT_LADDER);
    reference = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * store.expertValues(0, 0) * 4, tierBBytes: 0 }, prefetch: false, strictLevels: true });
    reference.setPlan(uniformPlan(8, store.exact));
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-canary-refs-'));
  });
  after(function () {
    m?.dispose();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** Eight items' inputs, as a runner of eight items scores them. */
  const inputsOf = () => new CanaryRunner({ target: canaryTarget(m), referenceEngine: reference, text, items: 8 }).referenceInputs();

  describe('one batched pass', function () {
    it('gives every list the logits the model\'s forward gives it alone, bit for bit, whole and in chunks of 16 (one forward step a chunk for all lists)', async function () {
      const lists = inputsOf().map((i) => i.tokens);
      const alone = canaryTarget(m);
      const one: Float32Array[] = [];
      for (const t of lists) one.push(await m.model.forward(t, KvCache.forModel(m.checkpoint.config), true, reference));
      const steps: number[] = [];
      const chunked = canaryTarget(m, (work) => {
        steps.push(0);
        return work();
      }, 16);
      for (const target of [alone, chunked]) {
        const batched = await target.logitsBatch(lists, reference);
        assert.equal(batched.length, lists.length);
        batched.forEach((got, i) => assert.deepEqual(got, one[i], `list ${i} (${lists[i].length} tokens)`));
      }
      const longest = Math.max(...lists.map((t) => t.length));
      assert.ok(longest > 16, 'some list spans chunks');
      assert.equal(steps.length, Math.ceil(longest / 16), 'one forward step per chunk, every list in it');
      // From a first row on: the same rows, only those.
      const from = lists.map((t) => t.length - 3);
      const tail = await chunked.logitsBatch(lists, reference, from);
      tail.forEach((got, i) => assert.deepEqual(got, one[i].slice(from[i] * m.checkpoint.config.vocabSize)));
      // Which forward ran: the native one when the addon is built (this build's), else TensorFlow.js.
      assert.ok(m.model.nativeForward, 'the native forward (the batched path that matters) ran');
    });

    it('refuses a first row outside its list, naming it', async function () {
      await assert.rejects(canaryTarget(m).logitsBatch([[1, 2, 3]], reference, [3]), /list 0 has 3 tokens; its first row 3 is not one of them/);
    });

    it('gives the runner the references it computed item by item before', async function () {
      const inputs = inputsOf();
      const target = canaryTarget(m);
      const refs = await computeReferences(target, reference, inputs);
      const V = m.checkpoint.config.vocabSize;
      for (const [i, input] of inputs.entries()) {
        const logits = await target.logits(input.tokens, reference);
        const rows = Array.from({ length: input.tokens.length - input.from }, (_, j) => logits.slice((input.from + j) * V, (input.from + j + 1) * V));
        rows.forEach((row, j) => {
          let best = 0;
          for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
          assert.equal(refs[i].argmax[j], best, `item ${i} row ${j}`);
          let max = -Infinity;
          for (const x of row) max = Math.max(max, x);
          let z = 0;
          for (const x of row) z += Math.exp(x - max);
          assert.deepEqual(refs[i].logProbs[j], row.map((x) => x - (Math.log(z) + max)));
        });
      }
    });
  });

  describe('a runner given its references', function () {
    it('asks for them with its items\' inputs, once, and scores the exact plan as fully agreeing', async function () {
      const computed = await computeReferences(canaryTarget(m), reference, inputsOf());
      const asked: number[] = [];
      const engine = new OffloadExpertEngine({ store, link: new CopyLink(), budget: { tierABytes: 64 * store.expertValues(0, 0) * 4, tierBBytes: 0 }, prefetch: false, strictLevels: true });
      const runner = new CanaryRunner({
        target: canaryTarget(m), engine, text, items: 8,
        references: async (inputs) => {
          asked.push(inputs.length);
          return computed;
        },
      });
      const r = await runner.score({ version: 1, levels: new Array(8).fill(store.exact) });
      await runner.score({ version: 2, levels: new Array(8).fill(0) });
      assert.deepEqual(asked, [8]);
      assert.equal(r.top1Agreement, 1);
      assert.ok(r.kl! < 1e-6, `KL ${r.kl}`);
      engine.dispose();
    });

    it('refuses references for other items, naming the item, and asks again next time', async function () {
      const computed = await computeReferences(canaryTarget(m), reference, inputsOf());
      let calls = 0;
      const runner = new CanaryRunner({
        target: canaryTarget(m), text, items: 8,
        references: async () => (++calls === 1 ? [computed[1], ...computed.slice(1)] : computed),
      });
      await assert.rejects(runner.references(), /canary references: item 0 was computed for other tokens/);
      assert.equal((await runner.references()).length, 8);
      assert.equal(calls, 2);
    });

    it('needs a reference engine or the references', function () {
      assert.throws(() => new CanaryRunner({ target: canaryTarget(m), text, items: 2 }), /give a reference engine or the references/);
    });
  });

  describe('the reference file', function () {
    let refs: Reference[];
    let key: string;
    let V: number;
    const fresh = () => fs.mkdtempSync(path.join(tmp, 'cache-'));
    before(async function () {
      const inputs = inputsOf();
      refs = await computeReferences(canaryTarget(m), reference, inputs);
      V = m.checkpoint.config.vocabSize;
      key = referenceKey({ checkpointHash: store.checkpointHash, forward: 'native', reference: 'exact, f32', vocabSize: V, inputs });
    });

    it('round-trips every item\'s tokens, first position, top-1 tokens and log-probabilities', function () {
      const file = referenceFileName(fresh(), key);
      writeReferenceFile(file, key, V, refs);
      assert.deepEqual(readReferenceFile(file, key, V), refs);
      assert.deepEqual(fs.readdirSync(path.dirname(file)), [path.basename(file)], 'no temporary file left beside it');
    });

    it('is keyed by the checkpoint, the forward, what the reference engine computes and every item\'s tokens', function () {
      const inputs = inputsOf();
      const base = { checkpointHash: store.checkpointHash, forward: 'native', reference: 'exact, f32', vocabSize: V, inputs };
      const other = [
        { ...base, checkpointHash: 'another' },
        { ...base, forward: 'tfjs:cpu' },
        { ...base, reference: 'exact, fused' },
        { ...base, inputs: inputs.map((x, i) => (i === 3 ? { ...x, tokens: [...x.tokens.slice(0, -1), (x.tokens.at(-1)! + 1) % V] } : x)) },
        { ...base, inputs: inputs.slice(1) },
      ].map(referenceKey);
      assert.equal(referenceKey(base), key);
      assert.equal(new Set([key, ...other]).size, 1 + other.length);
    });

    /** A sound file, then `damage` done to it: refused by name, recomputed and rewritten soundly. */
    async function refusedAndRecomputed(damage: (file: string) => void, reason: RegExp): Promise<void> {
      const file = referenceFileName(fresh(), key);
      writeReferenceFile(file, key, V, refs);
      damage(file);
      assert.throws(() => readReferenceFile(file, key, V), (e: Error) => e instanceof ReferenceFileError && e.message.startsWith(`${file}: `) && reason.test(e.message));
      let computed = 0;
      const got = await readOrComputeReferences({ file, key, vocabSize: V, inputs: inputsOf(), compute: async () => (computed++, refs) });
      assert.equal(got.source, 'computed');
      assert.equal(computed, 1);
      assert.match(got.rejected!, reason);
      assert.ok(got.rejected!.includes(file), got.rejected);
      assert.equal(got.notSaved, undefined);
      assert.deepEqual(readReferenceFile(file, key, V), refs, 'rewritten soundly');
      const again = await readOrComputeReferences({ file, key, vocabSize: V, inputs: inputsOf(), compute: async () => assert.fail('computed again') });
      assert.equal(again.source, 'file');
    }

    it('refuses a truncated file and computes them again', async function () {
      await refusedAndRecomputed((f) => fs.truncateSync(f, fs.statSync(f).size - 100), /truncated: \d+ bytes, the header's sizes need \d+/);
      await refusedAndRecomputed((f) => fs.truncateSync(f, 20), /truncated: 20 bytes, shorter than a header/);
    });

    it('refuses a file with one bit flipped in its log-probabilities (checksum) and computes them again', async function () {
      await refusedAndRecomputed((f) => {
        const b = fs.readFileSync(f);
        b[Math.floor(b.length / 2)] ^= 0x04;
        fs.writeFileSync(f, b);
      }, /checksum mismatch: the file is damaged/);
    });

    it('refuses a file made under another key, another vocabulary, version or magic', async function () {
      const otherKey = referenceKey({ checkpointHash: 'another', forward: 'native', reference: 'exact, f32', vocabSize: V, inputs: inputsOf() });
      await refusedAndRecomputed((f) => writeReferenceFile(f, otherKey, V, refs), /made for other canaries, checkpoint or forward/);
      const poke = (offset: number, value: number) => (f: string) => {
        const b = fs.readFileSync(f);
        b.writeUInt32LE(value, offset);
        fs.writeFileSync(f, b);
      };
      await refusedAndRecomputed(poke(12, V + 1), new RegExp(`made for a vocabulary of ${V + 1}, the model's is ${V}`));
      await refusedAndRecomputed(poke(8, 7), /format version 7, this build reads 1/);
      await refusedAndRecomputed(poke(0, 0), /not a canary reference file \(wrong magic\)/);
    });

    it('computes them when there is no file, and says so when it cannot save them', async function () {
      const dir = fresh();
      const blocker = path.join(dir, 'not-a-folder');
      fs.writeFileSync(blocker, '');
      const got = await readOrComputeReferences({ file: referenceFileName(blocker, key), key, vocabSize: V, inputs: inputsOf(), compute: async () => refs });
      assert.equal(got.source, 'computed');
      assert.equal(got.rejected, undefined);
      assert.ok(got.notSaved, 'why it was not saved');
    });
  });
});

describe('a server with the controller, started twice on a copy of the embedded model', function () {
  this.timeout(120_000);
  let dir: string;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-refs-model-'));
    // The model's files, and its expert store when one is built already (same mtimes: same
    // checkpoint hash, so it is used, not rebuilt); never a reference file.
    fs.cpSync(EMBEDDED_MODEL_DIR, dir, { recursive: true, preserveTimestamps: true, filter: (src) => !path.basename(src).startsWith('canary-references-') });
  });
  after(function () {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Starts, waits until ready, shuts down; the log lines of the load. */
  async function startOnce(): Promise<string[]> {
    const log: string[] = [];
    const push = (line: string) => log.push(line);
    const server = await startServer({ host: '127.0.0.1', port: 0, log: push, load: (bus, serving) => loadServedModel(embeddedSpec({ dir, fixedLevel: undefined }), bus, push, serving) });
    try {
      await server.ready;
      log.push('(ready)');
      assert.equal((await fetch(`${server.url}/health`)).status, 200);
    } finally {
      await server.shutdown({ drainTimeoutSeconds: 0 });
    }
    return log;
  }

  const refsLine = (log: string[]) => log.filter((l) => l.startsWith('ebserve serve: canary references: '));
  const cacheFiles = () => fs.readdirSync(path.join(dir, '.ebserve-cache')).filter((f) => f.startsWith('canary-references-'));

  it('computes the references before it serves and saves them beside the store; the second start reads them', async function () {
    const first = await startOnce();
    const files = cacheFiles();
    assert.equal(files.length, 1, `one reference file in ${dir}/.ebserve-cache`);
    const file = path.join(dir, '.ebserve-cache', files[0]);
    assert.deepEqual(refsLine(first).map((l) => l.replace(/computed in [\d.]+ s/, 'computed in X s')), [`ebserve serve: canary references: computed in X s (16 items, one batched pass), saved to ${file}`]);
    assert.ok(first.indexOf(refsLine(first)[0]) < first.indexOf('(ready)'), 'before the server was ready');
    const written = fs.statSync(file).mtimeMs;

    const second = await startOnce();
    assert.deepEqual(refsLine(second), [`ebserve serve: canary references: read from ${file}`]);
    assert.equal(fs.statSync(file).mtimeMs, written, 'not rewritten');

    // Damaged: refused by name, recomputed and saved again.
    const b = fs.readFileSync(file);
    b[b.length - 40] ^= 0x10;
    fs.writeFileSync(file, b);
    const third = refsLine(await startOnce());
    assert.equal(third.length, 2, third.join('\n'));
    assert.equal(third[0], `ebserve serve: canary references: not using ${file}: checksum mismatch: the file is damaged; computing them again`);
    assert.match(third[1], /computed in [\d.]+ s \(16 items, one batched pass\), saved to /);
    assert.equal(refsLine(await startOnce())[0], `ebserve serve: canary references: read from ${file}`);
  });

  it('still refuses a model without text canaries, naming the file', async function () {
    fs.renameSync(path.join(dir, 'canaries', 'text.jsonl'), path.join(dir, 'canaries', 'text.jsonl.away'));
    try {
      const server = await startServer({ host: '127.0.0.1', port: 0, log: () => {}, load: (bus, serving) => loadServedModel(embeddedSpec({ dir, fixedLevel: undefined }), bus, () => {}, serving) });
      await assert.rejects(server.ready, /canaries\/text\.jsonl: the controller needs text canaries beside the model/);
      await server.shutdown({ drainTimeoutSeconds: 0 });
    } finally {
      fs.renameSync(path.join(dir, 'canaries', 'text.jsonl.away'), path.join(dir, 'canaries', 'text.jsonl'));
    }
  });
});
