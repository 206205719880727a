// The batch scheduler seen from clients, on real servers over the embedded model. With
// --max-batch 1 --max-queue 1 it is the old line: one generation at a time in arrival order, 429
// with Retry-After when the line is full, and clients that hang up — waiting or mid-stream —
// leave without costing the others anything. With a larger batch: requests generate together and
// each gets the text it gets alone, n choices come back as n indexed choices, a request that fails
// inside the batch fails alone with its 4xx, a client that hangs up leaves the batch at once, the
// batch size is a metric, and a canary run finishes under continuous load.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import YAML from 'yaml';

import type { GenerationSequence } from '../src/model/sequence.js';
import { loadServedModel } from '../src/serve/load-model.js';
import type { RunningServer } from '../src/serve/server.js';
import { embeddedSpec, metric, metricsText, post, readSse, serverLog, sseEvents, startEmbedded, until, type ErrorBody } from './serve/helpers.js';

interface Completion {
  choices: { index: number; text: string; finish_reason: string }[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}
interface ChatCompletion {
  choices: { index: number; message: { content: string }; finish_reason: string }[];
  usage: Completion['usage'];
}
interface Chunk {
  choices: { index: number; text?: string; delta?: { role?: string; content?: string }; finish_reason: string | null }[];
  usage?: Completion['usage'] | null;
}
interface Health {
  queue: { running: number; waiting: number; sequences: number; max_waiting: number; max_batch: number; prefill_chunk: number };
}

const text = async (res: Response) => ((await res.json()) as Completion).choices[0].text;

describe('the batch scheduler over HTTP, one sequence at a time (--max-batch 1 --max-queue 1)', function () {
  let server: RunningServer;
  let url: string;
  before(async function () {
    server = await startEmbedded({ maxBatch: 1, maxQueue: 1 });
    url = server.url;
  });
  after(async function () {
    await server?.shutdown();
  });

  const gauge = async (name: string) => metric(await metricsText(url), name) ?? NaN;

  it('answers 429 with Retry-After to requests beyond the one running and the one waiting', async function () {
    const answers = await Promise.all([0, 1, 2, 3].map(() => post(url, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 30 })));
    const statuses = answers.map((r) => r.status).sort();
    assert.deepEqual(statuses, [200, 200, 429, 429]);
    for (const r of answers.filter((a) => a.status === 429)) {
      const retry = r.headers.get('retry-after');
      assert.match(retry ?? '', /^[1-9][0-9]*$/, `Retry-After: ${retry}`);
      const e = (await r.json()) as ErrorBody;
      assert.equal(e.error.type, 'rate_limit_error');
      assert.equal(e.error.code, 429);
      assert.match(e.error.message, /busy: 1 request already waiting; retry in \d+ s/);
    }
    const done = answers.filter((a) => a.status === 200);
    const texts = await Promise.all(done.map(text));
    assert.equal(texts[0], texts[1]); // the same greedy request, one after the other, same answer
    const health = (await (await fetch(`${url}/health`)).json()) as Health;
    assert.deepEqual(health.queue, { running: 0, waiting: 0, sequences: 0, max_waiting: 1, max_batch: 1, prefill_chunk: 64 });
  });

  it('runs a waiting request only after the running one has finished', async function () {
    const a = sseEvents(await post(url, '/v1/completions', { prompt: 'The whale', max_tokens: 20, stream: true }));
    assert.notEqual(await a.next(), null); // A is generating
    const bResponse = post(url, '/v1/completions', { prompt: 'The ship', max_tokens: 4, stream: true });
    await until(async () => (await gauge('ebserve_queue_depth')) === 1, 10_000, 'B waiting');
    let aDone = 0;
    for (let e = await a.next(); e !== null; e = await a.next()) if (e === '[DONE]') aDone = performance.now();
    const b = sseEvents(await bResponse);
    const first = await b.next();
    const bFirst = performance.now();
    assert.notEqual(first, null);
    assert.ok(aDone > 0 && bFirst >= aDone, 'B\'s first token came after A\'s [DONE]');
    while ((await b.next()) !== null);
  });

  it('drops a waiting request whose client hangs up, so the next one finds room', async function () {
    const before = metric(await metricsText(url), 'ebserve_requests_total', { endpoint: '/v1/completions', status: '499' }) ?? 0;
    const a = post(url, '/v1/completions', { prompt: 'In the beginning', max_tokens: 60 });
    await until(async () => (await gauge('ebserve_requests_running')) === 1, 10_000, 'A running');
    const ac = new AbortController();
    const b = post(url, '/v1/completions', { prompt: 'never generated', max_tokens: 60 }, { signal: ac.signal });
    await until(async () => (await gauge('ebserve_queue_depth')) === 1, 10_000, 'B waiting');
    ac.abort();
    await assert.rejects(b);
    await until(async () => (await gauge('ebserve_queue_depth')) === 0, 10_000, 'B dropped');
    assert.equal(await gauge('ebserve_requests_running'), 1, 'A still running');
    const c = post(url, '/v1/completions', { prompt: '48+27=', max_tokens: 4, stop: '\n' }); // takes B's place: no 429
    assert.equal((await a).status, 200);
    const cr = await c;
    assert.equal(cr.status, 200);
    assert.equal(await text(cr), '75');
    const after = metric(await metricsText(url), 'ebserve_requests_total', { endpoint: '/v1/completions', status: '499' });
    assert.equal(after, before + 1, 'the hang-up is counted as 499');
  });

  it('stops a streaming generation whose client hangs up, at its next token', async function () {
    const tokens = async () => metric(await metricsText(url), 'ebserve_generation_tokens_total') ?? NaN;
    const before = await tokens();
    const ac = new AbortController();
    const a = sseEvents(await post(url, '/v1/completions', { prompt: 'Call me', max_tokens: 200, stream: true }, { signal: ac.signal }));
    await a.next();
    await a.next();
    ac.abort();
    await until(async () => (await gauge('ebserve_requests_running')) === 0, 10_000, 'the generation to stop');
    const spent = (await tokens()) - before;
    assert.ok(spent >= 2 && spent < 100, `${spent} tokens generated of the 200 asked`);
    const ok = await post(url, '/v1/completions', { prompt: '48+27=', max_tokens: 4, stop: '\n' });
    assert.equal(ok.status, 200);
  });
});

