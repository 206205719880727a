// bench-scale's own code paths, small: the caches' completeness checks, scale.json's assembly and
// checks, the RSS sampler and the clients' summary (bench/scale, bench/serve/clients.ts). No
// synthetic OLMoE here: `make bench-scale` runs the real thing.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { checkpointProblem, modelDir, cacheRoot, layersFromEnv, readStoreRecord, storeRecordPath, writeStoreRecord } from '../bench/scale/cache.js';
import { countParams, deviceBudgetFromHealth, measuredRow, memoryPlanFromHealth, planLevelsFromMetrics, scaleChecks, scaleTable, skippedRow, GIB, type ScaleRow } from '../bench/scale/result.js';
import { descendantsOf, metricSeries, rssOf, summarize, treeRssOf, type Outcome } from '../bench/serve/clients.js';

/** A safetensors file of one bf16 tensor of `values` values (header + data), optionally cut short by `cut` bytes. */
function writeSafetensors(file: string, values: number, cut = 0): void {
  const header = Buffer.from(JSON.stringify({ t: { dtype: 'BF16', shape: [values], data_offsets: [0, 2 * values] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  const whole = Buffer.concat([len, header, Buffer.alloc(2 * values)]);
  fs.writeFileSync(file, whole.subarray(0, whole.length - cut));
}

describe('bench-scale', () => {
  let tmp: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-scale-'));
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  describe('the checkpoint cache', () => {
    function checkpoint(dir: string, shards: number): void {
      fs.mkdirSync(dir, { recursive: true });
      for (const f of ['config.json', 'tokenizer.json', 'routing.json']) fs.writeFileSync(path.join(dir, f), '{}');
      const map: Record<string, string> = {};
      for (let i = 0; i < shards; i++) {
        const name = `model-0000${i + 1}-of-0000${shards}.safetensors`;
        writeSafetensors(path.join(dir, name), 100 + i);
        map[`t${i}`] = name;
      }
      fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: map }));
    }

    it('puts the folder under the cache root, one per depth', () => {
      assert.equal(cacheRoot({ EBSERVE_BENCH_CACHE: '/x/y' }), '/x/y');
      assert.equal(cacheRoot({}), path.join(os.homedir(), '.cache', 'ebserve'));
      assert.equal(modelDir('/c', 'olmoe-1b-7b'), '/c/bench-scale/olmoe-1b-7b');
      assert.equal(modelDir('/c', 'olmoe-1b-7b', 2), '/c/bench-scale/olmoe-1b-7b-l2');
      assert.equal(layersFromEnv(undefined), undefined);
      assert.equal(layersFromEnv('3'), 3);
      assert.throws(() => layersFromEnv('0'), /BENCH_SCALE_LAYERS/);
      assert.throws(() => layersFromEnv('2.5'), /BENCH_SCALE_LAYERS/);
    });

    it('finds a complete sharded checkpoint complete', () => {
      checkpoint(tmp, 2);
      assert.equal(checkpointProblem(tmp), null);
    });

    it('names a shard shorter than its header says, a missing shard, a missing file', () => {
      checkpoint(tmp, 2);
      writeSafetensors(path.join(tmp, 'model-00002-of-00002.safetensors'), 101, 3);
      assert.match(checkpointProblem(tmp)!, /model-00002-of-00002\.safetensors is \d+ bytes, its header says \d+/);
      fs.rmSync(path.join(tmp, 'model-00002-of-00002.safetensors'));
      assert.match(checkpointProblem(tmp)!, /no model-00002-of-00002\.safetensors/);
      fs.rmSync(path.join(tmp, 'routing.json'));
      assert.match(checkpointProblem(tmp)!, /no routing\.json/);
      assert.match(checkpointProblem(path.join(tmp, 'absent'))!, /does not exist/);
    });

    it('accepts a single model.safetensors and refuses a folder without weights', () => {
      for (const f of ['config.json', 'tokenizer.json', 'routing.json']) fs.writeFileSync(path.join(tmp, f), '{}');
      assert.match(checkpointProblem(tmp)!, /no model\.safetensors or model\.safetensors\.index\.json/);
      writeSafetensors(path.join(tmp, 'model.safetensors'), 10);
      assert.equal(checkpointProblem(tmp), null);
    });
  });

  describe('the store build record', () => {
    it('gives the recorded build time while the store file keeps its size, and nothing after', () => {
      const store = path.join(tmp, 'experts-abc.ebstore');
      fs.writeFileSync(store, Buffer.alloc(4096));
      assert.equal(readStoreRecord(store), null);
      const r = writeStoreRecord(store, 12.5);
      assert.equal(r.store_bytes, 4096);
      assert.equal(readStoreRecord(store)?.build_seconds, 12.5);
      assert.ok(fs.existsSync(storeRecordPath(store)));
      fs.writeFileSync(store, Buffer.alloc(8192)); // rebuilt by someone else: the time is not this file's
      assert.equal(readStoreRecord(store), null);
    });
  });

  describe('scale.json', () => {
    const metrics = [
      '# HELP ebserve_layer_rung x',
      'ebserve_layer_rung{layer="1"} 3',
      'ebserve_layer_rung{layer="0"} 1',
      'ebserve_disk_read_bytes_total 1000',
      'ebserve_batch_size_sum 12',
    ].join('\n');

    it('reads the plan by layer from /metrics, and none without a controller', () => {
      assert.deepEqual(planLevelsFromMetrics(metrics), [1, 3]);
      assert.equal(planLevelsFromMetrics('ebserve_batch_size_sum 12\n'), null);
      assert.throws(() => planLevelsFromMetrics('ebserve_layer_rung{layer="1"} 3\n'), /no series for layer 0/);
      assert.deepEqual(metricSeries(metrics, 'ebserve_layer_rung').map((s) => s.value), [3, 1]);
    });

    it('takes the device budget as tier A + tier B from /health', () => {
      assert.equal(deviceBudgetFromHealth({ engine_details: { tier_a_bytes: 750, tier_b_bytes: 250 } }), 1000);
      assert.equal(deviceBudgetFromHealth({ engine_details: { experts_resident: 128 } }), null);
    });

    it('counts parameters and the dense weights as f32', () => {
      const c = countParams([{ shape: [4, 8], expert: true }, { shape: [4, 8], expert: true }, { shape: [10, 4], expert: false }, { shape: [4], expert: false }]);
      assert.deepEqual(c, { params: 108, expert_params: 64, dense_f32_bytes: 4 * 44 });
    });

    const outcomes: Outcome[] = [
      { status: 200, seconds: 2, chunks: [0.5, 1, 2], tokens: 32, finish: 'length' },
      { status: 200, seconds: 4, chunks: [1, 3], tokens: 32, finish: 'length' },
      { status: 429, seconds: 0.01, chunks: [], retryAfter: 1 },
      { status: 503, seconds: 0.01, chunks: [] },
      { status: 0, seconds: 30, chunks: [], error: 'timeout' },
    ];

    it('sums up what the clients saw', () => {
      const s = summarize(outcomes, 8);
      assert.equal(s.tokens_per_s, 64 / 8);
      assert.equal(s.requests_per_s, 2 / 8);
      assert.equal(s.latency_p50_s, 2);
      assert.equal(s.latency_p95_s, 4);
      assert.equal(s.ttft_p50_s, 0.5);
      assert.equal(s.inter_token_p95_s, 2);
      assert.deepEqual([s.ok, s.status_429, s.status_5xx, s.errors], [2, 1, 1, 1]);
      assert.deepEqual(s.finish_reasons, { length: 2 });
    });

    it('makes a row: generated tokens and disk bytes per second of the window, RSS max over the valid samples, the plan', () => {
      const plan = memoryPlanFromHealth({ engine_details: { memory_dense_bytes: 1e9, memory_host_bytes: 4e9, memory_device_bytes: GIB, memory_canary_bytes: 2e8, memory_runtime_bytes: 5e8, memory_kv_bytes_per_token: 1000 } }, 48);
      assert.deepEqual(plan, { bytes: 1e9 + 4e9 + GIB + 2e8 + 5e8, kvBytesPerRequest: 48_000 });
      assert.equal(memoryPlanFromHealth({ engine_details: { memory_dense_bytes: 1e9 } }, 48), null, 'a server without the plan');
      const row = measuredRow('b', 'offload', 8, { host: 4e9, device: GIB, plan }, {
        stats: summarize(outcomes, 8), seconds: 8, rss: [1e9, NaN, 3e9, 2e9],
        before: { tokens: 100, disk: 1000, batchSum: 10, batchCount: 5 }, after: { tokens: 300, disk: 9000, batchSum: 50, batchCount: 10 }, planLevels: [0, 2],
      });
      assert.equal(row.tokens_per_s, 200 / 8);
      assert.equal(row.completed_tokens_per_s, 64 / 8);
      assert.equal(row.disk_read_bytes_per_s, 1000);
      assert.equal(row.rss_max_bytes, 3e9);
      assert.equal(row.mean_batch, 8);
      assert.deepEqual(row.plan_levels, [0, 2]);
      assert.equal(row.host_budget_bytes, 4e9);
      assert.equal(row.device_budget_bytes, GIB);
      assert.equal(row.memory_plan_bytes, plan!.bytes + 8 * 48_000, 'the plan and 8 requests\' KV pages');
      assert.equal('connectionErrorKinds' in row, false);
      const cpu = measuredRow('c', 'cpu', 1, { host: null, device: null, plan: null }, { stats: summarize(outcomes, 8), seconds: 8, rss: [1], before: { tokens: 0, disk: null, batchSum: 0, batchCount: 0 }, after: { tokens: 8, disk: null, batchSum: 0, batchCount: 0 }, planLevels: null });
      assert.equal(cpu.disk_read_bytes_per_s, null);
    });

    it("checks the issue's targets from the rows, and prints skipped rows with their reason", () => {
      const row = (c: 'a' | 'b', n: number, tps: number, plan: number[], rss: number): ScaleRow => ({
        case: c, engine: 'offload', concurrency: n, tokens_per_s: tps, host_budget_bytes: c === 'a' ? 8e9 : 2e9, device_budget_bytes: GIB, rss_max_bytes: rss, disk_read_bytes_per_s: c === 'b' ? 5e7 : 0, plan_levels: plan,
        memory_plan_bytes: 4e9,
      });
      const rows = [row('a', 1, 6, [1, 1], 5e9), row('a', 8, 20, [1, 1], 5e9), row('b', 1, 2, [0, 0], 3e9), row('b', 8, 4, [1, 1], 3e9), skippedRow('c', 'cpu', 1, 'needs 30 GB')];
      const k = scaleChecks(rows, 1e9);
      assert.equal(k.a_tokens_per_s_at_1_at_least_5, true);
      assert.ok(Math.abs(k.a_batching_gain_at_8 - 20 / 6) < 1e-12);
      assert.equal(k.a_batching_gain_at_8_at_least_3, true);
      assert.equal(k.b_rss_bound_bytes, 1e9 + 2e9 + GIB + 1.5 * GIB);
      assert.equal(k.b_rss_within_bound, true);
      assert.deepEqual(k.b_plan_differs_from_a, [true, false]);
      assert.deepEqual(k.rss_within_plan.map((x) => x.within), [false, false, true, true], 'case a\'s 5 GB over its 4 GB plan, case b\'s 3 GB within');
      const table = scaleTable(rows);
      assert.equal(table.length, 2 + rows.length);
      assert.match(table[table.length - 1], /\| c \| cpu \| 1 \| skipped: needs 30 GB/);
      assert.match(table[2], /\| a \| offload \| 1 \| 6\.00 \|.*\| 1 1 \|$/);
    });
  });

  describe('the RSS sampler', () => {
    it('reads this process, and adds a child process to its parent', async () => {
      const own = rssOf(process.pid);
      assert.ok(own > 10 * 2 ** 20, `RSS ${own}`);
      assert.ok(Number.isNaN(rssOf(2 ** 22 + 12345)));
      assert.ok(Number.isNaN(treeRssOf(2 ** 22 + 12345)));
      const child = spawn(process.execPath, ['-e', 'const b = Buffer.alloc(64 * 2 ** 20, 1); setInterval(() => b[0]++, 1000)'], { stdio: 'ignore' });
      try {
        // Until the child has touched its 64 MiB.
        let tree = 0;
        for (let i = 0; i < 100 && !(tree - rssOf(process.pid) > 64 * 2 ** 20); i++) {
          await new Promise((r) => setTimeout(r, 50));
          tree = treeRssOf(process.pid);
        }
        assert.ok(descendantsOf(process.pid).includes(child.pid!));
        assert.ok(tree - rssOf(process.pid) > 64 * 2 ** 20, `tree ${tree}, own ${rssOf(process.pid)}`);
      } finally {
        child.kill('SIGKILL');
      }
    });
  });
});
