// The batch scheduler's waiting line on its own, over a stand-in model whose steps the test can
// hold: requests join in arrival order as room frees up, a bounded line that refuses at once,
// waiting requests that leave when their signal aborts, failures that stay with their request,
// idle(), and a Retry-After estimate that follows measured request durations.
import assert from 'node:assert/strict';

import { BatchScheduler, QueueFullError, StepFailed, type BatchState } from '../src/serve/batcher.js';
import { FakeStepModel, tick } from './serve/fake-step-model.js';

const signal = () => new AbortController().signal;

function scheduler(model: FakeStepModel, o: { maxBatch?: number; maxWaiting?: number; onChange?: (s: BatchState) => void } = {}) {
  const b = new BatchScheduler({ maxBatch: o.maxBatch ?? 1, maxWaiting: o.maxWaiting ?? 8, prefillChunk: 16, onChange: o.onChange });
  b.attach(model);
  return b;
}

describe('BatchScheduler: the waiting line', function () {
  it('with a batch of one, runs one request at a time, in arrival order', async function () {
    const model = new FakeStepModel();
    const q = scheduler(model);
    const log: string[] = [];
    const release = model.hold();
    const runs = ['a', 'k', 'u'].map((p) =>
      q.run([model.sequence(p, { maxTokens: 3 })], signal(), () => log.push(`start ${p}`)).then(([g]) => (log.push(`end ${p}`), g.text)));
    await tick();
    assert.deepEqual(log, ['start a']);
    assert.deepEqual(q.state, { running: 1, waiting: 2, sequences: 1 });
    release();
    assert.deepEqual(await Promise.all(runs), ['bcd', 'lmn', 'vwx']);
    assert.deepEqual(log, ['start a', 'end a', 'start k', 'end k', 'start u', 'end u']);
    assert.deepEqual(q.state, { running: 0, waiting: 0, sequences: 0 });
    assert.ok(model.steps.every((s) => s.length === 1), 'never two sequences in a step');
  });

  it('refuses a request synchronously with QueueFullError when it would wait and maxWaiting requests already wait', async function () {
    const model = new FakeStepModel();
    const q = scheduler(model, { maxWaiting: 1 });
    const release = model.hold();
    const pa = q.run([model.sequence('a', { maxTokens: 2 })], signal());
    const pb = q.run([model.sequence('b', { maxTokens: 2 })], signal());
    assert.throws(() => q.run([model.sequence('c')], signal()), (e: unknown) => {
      assert.ok(e instanceof QueueFullError);
      assert.equal(e.waiting, 1);
      assert.match(e.message, /busy: 1 request already waiting; retry in \d+ s/);
      assert.ok(Number.isInteger(e.retryAfterSeconds) && e.retryAfterSeconds >= 1);
      return true;
    });
    release();
    await Promise.all([pa, pb]);
    assert.equal((await q.run([model.sequence('c', { maxTokens: 1 })], signal()))[0].text, 'd'); // room again
  });

  it('with maxWaiting 0 runs what fits in the batch and refuses every other request', async function () {
    const model = new FakeStepModel();
    const q = scheduler(model, { maxBatch: 2, maxWaiting: 0 });
    const release = model.hold();
    const pa = q.run([model.sequence('a', { maxTokens: 2 })], signal());
    const pb = q.run([model.sequence('b', { maxTokens: 2 })], signal()); // fits beside a: no wait
    assert.throws(() => q.run([model.sequence('c')], signal()), QueueFullError);
    release();
    await Promise.all([pa, pb]);
  });

  it('drops a waiting request whose signal aborts: it never runs and its promise rejects with the reason', async function () {
    const model = new FakeStepModel();
    const states: BatchState[] = [];
    const q = scheduler(model, { maxWaiting: 4, onChange: (s) => states.push(s) });
    const started: string[] = [];
    const release = model.hold();
    const pa = q.run([model.sequence('a', { maxTokens: 2 })], signal(), () => started.push('a'));
    const ac = new AbortController();
    const pb = q.run([model.sequence('b', { maxTokens: 2 })], ac.signal, () => started.push('b'));
    const pc = q.run([model.sequence('c', { maxTokens: 2 })], signal(), () => started.push('c'));
    await tick();
    assert.equal(q.state.waiting, 2);
    ac.abort(new Error('client left'));
    await assert.rejects(pb, /client left/);
    assert.equal(q.state.waiting, 1);
    release();
    await Promise.all([pa, pc]);
    assert.deepEqual(started, ['a', 'c']);
    assert.deepEqual(states.at(-1), { running: 0, waiting: 0, sequences: 0 });
    assert.ok(states.some((s) => s.waiting === 2));
  });

  it('rejects at once a request whose signal already aborted', async function () {
    const model = new FakeStepModel();
    const q = scheduler(model);
    await assert.rejects(q.run([model.sequence('a')], AbortSignal.abort(new Error('gone'))), /gone/);
    assert.deepEqual(q.state, { running: 0, waiting: 0, sequences: 0 });
    assert.equal(model.steps.length, 0);
  });

  it('goes on to the next request when one fails, whether its check, its own hooks or the step failed', async function () {
    const model = new FakeStepModel();
    const q = scheduler(model, { maxWaiting: 4 });
    const outside = q.run([model.sequence([300])], signal()); // a token outside the vocabulary: the check fails
    const hook = q.run([model.sequence('a', { onToken: () => { throw new TypeError('a hook failed'); } })], signal());
    const good = q.run([model.sequence('a', { maxTokens: 2 })], signal());
    await assert.rejects(outside, (e: unknown) => e instanceof RangeError && /token 300 outside the vocabulary of 256/.test(e.message));
    await assert.rejects(hook, /a hook failed/);
    assert.equal((await good)[0].text, 'bc');
    model.failNext = new Error('device lost');
    await assert.rejects(q.run([model.sequence('a')], signal()), (e: unknown) => e instanceof StepFailed && /the forward step failed: device lost/.test(e.message));
    assert.equal((await q.run([model.sequence('a', { maxTokens: 1 })], signal()))[0].text, 'b');
  });

  it('resolves idle() once nothing runs or waits', async function () {
    const model = new FakeStepModel();
    const q = scheduler(model);
    await q.idle();
    const release = model.hold();
    const pa = q.run([model.sequence('a', { maxTokens: 2 })], signal());
    let idle = false;
    const pi = q.idle().then(() => (idle = true));
    await tick();
    assert.equal(idle, false);
    release();
    await pa;
    await pi;
    assert.equal(idle, true);
  });

  it('estimates Retry-After from measured request durations and the batches of sequences ahead', async function () {
    const model = new FakeStepModel();
    const q = scheduler(model, { maxWaiting: 4 });
    assert.equal(q.retryAfterSeconds(), 1); // nothing measured: the floor
    // One request of ≈ 0.3 s: three steps held for 0.1 s each.
    const timed = q.run([model.sequence('a', { maxTokens: 3 })], signal());
    for (let i = 0; i < 3; i++) {
      const release = model.hold();
      await new Promise((r) => setTimeout(r, 100));
      release();
      await tick();
    }
    await timed;
    const release = model.hold();
    const runs = ['a', 'b', 'c', 'd'].map((p) => q.run([model.sequence(p, { maxTokens: 1 })], signal()));
    // 4 sequences ahead in batches of 1 (1 running + 3 waiting) of ≈ 0.3 s each: about 1.2 s, so 2 whole seconds.
    assert.equal(q.retryAfterSeconds(), 2);
    release();
    await Promise.all(runs);
  });
});
