/**
 * The model's plain expert engine: every expert resident as TensorFlow.js tensors, the reference
 * the offload and native engines are tested against. The ExpertEngine interface itself and the
 * SwiGLU helpers live in src/offload/expert-engine.ts (offload never imports the model).
 */
import {
  combineExperts,
  disposeSwiglu,
  swigluTensors,
  type ExpertEngine,
  type ExpertMatrices,
  type SwigluTensors,
} from '../offload/expert-engine.js';

export { swiglu, swigluTensors, type ExpertEngine, type ExpertMatrices, type SwigluTensors } from '../offload/expert-engine.js';

/** Reads expert `e` of layer `layer` (Float32 values, checkpoint layout). */
export type ExpertReader = (layer: number, expert: number) => ExpertMatrices;

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
    const row = this.experts[layer];
    if (!row) throw new RangeError(`layer ${layer} is not one of the engine's ${this.experts.length}`);
    for (const e of ids) if (!row[e]) throw new RangeError(`expert ${e} is not one of layer ${layer}'s ${row.length}`);
    return combineExperts(this.d, hidden, ids, weights, T, (e) => row[e]);
  }

  dispose(): void {
    for (const layer of this.experts) for (const e of layer) disposeSwiglu(e);
  }
}
