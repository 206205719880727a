/**
 * Picks the TensorFlow.js backend the dense parts run on: tfjs-node-gpu when it installed (an
 * optional dependency; its install downloads libtensorflow, which fails where that is not
 * reachable), else wasm (SIMD, one thread), else the pure-JS cpu backend. The choice and the
 * reason are kept so the CLI, logs and /health can report them.
 *
 * @example
 * const { name, reason } = await initBackend();   // { name: 'wasm', reason: 'tfjs-node-gpu …' }
 */
import * as tf from '@tensorflow/tfjs';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';

export interface BackendChoice {
  name: BackendName;
  /** Why this one: what was tried before it and how that failed. */
  reason: string;
}

let chosen: BackendChoice | null = null;

/** Initialises TensorFlow.js once (later calls return the first choice). `prefer` forces one. */
export async function initBackend(prefer?: BackendName): Promise<BackendChoice> {
  if (chosen && (!prefer || prefer === chosen.name)) return chosen;
  const tried: string[] = [];
  const order: BackendName[] = prefer ? [prefer] : ['tensorflow', 'wasm', 'cpu'];
  for (const name of order) {
    try {
      await load(name);
      if (!(await tf.setBackend(name))) throw new Error('setBackend refused it');
      await tf.ready();
      chosen = { name, reason: tried.length ? tried.join('; ') : prefer ? 'asked for' : 'first choice' };
      return chosen;
    } catch (e) {
      tried.push(`${name}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  throw new Error(`no TensorFlow.js backend could start (${tried.join('; ')})`);
}

/** The backend in use, or null before initBackend. */
export function currentBackend(): BackendChoice | null {
  return chosen;
}

async function load(name: BackendName): Promise<void> {
  if (name === 'tensorflow') {
    // A bare specifier in a variable: TypeScript does not need its types, and its absence is
    // the common case, reported as the reason for the fallback.
    const gpu = '@tensorflow/tfjs-node-gpu';
    await import(gpu);
  } else if (name === 'wasm') {
    await import('@tensorflow/tfjs-backend-wasm');
  }
}
