/**
 * What the expert store reads experts from: a checkpoint, seen from offload (which never imports
 * the model). src/model/load.ts adapts an open Checkpoint to this.
 */
import type { TensorDtype } from '../codec/halfs-array.js';

/** One matrix as stored: its element type, shape ([out, in]) and little-endian bytes. */
export interface RawTensor {
  dtype: TensorDtype;
  shape: number[];
  bytes: Uint8Array;
}

export const MATRICES = ['gate', 'up', 'down'] as const;
export type MatrixName = (typeof MATRICES)[number];

export interface ExpertSource {
  numLayers: number;
  numExperts: number;
  /** Identifies the checkpoint's contents (caches of derived data are keyed by it). */
  hash: string;
  /** Layer `layer`'s expert `expert`: gate [ff, d], up [ff, d], down [d, ff]. */
  readExpert(layer: number, expert: number): Record<MatrixName, RawTensor>;
}
