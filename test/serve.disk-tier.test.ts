// Serving with the experts on disk (`serve --host-budget`): the store file is read around the page
// cache into a host budget far smaller than the store, and a real server on loopback answers
// exactly what it answers with every expert in host memory, its disk reads in /metrics and its
// engine details; a budget below one layer's routed experts, or a bad flag, is refused by name.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { DEFAULT_PROFILE } from '../src/cli/check-config.js';
import { ConfigError } from '../src/control/config-file.js';
import { loadProfile } from '../src/control/profile.js';

import { EMBEDDED_MODEL_DIR } from '../src/model/load.js';
import { loadServedModel } from '../src/serve/load-model.js';
import { startServer, type RunningServer } from '../src/serve/server.js';
import { ebserve } from './helpers/ebserve.js';
import { embeddedSpec, post, startEmbedded } from './serve/helpers.js';

const PROMPTS = ['It was the best of times', 'Call me Ishmael.', 'The quick brown fox'];

async function greedy(url: string, prompt: string): Promise<string> {
  const res = await post(url, '/v1/completions', { prompt, max_tokens: 12, temperature: 0 });
  assert.equal(res.status, 200);
  return ((await res.json()) as { choices: { text: string }[] }).choices[0].text;
}

describe('serving with the experts on disk (--host-budget)', function () {
  this.timeout(120_000);
  const servers: RunningServer[] = [];
  after(async () => {
    for (const s of servers) await s.shutdown({ drainTimeoutSeconds: 0 });
  });

  it('answers as with every expert in host memory, reading the disk into a small host budget, and says so', async function () {
    // Level 2 (three codec rungs) and the exact level, each fixed; 1 MB of host memory holds a few experts of the 64.
    for (const level of [2, 5]) {
      const memory = await startEmbedded({ spec: { fixedLevel: level } });
      const disk = await startEmbedded({ spec: { fixedLevel: level, hostBudgetBytes: 1e6 } });
      servers.push(memory, disk);
      for (const p of PROMPTS) assert.equal(await greedy(disk.url, p), await greedy(memory.url, p), `level ${level}: "${p}"`);
      const health = (await (await fetch(`${disk.url}/health`)).json()) as { engine_details: Record<string, unknown> };
      assert.equal(health.engine_details.experts_on, 'disk');
      assert.equal(health.engine_details.host_budget_bytes, 1e6);
      const metrics = await (await fetch(`${disk.url}/metrics`)).text();
      const read = Number(/^ebserve_disk_read_bytes_total (\S+)$/m.exec(metrics)?.[1]);
      assert.ok(read > 1e6, `more read from the disk (${read} bytes) than the budget holds: experts were evicted and read again`);
      assert.match(metrics, /^ebserve_disk_direct_io [01]$/m);
      assert.match(metrics, /^ebserve_disk_read_duration_seconds_count [1-9]/m);
      const none = await (await fetch(`${memory.url}/metrics`)).text();
      assert.match(none, /^ebserve_disk_read_bytes_total 0$/m, 'no disk reads with every expert in host memory');
    }
  });

  it('takes the budget from the profile\'s host.budget_bytes, which --host-budget overrides; a bad one is refused naming the key', async function () {
    const base = embeddedSpec();
    const fromProfile = await startEmbedded({ spec: { profile: { ...base.profile, host: { budget_bytes: 2e6 } } } });
    const overridden = await startEmbedded({ spec: { profile: { ...base.profile, host: { budget_bytes: 2e6 } }, hostBudgetBytes: 3e6 } });
    servers.push(fromProfile, overridden);
    const details = async (s: RunningServer) => ((await (await fetch(`${s.url}/health`)).json()) as { engine_details: Record<string, unknown> }).engine_details;
    assert.deepEqual([(await details(fromProfile)).host_budget_bytes, (await details(overridden)).host_budget_bytes], [2e6, 3e6]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-host-profile-'));
    try {
      const file = path.join(dir, 'p.yaml');
      fs.writeFileSync(file, fs.readFileSync(DEFAULT_PROFILE, 'utf8') + '\nhost:\n  budget_bytes: -1\n');
      assert.throws(() => loadProfile(file), (e: Error) => e instanceof ConfigError && /host\.budget_bytes/.test(e.message));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says what each tier holds: the memory plan in /health and /metrics, the dense weights held once as the checkpoint\'s bf16', async function () {
    const memory = await startEmbedded({ spec: { fixedLevel: 2 } });
    const disk = await startEmbedded({ spec: { fixedLevel: 2, hostBudgetBytes: 1e6 } });
    servers.push(memory, disk);
    const details = async (s: RunningServer) => ((await (await fetch(`${s.url}/health`)).json()) as { engine_details: Record<string, number | string> }).engine_details;
    const [m, d] = [await details(memory), await details(disk)];
    // Every level of every expert in host memory: the store's bytes (the store file holds them plus its index and padding).
    const storeFile = fs.readdirSync(path.join(EMBEDDED_MODEL_DIR, '.ebserve-cache')).map((f) => fs.statSync(path.join(EMBEDDED_MODEL_DIR, '.ebserve-cache', f)).size).reduce((a, b) => Math.max(a, b), 0);
    assert.ok(Number(m.memory_host_bytes) > 0.5 * storeFile && Number(m.memory_host_bytes) <= storeFile, `host tier ${m.memory_host_bytes} B against the store file's ${storeFile} B`);
    assert.equal(m.memory_host_holds, 'every level of every expert');
    assert.equal(d.memory_host_bytes, 1e6);
    assert.match(String(d.memory_host_holds), /host budget; the store file's [\d.]+ GB on disk/);
    assert.equal(d.memory_device_bytes, Number(d.tier_a_bytes) + Number(d.tier_b_bytes));
    // The embedded checkpoint is bf16: every matrix held as its bf16 bits (2 bytes a value), once
    // each; norms and the rotary tables as f32.
    const c = JSON.parse(fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'config.json'), 'utf8')) as Record<string, number>;
    const [V, dm, L, H, KV] = [c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads];
    const hd = dm / H;
    const matrices = 2 * V * dm + L * (dm * H * hd * 2 + 2 * dm * KV * hd + c.num_local_experts * dm);
    const vectors = dm + L * 2 * dm + 2 * c.max_position_embeddings * hd;
    assert.equal(m.memory_dense_bytes, 2 * matrices + 4 * vectors);
    // --engine cpu holds every expert in the addon: the checkpoint's bf16 bits, 2 bytes a value.
    const cpu = await startEmbedded({ spec: { engine: 'cpu', fixedLevel: undefined } });
    servers.push(cpu);
    const k = await details(cpu);
    assert.equal(k.memory_host_bytes, L * c.num_local_experts * 3 * dm * c.intermediate_size * 2);
    assert.equal(k.memory_device_bytes, 0);
    const metrics = await (await fetch(`${disk.url}/metrics`)).text();
    assert.match(metrics, /^ebserve_memory_plan_bytes\{part="host"\} 1000000$/m);
    assert.match(metrics, new RegExp(`^ebserve_memory_plan_bytes\\{part="dense"\\} ${m.memory_dense_bytes}$`, 'm'));
  });

  it('refuses a host budget below one layer\'s routed experts, naming the minimum', async function () {
    const log: string[] = [];
    const server = await startServer({ host: '127.0.0.1', port: 0, log: () => {}, load: (bus) => loadServedModel(embeddedSpec({ hostBudgetBytes: 1000 }), bus, (l) => log.push(l)) });
    servers.push(server);
    await assert.rejects(server.ready, /host budget 1000 bytes is below the minimum \d+: 2 experts \(one layer's top-k\)/);
  });

  it('answers a bad --host-budget with a usage error naming the flag', async function () {
    for (const [args, why] of [
      [['--host-budget', 'lots'], /--host-budget must be a number of bytes ≥ 1, with an optional unit .*got lots/],
      [['--host-budget=-5'], /--host-budget must be a number of bytes ≥ 1/],
      [['--host-budget', '1G', '--engine', 'cpu'], /--host-budget.* are offload settings; the cpu engine holds every expert/],
    ] as [string[], RegExp][]) {
      const r = await ebserve('serve', '--port', '0', ...args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, why, args.join(' '));
    }
  });
});
