// Continuous batching over the embedded model, on the TensorFlow.js path (resident engine, the
// reference) and the native one (cpu engine, the whole forward pass in the addon): the scheduler
// is driven directly, every forward step it runs is recorded (which sequences, how many tokens,
// prompt or decode), and each request's greedy text is compared with the same request run alone.
// Then the server's flags for it: --max-batch and --prefill-chunk.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { UsageError } from '../src/cli/args.js';
import { serveCommand } from '../src/cli/serve.js';
import type { KvCache } from '../src/model/kv-cache.js';
import { EMBEDDED_MODEL_DIR, loadModel, type LoadedModel, type LoadOptions } from '../src/model/load.js';
import { GenerationSequence, type SequenceOptions } from '../src/model/sequence.js';
import { checkSequence } from '../src/model/transformer.js';
import { BatchScheduler, type StepModel } from '../src/serve/batcher.js';
import { canaryTarget } from '../src/serve/canary-target.js';
import { loadServedModel } from '../src/serve/load-model.js';
import { startServer } from '../src/serve/server.js';
import { embeddedSpec, type ErrorBody } from './serve/helpers.js';

const CHUNK = 16;
const canaries = fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { prompt: string }).prompt);
/** Prompts of many lengths (one token per byte): 6 to ~200 tokens. */
const PROMPTS = ['48+27=', 'The whale', canaries[0].slice(0, 40), canaries[1], canaries[2].slice(0, 70), `${canaries[3]} ${canaries[4]}`.slice(0, 200)];
const LENGTHS = [5, 20, 12, 30, 8, 25];

interface Recorded {
  cache: KvCache;
  tokens: number;
  prefill: boolean;
}

/** The model as the scheduler steps it, every step recorded; `inStep` says whether one is under way. */
function recordingModel(m: LoadedModel) {
  const steps: Recorded[][] = [];
  let inStep = false;
  const model: StepModel = {
    contextTokens: m.checkpoint.config.maxPositions,
    async forwardBatch(s) {
      assert.equal(inStep, false, 'one step at a time');
      steps.push(s.map((x) => ({ cache: x.cache, tokens: x.tokens.length, prefill: x.prefill === true })));
      inStep = true;
      try {
        return await m.model.forwardBatch(s);
      } finally {
        inStep = false;
      }
    },
    checkStep: (s) => checkSequence(m.checkpoint.config, s),
  };
  return { model, steps, inStep: () => inStep };
}

