/**
 * What the HTTP layer needs of a model: its name, its context, a token count, and generate with
 * a hook per token. The API, the queue and the tests talk to this interface only, so the app can
 * bind its port and answer /health before TensorFlow.js is even imported (load-model.ts, which
 * builds a ServedModel from a checkpoint, is imported lazily), and a test can hold the loading.
 */
import type { Generation, GenerateOptions } from '../model/generate.js';
import type { ServedControl } from './served-control.js';

export type EngineName = 'resident' | 'offload' | 'cpu';

export interface ServeGenerateOptions extends Pick<GenerateOptions, 'maxTokens' | 'temperature' | 'topP' | 'seed' | 'stop' | 'onText' | 'signal'> {
  /** Called once per generated token, right after its logits are computed. */
  onToken?: () => void;
}

export interface ServedModel {
  /** The model's id in the API (/v1/models, the "model" field). */
  readonly id: string;
  readonly dir: string;
  readonly backend: { name: string; reason: string };
  readonly engine: EngineName;
  /** Tokens the context holds (prompt and completion together). */
  readonly contextTokens: number;
  /** Whether experts cross an emulated link (always false for the resident engine). */
  readonly linkEmulated: boolean;
  /** What runs, for /health: engine settings such as experts per layer and the fixed level. */
  readonly details: Readonly<Record<string, string | number | boolean>>;
  /** The live controller (offload engine without a fixed level). */
  readonly control?: ServedControl;
  countTokens(text: string): number;
  generate(prompt: string, opts: ServeGenerateOptions): Promise<Generation>;
  dispose(): void;
}