describe('continuous batching over HTTP (--max-batch 4 --max-queue 2)', function () {
  let server: RunningServer;
  let url: string;
  /** Sequences whose steps fail the model's check once they hold 20 positions (see before). */
  const poisoned = new Set<GenerationSequence>();
  before(async function () {
    // The embedded model on the resident engine, with one thing added: a prompt that starts with
    // "POISON" makes a sequence whose step fails the check past 20 positions, as a context
    // overflow would — the way to make one request fail inside a running batch.
    const log = (line: string) => serverLog.push(line);
    server = await startEmbedded({
      maxBatch: 4, maxQueue: 2,
      load: async (bus, serving) => {
        const m = await loadServedModel(embeddedSpec({ engine: 'resident' }), bus, log, serving);
        return {
          ...m,
          sequence: (prompt, opts) => {
            const s = m.sequence(prompt, opts);
            if (prompt.startsWith('POISON')) poisoned.add(s);
            return s;
          },
          checkStep: (step) => {
            for (const s of poisoned) if (s.cache === step.cache && step.cache.length + step.tokens.length > 20) throw new RangeError(`context is 20 positions; ${step.cache.length + step.tokens.length} asked`);
            m.checkStep(step);
          },
        };
      },
    });
    url = server.url;
  });
  after(async function () {
    await server?.shutdown();
  });

  const health = async () => ((await (await fetch(`${url}/health`)).json()) as Health).queue;
  const requests = [
    { path: '/v1/completions', body: { prompt: 'Call me Ishmael.', max_tokens: 24 } },
    { path: '/v1/completions', body: { prompt: '48+27=', max_tokens: 6, stop: '\n' } },
    { path: '/v1/chat/completions', body: { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 10 } },
    { path: '/v1/completions', body: { prompt: 'the compass, and then the dog-vane, and then ascertaining the precise bearing of the odor as nearly as possible, Ahab rapidly or', max_tokens: 16 } },
  ];
  const answer = async (res: Response) => {
    assert.equal(res.status, 200);
    const body = (await res.json()) as Completion & ChatCompletion;
    return body.choices[0].text ?? body.choices[0].message.content;
  };

  it('generates requests together, each with the text it gets alone, streamed or not', async function () {
    const alone: string[] = [];
    for (const r of requests) alone.push(await answer(await post(url, r.path, r.body)));
    const stepsBefore = metric(await metricsText(url), 'ebserve_batch_size_count')!;
    const together = await Promise.all(requests.map((r) => post(url, r.path, r.body).then(answer)));
    assert.deepEqual(together, alone);
    const streamed = await Promise.all(requests.map(async (r) => {
      const events = (await readSse(await post(url, r.path, { ...r.body, stream: true }))).slice(0, -1) as Chunk[];
      return events.map((e) => e.choices[0].text ?? e.choices[0].delta?.content ?? '').join('');
    }));
    assert.deepEqual(streamed, alone);
    const t = await metricsText(url);
    const steps = metric(t, 'ebserve_batch_size_count')! - stepsBefore;
    const single = metric(t, 'ebserve_batch_size_bucket', { le: '1' })!;
    assert.ok(steps > 0 && metric(t, 'ebserve_batch_size_count')! - single > 0, 'some steps carried more than one sequence');
    assert.ok(metric(t, 'ebserve_batch_size_bucket', { le: '4' }) === metric(t, 'ebserve_batch_size_count'), 'no step carried more than --max-batch 4');
  });

  it('answers n choices, indexed 0..n−1, choice i sampled with seed + i; greedy choices are the greedy text', async function () {
    const one = async (seed: number) => text(await post(url, '/v1/completions', { prompt: 'The whale', max_tokens: 12, temperature: 0.9, seed }));
    const res = await post(url, '/v1/completions', { prompt: 'The whale', max_tokens: 12, temperature: 0.9, seed: 7, n: 3 });
    assert.equal(res.status, 200);
    const c = (await res.json()) as Completion;
    assert.deepEqual(c.choices.map((x) => x.index), [0, 1, 2]);
    assert.deepEqual(c.choices.map((x) => x.text), [await one(7), await one(8), await one(9)]);
    assert.ok(new Set(c.choices.map((x) => x.text)).size > 1, 'sampled choices differ');
    assert.deepEqual(c.usage, { prompt_tokens: 9, completion_tokens: 36, total_tokens: 45 });
    const greedy = (await (await post(url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 10, n: 2 })).json()) as ChatCompletion;
    const single = (await (await post(url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 10 })).json()) as ChatCompletion;
    assert.deepEqual(greedy.choices.map((x) => [x.index, x.message.content]), [[0, single.choices[0].message.content], [1, single.choices[0].message.content]]);
  });

  it('streams n choices with their index on every chunk, a role chunk and a finish chunk for each', async function () {
    const body = { messages: [{ role: 'user', content: 'Call me Ishmael.' }], max_tokens: 12, temperature: 0.9, seed: 21, n: 2 };
    const whole = (await (await post(url, '/v1/chat/completions', body)).json()) as ChatCompletion;
    const events = await readSse(await post(url, '/v1/chat/completions', { ...body, stream: true, stream_options: { include_usage: true } }));
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -2) as Chunk[];
    for (const i of [0, 1]) {
      const mine = chunks.filter((ch) => ch.choices[0].index === i);
      assert.deepEqual(mine[0].choices[0].delta, { role: 'assistant', content: '' });
      assert.equal(mine.at(-1)!.choices[0].finish_reason, whole.choices[i].finish_reason);
      assert.equal(mine.slice(1, -1).map((ch) => ch.choices[0].delta!.content).join(''), whole.choices[i].message.content);
    }
    assert.equal(chunks.length, chunks.filter((ch) => ch.choices[0].index === 0 || ch.choices[0].index === 1).length);
    assert.deepEqual((events.at(-2) as Chunk).usage, whole.usage);
  });

  it('fails a request that fails inside the batch alone, with its 400, while the others finish as they would alone', async function () {
    const alone = await Promise.all(requests.slice(0, 2).map(async (r) => answer(await post(url, r.path, r.body))));
    const bad = post(url, '/v1/completions', { prompt: 'POISON in the batch', max_tokens: 30 });
    const badStream = post(url, '/v1/completions', { prompt: 'POISON streamed', max_tokens: 30, stream: true });
    const good = requests.slice(0, 2).map((r) => post(url, r.path, r.body).then(answer));
    const b = await bad;
    assert.equal(b.status, 400);
    const e = (await b.json()) as ErrorBody;
    assert.equal(e.error.type, 'invalid_request_error');
    assert.equal(e.error.message, 'context is 20 positions; 21 asked');
    const events = await readSse(await badStream);
    assert.equal(((events.at(-1) as ErrorBody).error).code, 400, 'the stream ends with its error');
    assert.deepEqual(await Promise.all(good), alone);
  });

  it('answers 429 with Retry-After beyond the batch and the line', async function () {
    const answers = await Promise.all(Array.from({ length: 8 }, () => post(url, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 40 })));
    assert.deepEqual(answers.map((r) => r.status).sort(), [200, 200, 200, 200, 200, 200, 429, 429]);
    for (const r of answers.filter((a) => a.status === 429)) {
      assert.match(r.headers.get('retry-after') ?? '', /^[1-9][0-9]*$/);
      assert.match(((await r.json()) as ErrorBody).error.message, /busy: 2 requests already waiting/);
    }
    const texts = new Set(await Promise.all(answers.filter((r) => r.status === 200).map(text)));
    assert.equal(texts.size, 1, 'six times the same greedy text, whichever step each joined at');
  });

  it('takes a client that hangs up out of the batch at once; the others go on', async function () {
    const want = await answer(await post(url, requests[0].path, requests[0].body));
    const ac = new AbortController();
    const gone = sseEvents(await post(url, '/v1/completions', { prompt: 'Call me', max_tokens: 200, stream: true }, { signal: ac.signal }));
    await gone.next();
    const stays = post(url, requests[0].path, requests[0].body).then(answer);
    await until(async () => (await health()).sequences === 2, 10_000, 'both in the batch');
    ac.abort();
    await until(async () => (await health()).sequences <= 1, 10_000, 'the hung-up one out of the batch');
    assert.equal(await stays, want);
    assert.deepEqual(await health(), { running: 0, waiting: 0, sequences: 0, max_waiting: 2, max_batch: 4, prefill_chunk: 64 });
  });

  it('refuses n above the batch size, naming it', async function () {
    const res = await post(url, '/v1/completions', { prompt: 'a', n: 5 });
    assert.equal(res.status, 400);
    const e = (await res.json()) as ErrorBody;
    assert.equal(e.error.param, 'n');
    assert.match(e.error.message, /n must be at most 4 on this server/);
  });
});