for (const forward of [
  { name: 'TensorFlow.js forward, resident engine', opts: { nativeForward: false } as LoadOptions, native: false },
  { name: 'native forward, cpu engine', opts: { cpu: {} } as LoadOptions, native: true },
]) {
  describe(`continuous batching (${forward.name})`, function () {
    let m: LoadedModel;
    const aloneTexts = new Map<string, string>();
    before(async function () {
      m = await loadModel(EMBEDDED_MODEL_DIR, forward.opts);
      assert.equal(Boolean(m.model.nativeForward), forward.native);
    });
    after(function () {
      m?.dispose();
    });

    const sequence = (prompt: string | number[], opts: SequenceOptions = {}) => new GenerationSequence(m.checkpoint.config, m.tokenizer, prompt, { prefillChunk: CHUNK, ...opts });
    const scheduler = (maxBatch: number, model: StepModel = recordingModel(m).model) => {
      const b = new BatchScheduler({ maxBatch, maxWaiting: 64, prefillChunk: CHUNK });
      b.attach(model);
      return b;
    };
    const signal = () => new AbortController().signal;

    /** The greedy text of `prompt` run alone through the scheduler (remembered). */
    async function alone(prompt: string, maxTokens: number, seed?: number): Promise<string> {
      const key = JSON.stringify([prompt, maxTokens, seed]);
      if (!aloneTexts.has(key)) {
        const opts = seed === undefined ? { maxTokens } : { maxTokens, temperature: 0.9, seed };
        aloneTexts.set(key, (await scheduler(1).run([sequence(prompt, opts)], signal()))[0].text);
      }
      return aloneTexts.get(key)!;
    }

    it('gives every request the greedy text it gets alone, however many run beside it (all at once, and through a small batch)', async function () {
      const want = await Promise.all(PROMPTS.map((p, i) => alone(p, LENGTHS[i])));
      assert.ok(new Set(want).size === want.length && want.every((t) => t.length > 0));
      for (const maxBatch of [8, 3, 2]) {
        const rec = recordingModel(m);
        const b = scheduler(maxBatch, rec.model);
        const got = await Promise.all(PROMPTS.map(async (p, i) => (await b.run([sequence(p, { maxTokens: LENGTHS[i] })], signal()))[0].text));
        assert.deepEqual(got, want, `max batch ${maxBatch}`);
        // (Six prompts of 457 tokens in all, at most 16 prompt tokens a step: the short ones are
        // done before the long ones are in, so a batch of 8 never fills.)
        const sizes = rec.steps.map((s) => s.length);
        assert.ok(Math.max(...sizes) <= maxBatch, `max batch ${maxBatch} respected: ${sizes.join(' ')}`);
        assert.ok(Math.max(...sizes) >= Math.min(maxBatch, 4), `and reached: ${sizes.join(' ')}`);
      }
    });

    it('gives the same text to requests that join while others are generating, in many orders', async function () {
      for (const order of [[0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4], [3, 0, 5, 2]]) {
        const b = scheduler(4);
        const runs: Promise<string>[] = [];
        // Each next request joins once the one before it has generated two tokens.
        for (const i of order) {
          let tokens = 0;
          let joined!: () => void;
          const two = new Promise<void>((r) => (joined = r));
          runs.push(b.run([sequence(PROMPTS[i], { maxTokens: LENGTHS[i], onToken: () => ++tokens === 2 && joined() })], signal()).then(([g]) => (joined(), g.text)));
          await two;
        }
        const want = await Promise.all(order.map((i) => alone(PROMPTS[i], LENGTHS[i])));
        assert.deepEqual(await Promise.all(runs), want, `order ${order.join(',')}`);
      }
    });

    it('prefills a long prompt in chunks while a running sequence keeps getting a token every step', async function () {
      const rec = recordingModel(m);
      const b = scheduler(4, rec.model);
      let aTokens = 0;
      const perStep: number[] = [];
      let sawTwo!: () => void;
      const two = new Promise<void>((r) => (sawTwo = r));
      const a = b.run([sequence(PROMPTS[1], { maxTokens: 40, onToken: () => ++aTokens === 2 && sawTwo() })], signal());
      await two;
      const long = PROMPTS[5];
      const seq = sequence(long, { maxTokens: 6 });
      const l = b.run([seq], signal());
      // Count A's tokens at every step boundary while L's prompt goes in.
      while (seq.prefilling) {
        await b.stepBoundary();
        perStep.push(aTokens);
      }
      const [ga] = await a;
      const [gl] = await l;
      assert.equal(ga.text, await alone(PROMPTS[1], 40));
      assert.equal(gl.text, await alone(long, 6));
      const cacheL = seq.cache;
      const withL = rec.steps.filter((s) => s.some((x) => x.cache === cacheL && x.prefill));
      assert.equal(withL.length, Math.ceil(m.tokenizer.encode(long).length / CHUNK), 'one chunk of the long prompt per step');
      for (const s of withL) {
        assert.equal(s.length, 2, 'A decodes beside every chunk');
        assert.ok(s.reduce((n, x) => n + (x.prefill ? x.tokens : 0), 0) <= CHUNK, 'at most one chunk of prompt per step');
        assert.deepEqual(s.filter((x) => x.cache !== cacheL).map((x) => [x.tokens, x.prefill]), [[1, false]]);
      }
      for (let i = 1; i < perStep.length; i++) assert.equal(perStep[i], perStep[i - 1] + 1, `A got one token at every step: ${perStep.join(' ')}`);
    });

    it('fails a request alone — context overflow, a failing hook, a token outside the vocabulary, a bad stop — while the others finish as they would alone', async function () {
      const rec = recordingModel(m);
      const b = scheduler(8, rec.model);
      const c = m.checkpoint.config;
      // A sequence that believes in a longer context than the model has: its step past the
      // model's 256 positions fails the check, mid-generation.
      const overflow = new GenerationSequence({ ...c, maxPositions: c.maxPositions * 2 }, m.tokenizer, 'x'.repeat(c.maxPositions - 4), { maxTokens: 50, prefillChunk: CHUNK });
      let hookCalls = 0;
      // Failures are taken as they come (a rejection nobody handles yet would end the process).
      const failure = (p: Promise<unknown>) => p.then(() => assert.fail('it should have failed'), (e: unknown) => e);
      const runs = {
        good0: b.run([sequence(PROMPTS[0], { maxTokens: LENGTHS[0] })], signal()),
        overflow: failure(b.run([overflow], signal())),
        good3: b.run([sequence(PROMPTS[3], { maxTokens: LENGTHS[3] })], signal()),
        hook: failure(b.run([sequence(PROMPTS[2], { maxTokens: 20, onToken: () => { if (++hookCalls === 3) throw new Error('the client stream broke'); } })], signal())),
        vocabulary: failure(b.run([sequence([c.vocabSize + 5, 1, 2])], signal())),
        good5: b.run([sequence(PROMPTS[5], { maxTokens: LENGTHS[5] })], signal()),
      };
      assert.throws(() => sequence('abc', { stop: [7 as unknown as string] }), /a stop must be a string, got number/);
      const overflowed = await runs.overflow;
      assert.ok(overflowed instanceof RangeError && /context is 256 positions; 257 asked/.test(overflowed.message), String(overflowed));
      assert.match(String(await runs.hook), /the client stream broke/);
      const outside = await runs.vocabulary;
      assert.ok(outside instanceof RangeError && /token 261 outside the vocabulary of 256/.test(outside.message), String(outside));
      assert.equal(overflow.cache.length, c.maxPositions, 'it generated up to the end of the context first');
      assert.equal((await runs.good0)[0].text, await alone(PROMPTS[0], LENGTHS[0]));
      assert.equal((await runs.good3)[0].text, await alone(PROMPTS[3], LENGTHS[3]));
      assert.equal((await runs.good5)[0].text, await alone(PROMPTS[5], LENGTHS[5]));
      assert.ok(rec.steps.some((s) => s.length >= 3), 'they really ran together');
    });

    it('takes a sequence whose request aborts out of the batch at once; the others go on untouched', async function () {
      const rec = recordingModel(m);
      const b = scheduler(8, rec.model);
      const ac = new AbortController();
      let bTokens = 0;
      const seqB = sequence(PROMPTS[3], { maxTokens: 30, onToken: () => ++bTokens === 3 && ac.abort(new Error('client left')) });
      const a = b.run([sequence(PROMPTS[1], { maxTokens: LENGTHS[1] })], signal());
      const gone = b.run([seqB], ac.signal);
      gone.catch(() => {}); // awaited below; handled now so its early rejection is not "unhandled"
      const c = b.run([sequence(PROMPTS[4], { maxTokens: LENGTHS[4] })], signal());
      await assert.rejects(gone, /client left/);
      const stepsAtAbort = rec.steps.length;
      assert.equal((await a)[0].text, await alone(PROMPTS[1], LENGTHS[1]));
      assert.equal((await c)[0].text, await alone(PROMPTS[4], LENGTHS[4]));
      assert.ok(rec.steps.length > stepsAtAbort + 2, 'the others kept stepping');
      assert.ok(rec.steps.slice(stepsAtAbort).every((s) => s.every((x) => x.cache !== seqB.cache)), 'no step after the abort carries it');
      assert.equal(bTokens, 3);
    });

    it('decodes a request\'s choices side by side, each with its own seed', async function () {
      const rec = recordingModel(m);
      const b = scheduler(8, rec.model);
      const gs = await b.run([0, 1, 2].map((i) => sequence(PROMPTS[1], { maxTokens: 16, temperature: 0.9, seed: 40 + i })), signal());
      const want = await Promise.all([0, 1, 2].map((i) => alone(PROMPTS[1], 16, 40 + i)));
      assert.deepEqual(gs.map((g) => g.text), want);
      assert.ok(new Set(want).size > 1, 'different seeds, different choices');
      // The prompts go in one after another (two 9-token chunks exceed a 16-token step), then the
      // three choices decode in the same steps.
      assert.ok(rec.steps.filter((s) => s.length === 3).length >= 12, `the three choices step together: ${rec.steps.map((s) => s.length).join(' ')}`);
    });

    it('runs canary work between two steps, never inside one, while requests keep generating', async function () {
      const rec = recordingModel(m);
      const b = scheduler(4, rec.model);
      const target = canaryTarget(m, (work) => b.betweenSteps(async () => {
        assert.equal(rec.inStep(), false, 'no step under way when canary work starts');
        const stepsBefore = rec.steps.length;
        const r = await work();
        assert.equal(rec.steps.length, stepsBefore, 'no step ran during the canary work');
        return r;
      }));
      const runs = [0, 3, 5].map((i) => b.run([sequence(PROMPTS[i], { maxTokens: LENGTHS[i] })], signal()));
      await b.stepBoundary();
      const stepsThen = rec.steps.length;
      assert.ok(stepsThen >= 1);
      const answers: string[] = [];
      let items = 0;
      // The canary runner's loop: wait for a step boundary, then one item.
      for (const prompt of ['10+23=', '10+30=', '10+57=']) {
        await b.stepBoundary();
        answers.push(await target.greedy(prompt, 3, '\n', m.engine));
        const logits = await target.logits(m.tokenizer.encode(prompt), m.engine);
        assert.equal(logits.length, m.tokenizer.encode(prompt).length * m.checkpoint.config.vocabSize);
        items += 2;
      }
      assert.deepEqual(answers, ['33', '40', '67']);
      assert.equal(items, 6);
      const got = await Promise.all(runs);
      assert.deepEqual(got.map(([g]) => g.text), await Promise.all([0, 3, 5].map((i) => alone(PROMPTS[i], LENGTHS[i]))));
      assert.ok(rec.steps.length > stepsThen + 3, 'serving went on between the items');
      await b.idle();
      assert.equal(await b.betweenSteps(async () => 'idle: at once'), 'idle: at once');
    });
  });
}

