/**
 * What a ladder costs and what it does to the weights, per layer and level: mean bytes per
 * expert, ratio against the original bytes, and the max and RMS error of the decoded values
 * against the originals, over every expert of the layer. `ebserve inspect-model` prints it; the
 * benchmarks and the profiler read it.
 */
import { decompressRungs } from '../codec/index.js';
import { decodeTensor } from '../codec/halfs-array.js';
import { MATRICES, type ExpertSource } from './source.js';
import type { ExpertStore } from './store.js';

export interface LevelReport {
  level: number;
  /** 'exact', or the bound as asked (σ-relative ladders: the multiple of σ). */
  label: string;
  /** Largest absolute bound of the layer's matrices at this level (0 for exact). */
  maxBound: number;
  bytesPerExpert: number;
  ratio: number;
  maxError: number;
  rmsError: number;
}

export interface LayerReport {
  layer: number;
  originalBytesPerExpert: number;
  levels: LevelReport[];
}

export function ladderReport(store: ExpertStore, source: ExpertSource, onLayer?: (layer: number) => void): LayerReport[] {
  const out: LayerReport[] = [];
  const L = store.levels;
  for (let layer = 0; layer < store.numLayers; layer++) {
    const maxErr = new Array<number>(L).fill(0);
    const sq = new Array<number>(L).fill(0);
    const maxBound = new Array<number>(L).fill(0);
    let n = 0;
    let original = 0;
    for (let e = 0; e < store.numExperts; e++) {
      const raw = source.readExpert(layer, e);
      const stored = store.expert(layer, e);
      original += store.originalBytes(layer, e);
      for (const m of MATRICES) {
        const x = decodeTensor(raw[m].bytes, raw[m].dtype);
        n += x.length;
        for (let k = 0; k < store.ladder.bounds.length; k++) {
          const y = decompressRungs(stored[m].head, stored[m].rungs.slice(0, k + 1), { verify: false }) as Float32Array;
          maxBound[k] = Math.max(maxBound[k], stored[m].bounds[k]);
          for (let i = 0; i < x.length; i++) {
            const d = Math.abs(x[i] - y[i]);
            if (d > maxErr[k]) maxErr[k] = d;
            sq[k] += d * d;
          }
        }
      }
    }
    const perExpert = original / store.numExperts;
    out.push({
      layer,
      originalBytesPerExpert: perExpert,
      levels: store.layerLevelBytes(layer).map((bytes, level) => ({
        level,
        label: level === store.exact ? 'exact' : `${store.ladder.bounds[level]}${store.ladder.boundMode === 'abs' ? '' : ` ${store.ladder.boundMode}`}`,
        maxBound: level === store.exact ? 0 : maxBound[level],
        bytesPerExpert: bytes,
        ratio: perExpert / bytes,
        maxError: level === store.exact ? 0 : maxErr[level],
        rmsError: level === store.exact ? 0 : Math.sqrt(sq[level] / n),
      })),
    });
    onLayer?.(layer);
  }
  return out;
}
