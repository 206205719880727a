// The done-when check: on the embedded model, the cache sizes the routing report recommends
// keep their promise on text they were not chosen on. The text canaries are split in two (even and
// odd items: different passages); the report chooses each layer's cache on one half, and an LRU
// cache of that size — the device cache's own policy, replayed — is measured on the other half. It
// must reach the target and the hit rate promised on the first half, within 3 points.
import assert from 'node:assert/strict';

import { canaryCorpus, corpusRouting } from '../src/cli/routing-report.js';
import { cacheHitRate, routingReport, type LayerTrace } from '../src/control/routing/index.js';
import { EMBEDDED_MODEL_DIR } from '../src/model/embedded.js';
import { loadModel } from '../src/model/load.js';

describe('recommended cache sizes on held-out text (embedded model, text canaries)', function () {
  let chosenOn: LayerTrace[];
  let heldOut: LayerTrace[];
  before(async function () {
    const m = await loadModel(EMBEDDED_MODEL_DIR, { cpu: {} });
    try {
      const traces = await corpusRouting(m, canaryCorpus(EMBEDDED_MODEL_DIR));
      const half = (parity: number) => traces.map((t) => ({ ...t, sequences: t.sequences.filter((_, i) => i % 2 === parity) }));
      [chosenOn, heldOut] = [half(0), half(1)];
    } finally {
      m.dispose();
    }
  });

  for (const target of [0.5, 0.7, 0.8, 0.9]) {
    it(`reaches the hit rate promised for a target of ${target}, within 3 points, on every layer`, function () {
      const report = routingReport(chosenOn, { segment: 16, target });
      const rows = report.layers.map((l) => {
        const promised = l.sch.find((p) => p.cache === l.recommended_cache)!.lru_hit_rate;
        return { layer: l.layer, cache: l.recommended_cache, promised, measured: cacheHitRate(heldOut[l.layer], l.recommended_cache, 'lru') };
      });
      for (const r of rows) {
        assert.ok(r.measured >= target - 0.03, `layer ${r.layer}: cache ${r.cache} measured ${r.measured.toFixed(3)} on held-out text, target ${target}`);
        assert.ok(Math.abs(r.measured - r.promised) <= 0.03, `layer ${r.layer}: cache ${r.cache} measured ${r.measured.toFixed(3)}, promised ${r.promised}`);
      }
    });
  }
});