describe('ebserve serve --max-batch and --prefill-chunk', function () {
  for (const flag of ['max-batch', 'prefill-chunk']) {
    it(`refuses --${flag} that is 0, negative, fractional or not a number, before binding anything`, async function () {
      for (const bad of ['0', '-1', '1.5', 'eight', '', '1e3']) {
        await assert.rejects(serveCommand(['--port', '0', `--${flag}=${bad}`]), (e: unknown) => {
          assert.ok(e instanceof UsageError, String(e));
          assert.equal(e.message, `serve: --${flag} must be a whole number from 1 to ${flag === 'max-batch' ? 4096 : 16777216}, got ${bad}`);
          return true;
        }, bad);
      }
    });
  }

  it('fails the load, naming --prefill-chunk, when a chunk is longer than the model\'s context', async function () {
    const server = await startServer({ host: '127.0.0.1', port: 0, log: () => {}, prefillChunk: 300, load: (bus, serving) => loadServedModel(embeddedSpec({ engine: 'resident' }), bus, () => {}, serving) });
    try {
      await assert.rejects(server.ready, /--prefill-chunk 300 is longer than the model's context of 256 tokens/);
      const res = await fetch(`${server.url}/health`);
      assert.equal(res.status, 503);
      assert.match(((await res.json()) as ErrorBody).error.message, /the model failed to load: --prefill-chunk 300 is longer than the model's context of 256 tokens/);
    } finally {
      await server.shutdown({ drainTimeoutSeconds: 0 });
    }
  });
});
