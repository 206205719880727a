// The live dashboard (src/serve/dashboard.ts): its router on a bare express app over a fake
// DashboardSource the test controls. First the event stream as a client reads it — the full state
// at once, an event per change (changes in one turn coalesced), keep-alive comments, listeners
// released when the client goes away, a 503 or a failure event when the source fails — then the
// page itself in Debian's headless Chromium driven by playwright-core: one bar per layer at the
// plan's levels, redrawn when the plan changes, loading nothing from anywhere but the server.
// A screenshot goes to build/artifacts/dashboard.png.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import express from 'express';

import { dashboardRouter, type DashboardSource, type DashboardState } from '../src/serve/dashboard.js';
import { errorHandler, type ErrorBody } from '../src/serve/errors.js';
import { post, sseEvents, startEmbedded, until } from './serve/helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const LABELS = ['0.5σ', '0.25σ', '0.125σ', '0.0625σ', '0.03125σ', 'exact'];
const BOUNDS = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0];

/** A DashboardSource whose state the test sets; it counts its listeners. */
class FakeSource implements DashboardSource {
  readonly listeners = new Set<() => void>();
  failing: Error | null = null;
  state: DashboardState;

  constructor() {
    const levels = [1, 2, 4, 5, 5, 4, 2, 1];
    this.state = {
      at: Date.now(),
      model: 'ebserve-moe-8x',
      controller: 'on',
      planVersion: 1,
      levels,
      levelLabels: LABELS,
      layerBounds: levels.map((l) => BOUNDS[l]),
      bandwidthBytesPerSecond: 2.5e9,
      linkEmulated: true,
      p95Seconds: 0.021,
      slaSeconds: 0.03,
      canary: { top1: 0.97, kl: 0.012, exact: 1, floor: 0.9 },
      decisions: [{ at: Date.now() - 5000, action: 'hold', reason: 'p95 21.0 ms within the tolerance band of the SLA 30 ms' }],
      batch: { sequences: 3, maxBatch: 8, waiting: 1 },
    };
  }

