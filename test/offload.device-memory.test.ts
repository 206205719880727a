// The copy links' device memory: a buffer comes back for reuse only when its last holder lets it
// go, and the offload engine's loads, tier B and in-place tier-A entries hold and release what
// they use — so buffers are reused, and nothing is overwritten while something still reads it.
import assert from 'node:assert/strict';

import { generate } from '../src/model/generate.js';
import { checkpointExperts, EMBEDDED_MODEL_DIR, loadModel } from '../src/model/load.js';
import { DeviceMemory } from '../src/offload/device-memory.js';
import { OffloadExpertEngine } from '../src/offload/engine.js';
import { EmulatedLink } from '../src/offload/link.js';
import { DEFAULT_LADDER } from '../src/offload/plan.js';
import { buildStore } from '../src/offload/store.js';

describe('offload: device memory', function () {
  it('copies into a buffer held once, and reuses it only after the last holder released it', function () {
    const memory = new DeviceMemory();
    const a = memory.copy(Uint8Array.from([1, 2, 3, 4, 5]));
    assert.deepEqual([...a], [1, 2, 3, 4, 5]);
    memory.retain([a]);
    memory.release([a]);
    const b = memory.copy(Uint8Array.from([9, 9, 9, 9, 9]));
    assert.notEqual(b.buffer, a.buffer, 'a is still held once: its buffer is not handed out');
    assert.deepEqual([...a], [1, 2, 3, 4, 5]);
    memory.release([a]);
    const c = memory.copy(Uint8Array.from([7, 7, 7]));
    assert.equal(c.buffer, a.buffer, 'released: the same size class gets it back');
    assert.equal(c.byteLength, 3);
    assert.equal(memory.reused, 1);
  });

  it('rounds sizes to classes at most an eighth apart, keeps no more than its cap free, and ignores views it did not make', function () {
    const memory = new DeviceMemory(1500);
    const x = memory.copy(new Uint8Array(1000));
    assert.ok(x.buffer.byteLength >= 1000 && x.buffer.byteLength <= 1000 * 1.125, `class ${x.buffer.byteLength}`);
    memory.release([x]);
    assert.equal(memory.copy(new Uint8Array(990)).buffer, x.buffer, 'a size in the same class reuses it');
    const big = memory.copy(new Uint8Array(4000));
    memory.release([big]); // over the cap: left to the collector
    assert.notEqual(memory.copy(new Uint8Array(4000)).buffer, big.buffer);
    const foreign = new Uint8Array(8);
    memory.retain([foreign]);
    memory.release([foreign, foreign]); // not its own: nothing happens
  });

  it('lets the offload engine reuse buffers while the model gets the same tokens, decoded and multiplied in place', async function () {
    this.timeout(60_000);
    const reference = await loadModel(EMBEDDED_MODEL_DIR, { nativeForward: false });
    const want = await generate(reference.model, reference.tokenizer, 'Call me Ishmael. Some years ago', { maxTokens: 24 });
    const store = await buildStore(checkpointExperts(reference.checkpoint), DEFAULT_LADDER);
    reference.dispose();
    for (const form of ['f32', 'fused', 'symbols'] as const) {
      const link = new EmulatedLink({ bytesPerSecond: 2e9 });
      const m = await loadModel(EMBEDDED_MODEL_DIR, {
        engine: () => new OffloadExpertEngine({ store, link, tierAForm: form, budget: { tierABytes: 3 * store.expertValues(0, 0) * 4, tierBBytes: 200_000 } }),
      });
      try {
        for (let i = 0; i < 2; i++) {
          const got = await generate(m.model, m.tokenizer, 'Call me Ishmael. Some years ago', { maxTokens: 24 });
          assert.equal(got.text, want.text, `${form}, run ${i}`);
        }
        assert.ok(link.memory.reused > 0, `${form}: no buffer was reused`);
      } finally {
        m.dispose();
      }
    }
  });
});
