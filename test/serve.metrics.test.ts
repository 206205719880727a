// GET /metrics after real requests on the offload engine: the request-path metrics and the offload
// telemetry carry values, names follow Prometheus conventions (prefix ebserve_, base units, _total
// counters), and no series is labelled by expert or by request.
import assert from 'node:assert/strict';

import type { RunningServer } from '../src/serve/server.js';
import { metric, metricsText, post, readSse, startEmbedded } from './serve/helpers.js';

describe('GET /metrics', function () {
  let server: RunningServer;
  let url: string;
  let text: string;
  before(async function () {
    server = await startEmbedded({ spec: { engine: 'offload', expertsPerLayer: 2 } });
    url = server.url;
    // Two requests, one streamed, so every histogram has observations; a 2-expert cache misses.
    assert.equal((await post(url, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 12 })).status, 200);
    await readSse(await post(url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 6, stream: true }));
    assert.equal((await post(url, '/v1/completions', { prompt: '' })).status, 400);
    text = await metricsText(url);
  });
  after(async function () {
    await server?.shutdown();
  });

  it('answers in the Prometheus text format', async function () {
    const res = await fetch(`${url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.match(text, /^# HELP ebserve_/m);
  });

  it('counts requests by endpoint and status', function () {
    assert.equal(metric(text, 'ebserve_requests_total', { endpoint: '/v1/completions', status: '200' }), 1);
    assert.equal(metric(text, 'ebserve_requests_total', { endpoint: '/v1/chat/completions', status: '200' }), 1);
    assert.equal(metric(text, 'ebserve_requests_total', { endpoint: '/v1/completions', status: '400' }), 1);
  });

  it('observes time to first token, inter-token latency and end-to-end latency per generated token and request', function () {
    assert.equal(metric(text, 'ebserve_time_to_first_token_seconds_count'), 2);
    assert.equal(metric(text, 'ebserve_inter_token_latency_seconds_count'), 12 - 1 + 6 - 1);
    assert.equal(metric(text, 'ebserve_e2e_request_latency_seconds_count'), 2);
    for (const h of ['time_to_first_token', 'inter_token_latency', 'e2e_request_latency']) {
      const sum = metric(text, `ebserve_${h}_seconds_sum`)!;
      assert.ok(sum > 0 && sum < 120, `${h} sum ${sum} s`);
    }
    assert.ok(metric(text, 'ebserve_time_to_first_token_seconds_sum')! < metric(text, 'ebserve_e2e_request_latency_seconds_sum')!);
    assert.equal(metric(text, 'ebserve_generation_tokens_total'), 12 + 6);
    assert.equal(metric(text, 'ebserve_prompt_tokens_total'), 'Call me Ishmael.'.length + 'user: Hi\nassistant:'.length);
  });

  it('shows the queue and what runs', function () {
    assert.equal(metric(text, 'ebserve_queue_depth'), 0);
    assert.equal(metric(text, 'ebserve_requests_running'), 0);
    // The batch size of every step: the two requests ran one after the other, one sequence a step
    // (a prompt step and 11 decode steps, then a prompt step and 5).
    assert.equal(metric(text, 'ebserve_batch_size_count'), 12 + 6);
    assert.equal(metric(text, 'ebserve_batch_size_sum'), 12 + 6);
    assert.equal(metric(text, 'ebserve_batch_size_bucket', { le: '1' }), 12 + 6);
    assert.deepEqual([...text.matchAll(/^ebserve_batch_size_bucket\{le="([^"]+)"\}/gm)].map((m) => m[1]), ['1', '2', '4', '8', '16', '32', '64', '+Inf']);
    const info = /^ebserve_build_info\{version="([^"]+)",backend="(wasm|cpu|tensorflow)",engine="offload"\} 1$/m.exec(text);
    assert.ok(info, 'build_info with version, backend and engine');
    assert.equal(info[1], '0.1.0');
  });

  it('exposes the offload telemetry: transfers per layer, transfer and decompress durations, cache lookups, the link', function () {
    for (let layer = 0; layer < 8; layer++) assert.ok(metric(text, 'ebserve_expert_transfer_bytes_total', { layer: String(layer) })! > 0, `layer ${layer}`);
    assert.ok(metric(text, 'ebserve_expert_transfer_duration_seconds_count')! > 0);
    // Even the exact level decodes on the device (bf16 → f32), and is timed as a decompression.
    assert.ok(metric(text, 'ebserve_decompress_duration_seconds_count')! > 0);
    assert.ok(metric(text, 'ebserve_expert_cache_requests_total', { tier: 'A', result: 'miss' })! > 0);
    assert.ok(metric(text, 'ebserve_expert_cache_requests_total', { tier: 'A', result: 'hit' })! > 0);
    assert.equal(metric(text, 'ebserve_link_emulated'), 0);
  });

  it('splits forward-step time into compute, transfer wait and decompress wait, by phase', function () {
    assert.equal(metric(text, 'ebserve_steps_total', { phase: 'prefill' }), 2);
    assert.equal(metric(text, 'ebserve_steps_total', { phase: 'decode' }), 12 - 1 + 6 - 1);
    for (const part of ['compute', 'transfer_wait', 'decompress_wait']) {
      for (const phase of ['prefill', 'decode']) assert.ok(metric(text, `ebserve_step_${part}_seconds_total`, { phase })! >= 0, `${part} ${phase}`);
    }
    assert.ok(metric(text, 'ebserve_step_compute_seconds_total', { phase: 'decode' })! > 0);
    assert.ok(metric(text, 'ebserve_step_transfer_wait_seconds_total', { phase: 'decode' })! > 0);
  });

  it('names every metric ebserve_*, counters *_total, and labels no series by expert or request', function () {
    const types = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)];
    assert.ok(types.length >= 20);
    for (const [, name, type] of types) {
      assert.match(name, /^ebserve_/);
      if (type === 'counter') assert.match(name, /_total$/, name);
    }
    const labelNames = new Set([...text.matchAll(/[{,]([a-zA-Z_]+)="/g)].map((m) => m[1]));
    for (const l of labelNames) assert.doesNotMatch(l, /expert|request|id$|prompt/i, `label ${l}`);
  });

  it('uses a decompressing level when asked, and then observes decompressions', async function () {
    const lossy = await startEmbedded({ spec: { engine: 'offload', fixedLevel: 3 } });
    try {
      assert.equal((await post(lossy.url, '/v1/completions', { prompt: 'Call me', max_tokens: 4 })).status, 200);
      const t = await metricsText(lossy.url);
      assert.ok(metric(t, 'ebserve_decompress_duration_seconds_count')! > 0);
      const health = (await (await fetch(`${lossy.url}/health`)).json()) as { engine_details: { level: number; level_meaning: string } };
      assert.equal(health.engine_details.level, 3);
      assert.match(health.engine_details.level_meaning, /error bound 0.0625σ/);
    } finally {
      await lossy.shutdown();
    }
  });
});
