// The expert engine conformance suite: one set of specifications every ExpertEngine that computes
// experts must meet (the tfjs resident engine, the CPU engine dense and fused, one thread and
// all, and the CUDA engine, emulated here and real where a GPU is present). Each implementation's
// test file calls runEngineConformance once.
import assert from 'node:assert/strict';

import type { ExpertEngine, ExpertMatrices } from '../../src/offload/expert-engine.js';
import { gaussian } from '../codec/data.js';

export interface EngineImpl {
  name: string;
  /** Why this engine cannot run here, or null when it can. */
  unavailable(): string | null;
  /**
   * An engine over `experts` ([layer][expert], checkpoint layout), and the weights it computes
   * with (a lossy engine's reconstruction; the same values for exact ones).
   */
  make(experts: ExpertMatrices[][], d: number, ff: number): Promise<{ engine: ExpertEngine; used(layer: number, expert: number): ExpertMatrices }>;
  /** Shapes it takes ([d, ff]); the fused path needs multiples of 32. */
  shapes: [number, number][];
  /** Computes off the calling thread, so timers fire while it works. */
  offThread: boolean;
  /**
   * How far from the f64 reference its results may be, as a share of the sum of the absolute
   * terms: f32 rounding (1e-5) unless the engine rounds something else by design.
   */
  tolerance?: { share: number; what: string };
}

/** Random experts, N(0, 0.02) like trained weights. */
export function randomExperts(layers: number, experts: number, d: number, ff: number, seed = 1): ExpertMatrices[][] {
  let s = seed;
  const next = () => gaussian(d * ff, 0.02, s++);
  return Array.from({ length: layers }, () => Array.from({ length: experts }, () => ({ gate: next(), up: next(), down: next() })));
}

/** Σ_j w_j · down(silu(gate·x) ⊙ up·x) in f64, and Σ of the absolute terms (the rounding scale). */
export function referenceLayer(used: (e: number) => ExpertMatrices, d: number, ff: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number) {
  const k = ids.length / T;
  const out = new Float64Array(T * d);
  const scale = new Float64Array(T * d);
  for (let t = 0; t < T; t++) {
    const x = hidden.subarray(t * d, t * d + d);
    for (let j = 0; j < k; j++) {
      const m = used(ids[t * k + j]);
      const w = weights[t * k + j];
      const h = new Float64Array(ff);
      let hs = 0;
      for (let f = 0; f < ff; f++) {
        let g = 0;
        let u = 0;
        for (let i = 0; i < d; i++) {
          g += m.gate[f * d + i] * x[i];
          u += m.up[f * d + i] * x[i];
        }
        h[f] = (g / (1 + Math.exp(-g))) * u;
        hs = Math.max(hs, Math.abs(h[f]));
      }
      for (let o = 0; o < d; o++) {
        let y = 0;
        let a = 0;
        for (let f = 0; f < ff; f++) {
          y += m.down[o * ff + f] * h[f];
          a += Math.abs(m.down[o * ff + f] * h[f]);
        }
        out[t * d + o] += w * y;
        scale[t * d + o] += Math.abs(w) * (a + hs * 1e-3);
      }
    }
  }
  return { out, scale };
}

function routing(T: number, k: number, E: number, seed: number) {
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  const ids = new Int32Array(T * k);
  const weights = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    const chosen = new Set<number>();
    while (chosen.size < k) chosen.add(Math.floor(rnd() * E));
    [...chosen].forEach((e, j) => {
      ids[t * k + j] = e;
      weights[t * k + j] = 0.2 + rnd();
    });
  }
  return { ids, weights };
}

