/**
 * A checkpoint folder made ready to run: the TensorFlow.js backend initialised, the checkpoint
 * opened and checked, the dense tensors built, the experts behind an ExpertEngine, and the
 * tokenizer the folder declares. This is the one place that wires those parts together, so the
 * CLI, the server and the benchmarks load a model the same way.
 *
 * The engine is the caller's choice: by default every expert is resident as tfjs tensors
 * (ResidentExpertEngine); the offload engines pass their own factory and read the experts from the
 * checkpoint themselves. Whatever the engine, the forward pass runs in the addon
 * (src/model/native-forward.ts) for the architectures it covers, unless nativeForward is false;
 * the TensorFlow.js model stays the reference and the path for the others.
 *
 * @example
 * const m = await loadModel(EMBEDDED_MODEL_DIR);
 * const g = await generate(m.model, m.tokenizer, '48+27=', { maxTokens: 4, stop: ['\n'] });
 * m.dispose();
 */
import { initBackend, type BackendChoice, type BackendName } from './backend.js';
import { openCheckpoint, type Checkpoint } from './checkpoint.js';
import { GgufCheckpoint } from './gguf/checkpoint.js';
import { ggufTokenizer } from './gguf/vocab.js';
import { ResidentExpertEngine, type ExpertEngine, type ExpertMatrices } from './engine.js';
import { denseTensorNames, expertName } from './names.js';
import { loadTokenizer, type Tokenizer } from './tokenizer.js';
import { nativeForwardUnsupported, NativeForward, type DenseSymbols } from './native-forward.js';
import { MoeTransformer, rotaryTables } from './transformer.js';
import { CpuExpertEngine, type CpuEngineOptions } from '../offload/cpu-engine.js';
import type { ExpertSource } from '../offload/source.js';

export { EMBEDDED_MODEL_DIR } from './embedded.js';

export interface LoadOptions {
  /** Force a TensorFlow.js backend instead of the usual order (tensorflow, wasm, cpu). */
  backend?: BackendName;
  /** Builds the expert engine; the default keeps every expert resident as tfjs tensors. */
  engine?: (checkpoint: Checkpoint) => ExpertEngine | Promise<ExpertEngine>;
  /**
   * The CPU engine instead (ignored when `engine` is given): experts in the addon, dense f32 or,
   * with `bound`, compressed and multiplied by the fused path.
   */
  cpu?: CpuEngineOptions;
  /** The native forward's attention projections as 8-bit symbols (NativeForward's DenseSymbols). */
  denseSymbols?: DenseSymbols;
  /**
   * Run the forward pass in the addon (src/model/native-forward.ts) for the architectures it
   * covers, whatever the engine (default true); false keeps the TensorFlow.js reference.
   */
  nativeForward?: boolean;
}

export interface LoadedModel {
  checkpoint: Checkpoint;
  model: MoeTransformer;
  engine: ExpertEngine;
  tokenizer: Tokenizer;
  backend: BackendChoice;
  /** Frees the tensors, the engine and the checkpoint's files. */
  dispose(): void;
}

/** Reads one expert's three matrices from a checkpoint as float32 ([out, in] layout). */
export function readExpert(checkpoint: Checkpoint, layer: number, expert: number): ExpertMatrices {
  const c = checkpoint.config;
  return {
    gate: checkpoint.readTensor(expertName(c, layer, expert, 'gate')),
    up: checkpoint.readTensor(expertName(c, layer, expert, 'up')),
    down: checkpoint.readTensor(expertName(c, layer, expert, 'down')),
  };
}

/** A checkpoint seen as offload's ExpertSource (raw bytes as stored, read on demand). */
export function checkpointExperts(checkpoint: Checkpoint): ExpertSource {
  const c = checkpoint.config;
  return {
    numLayers: c.numLayers,
    numExperts: c.numExperts,
    hash: checkpoint.hash,
    readExpert(layer, expert) {
      const raw = (which: 'gate' | 'up' | 'down') => {
        const t = checkpoint.readRaw(expertName(c, layer, expert, which));
        return { dtype: t.dtype, shape: t.shape, bytes: t.bytes };
      };
      return { gate: raw('gate'), up: raw('up'), down: raw('down') };
    },
  };
}

/** Loads the checkpoint in `dir`, or a GGUF file (errors are CheckpointErrors naming file and tensor or key). */
export async function loadModel(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const backend = await initBackend(opts.backend);
  const checkpoint = openCheckpoint(dir);
  let engine: ExpertEngine | undefined;
  try {
    const c = checkpoint.config;
    const tokenizer = checkpoint instanceof GgufCheckpoint ? ggufTokenizer(checkpoint.header.metadata, dir) : await loadTokenizer(dir, c);
    const read = (l: number, e: number) => readExpert(checkpoint, l, e);
    if (opts.engine) engine = await opts.engine(checkpoint);
    else if (opts.cpu) engine = CpuExpertEngine.fromReader(c, read, opts.cpu);
    else engine = new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, read);
    const readDense = (name: string) => checkpoint.readTensor(name);
    const names = denseTensorNames(c);
    const model = new MoeTransformer(c, readDense, names, engine);
    if (opts.nativeForward !== false && !nativeForwardUnsupported(c)) {
      model.useNativeForward(new NativeForward(c, readDense, names, rotaryTables(c.headDim, c.maxPositions, c.ropeTheta), opts.cpu?.threads, opts.denseSymbols));
    }
    const used = engine;
    return {
      checkpoint,
      model,
      engine: used,
      tokenizer,
      backend,
      dispose() {
        model.dispose();
        used.dispose();
        checkpoint.close();
      },
    };
  } catch (e) {
    engine?.dispose();
    checkpoint.close();
    throw e;
  }
}
