// A controller run in virtual time (RxJS's TestScheduler), for the controller's tests.
import assert from 'node:assert/strict';

import { TestScheduler } from 'rxjs/testing';

import { Controller, type ControllerOptions } from '../../src/control/controller.js';
import type { Decision } from '../../src/control/decide.js';
import type { PrecisionPlan } from '../../src/offload/plan.js';

export interface Run {
  decisions: (Decision & { t: number })[];
  plans: (PrecisionPlan & { t: number })[];
  controller: Controller;
}

/**
 * Runs a controller in virtual time: `feed(c, at)` schedules samples at frames (ms); the run stops
 * at `until`. Returns what it decided and which plans it published, with their times.
 */
export function simulate(opts: ControllerOptions, feed: (c: Controller, at: (ms: number, f: () => void) => void) => void, until: number): Run {
  const ts = new TestScheduler((a, b) => assert.deepEqual(a, b));
  const out: Run = { decisions: [], plans: [], controller: undefined as unknown as Controller };
  ts.run(({ flush }) => {
    const c = new Controller(opts);
    out.controller = c;
    c.decisions$.subscribe((d) => out.decisions.push({ ...d, t: ts.now() }));
    c.plan$.subscribe((p) => out.plans.push({ ...p, t: ts.now() }));
    feed(c, (ms, f) => ts.schedule(f, ms));
    ts.schedule(() => c.stop(), until);
    flush();
  });
  return out;
}
