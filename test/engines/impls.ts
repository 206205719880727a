// The expert engines as EngineImpls for the conformance suite.
import { compress, compressLadder, decompressRungs, ladderBounds, splitRungs } from '../../src/codec/index.js';
import { bf16ToF32, f32ToBf16 } from '../../src/codec/halfs-array.js';
import { native } from '../../src/codec/native.js';
import { ResidentExpertEngine } from '../../src/model/engine.js';
import { CpuExpertEngine, fusedMatrix, fusedMatrixValues, symbolMatrix, type NativeExpert } from '../../src/offload/cpu-engine.js';
import { CudaExpertEngine } from '../../src/offload/cuda-engine.js';
import { OffloadExpertEngine } from '../../src/offload/engine.js';
import type { TierAForm } from '../../src/offload/fetcher.js';
import { CopyLink } from '../../src/offload/link.js';
import { DEFAULT_LADDER, uniformPlan } from '../../src/offload/plan.js';
import type { ExpertSource, RawTensor } from '../../src/offload/source.js';
import { DiskExpertStore } from '../../src/offload/disk-store.js';
import { buildStoreFile } from '../../src/offload/store-build.js';
import { buildStore, type ExpertStore } from '../../src/offload/store.js';
import type { ExpertMatrices } from '../../src/offload/expert-engine.js';
import type { EngineImpl } from './conformance.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const SHAPES: [number, number][] = [[128, 256], [64, 96]];
const ODD: [number, number] = [40, 72]; // rows that are not whole codec blocks (dense only)

export const tfjsResident: EngineImpl = {
  name: 'tfjs resident',
  unavailable: () => null,
  shapes: [...SHAPES, ODD],
  offThread: false,
  async make(experts, d, ff) {
    const engine = new ResidentExpertEngine(d, ff, experts.length, experts[0].length, (l, e) => experts[l][e]);
    return { engine, used: (l, e) => experts[l][e] };
  },
};

export function cpuDense(threads: number, sync: boolean): EngineImpl {
  return {
    name: `CPU dense f32, ${threads ? `${threads} thread` : 'every core'}${sync ? ', on the calling thread' : ''}`,
    unavailable: () => null,
    shapes: [...SHAPES, ODD],
    offThread: !sync,
    async make(experts, d, ff) {
      const engine = new CpuExpertEngine(d, ff, experts.map((row) => row.map((m) => ({ ...m }))), { threads, sync });
      return { engine, used: (l, e) => experts[l][e] };
    },
  };
}

/** f32 weights rounded to bf16: the bits, and the values they widen to. */
function bf16Of(v: Float32Array): { bits: Uint16Array; values: Float32Array } {
  const bits = f32ToBf16(v);
  return { bits, values: bf16ToF32(bits) };
}

/** The CPU engine on dense bf16 weights (their bits, widened in registers). */
export const cpuBf16: EngineImpl = {
  name: 'CPU dense bf16 (widened in registers)',
  unavailable: () => null,
  shapes: SHAPES,
  offThread: true,
  async make(experts, d, ff) {
    const b = experts.map((row) => row.map((m) => ({ gate: bf16Of(m.gate), up: bf16Of(m.up), down: bf16Of(m.down) })));
    const engine = new CpuExpertEngine(d, ff, b.map((row) => row.map((m) => ({ gate: m.gate.bits, up: m.up.bits, down: m.down.bits }))));
    return { engine, used: (l, e) => ({ gate: b[l][e].gate.values, up: b[l][e].up.values, down: b[l][e].down.values }) };
  },
};

/** The fused engine on streams within `bound`; with `rungs`, ladders read at rung `k`. */
export function cpuFused(decoder: 'gfni' | 'plane loop', bound: number, ladder?: { rungs: number; k: number }): EngineImpl {
  const pick = () => native.setFusedDecoder(decoder);
  return {
    name: `CPU fused (${decoder}) at ${bound}${ladder ? `, rung ${ladder.k} of a ${ladder.rungs}-rung ladder` : ''}`,
    unavailable: () => {
      const can = native.setFusedDecoder(decoder);
      native.setFusedDecoder('gfni') || native.setFusedDecoder('plane loop');
      return can ? null : `this CPU has no ${decoder} (GFNI with AVX-512 VBMI)`;
    },
    shapes: SHAPES,
    offThread: true,
    async make(experts, d, ff) {
      const one = (v: Float32Array, rows: number, cols: number) => {
        if (!ladder) return fusedMatrix(compress(v, { bound }), rows, cols);
        const s = splitRungs(compressLadder(v, { bounds: ladderBounds(bound, ladder.rungs) }));
        return fusedMatrix(s.head, rows, cols, { rungs: s.rungs.slice(0, ladder.k + 1), k: ladder.k });
      };
      const mats: NativeExpert[][] = experts.map((row) => row.map((m) => ({ gate: one(m.gate, ff, d), up: one(m.up, ff, d), down: one(m.down, d, ff) })));
      const values = mats.map((row) =>
        row.map((m): ExpertMatrices => ({ gate: fusedMatrixValues(m.gate as never), up: fusedMatrixValues(m.up as never), down: fusedMatrixValues(m.down as never) })),
      );
      const inner = new CpuExpertEngine(d, ff, mats);
      // The decoder is a process-wide choice: set it for each call (the suite's calls do not
      // overlap with another impl's), and put the CPU's best back when done.
      const engine = {
        compute: (...a: Parameters<CpuExpertEngine['compute']>) => {
          pick();
          return inner.compute(...a);
        },
        dispose: () => {
          native.setFusedDecoder('gfni') || native.setFusedDecoder('plane loop');
        },
      };
      return { engine, used: (l, e) => values[l][e] };
    },
  };
}