  snapshot(): DashboardState {
    if (this.failing) throw this.failing;
    return structuredClone(this.state);
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Changes the state and tells every listener. */
  set(patch: Partial<DashboardState>): void {
    this.state = { ...this.state, ...patch, at: Date.now() };
    for (const l of this.listeners) l();
  }

  /** A new plan, with the decision that made it. */
  setPlan(levels: number[], action: string, reason: string): void {
    this.set({
      planVersion: this.state.planVersion + 1,
      levels,
      layerBounds: levels.map((l) => BOUNDS[l]),
      decisions: [...this.state.decisions, { at: Date.now(), action, reason }].slice(-20),
    });
  }
}

interface SseEvent {
  event: string;
  data: string;
}

/**
 * A raw reader of one event stream, reading in the background: `next()` is the next event that
 * carries data (blocks of only comments or `retry:` are not events), `comments` every comment line
 * so far, `ended` whether the server ended the stream.
 */
function sseReader(res: Response) {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const events: SseEvent[] = [];
  const comments: string[] = [];
  let ended = false;
  let failure: unknown = null;
  let wake = null as (() => void) | null;
  const parse = (block: string) => {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line.slice(1).trim());
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
      else if (!line.startsWith('retry: ') && !line.startsWith('id: ')) throw new Error(`unexpected SSE line ${JSON.stringify(line)}`);
    }
    if (data.length) events.push({ event, data: data.join('\n') });
  };
  void (async () => {
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let at: number;
        while ((at = buffer.indexOf('\n\n')) >= 0) {
          parse(buffer.slice(0, at));
          buffer = buffer.slice(at + 2);
        }
        wake?.();
      }
    } catch (e) {
      if ((e as Error).name !== 'AbortError') failure = e;
    }
    ended = true;
    wake?.();
  })();
  return {
    comments,
    get ended() {
      return ended;
    },
    async next(): Promise<SseEvent | null> {
      for (;;) {
        if (failure) throw failure;
        if (events.length) return events.shift()!;
        if (ended) return null;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
  };
}

/** Resolves with `p`, or rejects after `ms` naming `what`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)))]).finally(() => clearTimeout(timer));
}

describe('dashboard', function () {
  let source: FakeSource;
  let server: http.Server;
  let url: string;
  const shutdown = new AbortController();
  const serverLog: string[] = [];

  before(async function () {
    source = new FakeSource();
    const app = express();
    app.use(dashboardRouter(source, { keepAliveMs: 150, signal: shutdown.signal }));
    // The server's own error path, so refusals come in its (OpenAI) shape.
    app.use(errorHandler({ maxBodyBytes: 1 << 20, log: (line) => serverLog.push(line) }));
    server = http.createServer(app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async function () {
    shutdown.abort();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  describe('GET /dashboard', function () {
    it('answers one self-contained HTML page, with a policy that lets it load nothing from elsewhere', async function () {
      const res = await fetch(`${url}/dashboard`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type')!, /^text\/html; charset=utf-8/);
      const csp = res.headers.get('content-security-policy')!;
      assert.match(csp, /default-src 'none'/);
      assert.match(csp, /connect-src 'self'/);
      const html = await res.text();
      assert.match(html, /^<!doctype html>/);
      assert.match(html, /new EventSource\(/);
      assert.doesNotMatch(html, /\b(src|href)\s*=\s*"(?!data:)/i, 'no external script, style sheet or image (data: only)');
      assert.doesNotMatch(html, /https?:\/\//, 'no absolute URL anywhere');
    });

    it('refuses other methods with 405 and Allow', async function () {
      const res = await fetch(`${url}/dashboard`, { method: 'POST' });
      assert.equal(res.status, 405);
      assert.equal(res.headers.get('allow'), 'GET, HEAD');
      assert.equal(((await res.json()) as ErrorBody).error.message, 'POST is not allowed on /dashboard; use GET');
    });
  });

  describe('GET /dashboard/events', function () {
    it('sends the full state at once, then an event on each change, and releases its listener when the client goes away', async function () {
      const before = source.listeners.size;
      const ctl = new AbortController();
      const res = await fetch(`${url}/dashboard/events`, { signal: ctl.signal });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type')!, /^text\/event-stream/);
      assert.equal(res.headers.get('cache-control'), 'no-cache, no-transform');
      const sse = sseReader(res);

      const first = await within(sse.next(), 5000, 'the first event');
      assert.equal(first?.event, 'message');
      assert.deepEqual(JSON.parse(first!.data), source.state, 'the first event is the whole state');
      assert.equal(source.listeners.size, before + 1);

      source.setPlan([0, 1, 3, 5, 5, 3, 1, 0], 'degrade', 'p95 41.0 ms over the SLA 30 ms');
      const changed = JSON.parse((await within(sse.next(), 5000, 'the event after a change'))!.data) as DashboardState;
      assert.deepEqual(changed, source.state);
      assert.equal(changed.planVersion, 2);
      assert.deepEqual(changed.levels, [0, 1, 3, 5, 5, 3, 1, 0]);
      assert.equal(changed.decisions.at(-1)!.action, 'degrade');

      // Three changes in one turn of the event loop: one event, with the last of them.
      source.set({ p95Seconds: 0.04 });
      source.set({ p95Seconds: 0.05 });
      source.set({ p95Seconds: 0.06, bandwidthBytesPerSecond: 1e9 });
      const coalesced = JSON.parse((await within(sse.next(), 5000, 'the coalesced event'))!.data) as DashboardState;
      assert.equal(coalesced.p95Seconds, 0.06);
      assert.equal(coalesced.bandwidthBytesPerSecond, 1e9);
      source.set({ p95Seconds: 0.025 });
      const after = JSON.parse((await within(sse.next(), 5000, 'the next event'))!.data) as DashboardState;
      assert.equal(after.p95Seconds, 0.025, 'no event was queued between the coalesced one and this one');

      await until(() => sse.comments.includes('keep-alive'), 5000, 'a keep-alive comment');

      ctl.abort();
      await until(() => source.listeners.size === before, 5000, 'the listener to be released after the client left');
    });

    it('answers 503 when the source has no state, and a failure event (stream kept open) when it fails later', async function () {
      const listening = source.listeners.size;
      source.failing = new Error('no model loaded');
      const refused = await fetch(`${url}/dashboard/events`);
      assert.equal(refused.status, 503);
      assert.deepEqual(((await refused.json()) as ErrorBody).error, { message: 'the dashboard state is not available: no model loaded', type: 'unavailable_error', param: null, code: 503 });
      source.failing = null;

      const ctl = new AbortController();
      const sse = sseReader(await fetch(`${url}/dashboard/events`, { signal: ctl.signal }));
      assert.ok(await within(sse.next(), 5000, 'the first event'));
      source.failing = new Error('the controller is restarting');
      source.set({});
      const failure = await within(sse.next(), 5000, 'the failure event');
      assert.equal(failure?.event, 'failure');
      assert.deepEqual(JSON.parse(failure!.data), { message: 'the controller is restarting' });
      source.failing = null;
      source.set({ planVersion: 7 });
      const back = JSON.parse((await within(sse.next(), 5000, 'the state after the failure'))!.data) as DashboardState;
      assert.equal(back.planVersion, 7);
      ctl.abort();
      await until(() => source.listeners.size === listening, 5000, 'its listener released');
    });

    it('ends open streams when the server shuts down (the abort signal)', async function () {
      const ac = new AbortController();
      const listening = source.listeners.size;
      const app = express();
      app.use(dashboardRouter(source, { signal: ac.signal }));
      const s = http.createServer(app);
      await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
      try {
        const sse = sseReader(await fetch(`http://127.0.0.1:${(s.address() as AddressInfo).port}/dashboard/events`));
        assert.ok(await within(sse.next(), 5000, 'the first event'));
        assert.equal(source.listeners.size, listening + 1);
        ac.abort();
        assert.equal(await within(sse.next(), 5000, 'the end of the stream'), null);
        assert.equal(source.listeners.size, listening);
      } finally {
        ac.abort();
        s.closeAllConnections();
        await new Promise((resolve) => s.close(resolve));
      }
    });
  });

  describe('the page in headless Chromium', function () {
    // playwright-core drives Debian's Chromium (`make test` installs it); it downloads no browser.
    type Playwright = typeof import('playwright-core');
    let pw: Playwright;
    let context: import('playwright-core').BrowserContext | undefined;
    let profile: string | undefined;

    before(async function () {
      if (!fs.existsSync(CHROMIUM)) {
        console.log(`      skipped: ${CHROMIUM} is missing (\`make test\` installs Debian's chromium)`);
        this.skip();
      }
      pw = await import('playwright-core');
    });
    after(async function () {
      await context?.close();
      if (profile) fs.rmSync(profile, { recursive: true, force: true });
    });

    it('draws one bar per layer at the plan\'s levels, redraws them when the plan changes, and loads nothing from elsewhere', async function () {
      source.setPlan([1, 2, 4, 5, 5, 4, 2, 1], 'upgrade', 'p95 12.0 ms under the SLA 30 ms for the stable window');
      source.set({ p95Seconds: 0.021, bandwidthBytesPerSecond: 2.5e9, linkEmulated: true });
      profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-chromium-'));
      context = await pw.chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        viewport: { width: 1280, height: 860 },
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      });
      const page = context.pages()[0] ?? (await context.newPage());
      const requests: string[] = [];
      const problems: string[] = [];
      page.on('request', (r) => requests.push(r.url()));
      page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
      });

      await page.goto(`${url}/dashboard`);
      const bars = () => page.$$eval('[data-layer]', (els) => els.map((e) => ({ id: e.id, layer: Number(e.getAttribute('data-layer')), level: Number(e.getAttribute('data-level')), label: e.querySelector('.bound')!.textContent, height: parseFloat((e.querySelector('.fill') as HTMLElement).style.height) })));
      await page.waitForFunction((n) => document.querySelectorAll('[data-layer][data-level]').length === n, 8, { timeout: 10_000 });
      const drawn = await bars();
      assert.deepEqual(drawn.map((b) => b.id), [0, 1, 2, 3, 4, 5, 6, 7].map((i) => `layer-${i}`));
      assert.deepEqual(drawn.map((b) => b.layer), [0, 1, 2, 3, 4, 5, 6, 7]);
      assert.deepEqual(drawn.map((b) => b.level), [1, 2, 4, 5, 5, 4, 2, 1]);
      assert.deepEqual(drawn.map((b) => b.label), ['0.25σ', '0.125σ', '0.03125σ', 'exact', 'exact', '0.03125σ', '0.125σ', '0.25σ']);
      assert.ok(drawn[3].height > drawn[2].height && drawn[2].height > drawn[1].height && drawn[1].height > drawn[0].height, 'taller bars for tighter bounds');
      assert.equal(drawn[3].height, 100, 'the exact bytes fill the bar');

      assert.equal(await page.textContent('#bandwidth'), '2.50 GB/s');
      assert.equal(await page.isVisible('#emulated'), true, 'EMULATED shows for an emulated link');
      assert.equal(await page.textContent('#p95'), '21.0 ms');
      assert.match((await page.textContent('#sla'))!, /within the SLA of 30\.0 ms/);
      assert.equal(await page.textContent('#top1'), '97.0 %');
      assert.equal(await page.textContent('#floor'), '90.0 %');
      assert.equal(await page.textContent('#controller'), 'on');
      assert.equal(await page.textContent('#batch'), '3 of 8 sequences, 1 waiting');
      assert.equal(await page.textContent('#conn'), 'live');
      const firstRow = await page.$$eval('#decisions tr', (rows) => rows.map((r) => Array.from(r.querySelectorAll('td'), (td) => td.textContent)));
      assert.equal(firstRow[0][1], 'upgrade', 'newest decision first');
      assert.equal(firstRow.length, source.state.decisions.length);

      // The controller loosens the shallow and deep layers and the link is no longer emulated:
      // the page follows without a reload.
      const version = source.state.planVersion;
      source.setPlan([0, 0, 3, 5, 5, 3, 0, 0], 'degrade', 'p95 41.0 ms over the SLA 30 ms');
      source.set({ p95Seconds: 0.041, bandwidthBytesPerSecond: 8e8, linkEmulated: false });
      await page.waitForFunction((v) => document.body.getAttribute('data-plan-version') === String(v), version + 1, { timeout: 10_000 });
      await page.waitForFunction(() => document.getElementById('p95')!.textContent === '41.0 ms', undefined, { timeout: 10_000 });
      const redrawn = await bars();
      assert.deepEqual(redrawn.map((b) => b.level), [0, 0, 3, 5, 5, 3, 0, 0]);
      assert.deepEqual(redrawn.map((b) => b.label), ['0.5σ', '0.5σ', '0.0625σ', 'exact', 'exact', '0.0625σ', '0.5σ', '0.5σ']);
      assert.equal(await page.textContent('#bandwidth'), '800 MB/s');
      assert.equal(await page.isVisible('#emulated'), false);
      assert.match((await page.textContent('#sla'))!, /over the SLA/);
      assert.equal(await page.textContent('#decisions tr:first-child td.a'), 'degrade');
      source.set({ batch: { sequences: 8, maxBatch: 8, waiting: 5 } });
      await page.waitForFunction(() => document.getElementById('batch')!.textContent === '8 of 8 sequences, 5 waiting', undefined, { timeout: 10_000 });
      assert.equal(await page.isVisible('#routing-none'), true, 'no routing report yet');
      source.set({ routing: { tokens: 2048, segment: 16, target: 0.9, layers: [0, 1].map((layer) => ({ layer, srp: 0.45 + layer / 100, recommendedCache: 7 + layer, lruHitRate: 0.9 + layer / 20, segmentCacheHitRate: 0.95 })) } });
      await page.waitForFunction(() => document.querySelectorAll('#routing tr').length === 2, undefined, { timeout: 10_000 });
      const routingRows = await page.$$eval('#routing tr', (rows) => rows.map((r) => Array.from(r.querySelectorAll('td'), (td) => td.textContent)));
      assert.deepEqual(routingRows, [['0', '0.450', '7', '90.0 %', '95.0 %'], ['1', '0.460', '8', '95.0 %', '95.0 %']]);
      assert.match((await page.textContent('#routing-sub'))!, /last 2048 served tokens, segments of 16, target hit rate 90\.0 %/);
      assert.equal(await page.isVisible('#routing-none'), false);

      fs.mkdirSync('build/artifacts', { recursive: true });
      // Let the bars' height transition finish before the picture is taken.
      await page.waitForTimeout(500);
      await page.screenshot({ path: 'build/artifacts/dashboard.png', fullPage: true });
      assert.ok(fs.statSync('build/artifacts/dashboard.png').size > 10_000);

      assert.deepEqual(requests.filter((r) => !r.startsWith(url)), [], 'every request went to the server itself');
      assert.deepEqual(requests.filter((r) => r.startsWith(url)).map((r) => new URL(r).pathname).sort(), ['/dashboard', '/dashboard/events']);
      assert.deepEqual(problems, []);
      assert.deepEqual(serverLog, [], 'the server logged no failure');
    });
  });
});

describe('the dashboard of a real server', function () {
  it('shows the routing report of the tokens it served (any engine)', async function () {
    const server = await startEmbedded({ spec: { engine: 'resident' } });
    try {
      assert.equal((await post(server.url, '/v1/completions', { prompt: 'It is a way I have of driving off the spleen.', max_tokens: 16 })).status, 200);
      const events = sseReader(await fetch(`${server.url}/dashboard/events`));
      // The first snapshot asks for the report; it is computed in slices and a later state carries it.
      let state: DashboardState | undefined;
      for (let i = 0; i < 8 && !state?.routing; i++) state = JSON.parse((await within(events.next(), 5000, 'a state'))!.data) as DashboardState;
      const r = state!.routing!;
      assert.ok(r, 'a routing report within a few states');
      assert.equal(r.tokens, 'It is a way I have of driving off the spleen.'.length + 15, 'the prompt and every token fed back, nothing else');
      assert.deepEqual(r.layers.map((l) => l.layer), [0, 1, 2, 3, 4, 5, 6, 7]);
      for (const l of r.layers) assert.ok(l.recommendedCache >= 2 && l.recommendedCache <= 8 && l.lruHitRate >= r.target, `layer ${l.layer}`);
    } finally {
      await server.shutdown({ drainTimeoutSeconds: 0 });
    }
  });

  it('shows the batch: sequences generating out of --max-batch, and requests waiting', async function () {
    const server = await startEmbedded({ spec: { engine: 'resident' }, maxBatch: 3 });
    try {
      const idle = sseReader(await fetch(`${server.url}/dashboard/events`));
      const first = JSON.parse((await within(idle.next(), 5000, 'the first state'))!.data) as DashboardState;
      assert.deepEqual(first.batch, { sequences: 0, maxBatch: 3, waiting: 0 });
      const ac = new AbortController();
      const running = sseEvents(await post(server.url, '/v1/completions', { prompt: 'Call me', max_tokens: 200, n: 2, stream: true }, { signal: ac.signal }));
      assert.notEqual(await running.next(), null);
      const busy = sseReader(await fetch(`${server.url}/dashboard/events`));
      const state = JSON.parse((await within(busy.next(), 5000, 'the state while generating'))!.data) as DashboardState;
      assert.deepEqual(state.batch, { sequences: 2, maxBatch: 3, waiting: 0 });
      ac.abort();
    } finally {
      await server.shutdown({ drainTimeoutSeconds: 0 });
    }
  });
});