describe('canaries under continuous load', function () {
  let server: RunningServer;
  let dir: string;
  const TOKEN = 'canary-load-token';
  /** The test's load keeps launching requests while this holds. */
  let loading = false;
  before(async function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-canary-load-'));
    const policy = YAML.parse(fs.readFileSync('policies/u-shape.yaml', 'utf8')) as { canaries: { items: number } };
    policy.canaries.items = 4;
    const file = path.join(dir, 'short-canaries.yaml');
    fs.writeFileSync(file, YAML.stringify(policy));
    const { loadPolicy } = await import('../src/control/policy.js');
    server = await startEmbedded({ adminToken: TOKEN, maxBatch: 4, spec: { fixedLevel: undefined, policy: loadPolicy(file) } });
  });
  after(async function () {
    loading = false;
    await server?.shutdown({ drainTimeoutSeconds: 0 });
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('finishes a canary run while requests never stop generating (its items run between steps)', async function () {
    const url = server.url;
    loading = true;
    let served = 0;
    const inflight: Promise<void>[] = [];
    // Each request starts the next once it has its first token: they overlap, so the batch is
    // never empty and the server never idle until the test stops launching.
    const launch = () => {
      if (!loading) return;
      inflight.push((async () => {
        const events = sseEvents(await post(url, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 24, stream: true }));
        assert.notEqual(await events.next(), null);
        launch();
        while ((await events.next()) !== null);
        served++;
      })().catch((e: unknown) => {
        if (loading) throw e; // after a failed test the server goes away under the load
      }));
    };
    launch();
    await until(() => served > 0, 10_000, 'load');
    const tokens = async () => metric(await metricsText(url), 'ebserve_generation_tokens_total')!;
    const before = await tokens();
    // With canaries waiting for an idle server, this would never answer while the load runs.
    const run = await post(url, '/admin/canaries/run', {}, { headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${TOKEN}` } });
    const during = (await tokens()) - before;
    loading = false;
    for (let n = 0; n < inflight.length; n = inflight.length) await Promise.all(inflight);
    assert.equal(run.status, 200, await run.clone().text());
    const r = (await run.json()) as { result: { top1Agreement: number } };
    assert.ok(r.result.top1Agreement > 0.9, `top-1 agreement ${r.result.top1Agreement}`);
    // Each item waits for a step boundary, so serving went on between the items.
    assert.ok(during >= 8, `${during} tokens were generated while the canaries ran`);
  });
});
