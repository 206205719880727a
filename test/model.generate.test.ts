// Generation on a small random model: greedy is deterministic, a seed reproduces sampling, stop
// strings end the text (and never leak into a stream), max tokens and the context bound it, an
// abort signal stops it between steps.
import assert from 'node:assert/strict';

import { initBackend } from '../src/model/backend.js';
import { ResidentExpertEngine } from '../src/model/engine.js';
import { generate } from '../src/model/generate.js';
import { sample, seededRandom } from '../src/model/sampling.js';
import { GenerationSequence } from '../src/model/sequence.js';
import { ByteTokenizer } from '../src/model/tokenizer.js';
import { MoeTransformer } from '../src/model/transformer.js';
import { randomModel, smallConfig } from './model/random-model.js';

describe('generation', function () {
  const c = smallConfig({ vocabSize: 256, maxPositions: 64 });
  const m = randomModel(c, 9);
  let model: MoeTransformer;
  let engine: ResidentExpertEngine;
  const tok = new ByteTokenizer();
  before(async function () {
    await initBackend();
    engine = new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, m.experts);
    model = new MoeTransformer(c, m.read, m.names, engine);
  });
  after(function () {
    model.dispose();
    engine.dispose();
  });

  it('ends at the model\'s end-of-sequence token (finish "stop", no text for it), and goes past it when asked', async function () {
    const full = await generate(model, tok, 'abc', { maxTokens: 12 });
    // The first sampled token not seen before the third one, taken as the end-of-sequence id.
    const j = full.tokens.findIndex((t, i) => i >= 2 && !full.tokens.slice(0, i).includes(t));
    assert.ok(j >= 2, `a fresh token in ${full.tokens}`);
    const eos = full.tokens[j];
    const run = async (config: typeof c, opts: { stopTokens?: number[] } = {}) => {
      const seq = new GenerationSequence(config, tok, 'abc', { maxTokens: 12, ...opts });
      while (!seq.done) seq.advance((await model.forwardBatch([seq.step()]))[0]);
      return seq.result;
    };
    const ended = await run({ ...c, eosTokenIds: [eos] });
    assert.deepEqual(ended.tokens, full.tokens.slice(0, j + 1), 'generation stops at the end-of-sequence token');
    assert.equal(ended.finishReason, 'stop');
    assert.equal(ended.completionTokens, j + 1, 'the end-of-sequence token counts as generated');
    assert.equal(ended.text, tok.decode(full.tokens.slice(0, j)), 'its text is not added');
    const past = await run({ ...c, eosTokenIds: [eos] }, { stopTokens: [] });
    assert.deepEqual([past.tokens, past.finishReason], [full.tokens, 'length'], 'stopTokens [] generates past it');
  });

  it('is deterministic when greedy, and reproduces a sampled completion from its seed', async function () {
    const a = await generate(model, tok, 'abc', { maxTokens: 12 });
    const b = await generate(model, tok, 'abc', { maxTokens: 12 });
    assert.equal(a.text, b.text);
    assert.equal(a.completionTokens, 12);
    assert.equal(a.finishReason, 'length');
    const s1 = await generate(model, tok, 'abc', { maxTokens: 12, temperature: 1.5, seed: 7 });
    const s2 = await generate(model, tok, 'abc', { maxTokens: 12, temperature: 1.5, seed: 7 });
    const s3 = await generate(model, tok, 'abc', { maxTokens: 12, temperature: 1.5, seed: 8 });
    assert.equal(s1.text, s2.text);
    assert.notEqual(s1.text, s3.text);
  });

  it('ends at a stop string, cuts it off, and never streams any part of it', async function () {
    const full = await generate(model, tok, 'xy', { maxTokens: 20 });
    const stop = full.text.slice(5, 7);
    const streamed: string[] = [];
    const g = await generate(model, tok, 'xy', { maxTokens: 20, stop: [stop], onText: (t) => streamed.push(t) });
    assert.equal(g.finishReason, 'stop');
    assert.equal(g.text, full.text.slice(0, full.text.indexOf(stop)));
    assert.equal(streamed.join(''), g.text);
  });

  it('stops at the end of the context and refuses a prompt that fills it', async function () {
    const g = await generate(model, tok, 'q'.repeat(60), { maxTokens: 50 });
    assert.equal(g.finishReason, 'length');
    assert.equal(g.promptTokens + g.completionTokens, 65); // the last token needs no forward pass
    await assert.rejects(generate(model, tok, 'q'.repeat(64)), /the context holds 64/);
  });

  it('stops when its signal aborts between steps, letting the event loop run there, and refuses an aborted signal', async function () {
    // The abort comes from a macrotask scheduled at the first streamed text, the way a socket's
    // close event would: it can only fire if generate lets the event loop run between steps.
    const ac = new AbortController();
    let steps = 0;
    const run = generate(model, tok, 'abc', {
      maxTokens: 40,
      signal: ac.signal,
      onText: () => {
        if (steps++ === 0) setImmediate(() => ac.abort(new Error('client left')));
      },
    });
    await assert.rejects(run, /client left/);
    assert.ok(steps >= 1 && steps < 5, `${steps} pieces of text streamed before the abort took effect`);
    await assert.rejects(generate(model, tok, 'abc', { signal: AbortSignal.abort(new Error('gone')) }), /gone/);
    const g = await generate(model, tok, 'abc', { maxTokens: 12, signal: new AbortController().signal });
    assert.equal(g.text, (await generate(model, tok, 'abc', { maxTokens: 12 })).text);
  });

  it('samples only inside the top-p nucleus', function () {
    const logits = Float32Array.from([5, 4.9, 0, -1, -2]);
    const random = seededRandom(1);
    const seen = new Set<number>();
    for (let i = 0; i < 500; i++) seen.add(sample(logits, { temperature: 1, topP: 0.9 }, random));
    assert.deepEqual([...seen].sort(), [0, 1]);
    assert.equal(sample(logits, {}, random), 0);
  });
});
