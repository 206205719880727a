// The served model, its controller and the batch scheduler as the dashboard sees them
// (dashboard.ts): a snapshot of the plan, estimates, SLA, canaries, recent decisions and the
// batch, and a change signal (every plan, decision or canary result the controller makes, plus a
// tick while tokens flow).
import type { RoutingWindow } from '../control/routing/window.js';
import type { BatchScheduler } from './batcher.js';
import type { DashboardSource, DashboardState } from './dashboard.js';
import { unavailable } from './errors.js';
import type { ServedModel } from './served-model.js';

/** The routing panel's numbers: the window's last report (a new one is asked for when due). */
function routingState(w: RoutingWindow | undefined): DashboardState['routing'] {
  if (!w) return null;
  w.refresh().catch(() => {}); // a failed computation leaves the last report in place
  const r = w.latest;
  if (!r) return null;
  return {
    tokens: r.tokens, segment: r.segment, target: r.target,
    layers: r.layers.map((l) => {
      const at = l.sch.find((p) => p.cache === l.recommended_cache)!;
      return { layer: l.layer, srp: l.srp, recommendedCache: l.recommended_cache, lruHitRate: at.lru_hit_rate, segmentCacheHitRate: at.hit_rate };
    }),
  };
}

/** The dashboard's view of `model` (null while it loads) and, when given, of `batcher`. */
export function dashboardSource(model: () => ServedModel | null, batcher?: Pick<BatchScheduler, 'state' | 'maxBatch'>): DashboardSource {
  const batch = () => (batcher ? { sequences: batcher.state.sequences, maxBatch: batcher.maxBatch, waiting: batcher.state.waiting } : null);
  return {
    snapshot(): DashboardState {
      const m = model();
      if (!m) throw unavailable('Loading model');
      const c = m.control;
      if (!c) {
        const fixed = typeof m.details.level === 'number' ? [m.details.level] : [];
        return {
          at: Date.now(), model: m.id, controller: 'off', planVersion: 0, levels: fixed, levelLabels: [], layerBounds: [],
          bandwidthBytesPerSecond: null, linkEmulated: m.linkEmulated, p95Seconds: null, slaSeconds: null, canary: null, decisions: [], batch: batch(),
          routing: routingState(m.routing),
        };
      }
      const ctl = c.controller;
      const e = c.estimates();
      const r = c.lastCanary;
      // Wall-clock times for the page: decisions carry the scheduler's clock (performance.now).
      const toEpoch = (t: number) => Date.now() - (performance.now() - t);
      return {
        at: Date.now(),
        model: m.id,
        controller: ctl.isFrozen ? 'frozen' : ctl.isDryRun ? 'dry-run' : 'on',
        planVersion: ctl.plan.version,
        levels: [...ctl.plan.levels],
        ...(ctl.plan.drop ? { drop: [...ctl.plan.drop] } : {}),
        levelLabels: c.levelLabels(),
        layerBounds: c.layerBounds(),
        bandwidthBytesPerSecond: e.bandwidth_bytes_per_second.using_prior ? null : e.bandwidth_bytes_per_second.estimate,
        linkEmulated: m.linkEmulated,
        p95Seconds: e.p95_inter_token_seconds,
        slaSeconds: ctl.slaSeconds,
        canary: r ? { top1: r.top1Agreement, kl: r.kl ?? null, exact: r.exactMatch ?? null, floor: c.canaryFloor() } : null,
        decisions: ctl.log().filter((d) => d.action !== 'hold').slice(-20).map((d) => ({ at: toEpoch(d.at), action: d.action, reason: d.reason })),
        batch: batch(),
        routing: routingState(m.routing),
      };
    },
    subscribe(listener: () => void): () => void {
      // The model may still be loading when a page connects: follow it once it is there.
      let off: () => void = () => {};
      let timer: NodeJS.Timeout | undefined;
      const attach = () => {
        const c = model()?.control;
        if (!c) return false;
        off = c.subscribe(listener);
        return true;
      };
      if (!attach()) {
        timer = setInterval(() => {
          if (attach()) clearInterval(timer);
        }, 500);
      }
      // p95 and bandwidth move with every token; a second's tick keeps the page's numbers fresh.
      const tick = setInterval(listener, 1000);
      return () => {
        off();
        clearInterval(timer);
        clearInterval(tick);
      };
    },
  };
}
