// The generation queue on its own: one job at a time in arrival order, a bounded waiting line that
// refuses at once, waiting jobs that leave when their signal aborts, and a Retry-After estimate
// that follows measured job durations.
import assert from 'node:assert/strict';

import { GenerationQueue, QueueFullError, type QueueState } from '../src/serve/queue.js';

/** A job that runs until release() is called, and records that it ran. */
function heldJob(log: string[], name: string) {
  let release!: () => void;
  const done = new Promise<void>((r) => (release = r));
  return {
    release: () => release(),
    job: async () => {
      log.push(`start ${name}`);
      await done;
      log.push(`end ${name}`);
      return name;
    },
  };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('GenerationQueue', function () {
  it('runs one job at a time, in arrival order', async function () {
    const log: string[] = [];
    const q = new GenerationQueue(8);
    const jobs = ['a', 'b', 'c'].map((n) => heldJob(log, n));
    const results = jobs.map((j) => q.run(j.job, new AbortController().signal));
    await tick();
    assert.deepEqual(log, ['start a']);
    assert.deepEqual(q.state, { running: 1, waiting: 2 });
    jobs[1].release(); // b is released early but must wait for a
    jobs[2].release();
    await tick();
    assert.deepEqual(log, ['start a']);
    jobs[0].release();
    assert.deepEqual(await Promise.all(results), ['a', 'b', 'c']);
    assert.deepEqual(log, ['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
    assert.deepEqual(q.state, { running: 0, waiting: 0 });
  });

  it('refuses a job synchronously with QueueFullError when maxWaiting jobs already wait', async function () {
    const log: string[] = [];
    const q = new GenerationQueue(1);
    const a = heldJob(log, 'a');
    const b = heldJob(log, 'b');
    const pa = q.run(a.job, new AbortController().signal);
    const pb = q.run(b.job, new AbortController().signal);
    assert.throws(() => q.run(async () => 'c', new AbortController().signal), (e: unknown) => {
      assert.ok(e instanceof QueueFullError);
      assert.equal(e.waiting, 1);
      assert.ok(Number.isInteger(e.retryAfterSeconds) && e.retryAfterSeconds >= 1);
      return true;
    });
    a.release();
    b.release();
    await Promise.all([pa, pb]);
    assert.equal(await q.run(async () => 'c', new AbortController().signal), 'c'); // room again
  });

  it('with maxWaiting 0 runs one job and refuses every other while it runs', async function () {
    const q = new GenerationQueue(0);
    const a = heldJob([], 'a');
    const pa = q.run(a.job, new AbortController().signal);
    assert.throws(() => q.run(async () => 'b', new AbortController().signal), QueueFullError);
    a.release();
    await pa;
  });

  it('drops a waiting job whose signal aborts: it never runs and its promise rejects with the reason', async function () {
    const log: string[] = [];
    const states: QueueState[] = [];
    const q = new GenerationQueue(4, (s) => states.push(s));
    const a = heldJob(log, 'a');
    const pa = q.run(a.job, new AbortController().signal);
    const ac = new AbortController();
    const pb = q.run(heldJob(log, 'b').job, ac.signal);
    const pc = q.run(async () => (log.push('c'), 'c'), new AbortController().signal);
    assert.equal(q.state.waiting, 2);
    ac.abort(new Error('client left'));
    await assert.rejects(pb, /client left/);
    assert.equal(q.state.waiting, 1);
    a.release();
    await Promise.all([pa, pc]);
    assert.deepEqual(log, ['start a', 'end a', 'c']);
    assert.deepEqual(states.at(-1), { running: 0, waiting: 0 });
    assert.ok(states.some((s) => s.waiting === 2));
  });

  it('rejects at once a job whose signal already aborted', async function () {
    const q = new GenerationQueue(1);
    let ran = false;
    await assert.rejects(q.run(async () => (ran = true), AbortSignal.abort(new Error('gone'))), /gone/);
    assert.equal(ran, false);
    assert.deepEqual(q.state, { running: 0, waiting: 0 });
  });

  it('goes on to the next job when one fails', async function () {
    const q = new GenerationQueue(2);
    const bad = q.run(async () => {
      throw new Error('boom');
    }, new AbortController().signal);
    const good = q.run(async () => 'ok', new AbortController().signal);
    await assert.rejects(bad, /boom/);
    assert.equal(await good, 'ok');
  });

  it('resolves idle() once nothing runs or waits', async function () {
    const q = new GenerationQueue(2);
    await q.idle();
    const a = heldJob([], 'a');
    const pa = q.run(a.job, new AbortController().signal);
    let idle = false;
    const pi = q.idle().then(() => (idle = true));
    await tick();
    assert.equal(idle, false);
    a.release();
    await pa;
    await pi;
    assert.equal(idle, true);
  });

  it('estimates Retry-After from measured job durations and the turns ahead', async function () {
    const q = new GenerationQueue(4);
    assert.equal(q.retryAfterSeconds(), 1); // nothing measured: the floor
    await q.run(() => new Promise((r) => setTimeout(r, 300)), new AbortController().signal);
    const holds = [heldJob([], 'a'), heldJob([], 'b'), heldJob([], 'c'), heldJob([], 'd')];
    const runs = holds.map((h) => q.run(h.job, new AbortController().signal));
    // 4 turns ahead (1 running + 3 waiting) of ≈ 0.3 s each: about 1.2 s, so 2 whole seconds.
    assert.equal(q.retryAfterSeconds(), 2);
    holds.forEach((h) => h.release());
    await Promise.all(runs);
  });
});