export function runEngineConformance(impl: EngineImpl): void {
  describe(`expert engine conformance: ${impl.name}`, function () {
    this.timeout(120_000);
    before(function () {
      const why = impl.unavailable();
      if (why) {
        this.test!.parent!.pending = true;
        this.skip();
      }
    });

    for (const [d, ff] of impl.shapes) {
      describe(`d=${d}, ff=${ff}`, function () {
        const E = 4;
        let made: Awaited<ReturnType<EngineImpl['make']>>;
        before(async function () {
          if (impl.unavailable()) this.skip();
          made = await impl.make(randomExperts(2, E, d, ff), d, ff);
        });
        after(() => made?.engine.dispose());

        // T = 1 and 3 are decode-sized token tiles; 9 tokens cross the 4-token tile and take the
        // row-at-a-time path of the fused engine; tokens share experts in every case.
        for (const T of [1, 3, 9]) {
          it(`computes Σ weight · SwiGLU of the chosen experts for T=${T}, k=2, within ${impl.tolerance?.what ?? 'f32 rounding'}`, async function () {
            const { ids, weights } = routing(T, 2, E, T);
            const hidden = gaussian(T * d, 1, 100 + T);
            const layer = T % 2;
            const got = await made.engine.compute(layer, hidden, ids, weights, T);
            assert.equal(got.length, T * d);
            const { out, scale } = referenceLayer((e) => made.used(layer, e), d, ff, hidden, ids, weights, T);
            for (let i = 0; i < out.length; i++) {
              const tol = (impl.tolerance?.share ?? 1e-5) * scale[i] + 1e-7;
              assert.ok(Math.abs(got[i] - out[i]) <= tol, `value ${i}: ${got[i]} vs ${out[i]} (tolerance ${tol.toExponential(2)})`);
            }
          });
        }

        it('gives zero for zero router weights and is linear in them', async function () {
          const { ids } = routing(2, 2, E, 5);
          const hidden = gaussian(2 * d, 1, 9);
          const zero = await made.engine.compute(0, hidden, ids, new Float32Array(4), 2);
          assert.ok(zero.every((v) => v === 0), 'zero weights gave a nonzero output');
          const one = await made.engine.compute(0, hidden, ids, Float32Array.from([1, 0, 1, 0]), 2);
          const two = await made.engine.compute(0, hidden, ids, Float32Array.from([2, 0, 2, 0]), 2);
          for (let i = 0; i < one.length; i++) assert.ok(Math.abs(two[i] - 2 * one[i]) <= 1e-6 * Math.abs(one[i]) + 1e-9, `value ${i}`);
        });

        it('gives the same result for concurrent calls as for one at a time', async function () {
          const a = routing(3, 2, E, 11);
          const b = routing(3, 2, E, 12);
          const ha = gaussian(3 * d, 1, 13);
          const hb = gaussian(3 * d, 1, 14);
          const alone = [await made.engine.compute(0, ha, a.ids, a.weights, 3), await made.engine.compute(1, hb, b.ids, b.weights, 3)];
          const together = await Promise.all([made.engine.compute(0, ha, a.ids, a.weights, 3), made.engine.compute(1, hb, b.ids, b.weights, 3)]);
          assert.deepEqual(together, alone);
        });

        it('refuses an expert the layer does not have, and goes on working', async function () {
          const hidden = gaussian(d, 1, 15);
          await assert.rejects(made.engine.compute(0, hidden, Int32Array.from([0, E + 3]), Float32Array.from([0.5, 0.5]), 1), /expert/);
          const ok = await made.engine.compute(0, hidden, Int32Array.from([0, 1]), Float32Array.from([0.5, 0.5]), 1);
          assert.equal(ok.length, d);
        });
      });
    }

    if (impl.offThread) {
      it('keeps the event loop running while it computes', async function () {
        const d = 1024;
        const ff = 2048;
        const made = await impl.make(randomExperts(1, 2, d, ff, 40), d, ff);
        try {
          const T = 32;
          const { ids, weights } = routing(T, 2, 2, 3);
          const hidden = gaussian(T * d, 1, 41);
          let ticks = 0;
          const timer = setInterval(() => ticks++, 1);
          const started = performance.now();
          let calls = 0;
          // Long enough that a blocked loop could not have ticked.
          while (performance.now() - started < 200) {
            await made.engine.compute(0, hidden, ids, weights, T);
            calls++;
          }
          clearInterval(timer);
          assert.ok(ticks >= calls, `the timer ticked ${ticks} times during ${calls} calls`);
        } finally {
          made.engine.dispose();
        }
      });
    }
  });
}
