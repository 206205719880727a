// A synthetic ExpertSource for the offload tests: a few layers × experts of small Gaussian
// matrices (a σ per layer), stored as BF16 (or F32) little-endian bytes, seeded so every read of
// an expert returns the same bytes. Its `hash` is a plain property a test may change.
import { f32ToBf16, type TensorDtype } from '../../src/codec/halfs-array.js';
import { MATRICES, type ExpertSource, type MatrixName, type RawTensor } from '../../src/offload/source.js';
import { gaussian } from '../codec/data.js';

export interface FakeSourceOptions {
  numLayers?: number;
  numExperts?: number;
  /** Hidden size (default 16) and expert intermediate size (default 24). */
  d?: number;
  ff?: number;
  /** σ of layer l's weights: sigmas[l % sigmas.length] (default [0.02, 0.05, 0.01]). */
  sigmas?: number[];
  dtype?: Extract<TensorDtype, 'BF16' | 'F32'>;
  seed?: number;
  hash?: string;
}

export interface FakeSource extends ExpertSource {
  hash: string;
  readonly d: number;
  readonly ff: number;
  readonly dtype: 'BF16' | 'F32';
  /** The σ layer `layer`'s weights were drawn with. */
  sigma(layer: number): number;
  /** How many times readExpert was called. */
  reads: number;
}

export function fakeSource(opts: FakeSourceOptions = {}): FakeSource {
  const numLayers = opts.numLayers ?? 2;
  const numExperts = opts.numExperts ?? 3;
  const d = opts.d ?? 16;
  const ff = opts.ff ?? 24;
  const sigmas = opts.sigmas ?? [0.02, 0.05, 0.01];
  const dtype = opts.dtype ?? 'BF16';
  const seed = opts.seed ?? 1;
  const shapes: Record<MatrixName, number[]> = { gate: [ff, d], up: [ff, d], down: [d, ff] };
  const sigma = (layer: number) => sigmas[layer % sigmas.length];
  const src: FakeSource = {
    numLayers,
    numExperts,
    hash: opts.hash ?? `fake-${seed}-${numLayers}x${numExperts}-${d}x${ff}-${dtype}`,
    d,
    ff,
    dtype,
    sigma,
    reads: 0,
    readExpert(layer: number, expert: number): Record<MatrixName, RawTensor> {
      if (!(layer >= 0 && layer < numLayers && expert >= 0 && expert < numExperts)) throw new RangeError(`fake source: no expert ${expert} in layer ${layer}`);
      src.reads++;
      const out = {} as Record<MatrixName, RawTensor>;
      MATRICES.forEach((m, i) => {
        const shape = shapes[m];
        const values = gaussian(shape[0] * shape[1], sigma(layer), seed * 1_000_003 + (layer * numExperts + expert) * 3 + i + 1);
        out[m] = { dtype, shape: [...shape], bytes: new Uint8Array(dtype === 'BF16' ? f32ToBf16(values).buffer : values.buffer) };
      });
      return out;
    },
  };
  return src;
}
