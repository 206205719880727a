/**
 * The key/value cache of one sequence: per layer, keys and values of every position so far,
 * in host memory ([maxPositions, kvHeads · headDim] row-major). Host arrays rather than tensors:
 * appending is a copy of one row, and truncating (to reuse a shared prompt prefix) is free.
 */
import type { ModelConfig } from './types.js';

export class KvCache {
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  /** Positions filled. */
  length = 0;

  constructor(
    readonly numLayers: number,
    readonly width: number,
    readonly maxPositions: number,
  ) {
    this.keys = Array.from({ length: numLayers }, () => new Float32Array(maxPositions * width));
    this.values = Array.from({ length: numLayers }, () => new Float32Array(maxPositions * width));
  }

  /** A cache for one sequence of a model of config `c`: every layer, the whole context. */
  static forModel(c: Pick<ModelConfig, 'numLayers' | 'numKvHeads' | 'headDim' | 'maxPositions'>): KvCache {
    return new KvCache(c.numLayers, c.numKvHeads * c.headDim, c.maxPositions);
  }

  /** Writes T rows of keys and values for `layer` at positions length..length+T−1. */
  write(layer: number, k: Float32Array, v: Float32Array, T: number): void {
    if (this.length + T > this.maxPositions) {
      throw new RangeError(`context is ${this.maxPositions} positions; ${this.length + T} asked`);
    }
    this.keys[layer].set(k.subarray(0, T * this.width), this.length * this.width);
    this.values[layer].set(v.subarray(0, T * this.width), this.length * this.width);
  }

  /** Marks T more positions filled (after every layer wrote them). */
  advance(T: number): void {
    this.length += T;
  }

  /** Forgets positions from `length` on. */
  truncate(length: number): void {
    this.length = Math.min(this.length, Math.max(0, length));
  }
}
