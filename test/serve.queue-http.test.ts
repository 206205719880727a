// The queue seen from clients, on a real server with --max-queue 1: one generation at a time in
// arrival order, 429 with Retry-After when the line is full, and clients that hang up — waiting or
// mid-stream — leave without costing the others anything.
import assert from 'node:assert/strict';

import type { RunningServer } from '../src/serve/server.js';
import { metric, metricsText, post, sseEvents, startEmbedded, until, type ErrorBody } from './serve/helpers.js';

describe('the generation queue over HTTP (--max-queue 1)', function () {
  let server: RunningServer;
  let url: string;
  before(async function () {
    server = await startEmbedded({ maxQueue: 1 });
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
    const texts = await Promise.all(done.map(async (r) => ((await r.json()) as { choices: { text: string }[] }).choices[0].text));
    assert.equal(texts[0], texts[1]); // the same greedy request, one after the other, same answer
    assert.equal((await fetch(`${url}/health`)).status, 200);
  });

  it('runs a waiting request only after the running one has finished', async function () {
    const a = sseEvents(await post(url, '/v1/completions', { prompt: 'The whale', max_tokens: 20, stream: true }));
    assert.notEqual(await a.next(), null); // A is generating
    const bResponse = post(url, '/v1/completions', { prompt: 'The ship', max_tokens: 4, stream: true });
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
    assert.equal(((await cr.json()) as { choices: { text: string }[] }).choices[0].text, '75');
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
