// Shutting down: in-flight requests finish while no new connection is accepted; after the drain
// timeout what is left is cut (a stream gets a last error event, a waiting request a 503). Then
// the same as users see it: bin/ebserve serve as a real process (built by `make build`), on a
// free port, finishing a streamed request after SIGTERM and exiting 0.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

import type { RunningServer } from '../src/serve/server.js';
import { post, readSse, sseEvents, startEmbedded, until, type ErrorBody } from './serve/helpers.js';

describe('shutdown', function () {
  let server: RunningServer | undefined;
  afterEach(async function () {
    await server?.shutdown({ drainTimeoutSeconds: 0 });
    server = undefined;
  });

  it('lets an in-flight stream finish, refuses new connections meanwhile, and reports it drained', async function () {
    server = await startEmbedded({ spec: { engine: 'resident' } });
    const url = server.url;
    const a = sseEvents(await post(url, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 30, stream: true }));
    assert.notEqual(await a.next(), null);
    const stopping = server.shutdown();
    await assert.rejects(fetch(`${url}/health`, { headers: { Connection: 'close' } })); // the listener is closed
    const events: unknown[] = [];
    for (let e = await a.next(); e !== null; e = await a.next()) events.push(e);
    assert.equal(events.at(-1), '[DONE]');
    assert.deepEqual(await stopping, { drained: true, cut: 0 });
  });

  it('cuts what is left after the drain timeout: a stream ends with an error event, a waiting request gets 503', async function () {
    server = await startEmbedded({ spec: { engine: 'resident' }, maxBatch: 1, maxQueue: 2 });
    const url = server.url;
    const streamed = await post(url, '/v1/completions', { prompt: 'Call me', max_tokens: 250, stream: true });
    const a = sseEvents(streamed);
    assert.notEqual(await a.next(), null);
    const waiting = post(url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 });
    await until(() => server!.metrics.queueDepth.get().then((g) => g.values[0]?.value === 1), 10_000, 'the chat request waiting');
    const result = await server.shutdown({ drainTimeoutSeconds: 0.2 });
    assert.deepEqual(result, { drained: false, cut: 2 });
    const events: unknown[] = [];
    for (let e = await a.next(); e !== null; e = await a.next()) events.push(e);
    assert.notEqual(events.at(-1), '[DONE]');
    const last = events.at(-1) as ErrorBody;
    assert.deepEqual(last.error, { message: 'the server shut down before this request finished', type: 'unavailable_error', param: null, code: 503 });
    const w = await waiting;
    assert.equal(w.status, 503);
    assert.equal(((await w.json()) as ErrorBody).error.message, 'the server shut down before this request finished');
    server = undefined;
  });
});

