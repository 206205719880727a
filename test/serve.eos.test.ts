// A generation ends at the model's end-of-sequence token over HTTP too (finish_reason "stop", its
// text not sent), and `ignore_eos: true` (vLLM's field) generates past it. The embedded model has
// no end-of-sequence id, so the served model here takes one: the token its greedy completion
// samples third.
import assert from 'node:assert/strict';

import { loadServedModel } from '../src/serve/load-model.js';
import { startServer, type RunningServer } from '../src/serve/server.js';
import { embeddedSpec, post } from './serve/helpers.js';

describe('POST /v1/completions: the end-of-sequence token', function () {
  this.timeout(60_000);
  let server: RunningServer;
  let eos = -1;
  before(async function () {
    server = await startServer({
      host: '127.0.0.1', port: 0, log: () => {},
      load: async (bus, serving) => {
        const m = await loadServedModel(embeddedSpec({ engine: 'cpu' }), bus, () => {}, serving);
        const sequence = m.sequence.bind(m);
        m.sequence = (prompt, opts) => sequence(prompt, { ...opts, stopTokens: opts.stopTokens ?? (eos >= 0 ? [eos] : []) });
        return m;
      },
    });
    await server.ready;
  });
  after(() => server.shutdown({ drainTimeoutSeconds: 0 }));

  const complete = async (extra: object) => {
    const res = await post(server.url, '/v1/completions', { prompt: 'It was the best of times', max_tokens: 10, temperature: 0, ...extra });
    assert.equal(res.status, 200);
    return ((await res.json()) as { choices: { text: string; finish_reason: string }[]; usage: { completion_tokens: number } });
  };

  it('stops there unless ignore_eos is true', async function () {
    const full = await complete({});
    assert.equal(full.choices[0].finish_reason, 'length');
    const text = full.choices[0].text;
    const j = [...text].findIndex((ch, i) => i >= 2 && !text.slice(0, i).includes(ch));
    assert.ok(j >= 2, `a fresh byte in "${text}"`);
    eos = text.charCodeAt(j); // the byte tokenizer: a token is a byte
    const ended = await complete({});
    assert.deepEqual([ended.choices[0].text, ended.choices[0].finish_reason, ended.usage.completion_tokens], [text.slice(0, j), 'stop', j + 1]);
    const past = await complete({ ignore_eos: true });
    assert.deepEqual([past.choices[0].text, past.choices[0].finish_reason], [text, 'length']);
  });
});