/**
 * The CPU engine on `bits`-bit symbols: streams within `bound` (with `rungs`, ladders read at rung
 * `k`) held as symbols; with int8Activations, multiplied by the integer product.
 */
export function cpuSymbols(bound: number, ladder?: { rungs: number; k: number }, bits: 4 | 8 = 8, int8Activations = false): EngineImpl {
  return {
    name: `CPU ${bits}-bit symbols at ${bound}${ladder ? `, rung ${ladder.k} of a ${ladder.rungs}-rung ladder` : ''}${int8Activations ? ', activations in 8 bits' : ''}`,
    // Each value of x within d_b / 2 = max |x_b| / 254 of its own: at most ~1 % of a product's
    // absolute terms on Gaussian activations, through gate, up and down.
    tolerance: int8Activations ? { share: 2e-2, what: "the activations' 8-bit rounding" } : undefined,
    unavailable: () => null,
    shapes: SHAPES,
    offThread: true,
    async make(experts, d, ff) {
      const values: ExpertMatrices[][] = [];
      const one = (v: Float32Array, rows: number, cols: number) => {
        const f = ladder
          ? (() => {
              const s = splitRungs(compressLadder(v, { bounds: ladderBounds(bound, ladder.rungs) }));
              return fusedMatrix(s.head, rows, cols, { rungs: s.rungs.slice(0, ladder.k + 1), k: ladder.k });
            })()
          : fusedMatrix(compress(v, { bound }), rows, cols);
        const q = symbolMatrix(f, [bits], int8Activations);
        if (!q) throw new Error(`a ${rows}×${cols} matrix at ${bound} does not fit ${bits}-bit symbols`);
        if (q.int8Activations !== int8Activations) throw new Error(`a ${rows}×${cols} matrix at ${bound}: its form takes no integer product`);
        return { q, values: fusedMatrixValues(f) };
      };
      const mats: NativeExpert[][] = experts.map((row, l) =>
        row.map((m, e) => {
          const [g, u, dn] = [one(m.gate, ff, d), one(m.up, ff, d), one(m.down, d, ff)];
          (values[l] ??= [])[e] = { gate: g.values, up: u.values, down: dn.values };
          return { gate: g.q, up: u.q, down: dn.q };
        }),
      );
      return { engine: new CpuExpertEngine(d, ff, mats), used: (l, e) => values[l][e] };
    },
  };
}

/** The CUDA engine on the emulated device (or, with `gpu`, on a GPU when there is one) over streams within `bound`. */
export function cudaEngine(where: 'emulated' | 'gpu', bound: number, ladder?: { rungs: number; k: number }): EngineImpl {
  return {
    name: `CUDA engine (${where === 'emulated' ? 'emulated device, the kernels run on the CPU' : 'GPU'}) at ${bound}${ladder ? `, rung ${ladder.k} of a ${ladder.rungs}-rung ladder` : ''}`,
    unavailable: () => {
      if (where === 'emulated') return null;
      const cuda = native.info().cuda;
      return cuda.available ? null : `no usable CUDA device: ${cuda.error ?? 'none'}`;
    },
    shapes: [...SHAPES, ODD],
    offThread: false,
    async make(experts, d, ff) {
      const one = (v: Float32Array) => {
        const s = splitRungs(ladder ? compressLadder(v, { bounds: ladderBounds(bound, ladder.rungs) }) : compress(v, { bound }));
        const k = ladder ? ladder.k : 0;
        return { head: s.head, rungs: s.rungs.slice(0, k + 1), k };
      };
      const mats = experts.map((row) => row.map((m) => ({ gate: one(m.gate), up: one(m.up), down: one(m.down) })));
      const values = mats.map((row) =>
        row.map((m): ExpertMatrices => {
          const dec = (x: { head: Uint8Array; rungs: Uint8Array[] }) => decompressRungs(x.head, x.rungs) as Float32Array;
          return { gate: dec(m.gate), up: dec(m.up), down: dec(m.down) };
        }),
      );
      const engine = where === 'emulated' ? CudaExpertEngine.emulated(d, ff, mats) : CudaExpertEngine.gpu(d, ff, mats);
      return { engine, used: (l, e) => values[l][e] };
    },
  };
}