describe('ebserve serve (a real process)', function () {
  const bin = path.resolve('bin/ebserve');

  /** Starts bin/ebserve with `args`; `stderr()` is everything it wrote so far, `exited` its code. */
  function ebserve(args: string[]) {
    const child: ChildProcess = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.stdout!.resume();
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    return { child, stderr: () => stderr, exited };
  }

  it('binds a free port, loads the embedded model, finishes an in-flight stream on SIGTERM and exits 0', async function () {
    const p = ebserve(['serve', '--port', '0']);
    try {
      await until(() => /health {3}http\S+\n/.test(p.stderr()), 60_000, `the server to be ready:\n${p.stderr()}`);
      const log = p.stderr();
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+);/.exec(log)![1];
      assert.match(log, /model ebserve-moe-8x .*8 layers × 8 experts/);
      assert.match(log, /TensorFlow\.js backend (wasm|cpu|tensorflow) \(/);
      assert.match(log, /engine offload: device cache of 4\.7 MB experts as they crossed, multiplied in place \(tier A: rungs by the fused product, exact bf16 by the bf16 one\).*ladder of policy u-shape.*levels chosen live by the controller/);
      assert.match(log, /forward native/);
      // The embedded model's measured profile is the default: the controller plans on its sensitivity.
      assert.match(log, /controller on: policy u-shape .*sensitivity from the profile/);
      assert.match(log, /offload: link host copy/);
      assert.ok(log.includes(`API      ${url}/v1/completions`));
      assert.ok(log.includes(`metrics  ${url}/metrics`));
      assert.ok(log.includes(`health   ${url}/health`));

      const a = sseEvents(await post(url, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 40, stream: true }));
      assert.notEqual(await a.next(), null);
      p.child.kill('SIGTERM');
      const events: unknown[] = [];
      for (let e = await a.next(); e !== null; e = await a.next()) events.push(e);
      assert.equal(events.at(-1), '[DONE]', 'the in-flight stream finished');
      assert.equal(await p.exited, 0, p.stderr());
      assert.match(p.stderr(), /SIGTERM: no longer accepting[^\n]*\n[^]*drained; exiting/);
    } finally {
      p.child.kill('SIGKILL');
    }
  });

  it('stops waiting on a second SIGTERM: the in-flight stream ends with an error event, and the process exits 0', async function () {
    const p = ebserve(['serve', '--port', '0', '--engine', 'resident']);
    try {
      await until(() => /ready in/.test(p.stderr()), 60_000, `the server to be ready:\n${p.stderr()}`);
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+);/.exec(p.stderr())![1];
      const a = sseEvents(await post(url, '/v1/completions', { prompt: 'Call me', max_tokens: 250, stream: true }));
      assert.notEqual(await a.next(), null);
      p.child.kill('SIGTERM');
      await until(() => /no longer accepting/.test(p.stderr()), 10_000, 'the first signal to be seen');
      p.child.kill('SIGTERM');
      const events: unknown[] = [];
      for (let e = await a.next(); e !== null; e = await a.next()) events.push(e);
      assert.equal((events.at(-1) as ErrorBody).error.code, 503);
      assert.equal(await p.exited, 0, p.stderr());
      assert.match(p.stderr(), /drain timeout; cut 1 request; exiting/);
    } finally {
      p.child.kill('SIGKILL');
    }
  });

  it('exits 0 on SIGTERM while the model is still loading, without calling it a failure', async function () {
    const p = ebserve(['serve', '--port', '0']);
    try {
      await until(() => /listening on/.test(p.stderr()), 30_000, 'the port to be bound');
      p.child.kill('SIGTERM');
      assert.equal(await p.exited, 0, p.stderr());
      assert.doesNotMatch(p.stderr(), /failed to load/);
      assert.match(p.stderr(), /drained; exiting/);
    } finally {
      p.child.kill('SIGKILL');
    }
  });

  it('exits 2 with its usage on a bad flag, before binding anything', async function () {
    const p = ebserve(['serve', '--level', '9']);
    assert.equal(await p.exited, 2);
    assert.match(p.stderr(), /--level must be an integer in 0\.\.5, got 9/);
    assert.match(p.stderr(), /usage: ebserve serve/);
  });

  it('exits 2 naming --max-batch or --prefill-chunk when either is not a whole number ≥ 1, before binding anything', async function () {
    for (const [flag, value] of [['--max-batch', '0'], ['--prefill-chunk', '2.5']]) {
      const p = ebserve(['serve', '--port', '0', flag, value]);
      assert.equal(await p.exited, 2, p.stderr());
      assert.match(p.stderr(), new RegExp(`${flag} must be a whole number from 1 to \\d+, got ${value.replace('.', '\\.')}`));
      assert.doesNotMatch(p.stderr(), /listening on/);
    }
  });

  it('exits 1 naming --prefill-chunk when a chunk would be longer than the model\'s context', async function () {
    const p = ebserve(['serve', '--port', '0', '--engine', 'resident', '--prefill-chunk', '257']);
    assert.equal(await p.exited, 1, p.stderr());
    assert.match(p.stderr(), /the model failed to load: --prefill-chunk 257 is longer than the model's context of 256 tokens/);
  });

  it('exits 1 naming the folder when the model cannot be loaded', async function () {
    const p = ebserve(['serve', '--port', '0', '--model', '/nonexistent/model']);
    assert.equal(await p.exited, 1);
    assert.match(p.stderr(), /listening on http:\/\/127\.0\.0\.1:\d+/);
    assert.match(p.stderr(), /the model failed to load: .*\/nonexistent\/model/);
  });

  it('answers a completion through the resident engine too, and stops on SIGINT', async function () {
    const p = ebserve(['serve', '--port', '0', '--engine', 'resident', '--max-queue', '0']);
    try {
      await until(() => /ready in/.test(p.stderr()), 60_000, `the server to be ready:\n${p.stderr()}`);
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+);/.exec(p.stderr())![1];
      assert.match(p.stderr(), /engine resident/);
      const events = await readSse(await post(url, '/v1/completions', { prompt: '48+27=', max_tokens: 4, stop: '\n', stream: true }));
      assert.equal((events as { choices: { text: string }[] }[]).slice(0, -2).map((e) => e.choices[0].text).join(''), '75');
      p.child.kill('SIGINT');
      assert.equal(await p.exited, 0, p.stderr());
    } finally {
      p.child.kill('SIGKILL');
    }
  });
});
