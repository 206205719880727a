/**
 * ExpertEngine: how the model computes a layer's routed experts. The model hands over hidden
 * states and the router's choice; an engine returns the weighted sum of the chosen experts'
 * outputs. The plain engine here keeps every expert resident as TensorFlow.js tensors; the offload
 * and native engines implement the same interface, so the model never knows which it talks to.
 *
 * Shapes: T tokens, d = hidden size, k = experts per token, ff = an expert's hidden width.
 */
import * as tf from '@tensorflow/tfjs';

export interface ExpertEngine {
  /**
   * out[t] = Σ_j weights[t·k + j] · expert(ids[t·k + j])(hidden[t]) for layer `layer`.
   * hidden is [T, d] row-major, ids and weights [T, k]; returns [T, d].
   */
  compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array>;
  /** Releases whatever the engine holds. */
  dispose(): void;
}

/** One SwiGLU expert's matrices as stored in checkpoints: [ff, d], [ff, d], [d, ff] ([out, in]). */
export interface ExpertMatrices {
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

/** Reads expert `e` of layer `layer` (Float32 values, checkpoint layout). */
export type ExpertReader = (layer: number, expert: number) => ExpertMatrices;

/** A SwiGLU expert as tensors transposed for x · W (wasm's fast matMul has no transpose flags). */
export interface SwigluTensors {
  gateT: tf.Tensor2D; // [d, ff]
  upT: tf.Tensor2D; // [d, ff]
  downT: tf.Tensor2D; // [ff, d]
}

/** Makes the transposed tensors of one expert from its checkpoint-layout matrices. */
export function swigluTensors(m: ExpertMatrices, d: number, ff: number): SwigluTensors {
  return tf.tidy(() => ({
    gateT: tf.tensor2d(m.gate, [ff, d]).transpose() as tf.Tensor2D,
    upT: tf.tensor2d(m.up, [ff, d]).transpose() as tf.Tensor2D,
    downT: tf.tensor2d(m.down, [d, ff]).transpose() as tf.Tensor2D,
  }));
}

/** silu(x · gate) * (x · up) · down, for x [n, d] → [n, d]. */
export function swiglu(x: tf.Tensor2D, w: SwigluTensors): tf.Tensor2D {
  return tf.tidy(() => {
    const g = tf.matMul(x, w.gateT);
    const u = tf.matMul(x, w.upT);
    return tf.matMul(tf.mul(tf.mul(g, tf.sigmoid(g)), u), w.downT) as tf.Tensor2D;
  });
}

/** The reference engine: every expert resident as TensorFlow.js tensors. */
export class ResidentExpertEngine implements ExpertEngine {
  private readonly experts: SwigluTensors[][];

  constructor(
    private readonly d: number,
    ff: number,
    numLayers: number,
    numExperts: number,
    read: ExpertReader,
  ) {
    this.experts = Array.from({ length: numLayers }, (_, l) =>
      Array.from({ length: numExperts }, (_, e) => swigluTensors(read(l, e), d, ff)),
    );
  }

  async compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array> {
    const d = this.d;
    const k = ids.length / T;
    const out = new Float32Array(T * d);
    // Rows each expert serves, so an expert runs once per call on all its tokens.
    const rows = new Map<number, number[]>();
    for (let i = 0; i < ids.length; i++) {
      const list = rows.get(ids[i]) ?? [];
      list.push(i);
      rows.set(ids[i], list);
    }
    for (const [e, slots] of rows) {
      const xs = new Float32Array(slots.length * d);
      slots.forEach((s, r) => xs.set(hidden.subarray(Math.floor(s / k) * d, Math.floor(s / k) * d + d), r * d));
      const y = tf.tidy(() => swiglu(tf.tensor2d(xs, [slots.length, d]), this.experts[layer][e]));
      const ys = y.dataSync() as Float32Array;
      y.dispose();
      slots.forEach((s, r) => {
        const t = Math.floor(s / k);
        const w = weights[s];
        for (let i = 0; i < d; i++) out[t * d + i] += w * ys[r * d + i];
      });
    }
    return out;
  }

  dispose(): void {
    for (const layer of this.experts) for (const e of layer) tf.dispose([e.gateT, e.upT, e.downT]);
  }
}