/**
 * The offload engine (store of ladder rungs, link, device cache) at its exact level, computing
 * with tfjs or the CPU engine; or, with `level`, at that codec level of the default ladder in
 * tier A's `form`: its rungs decoded to f32, multiplied compressed by the fused product, or held as
 * symbols.
 */
/** onDisk: the store held on disk (the disk tier), its host budget about three experts at the level read. */
export function offloadEngine(compute: 'tfjs' | 'cpu', at: { level: number; form: TierAForm; int8Activations?: boolean } | null = null, bf16Exact = false, onDisk = false): EngineImpl {
  const forms = { f32: 'rungs decoded to f32', fused: 'fused on the compressed rungs', symbols: 'rungs held as symbols' };
  return {
    name: (bf16Exact
      ? 'offload engine at the exact level of a bf16 checkpoint, its bits multiplied in place (fused form)'
      : `offload engine at ${at ? `level ${at.level}, ${forms[at.form]}${at.int8Activations ? ' with 8-bit activations' : ''}` : 'the exact level'}, computing with ${compute === 'cpu' ? 'the CPU engine on the cache\'s buffers' : 'TensorFlow.js'}`) +
      (onDisk ? ', the store on disk read through a host tier of three experts' : ''),
    unavailable: () => null,
    tolerance: at?.int8Activations ? { share: 2e-2, what: "the activations' 8-bit rounding" } : undefined,
    shapes: at || bf16Exact ? SHAPES : [[64, 96], ODD],
    offThread: compute === 'cpu',
    async make(experts, d, ff) {
      const raw = (v: Float32Array, shape: number[]): RawTensor => {
        if (!bf16Exact) return { dtype: 'F32', shape, bytes: new Uint8Array(v.buffer, v.byteOffset, v.byteLength) };
        const bits = f32ToBf16(v);
        return { dtype: 'BF16', shape, bytes: new Uint8Array(bits.buffer) };
      };
      const source: ExpertSource = {
        numLayers: experts.length,
        numExperts: experts[0].length,
        hash: 'conformance',
        readExpert: (l, e) => ({ gate: raw(experts[l][e].gate, [ff, d]), up: raw(experts[l][e].up, [ff, d]), down: raw(experts[l][e].down, [d, ff]) }),
      };
      const store = await buildStore(source, DEFAULT_LADDER);
      const level = at?.level ?? store.exact;
      let served: ExpertStore = store;
      let closeDisk = () => {};
      if (onDisk) {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-disk-engine-'));
        const file = path.join(dir, 'x.ebstore');
        await buildStoreFile(source, DEFAULT_LADDER, file);
        const disk = DiskExpertStore.open(file, { checkpointHash: source.hash, ladder: DEFAULT_LADDER }, { budgetBytes: 3 * (store.levelBytes(0, 0, level) + 3 * 4096) });
        served = disk;
        closeDisk = () => (disk.close(), fs.rmSync(dir, { recursive: true, force: true }));
      }
      const engine = new OffloadExpertEngine({
        store: served, link: new CopyLink(), budget: { tierABytes: 2 * store.expertValues(0, 0) * 4, tierBBytes: 0 }, compute, tierAForm: at?.form ?? (bf16Exact ? 'fused' : 'f32'), int8Activations: at?.int8Activations, plan: uniformPlan(experts.length, level),
      });
      const dispose = engine.dispose.bind(engine);
      engine.dispose = () => (dispose(), closeDisk());
      // What the engine computes with at a codec level: the store's rungs 0..level, decoded.
      const decoded = (l: number, e: number): ExpertMatrices => {
        const x = store.expert(l, e);
        const dec = (m: (typeof x)['gate']) => decompressRungs(m.head, m.rungs.slice(0, level + 1)) as Float32Array;
        return { gate: dec(x.gate), up: dec(x.up), down: dec(x.down) };
      };
      const widened = (v: Float32Array) => bf16ToF32(f32ToBf16(v));
      return { engine, used: (l, e) => (at ? decoded(l, e) : bf16Exact ? { gate: widened(experts[l][e].gate), up: widened(experts[l][e].up), down: widened(experts[l][e].down) } : experts[l][e]) };
    },
  };
}
