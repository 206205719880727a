// Scoring and sampling through the official `openai` SDK against a real server on loopback (the
// embedded model, offload engine): the loglikelihood request lm-evaluation-harness's
// local-completions sends, checked against the model's own forward run token by token here;
// greedy tokens carrying their position's top logprob; echo-scoring a completion reproducing its
// logprobs; logit_bias, penalties, stop lists; chat logprobs; streams carrying the same scores;
// /tokenize and /detokenize; bad input; and a scoring request failing alone in a batch.
import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { EMBEDDED_MODEL_DIR } from '../src/model/embedded.js';
import { KvCache } from '../src/model/kv-cache.js';
import { loadModel, type LoadedModel } from '../src/model/load.js';
import { BatchScheduler } from '../src/serve/batcher.js';
import type { RunningServer } from '../src/serve/server.js';
import { FakeStepModel } from './serve/fake-step-model.js';
import { post, readSse, startEmbedded, type ErrorBody } from './serve/helpers.js';

interface Lp {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/** log-softmax of one row, in f64, written here (not the server's). */
function logSoftmax(row: Float32Array): number[] {
  const max = Math.max(...row);
  const lse = max + Math.log(row.reduce((z, v) => z + Math.exp(v - max), 0));
  return Array.from(row, (v) => v - lse);
}

describe('scoring and sampling API (openai SDK, embedded model)', function () {
  let server: RunningServer;
  let client: OpenAI;
  let model: LoadedModel;
  const MODEL = 'ebserve-moe-8x';

  before(async function () {
    server = await startEmbedded();
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    model = await loadModel(EMBEDDED_MODEL_DIR);
  });
  after(async function () {
    model?.dispose();
    await server?.shutdown();
  });

  /** log P(ids[i] | ids[..i]) for i ≥ 1, one forward step per token on a fresh cache (no allLogits, no chunks, no batch). */
  async function ownLogprobs(ids: number[]): Promise<{ lp: number[]; greedy: boolean[] }> {
    const cache = KvCache.forModel(model.checkpoint.config);
    const lp: number[] = [];
    const greedy: boolean[] = [];
    for (let i = 0; i + 1 < ids.length; i++) {
      const row = logSoftmax(await model.model.forward([ids[i]], cache));
      lp.push(row[ids[i + 1]]);
      greedy.push(row[ids[i + 1]] === Math.max(...row));
    }
    return { lp, greedy };
  }

  const tokenize = async (prompt: string) => ((await (await post(server.url, '/tokenize', { prompt, add_special_tokens: false })).json()) as { tokens: number[] }).tokens;

  it('answers a loglikelihood request exactly as lm-evaluation-harness sends it, equal to the model\'s own forward', async function () {
    const context = 'Call me Ishmael. Some years ago';
    const continuation = ' - never mind how long';
    const ctxIds = await tokenize(context);
    const contIds = await tokenize(continuation);
    const all = [...ctxIds, ...contIds];
    const { lp: own, greedy } = await ownLogprobs(all);
    const ownSum = own.slice(ctxIds.length - 1).reduce((a, b) => a + b, 0);
    // lm-eval's LocalCompletionsAPI payload (tokenized requests): a batch of token-id prompts,
    // max_tokens 1, and it sums token_logprobs[ctxlen:-1] (the last entry is the sampled token).
    const r = await client.completions.create({ model: MODEL, prompt: [all], temperature: 0, max_tokens: 1, logprobs: 1, seed: 1234, echo: true });
    const lp = r.choices[0].logprobs as unknown as Lp;
    assert.equal(lp.token_logprobs.length, all.length + 1);
    assert.equal(lp.token_logprobs[0], null);
    assert.equal(lp.top_logprobs[0], null);
    const cont = lp.token_logprobs.slice(ctxIds.length, -1) as number[];
    assert.equal(cont.length, contIds.length);
    cont.forEach((v, i) => assert.ok(Math.abs(v - own[ctxIds.length - 1 + i]) <= 1e-4, `token ${i}: ${v} vs ${own[ctxIds.length - 1 + i]}`));
    assert.ok(Math.abs(cont.reduce((a, b) => a + b, 0) - ownSum) <= 1e-4 * contIds.length);
    // is_greedy as lm-eval computes it (each token's logprob against the max of its top_logprobs), per token, against the own argmax.
    contIds.forEach((_, i) => {
      const at = ctxIds.length + i;
      assert.equal(lp.token_logprobs[at] === Math.max(...Object.values(lp.top_logprobs[at]!)), greedy[ctxIds.length - 1 + i], `token ${i}`);
    });
    assert.ok(greedy.slice(ctxIds.length - 1).includes(false), 'the continuation is not all greedy (else the check above proves less)');
    // The text form (echo, max_tokens 0: only the prompt scored), as the harness sends untokenized requests.
    const t = await client.completions.create({ model: MODEL, prompt: context + continuation, max_tokens: 0, echo: true, logprobs: 1, temperature: 0 });
    const tl = t.choices[0].logprobs as unknown as Lp;
    assert.equal(t.choices[0].text, context + continuation);
    assert.equal(t.usage?.completion_tokens, 0);
    assert.equal(tl.tokens.join(''), context + continuation);
    assert.deepEqual(tl.text_offset, Array.from({ length: all.length }, (_, i) => i)); // one byte per token, all ASCII
    const sum = (tl.token_logprobs.slice(ctxIds.length) as number[]).reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(sum - ownSum) <= 1e-4 * contIds.length, `${sum} vs ${ownSum}`);
  });

  it('scores a prompt that fills the whole context when max_tokens is 0, and refuses one past it', async function () {
    const prompt = 'x'.repeat(256);
    const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 0, echo: true, logprobs: 0 });
    assert.equal((r.choices[0].logprobs as unknown as Lp).token_logprobs.length, 256);
    const res = await post(server.url, '/v1/completions', { prompt: prompt + 'x', max_tokens: 0, echo: true, logprobs: 0 });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as ErrorBody).error.param, 'prompt');
  });

  it('gives greedy tokens their position\'s top logprob, and echo-scoring the completion reproduces its logprobs', async function () {
    const prompt = 'Call me Ishmael.';
    const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 12, temperature: 0, logprobs: 3 });
    const lp = r.choices[0].logprobs as unknown as Lp;
    assert.equal(lp.tokens.length, 12);
    assert.equal(lp.tokens.join(''), r.choices[0].text);
    assert.equal(lp.text_offset[0], prompt.length);
    lp.tokens.forEach((tok, i) => {
      const top = lp.top_logprobs[i]!;
      assert.equal(Object.keys(top).length, 3);
      const best = Math.max(...Object.values(top));
      assert.equal(lp.token_logprobs[i], best);
      assert.equal(top[tok], best);
    });
    const echo = await client.completions.create({ model: MODEL, prompt: prompt + r.choices[0].text, max_tokens: 0, echo: true, logprobs: 3 });
    const el = echo.choices[0].logprobs as unknown as Lp;
    const tail = el.token_logprobs.slice(-12) as number[];
    tail.forEach((v, i) => assert.ok(Math.abs(v - (lp.token_logprobs[i] as number)) <= 1e-4, `${i}: ${v} vs ${lp.token_logprobs[i]}`));
    assert.deepEqual(el.tokens.slice(-12), lp.tokens);
  });

  it('applies logit_bias to sampling: -100 on the greedy token changes the output, +100 forces one', async function () {
    const prompt = '48+27=';
    const plain = await client.completions.create({ model: MODEL, prompt, max_tokens: 3, temperature: 0, logprobs: 1 });
    const first = (await tokenize(plain.choices[0].text))[0];
    const banned = await client.completions.create({ model: MODEL, prompt, max_tokens: 3, temperature: 0, logprobs: 1, logit_bias: { [String(first)]: -100 } });
    assert.notEqual((await tokenize(banned.choices[0].text))[0], first);
    // The logprobs stay the model's: the banned token is still the top one of that position.
    const lp = banned.choices[0].logprobs as unknown as Lp;
    assert.equal(Object.keys(lp.top_logprobs[0]!)[0], plain.choices[0].text[0]);
    const z = 'z'.charCodeAt(0);
    const forced = await client.completions.create({ model: MODEL, prompt, max_tokens: 3, temperature: 0, logit_bias: { [String(z)]: 100 } });
    assert.equal(forced.choices[0].text, 'zzz');
  });

  it('applies presence and frequency penalties: a repetitive prompt continues differently', async function () {
    const prompt = 'abababababababababababab';
    const plain = await client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0 });
    for (const penalty of [{ frequency_penalty: 2 }, { presence_penalty: 2 }]) {
      const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0, ...penalty });
      assert.notEqual(r.choices[0].text, plain.choices[0].text, JSON.stringify(penalty));
    }
    const neg = await client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0, frequency_penalty: 0 });
    assert.equal(neg.choices[0].text, plain.choices[0].text);
  });

  it('stops at any string of a stop list', async function () {
    const plain = await client.completions.create({ model: MODEL, prompt: '48+27=', max_tokens: 3, temperature: 0 });
    const at = plain.choices[0].text[1];
    const r = await client.completions.create({ model: MODEL, prompt: '48+27=', max_tokens: 8, temperature: 0, stop: ['zzz', at] });
    assert.equal(r.choices[0].text, plain.choices[0].text.slice(0, 1));
    assert.equal(r.choices[0].finish_reason, 'stop');
  });

  it('answers chat logprobs and top_logprobs in OpenAI\'s shape', async function () {
    const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: '48+27=' }], max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 });
    const content = r.choices[0].logprobs!.content!;
    assert.equal(content.length, r.usage!.completion_tokens);
    assert.ok(content.map((c) => c.token).join('').startsWith(r.choices[0].message.content!));
    for (const c of content) {
      assert.equal(c.top_logprobs.length, 2);
      assert.equal(c.logprob, c.top_logprobs[0].logprob);
      assert.equal(c.token, c.top_logprobs[0].token);
      assert.deepEqual(c.bytes, Array.from(Buffer.from(c.token)));
      assert.ok(c.top_logprobs[1].logprob <= c.top_logprobs[0].logprob);
    }
    const none = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: '48+27=' }], max_tokens: 2 });
    assert.equal(none.choices[0].logprobs, null);
  });

  it('streams the same scores as the whole response, chunk by chunk', async function () {
    const body = { model: MODEL, prompt: 'Call me Ishmael.', max_tokens: 10, temperature: 0, logprobs: 2, echo: true };
    const whole = (await client.completions.create(body)).choices[0].logprobs as unknown as Lp;
    const stream = await client.completions.create({ ...body, stream: true });
    const got: Lp = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    let text = '';
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      const lp = chunk.choices[0]?.logprobs as unknown as Lp | null;
      if (lp) for (const k of Object.keys(got) as (keyof Lp)[]) (got[k] as unknown[]).push(...lp[k]);
    }
    assert.ok(text.startsWith('Call me Ishmael.'));
    assert.deepEqual(got, whole);
    const chat = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 1, stream: true });
    const tokens: string[] = [];
    for await (const chunk of chat) for (const c of chunk.choices[0]?.logprobs?.content ?? []) tokens.push(c.token);
    assert.equal(tokens.length, 5);
  });

  it('answers several prompts, each with its own choices, and counts each prompt once', async function () {
    const r = await client.completions.create({ model: MODEL, prompt: ['48+27=', '12+34='], max_tokens: 2, temperature: 0, n: 2 });
    assert.equal(r.choices.length, 4);
    const one = await client.completions.create({ model: MODEL, prompt: '12+34=', max_tokens: 2, temperature: 0 });
    assert.equal(r.choices[2].text, one.choices[0].text);
    assert.equal(r.choices[3].text, one.choices[0].text);
    assert.equal(r.usage?.prompt_tokens, 12);
  });

  it('batches scoring requests with generations without changing either', async function () {
    const gen = { model: MODEL, prompt: 'Call me Ishmael. Some years ago', max_tokens: 16, temperature: 0 };
    const score = { model: MODEL, prompt: 'It is a way I have of driving off the spleen', max_tokens: 0, echo: true, logprobs: 2 };
    const alone = [await client.completions.create(gen), await client.completions.create(score)];
    const together = await Promise.all([client.completions.create(gen), client.completions.create(score), client.completions.create(score), client.completions.create(gen)]);
    assert.equal(together[0].choices[0].text, alone[0].choices[0].text);
    assert.equal(together[3].choices[0].text, alone[0].choices[0].text);
    for (const t of [together[1], together[2]]) {
      const a = (alone[1].choices[0].logprobs as unknown as Lp).token_logprobs;
      (t.choices[0].logprobs as unknown as Lp).token_logprobs.forEach((v, i) => assert.ok(v === a[i] || Math.abs(v! - a[i]!) <= 1e-4));
    }
  });

  describe('POST /tokenize and /detokenize', function () {
    it('round-trips text, and accepts llama.cpp\'s "content"', async function () {
      const a = (await (await post(server.url, '/tokenize', { prompt: 'héllo' })).json()) as { tokens: number[]; count: number };
      assert.deepEqual(a.tokens, Array.from(Buffer.from('héllo')));
      assert.equal(a.count, 6);
      const b = (await (await post(server.url, '/tokenize', { content: 'héllo' })).json()) as { tokens: number[] };
      assert.deepEqual(b.tokens, a.tokens);
      const d = (await (await post(server.url, '/detokenize', { tokens: a.tokens })).json()) as { prompt: string };
      assert.equal(d.prompt, 'héllo');
    });

    it('answers 400 naming the field for bad bodies', async function () {
      const cases: [string, unknown, string][] = [
        ['/tokenize', {}, 'prompt'],
        ['/tokenize', { prompt: 5 }, 'prompt'],
        ['/tokenize', { content: ['a'] }, 'content'],
        ['/tokenize', { prompt: 'a', add_special_tokens: 'yes' }, 'add_special_tokens'],
        ['/detokenize', {}, 'tokens'],
        ['/detokenize', { tokens: 'abc' }, 'tokens'],
        ['/detokenize', { tokens: [1, -2] }, 'tokens[1]'],
        ['/detokenize', { tokens: [1, 256] }, 'tokens[1]'],
      ];
      for (const [path, body, param] of cases) {
        const res = await post(server.url, path, body);
        assert.equal(res.status, 400, `${path} ${JSON.stringify(body)}`);
        assert.equal(((await res.json()) as ErrorBody).error.param, param, `${path} ${JSON.stringify(body)}`);
      }
    });
  });

  describe('bad input', function () {
    const cases: [string, Record<string, unknown>, string][] = [
      ['/v1/completions', { prompt: 'a', logprobs: 21 }, 'logprobs'],
      ['/v1/completions', { prompt: 'a', logprobs: -1 }, 'logprobs'],
      ['/v1/completions', { prompt: 'a', logprobs: 1.5 }, 'logprobs'],
      ['/v1/completions', { prompt: 'a', echo: 'yes' }, 'echo'],
      ['/v1/completions', { prompt: 'a', max_tokens: 0 }, 'max_tokens'],
      ['/v1/completions', { prompt: 'a', presence_penalty: 2.5 }, 'presence_penalty'],
      ['/v1/completions', { prompt: 'a', frequency_penalty: '1' }, 'frequency_penalty'],
      ['/v1/completions', { prompt: 'a', logit_bias: { abc: 1 } }, 'logit_bias.abc'],
      ['/v1/completions', { prompt: 'a', logit_bias: { '5': 101 } }, 'logit_bias.5'],
      ['/v1/completions', { prompt: 'a', logit_bias: { '300': 1 } }, 'logit_bias'],
      ['/v1/completions', { prompt: 'a', logit_bias: [1] }, 'logit_bias'],
      ['/v1/completions', { prompt: [1, 300] }, 'prompt'],
      ['/v1/completions', { prompt: [[1], []] }, 'prompt[1]'],
      ['/v1/completions', { prompt: ['a', 'b', 'c'], n: 3 }, 'prompt'],
      ['/v1/completions', { prompt: 'x'.repeat(256), echo: true, logprobs: 1, max_tokens: 1 }, 'prompt'],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }], top_logprobs: 2 }, 'top_logprobs'],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }], logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }], logprobs: 1 }, 'logprobs'],
      ['/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }], max_tokens: 0 }, 'max_tokens'],
    ];
    for (const [path, body, param] of cases) {
      it(`answers 400 naming ${param} for ${JSON.stringify(body).slice(0, 70)}`, async function () {
        const res = await post(server.url, path, body);
        assert.equal(res.status, 400);
        const e = (await res.json()) as ErrorBody;
        assert.equal(e.error.type, 'invalid_request_error');
        assert.equal(e.error.param, param, e.error.message);
      });
    }
  });
});

describe('a scoring request in the batch scheduler', function () {
  it('fails alone when its step goes wrong, and the request beside it completes', async function () {
    // The stand-in model ignores allLogits and returns one row for a 3-token chunk being scored:
    // the scoring sequence cannot read its rows and throws; the generation beside it is untouched.
    const model = new FakeStepModel();
    const batcher = new BatchScheduler({ maxBatch: 4, maxWaiting: 4, prefillChunk: 8 });
    batcher.attach(model);
    const scoring = batcher.run([model.sequence('abc', { maxTokens: 0, echo: true, logprobs: 1 })], new AbortController().signal);
    const generating = batcher.run([model.sequence('abc', { maxTokens: 3 })], new AbortController().signal);
    await assert.rejects(scoring, /needs 3 rows of logits/);
    const [g] = await generating;
    assert.equal(g.text, 'def');
    assert.ok(model.steps[0].length === 2, 'they shared the first step');
  });
});
