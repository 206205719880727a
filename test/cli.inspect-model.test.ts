// `ebserve inspect-model`: what a ladder costs per layer and level, and what each tier would hold
// when served — the same figures the server's memory plan gives (/health's memory_* details).
import assert from 'node:assert/strict';

import { EMBEDDED_MODEL_DIR } from '../src/model/load.js';
import { ebserve } from './helpers/ebserve.js';
import { startEmbedded } from './serve/helpers.js';

describe('ebserve inspect-model', function () {
  this.timeout(120_000);

  it('says what each tier holds: the figures the server\'s memory plan reports for the same model', async function () {
    const r = await ebserve('inspect-model', EMBEDDED_MODEL_DIR, '--json');
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      store: { bytes: number };
      memory: { dense_bytes: number; dense_by_role: Record<string, number>; host_bytes: number; tier_a_bytes_by_level: number[]; kv_bytes_per_token: number };
      layers: { levels: { bytesPerExpert: number }[] }[];
    };
    const server = await startEmbedded({ spec: { fixedLevel: 2 } });
    try {
      const d = ((await (await fetch(`${server.url}/health`)).json()) as { engine_details: Record<string, number> }).engine_details;
      assert.equal(j.memory.dense_bytes, d.memory_dense_bytes);
      assert.equal(j.memory.host_bytes, d.memory_host_bytes);
      assert.equal(j.memory.kv_bytes_per_token, d.memory_kv_bytes_per_token);
    } finally {
      await server.shutdown({ drainTimeoutSeconds: 0 });
    }
    assert.equal(j.memory.host_bytes, j.store.bytes);
    // The dense bytes by role add up to them (with the rotary tables); the embedded model's bf16
    // attention projections as 8-bit symbols: a byte a value, and 12 for each of ~1/256 patches.
    const roles = j.memory.dense_by_role;
    const rotary = 2 * 256 * 32 * 4;
    assert.equal(roles.attention + roles.router + roles.norm + roles.embeddings + roles.lm_head + roles.shared_experts + rotary, j.memory.dense_bytes);
    assert.ok(roles.attention > 0 && roles.lm_head > 0 && roles.embeddings > 0 && roles.router > 0 && roles.norm > 0, JSON.stringify(roles));
    assert.equal(roles.attention_symbols, (roles.attention / 2) * (1 + 12 / 256));
    // Tier A at each level: every expert at that level's bytes, growing with the level; the
    // exact level (the checkpoint's bf16) at 2 bytes a value.
    const levels = j.memory.tier_a_bytes_by_level;
    assert.equal(levels.length, j.layers[0].levels.length);
    for (let k = 1; k < levels.length; k++) assert.ok(levels[k] > levels[k - 1], `level ${k}: ${levels}`);
    assert.equal(levels[levels.length - 1], 8 * 8 * 3 * 128 * 256 * 2);
  });
});
