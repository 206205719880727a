/**
 * ExpertEngine: how the model computes a layer's routed experts. The model hands over hidden
 * states and the router's choice; an engine returns the weighted sum of the chosen experts'
 * outputs. The model's plain engine keeps every expert resident as TensorFlow.js tensors; the
 * offload engine (engine.ts here) fetches them through the store, the link and the device cache;
 * native engines implement the same interface, so the model never knows which it talks to.
 * The interface lives in offload (the lower layer) so offload never imports the model.
 *
 * Shapes: T tokens, d = hidden size, k = experts per token, ff = an expert's hidden width.
 */
import * as tf from '@tensorflow/tfjs';

export interface ExpertEngine {
  /**
   * out[t] = Σ_j weights[t·k + j] · expert(ids[t·k + j])(hidden[t]) for layer `layer`.
   * hidden is [T, d] row-major, ids and weights [T, k]; returns [T, d]. An engine that fetches
   * asks for the layer's experts before its first await: the native forward issues the next
   * layer's prefetch right after the call, and this layer's fetches should be ahead of it.
   */
  compute(layer: number, hidden: Float32Array, ids: Int32Array, weights: Float32Array, T: number): Promise<Float32Array>;
  /**
   * A hint that layer `layer` will soon need experts `ids` (that layer's router applied to the
   * current hidden state; for layer 0, to the token embeddings): an engine that fetches may start
   * now. Never throws, never waits.
   */
  prefetch?(layer: number, ids: Int32Array): void;
  /**
   * Every layer's experts resident in the addon, nothing to fetch or wait for (the CPU engine):
   * the native forward then runs a whole step in one native call, experts included, with no
   * JavaScript between its layers, and reports the step's routing afterwards. Undefined where an
   * engine fetches (its compute and prefetch run between layers).
   */
  resident?(): ResidentExperts | undefined;
  /** The model starts a forward step (every sequence of a batch)… */
  beginForward?(step: StepShape): void;
  /** …and has finished it. */
  endForward?(step: StepShape): void;
  /** Releases whatever the engine holds. */
  dispose(): void;
}

/** An engine's resident experts as the native forward takes them. */
export interface ResidentExperts {
  /** The addon's handle (residentExperts). */
  handle: unknown;
  /** A step computed them: each layer's routing ids ([layers, T, k]) and the experts' seconds. */
  computed(ids: Int32Array, layers: number, seconds: number): void;
}

/**
 * What one forward step holds: its tokens (all sequences together), the sequences in the batch,
 * and how many of the tokens are prompt (prefill) tokens rather than one decode token each.
 */
export interface StepShape {
  tokens: number;
  sequences: number;
  prefillTokens: number;
}

/** One SwiGLU expert's matrices as stored in checkpoints: [ff, d], [ff, d], [d, ff] ([out, in]). */
export interface ExpertMatrices {
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

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

export function disposeSwiglu(w: SwigluTensors): void {
  tf.dispose([w.gateT, w.upT, w.downT]);
}

/** silu(x · gate) * (x · up) · down, for x [n, d] → [n, d]. */
export function swiglu(x: tf.Tensor2D, w: SwigluTensors): tf.Tensor2D {
  return tf.tidy(() => {
    const g = tf.matMul(x, w.gateT);
    const u = tf.matMul(x, w.upT);
    return tf.matMul(tf.mul(tf.mul(g, tf.sigmoid(g)), u), w.downT) as tf.Tensor2D;
  });
}

/**
 * Runs each chosen expert once on all the tokens routed to it and sums the weighted outputs:
 * the part every tfjs-computing engine shares. `weightsOf(e)` gives expert e's tensors.
 */
export function combineExperts(
  d: number,
  hidden: Float32Array,
  ids: Int32Array,
  weights: Float32Array,
  T: number,
  weightsOf: (expert: number) => SwigluTensors,
): Float32Array {
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
    const y = tf.tidy(() => swiglu(tf.tensor2d(xs, [slots.length, d]), weightsOf(e)));
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

/** The distinct experts in `ids`, in first-seen order. */
export function distinctExperts(ids: Int32Array): number[] {
  return [...new Set(ids)];
}
