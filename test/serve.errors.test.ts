// Every way a request can be wrong, on a real server (resident engine, a 4 KiB body limit): the
// status, OpenAI's error shape {"error": {message, type, param, code}}, a message that says what
// was wrong — and a server that keeps answering whatever a client sends.
import assert from 'node:assert/strict';
import net from 'node:net';
import zlib from 'node:zlib';

import type { RunningServer } from '../src/serve/server.js';
import { post, startEmbedded, type ErrorBody } from './serve/helpers.js';

describe('API errors (embedded model, resident engine)', function () {
  let server: RunningServer;
  let url: string;
  before(async function () {
    server = await startEmbedded({ spec: { engine: 'resident' }, maxBodyBytes: 4096 });
    url = server.url;
  });
  after(async function () {
    await server?.shutdown();
  });

  /** Posts `body` and checks the answer is `status` in OpenAI's error shape; returns the error. */
  async function expectError(path: string, body: unknown, status: number, param: string | null, message: RegExp, init: RequestInit = {}) {
    const res = await post(url, path, body, init);
    assert.equal(res.status, status, `${JSON.stringify(body)}`);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/);
    const e = (await res.json()) as ErrorBody;
    assert.deepEqual(Object.keys(e), ['error']);
    assert.deepEqual(Object.keys(e.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(e.error.code, status);
    assert.equal(e.error.param, param, e.error.message);
    assert.match(e.error.message, message);
    return { res, error: e.error };
  }

  describe('POST /v1/completions', function () {
    it('answers 400 when ignore_eos is not true or false', async function () {
      await expectError('/v1/completions', { prompt: 'a', ignore_eos: 'yes' }, 400, 'ignore_eos', /ignore_eos/);
    });

    it('answers 400 when max_tokens is negative', async function () {
      const { error } = await expectError('/v1/completions', { prompt: 'a', max_tokens: -1 }, 400, 'max_tokens', /max_tokens must be at least 0/);
      assert.equal(error.type, 'invalid_request_error');
    });

    it('answers 400 when max_tokens is zero without echo (only scoring may generate nothing)', async function () {
      await expectError('/v1/completions', { prompt: 'a', max_tokens: 0 }, 400, 'max_tokens', /only allowed with echo/);
    });

    it('answers 400 when max_tokens is larger than the context', async function () {
      await expectError('/v1/completions', { prompt: 'a', max_tokens: 257 }, 400, 'max_tokens', /at most 256, the model's context/);
      await expectError('/v1/completions', { prompt: 'a', max_tokens: 1e300 }, 400, 'max_tokens', /max_tokens/);
    });

    it('answers 400 when max_tokens is not a whole number', async function () {
      await expectError('/v1/completions', { prompt: 'a', max_tokens: 2.5 }, 400, 'max_tokens', /whole number/);
      await expectError('/v1/completions', { prompt: 'a', max_tokens: '8' }, 400, 'max_tokens', /must be a whole number/);
    });

    it('answers 400 when the body is not valid JSON', async function () {
      await expectError('/v1/completions', '{"prompt": "a",', 400, null, /not valid JSON/);
    });

    it('answers 400 when the body is JSON but not an object', async function () {
      for (const body of ['[]', '"prompt"', '42']) await expectError('/v1/completions', body, 400, null, /JSON|object/);
      await expectError('/v1/completions', 'null', 400, null, /JSON|object/);
    });

    it('answers 400 when the body is not sent as application/json', async function () {
      await expectError('/v1/completions', '{"prompt": "a"}', 400, null, /Content-Type: application\/json/, { headers: { 'Content-Type': 'text/plain' } });
    });

    it('answers 400 when the prompt is missing, empty, or not text or token ids', async function () {
      await expectError('/v1/completions', { max_tokens: 4 }, 400, 'prompt', /prompt is required/);
      await expectError('/v1/completions', { prompt: '' }, 400, 'prompt', /must not be empty/);
      await expectError('/v1/completions', { prompt: { text: 'a' } }, 400, 'prompt', /a string, a list of strings, a list of token ids or a list of lists/);
      await expectError('/v1/completions', { prompt: ['a', 2] }, 400, 'prompt', /a string, a list of strings/);
    });

    it('answers 400 when the prompt leaves no room in the context', async function () {
      await expectError('/v1/completions', { prompt: 'x'.repeat(256), max_tokens: 1 }, 400, 'prompt', /the prompt is 256 tokens; the model's context holds 256/);
      await expectError('/v1/completions', { prompt: 'é'.repeat(200) }, 400, 'prompt', /the prompt is 400 tokens/); // two bytes each
    });

    it('answers 400 when a sampling parameter is out of range or of the wrong type', async function () {
      await expectError('/v1/completions', { prompt: 'a', temperature: -0.1 }, 400, 'temperature', /between 0 and 2/);
      await expectError('/v1/completions', { prompt: 'a', temperature: 'hot' }, 400, 'temperature', /must be a number/);
      await expectError('/v1/completions', { prompt: 'a', top_p: 0 }, 400, 'top_p', /above 0/);
      await expectError('/v1/completions', { prompt: 'a', top_p: 1.5 }, 400, 'top_p', /at most 1/);
      await expectError('/v1/completions', { prompt: 'a', seed: 1.5 }, 400, 'seed', /whole number/);
      await expectError('/v1/completions', { prompt: 'a', stream: 'yes' }, 400, 'stream', /true or false/);
      await expectError('/v1/completions', { prompt: 'a', model: 7 }, 400, 'model', /must be a string/);
    });

    it('answers 400 when stop is not a string or a list of at most 4 strings', async function () {
      await expectError('/v1/completions', { prompt: 'a', stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'stop', /at most 4 strings/);
      await expectError('/v1/completions', { prompt: 'a', stop: [1] }, 400, 'stop', /string or a list/);
    });

    it('answers 400 when a field asks for something this server does not do', async function () {
      await expectError('/v1/completions', { prompt: 'a', best_of: 2 }, 400, 'best_of', /best_of is not supported by this server \(only 1\)/);
      await expectError('/v1/completions', { prompt: 'a', suffix: 'b' }, 400, 'suffix', /not supported/);
      await expectError('/v1/completions', { prompt: 'a', logprobs: 21 }, 400, 'logprobs', /at most 20/);
      await expectError('/v1/completions', { prompt: 'a', presence_penalty: 2.5 }, 400, 'presence_penalty', /between -2 and 2/);
    });

    it('answers 400 when n is not a whole number from 1 to 8 (this server\'s --max-batch)', async function () {
      await expectError('/v1/completions', { prompt: 'a', n: 0 }, 400, 'n', /n must be at least 1/);
      await expectError('/v1/completions', { prompt: 'a', n: 9 }, 400, 'n', /n must be at most 8 on this server/);
      await expectError('/v1/completions', { prompt: 'a', n: 1.5 }, 400, 'n', /n must be a whole number/);
      await expectError('/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }], n: '2' }, 400, 'n', /n must be a whole number/);
    });

    it('answers 404 when the model named is not the one served', async function () {
      const { error } = await expectError('/v1/completions', { model: 'gpt-4', prompt: 'a' }, 404, 'model', /the model 'gpt-4' does not exist; this server serves 'ebserve-moe-8x'/);
      assert.equal(error.type, 'not_found_error');
    });

    it('answers 413 when the body is over --max-body-bytes', async function () {
      const { error } = await expectError('/v1/completions', { prompt: 'a'.repeat(5000) }, 413, null, /the body is \d+ bytes; the limit is 4096 bytes/);
      assert.equal(error.type, 'invalid_request_error');
    });

    it('answers 405 with Allow for another method', async function () {
      const res = await fetch(`${url}/v1/completions`);
      assert.equal(res.status, 405);
      assert.equal(res.headers.get('allow'), 'POST');
      assert.match(((await res.json()) as ErrorBody).error.message, /GET is not allowed on \/v1\/completions; use POST/);
    });
  });

  describe('POST /v1/chat/completions', function () {
    it('answers 400 when messages are missing or empty', async function () {
      await expectError('/v1/chat/completions', { max_tokens: 4 }, 400, 'messages', /messages is required/);
      await expectError('/v1/chat/completions', { messages: [] }, 400, 'messages', /at least one message/);
      await expectError('/v1/chat/completions', { messages: 'hello' }, 400, 'messages', /must be a list/);
    });

    it('answers 400 naming the message when a role or content is wrong', async function () {
      await expectError('/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }, { role: 'tool', content: 'b' }] }, 400, 'messages[1].role', /role must be one of system, developer, user, assistant/);
      await expectError('/v1/chat/completions', { messages: [{ role: 'user', content: 5 }] }, 400, 'messages[0].content', /content must be a string or a list/);
      await expectError('/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }, 400, 'messages[0].content', /content must be/);
      await expectError('/v1/chat/completions', { messages: [null] }, 400, 'messages[0]', /message must be an object/);
    });

    it('answers 400 when the conversation leaves no room in the context', async function () {
      await expectError('/v1/chat/completions', { messages: [{ role: 'user', content: 'x'.repeat(250) }] }, 400, 'messages', /the prompt is 267 tokens/);
    });

    it('answers 400 when max_completion_tokens is out of range', async function () {
      await expectError('/v1/chat/completions', { messages: [{ role: 'user', content: 'a' }], max_completion_tokens: 0 }, 400, 'max_completion_tokens', /at least 1/);
    });
  });

  describe('unknown routes', function () {
    it('answers 404 in OpenAI\'s error shape', async function () {
      for (const p of ['/v1/embeddings', '/', '/v2/completions', '/%', '/health/..%2f..%2fetc']) {
        const res = await fetch(`${url}${p}`);
        assert.equal(res.status, 404, p);
        const e = (await res.json()) as ErrorBody;
        assert.equal(e.error.type, 'not_found_error');
        assert.equal(e.error.code, 404);
      }
    });
  });

  describe('robustness', function () {
    /** Sends raw bytes over a socket and returns whatever comes back (the server may also just close). */
    function raw(bytes: string | Buffer): Promise<string> {
      const { port } = new URL(url);
      return new Promise((resolve) => {
        const sock = net.connect(Number(port), '127.0.0.1');
        let got = '';
        sock.on('data', (d) => (got += d.toString('latin1')));
        sock.on('error', () => resolve(got));
        sock.on('close', () => resolve(got));
        sock.write(bytes, () => sock.end());
        setTimeout(() => sock.destroy(), 2000);
      });
    }

    it('survives malformed bodies, headers and connections, and still answers /health and completions', async function () {
      const nested = `${'['.repeat(3000)}${']'.repeat(3000)}`;
      const bodies: [string | Buffer, Record<string, string>][] = [
        ['{', {}],
        [nested, {}],
        [`{"prompt": ${nested}}`, {}],
        ['{"__proto__": {"prompt": "x"}, "constructor": {"prototype": {"max_tokens": 1}}}', {}],
        [Buffer.from([0x7b, 0x22, 0x70, 0x72, 0x6f, 0x6d, 0x70, 0x74, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), {}], // {"prompt":"\xff\xfe"}
        ['{"prompt": "a", "max_tokens": 1e999}', {}],
        ['{"prompt": "\\ud800", "max_tokens": 1}', {}], // a lone surrogate
        ['{"prompt": "a"}', { 'Content-Encoding': 'gzip' }], // says gzip, is not
        [zlib.gzipSync('{"prompt": "48+27=", "max_tokens": 3, "stop": "\\n"}'), { 'Content-Encoding': 'gzip' }],
        [zlib.gzipSync(Buffer.alloc(100_000, 0x20)), { 'Content-Encoding': 'gzip' }], // a small zip of a big body
        ['{"prompt": "a"}', { 'Content-Encoding': 'br, zstd, x-unknown' }],
        ['{"prompt": "a"}', { 'Content-Type': 'application/json; charset=ebcdic' }],
        ['{"messages": [{"role": "user", "content": "a"}], "stream": true, "stream_options": 3}', {}],
      ];
      for (const [body, headers] of bodies) {
        for (const path of ['/v1/completions', '/v1/chat/completions']) {
          const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body });
          assert.ok([200, 400, 413, 415].includes(res.status), `${path} ${String(body).slice(0, 40)} ${JSON.stringify(headers)}: ${res.status}`);
          if (res.status !== 200) {
            const e = (await res.json()) as ErrorBody;
            assert.equal(e.error.code, res.status);
          } else {
            await res.arrayBuffer();
          }
        }
      }
      const answers = await Promise.all([
        raw('GARBAGE\r\n\r\n'),
        raw('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt": "a"'), // cut short
        raw('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'),
        raw(`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`),
        raw(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1])), // a TLS hello on the plain port
      ]);
      assert.match(answers[0], /^HTTP\/1\.1 400/);
      assert.match(answers[2], /^HTTP\/1\.1 400/);
      assert.match(answers[3], /^HTTP\/1\.1 431/);

      const health = await fetch(`${url}/health`);
      assert.equal(health.status, 200);
      const ok = await post(url, '/v1/completions', { prompt: '48+27=', max_tokens: 4, stop: '\n' });
      assert.equal(((await ok.json()) as { choices: { text: string }[] }).choices[0].text, '75');
    });
  });
});
