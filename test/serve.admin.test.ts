// The admin API against a real server on loopback: off without a token (404 saying how to turn it
// on), 401 without or with a wrong bearer token, and with one: the plan and why, the decision log,
// the estimates, setting the SLA, switching policy (same ladder only), freeze/unfreeze, dry run,
// canaries now; 409 when no controller runs. The controller's metrics appear on /metrics.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import YAML from 'yaml';

import type { RunningServer } from '../src/serve/server.js';
import { metric, post, startEmbedded, type ErrorBody } from './serve/helpers.js';

const TOKEN = 'test-token-0123456789abcdef';
const auth = { Authorization: `Bearer ${TOKEN}` };
const get = (url: string, p: string, headers: Record<string, string> = auth) => fetch(`${url}${p}`, { headers });
const admin = (url: string, p: string, body: unknown = {}) => post(url, p, body, { headers: { 'Content-Type': 'application/json', ...auth } });

describe('admin API', function () {
  let server: RunningServer;
  let url: string;
  let dir: string;
  before(async function () {
    server = await startEmbedded({ adminToken: TOKEN, spec: { fixedLevel: undefined } });
    url = server.url;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-admin-'));
  });
  after(async function () {
    await server?.shutdown({ drainTimeoutSeconds: 0 });
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('answers 401 without a bearer token and with a wrong one', async function () {
    const none = await get(url, '/admin/plan', {});
    assert.equal(none.status, 401);
    assert.match(((await none.json()) as ErrorBody).error.message, /Authorization: Bearer/);
    const wrong = await get(url, '/admin/plan', { Authorization: 'Bearer not-the-token-at-all' });
    assert.equal(wrong.status, 401);
    assert.equal(((await wrong.json()) as ErrorBody).error.message, 'wrong admin token');
  });

  it('shows the plan, each layer\'s level and bound, and why', async function () {
    const res = await get(url, '/admin/plan');
    assert.equal(res.status, 200);
    const p = (await res.json()) as { levels: number[]; labels: string[]; bounds: number[]; why: { reason: string }; policy: string; frozen: boolean; dense: { name: string; role: string; form: string; bytes: number }[] };
    assert.equal(p.levels.length, 8);
    // The dense weights beside the experts', as the profile (as stored here) left them: 8 layers' q, k, v, o.
    assert.equal(p.dense.filter((t) => t.role === 'attention' && /_proj\.weight$/.test(t.name)).length, 32);
    assert.ok(p.dense.every((t) => (t.form === 'f32' || t.form === 'bf16') && t.bytes > 0), JSON.stringify(p.dense.slice(0, 3)));
    assert.deepEqual(p.labels, p.levels.map((k) => ['0.5σ', '0.25σ', '0.125σ', '0.0625σ', '0.03125σ', 'exact'][k]));
    assert.equal(p.policy, 'u-shape');
    assert.equal(typeof p.why.reason, 'string');
    assert.equal(p.frozen, false);
  });

  it('keeps a decision log with inputs and reasons, and shows the estimates', async function () {
    await post(url, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 12 });
    await new Promise((r) => setTimeout(r, 600)); // a couple of decision ticks (250 ms)
    const d = (await (await get(url, '/admin/decisions?limit=5')).json()) as { decisions: { action: string; reason: string }[] };
    assert.ok(d.decisions.length >= 1 && d.decisions.length <= 5);
    assert.ok(d.decisions.every((x) => typeof x.reason === 'string' && x.reason.length > 0));
    const e = (await (await get(url, '/admin/estimates')).json()) as { bandwidth_bytes_per_second: { estimate: number }; samples: number; moves_per_token_per_layer: (number | null)[]; lookups_per_step_per_layer: (number | null)[]; model_error_p95: number };
    assert.ok(e.bandwidth_bytes_per_second.estimate > 0);
    assert.equal(e.moves_per_token_per_layer.length, 8);
    assert.ok(e.moves_per_token_per_layer.some((x) => x !== null && x > 0), 'the decode steps moved experts');
    // One client: a decode step asks each layer for its top-2, at most, never more.
    assert.equal(e.lookups_per_step_per_layer.length, 8);
    assert.ok(e.lookups_per_step_per_layer.every((x) => x !== null && x > 0 && x <= 2 + 1e-9), `${e.lookups_per_step_per_layer}`);
    assert.ok(e.model_error_p95 >= 0.25 && e.model_error_p95 <= 4);
    assert.ok(e.samples > 0, 'telemetry reached the controller');
    assert.equal((await get(url, '/admin/decisions?limit=0')).status, 400);
  });

  it('sets the SLA, and refuses one that is not a positive number of seconds, naming the field', async function () {
    const bad = await admin(url, '/admin/sla', { p95_inter_token_seconds: -1 });
    assert.equal(bad.status, 400);
    assert.match(((await bad.json()) as ErrorBody).error.message, /p95_inter_token_seconds: expected a number of seconds > 0/);
    const unknown = await admin(url, '/admin/sla', { p95: 0.2 });
    assert.equal(unknown.status, 400);
    const ok = await admin(url, '/admin/sla', { p95_inter_token_seconds: 0.25 });
    assert.equal(ok.status, 200);
    const p = (await (await get(url, '/admin/plan')).json()) as { sla_seconds: number };
    assert.equal(p.sla_seconds, 0.25);
    const text = await (await fetch(`${url}/metrics`)).text();
    assert.equal(metric(text, 'ebserve_slo_target_seconds', { slo: 'p95_inter_token' }), 0.25);
  });

  it('freezes and unfreezes, and says so in the decisions', async function () {
    assert.equal((await admin(url, '/admin/freeze')).status, 200);
    await new Promise((r) => setTimeout(r, 400));
    const d = (await (await get(url, '/admin/decisions?limit=1')).json()) as { decisions: { reason: string }[] };
    assert.match(d.decisions[0].reason, /frozen by an operator/);
    assert.equal(((await (await get(url, '/admin/plan')).json()) as { frozen: boolean }).frozen, true);
    await admin(url, '/admin/unfreeze');
    assert.equal(((await (await get(url, '/admin/plan')).json()) as { frozen: boolean }).frozen, false);
  });

  it('turns dry run on and off', async function () {
    const on = await admin(url, '/admin/dry-run', { enabled: true });
    assert.deepEqual(await on.json(), { dry_run: true });
    assert.equal(((await (await get(url, '/admin/plan')).json()) as { dry_run: boolean }).dry_run, true);
    assert.equal((await admin(url, '/admin/dry-run', { enabled: 'yes' })).status, 400);
    await admin(url, '/admin/dry-run', { enabled: false });
  });

  it('switches to a policy of the same ladder, refuses another ladder (409) and a bad file (400)', async function () {
    const ok = await admin(url, '/admin/policy', { file: path.resolve('policies/uniform.yaml') });
    assert.equal(ok.status, 200, await ok.clone().text());
    assert.equal(((await (await get(url, '/admin/plan')).json()) as { policy: string }).policy, 'uniform');
    const other = YAML.parse(fs.readFileSync('policies/uniform.yaml', 'utf8'));
    other.ladder.bounds = [0.5, 0.25];
    other.groups[0].floor = 0.5;
    fs.writeFileSync(path.join(dir, 'other.yaml'), YAML.stringify(other));
    const conflict = await admin(url, '/admin/policy', { file: path.join(dir, 'other.yaml') });
    assert.equal(conflict.status, 409);
    assert.match(((await conflict.json()) as ErrorBody).error.message, /not the one the experts are stored at/);
    fs.writeFileSync(path.join(dir, 'bad.yaml'), 'name: [');
    const bad = await admin(url, '/admin/policy', { file: path.join(dir, 'bad.yaml') });
    assert.equal(bad.status, 400);
    assert.match(((await bad.json()) as ErrorBody).error.message, /bad\.yaml.*not valid YAML/);
    await admin(url, '/admin/policy', { file: path.resolve('policies/u-shape.yaml') });
  });

  it('runs the canaries now on the current plan', async function () {
    const res = await admin(url, '/admin/canaries/run');
    assert.equal(res.status, 200);
    const r = (await res.json()) as { result: { top1Agreement: number; planVersion: number }; floor: number };
    assert.ok(r.result.top1Agreement >= 0 && r.result.top1Agreement <= 1);
    assert.equal(r.floor, 0.97);
    const text = await (await fetch(`${url}/metrics`)).text();
    assert.equal(metric(text, 'ebserve_canary_score', { suite: 'text_top1' }), r.result.top1Agreement);
  });

  it('exports the controller\'s metrics: rungs, bounds, ratios, bandwidth estimates, decisions', async function () {
    const text = await (await fetch(`${url}/metrics`)).text();
    for (let l = 0; l < 8; l++) {
      assert.ok(metric(text, 'ebserve_layer_rung', { layer: String(l) }) !== undefined, `layer ${l} rung`);
      assert.ok(metric(text, 'ebserve_layer_error_bound', { layer: String(l) }) !== undefined);
      assert.ok(metric(text, 'ebserve_compression_ratio', { layer: String(l) })! >= 1);
    }
    assert.ok(metric(text, 'ebserve_link_bandwidth_estimate_bytes_per_second', { estimator: 'estimate' })! > 0);
    assert.equal(metric(text, 'ebserve_controller_rollbacks_total'), 0);
    const ratio = metric(text, 'ebserve_controller_model_error_ratio')!;
    assert.ok(ratio >= 0.25 && ratio <= 4, `model error ratio ${ratio}`);
    assert.match(text, /ebserve_controller_decisions_total\{direction="hold",reason="[a-z_]+"\} \d+/);
  });

  it('reports the routing of the tokens served (not the canaries\'), per layer, on the admin API and /metrics', async function () {
    await post(url, '/v1/completions', { prompt: 'It is a way I have of driving off the spleen.', max_tokens: 8 });
    type Report = { window_tokens: number; segment: number; target: number; layers: { layer: number; srp: number; recommended_cache: number; sch: { cache: number; lru_hit_rate: number }[] }[] };
    const first = (await (await get(url, '/admin/routing')).json()) as Report;
    assert.ok(first.window_tokens >= 16, `${first.window_tokens} tokens`);
    assert.equal(first.segment, 16);
    assert.equal(first.layers.length, 8);
    for (const l of first.layers) {
      assert.deepEqual(l.sch.map((p) => p.cache), [2, 3, 4, 5, 6, 7, 8]);
      assert.equal(l.recommended_cache, l.sch.find((p) => p.lru_hit_rate >= 0.9)!.cache);
    }
    await admin(url, '/admin/canaries/run');
    const after = (await (await get(url, '/admin/routing')).json()) as Report;
    assert.equal(after.window_tokens, first.window_tokens, 'canary forwards are not served traffic');
    const custom = (await (await get(url, '/admin/routing?segment=4&target=0.5&policy=lfu')).json()) as Report & { recommended_by: string };
    assert.equal(custom.segment, 4);
    assert.equal(custom.recommended_by, 'lfu');
    for (const [q, param] of [['segment=0', 'segment'], ['segment=1.5', 'segment'], ['segment=100000', 'segment'], ['target=0', 'target'], ['target=1.2', 'target'], ['policy=fifo', 'policy']]) {
      const res = await get(url, `/admin/routing?${q}`);
      assert.equal(res.status, 400, q);
      assert.equal(((await res.json()) as ErrorBody).error.param, param, q);
    }
    const text = await (await fetch(`${url}/metrics`)).text();
    assert.equal(metric(text, 'ebserve_routing_window_tokens'), first.window_tokens);
    for (const l of first.layers) {
      assert.equal(metric(text, 'ebserve_routing_recommended_cache', { layer: String(l.layer) }), l.recommended_cache);
      assert.equal(metric(text, 'ebserve_routing_srp', { layer: String(l.layer) }), l.srp);
      assert.ok(metric(text, 'ebserve_routing_lru_hit_rate', { layer: String(l.layer) })! >= 0.9);
      assert.ok(metric(text, 'ebserve_routing_segment_cache_hit_rate', { layer: String(l.layer) })! >= metric(text, 'ebserve_routing_lru_hit_rate', { layer: String(l.layer) })! - 0.05);
    }
  });

  it('answers 404 saying how to turn it on when started without a token, and 409 without a controller', async function () {
    const off = await startEmbedded({ adminToken: null });
    try {
      const res = await get(off.url, '/admin/plan');
      assert.equal(res.status, 404);
      assert.match(((await res.json()) as ErrorBody).error.message, /EBSERVE_ADMIN_TOKEN/);
    } finally {
      await off.shutdown({ drainTimeoutSeconds: 0 });
    }
    const fixed = await startEmbedded({ adminToken: TOKEN }); // fixed level: no controller
    try {
      const res = await get(fixed.url, '/admin/plan');
      assert.equal(res.status, 409);
      assert.match(((await res.json()) as ErrorBody).error.message, /no controller runs/);
      assert.equal((await fetch(`${fixed.url}/health`)).status, 200, 'still serving');
    } finally {
      await fixed.shutdown({ drainTimeoutSeconds: 0 });
    }
  });
});
