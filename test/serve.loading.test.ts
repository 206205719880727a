// The port is bound before the model loads: while it loads /health answers 503 "Loading model"
// (llama.cpp's body, in OpenAI's error shape) and so do the model endpoints, /metrics answers
// already; when loading fails /health says why. The loading is held by the test, not simulated:
// the real embedded model loads once the test lets it.
import assert from 'node:assert/strict';
import path from 'node:path';

import { EMBEDDED_MODEL_DIR } from '../src/model/embedded.js';
import { loadServedModel } from '../src/serve/load-model.js';
import { startServer, type RunningServer } from '../src/serve/server.js';
import { embeddedSpec, post, type ErrorBody } from './serve/helpers.js';

describe('GET /health while the model loads', function () {
  let server: RunningServer | undefined;
  afterEach(async function () {
    await server?.shutdown({ drainTimeoutSeconds: 0 });
    server = undefined;
  });

  it('answers 503 "Loading model" until the model is loaded, then 200', async function () {
    let letLoad!: () => void;
    const gate = new Promise<void>((r) => (letLoad = r));
    const log: string[] = [];
    server = await startServer({
      host: '127.0.0.1',
      port: 0,
      log: (l) => log.push(l),
      load: async (bus) => {
        await gate;
        return loadServedModel(embeddedSpec({ engine: 'resident' }), bus, (l) => log.push(l));
      },
    });
    const url = server.url;
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 503);
    assert.deepEqual(await health.json(), { error: { message: 'Loading model', type: 'unavailable_error', param: null, code: 503 } });
    for (const res of [await fetch(`${url}/v1/models`), await post(url, '/v1/completions', { prompt: 'a' }), await post(url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }] })]) {
      assert.equal(res.status, 503);
      assert.equal(((await res.json()) as ErrorBody).error.message, 'Loading model');
    }
    const metrics = await fetch(`${url}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /ebserve_requests_total\{endpoint="\/health",status="503"\} 1/);

    letLoad();
    await server.ready;
    const ready = await fetch(`${url}/health`);
    assert.equal(ready.status, 200);
    assert.equal(((await ready.json()) as { engine: string }).engine, 'resident');
  });

  it('answers 503 naming the error when the model failed to load', async function () {
    const missing = path.join(EMBEDDED_MODEL_DIR, 'no-such-model');
    server = await startServer({ host: '127.0.0.1', port: 0, log: () => {}, load: (bus) => loadServedModel(embeddedSpec({ dir: missing }), bus, () => {}) });
    await assert.rejects(server.ready);
    const res = await fetch(`${server.url}/health`);
    assert.equal(res.status, 503);
    const e = (await res.json()) as ErrorBody;
    assert.equal(e.error.type, 'unavailable_error');
    assert.match(e.error.message, /^the model failed to load: .*no-such-model/);
  });

  it('refuses to start when the port is taken', async function () {
    server = await startServer({ host: '127.0.0.1', port: 0, log: () => {}, load: () => new Promise(() => {}) });
    await assert.rejects(startServer({ host: '127.0.0.1', port: server.port, log: () => {}, load: () => new Promise(() => {}) }), /EADDRINUSE/);
  });
});
