/**
 * What the HTTP layer needs of a model: its name, its context, a token count, and the pieces the
 * batch scheduler steps — a generation sequence per choice, the batched forward step and the
 * check of one sequence's step. The API, the scheduler and the tests talk to this interface only,
 * so the app can bind its port and answer /health before TensorFlow.js is even imported
 * (load-model.ts, which builds a ServedModel from a checkpoint, is imported lazily), and a test
 * can hold the loading.
 */
import type { GenerationSequence, SequenceOptions } from '../model/sequence.js';
import type { SequenceStep } from '../model/transformer.js';
import type { Tokenizer } from '../model/tokenizer.js';
import type { ChatTemplate } from './chat-template.js';
import type { RoutingWindow } from '../control/routing/window.js';
import type { ServedControl } from './served-control.js';
import type { MemoryPlan } from './memory-plan.js';

export type EngineName = 'resident' | 'offload' | 'cpu';

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
  /** What each tier holds (the startup log's memory line; ebserve_memory_plan_bytes). */
  readonly memory: MemoryPlan;
  /** The live controller (offload engine without a fixed level). */
  readonly control?: ServedControl;
  /** The model's routing of the last served tokens and its routing report (any engine). */
  readonly routing?: RoutingWindow;
  countTokens(text: string): number;
  /** The model's tokenizer (POST /tokenize, /detokenize, the tokens of logprobs). */
  readonly tokenizer: Tokenizer;
  /** Token ids run from 0 to vocabSize − 1. */
  readonly vocabSize: number;
  /** How chat messages become a prompt (the checkpoint's template, or the plain one). */
  readonly chatTemplate: ChatTemplate;
  /**
   * A new generation of `prompt` for the scheduler to step (its KV cache is made at its first
   * step). Throws a RangeError or TypeError naming what is wrong (an empty prompt, one that fills
   * the context, a stop that is not a string).
   */
  sequence(prompt: string | readonly number[], opts: SequenceOptions): GenerationSequence;
  /** One forward step for these sequences' steps on the model's own engine; each one's last-position logits. */
  forwardBatch(steps: SequenceStep[]): Promise<Float32Array[]>;
  /** Throws a RangeError naming what is wrong with one sequence's step (checkSequence). */
  checkStep(step: SequenceStep): void;
  dispose(): void;
}
