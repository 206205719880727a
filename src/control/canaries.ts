/**
 * Accuracy canaries: fixed probes scored on the plan being served, against what the
 * uncompressed model answers. Text items are scored by next-token top-1 agreement and KL
 * divergence (reference ‖ plan) over their continuation positions, teacher-forced; arithmetic
 * items by exact match of the greedy answer. The references come from the same model with every
 * layer at the exact level, computed once, for every item together in one batched pass (each
 * layer's experts fetched once a step for all items, not once an item) — or given by whoever
 * built the runner (the server reads them from a file beside the expert store, or computes them
 * before it serves: src/serve/canary-references.ts).
 *
 * The runner scores a plan on its own engine (strict levels: exactly the plan, not whatever
 * tighter copy a cache holds, so a pass means the plan itself is good), one item at a time, and
 * awaits `yieldToServing` before each item so serving goes first: a canary run never delays a
 * token by more than one item's forward pass.
 *
 * @example
 * const runner = new CanaryRunner({ target, engine, referenceEngine, text, arithmetic, items: 16 });
 * // or, with the references at hand: new CanaryRunner({ target, engine, references: async (inputs) => read(inputs), … })
 * const r = await runner.score(controller.plan);  controller.canaries.next(r);
 */
import type { ExpertEngine } from '../offload/expert-engine.js';
import type { PrecisionPlan } from '../offload/plan.js';
import type { CanaryResult } from './controller.js';

/** What the runner needs of a model (serve adapts a loaded model to it; control never imports the model). */
export interface CanaryTarget {
  vocabSize: number;
  encode(text: string): number[];
  /** Logits [T, V] at every position of `tokens`, experts computed by `engine`. */
  logits(tokens: number[], engine: ExpertEngine): Promise<Float32Array>;
  /**
   * The logits of several token lists at once: for list i, rows from[i]..T_i−1 ([T_i − from[i], V];
   * every row when `from` is absent), the same numbers logits() gives. All lists advance together,
   * one forward step for all of them per prompt chunk, so each layer's experts are fetched once a
   * step for every list rather than once per list.
   */
  logitsBatch(lists: number[][], engine: ExpertEngine, from?: number[]): Promise<Float32Array[]>;
  /** The greedy continuation of `prompt`, at most `maxTokens`, cut at `stop`. */
  greedy(prompt: string, maxTokens: number, stop: string, engine: ExpertEngine): Promise<string>;
}

/** An engine whose plan the runner sets before scoring. */
export interface PlannedEngine extends ExpertEngine {
  setPlan(plan: PrecisionPlan): void;
}

export interface TextCanary {
  prompt: string;
  continuation: string;
}

export interface ArithmeticCanary {
  prompt: string;
  answer: string;
}

export interface CanaryRunnerOptions {
  target: CanaryTarget;
  /** Scores plans (strict levels); needed by score(), not by scoreWith(). */
  engine?: PlannedEngine;
  /** The uncompressed model's experts (every layer exact): the references are computed on it, unless `references` gives them. */
  referenceEngine?: ExpertEngine;
  /**
   * Gives the references of `inputs` instead of computing them on `referenceEngine` (the server
   * reads them from its file, or computes them there before it serves). What it gives is checked
   * against `inputs`: the same items, tokens and sizes.
   */
  references?: (inputs: ReferenceInput[]) => Promise<Reference[]>;
  text: TextCanary[];
  arithmetic?: ArithmeticCanary[];
  /** Items of each kind per run, spread evenly over the sets. */
  items: number;
  yieldToServing?: () => Promise<void>;
}

/** What one text item's reference is computed from. */
export interface ReferenceInput {
  /** The prompt's tokens, then the continuation's less its last (nothing is predicted after it). */
  tokens: number[];
  /** First continuation position (the prompt's last token predicts the continuation's first). */
  from: number;
}

/** What the uncompressed model answers at each of an item's continuation positions. */
export interface Reference extends ReferenceInput {
  /** The top-1 token at positions from..T−1. */
  argmax: Int32Array;
  /** The log-softmax row [V] at each of positions from..T−1. */
  logProbs: Float32Array[];
}

/**
 * Lets the event loop turn (I/O first: a request that just arrived gets parsed and queued), then
 * waits until serving is idle. The forward pass's awaits resolve as microtasks and never let I/O
 * in by themselves, so without the turn a run of canaries could starve every request.
 */
async function yieldTo(serving?: () => Promise<void>): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  await serving?.();
}

function spread<T>(xs: T[], n: number): T[] {
  if (n >= xs.length) return [...xs];
  return Array.from({ length: n }, (_, i) => xs[Math.floor((i * xs.length) / n)]);
}

function logSoftmax(row: Float32Array): Float32Array {
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let z = 0;
  for (const v of row) z += Math.exp(v - max);
  const lz = Math.log(z) + max;
  return row.map((v) => v - lz);
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** Rows from..to−1 of a [T, V] logits array. */
function rowsOf(logits: Float32Array, V: number, from: number, to: number): Float32Array[] {
  return Array.from({ length: to - from }, (_, j) => logits.slice((from + j) * V, (from + j + 1) * V));
}

/**
 * The references of `inputs` on `engine` (every layer exact), all items in one batched pass.
 *
 * @example
 * const refs = await computeReferences(target, referenceEngine, runner.referenceInputs());
 */
export async function computeReferences(target: CanaryTarget, engine: ExpertEngine, inputs: ReferenceInput[]): Promise<Reference[]> {
  const logits = await target.logitsBatch(inputs.map((i) => i.tokens), engine, inputs.map((i) => i.from));
  return inputs.map((input, i) => {
    const rows = rowsOf(logits[i], target.vocabSize, 0, input.tokens.length - input.from);
    return { tokens: input.tokens, from: input.from, argmax: Int32Array.from(rows, argmax), logProbs: rows.map(logSoftmax) };
  });
}

/** Throws an Error naming the first way `refs` are not the references of `inputs` (a vocabulary of V). */
export function checkReferences(refs: Reference[], inputs: ReferenceInput[], V: number): void {
  if (refs.length !== inputs.length) throw new Error(`canary references: ${refs.length} given for ${inputs.length} text items`);
  refs.forEach((r, i) => {
    const input = inputs[i];
    const rows = input.tokens.length - input.from;
    if (r.from !== input.from || r.tokens.length !== input.tokens.length || r.tokens.some((t, j) => t !== input.tokens[j])) {
      throw new Error(`canary references: item ${i} was computed for other tokens than this item's`);
    }
    if (r.argmax.length !== rows || r.logProbs.length !== rows || r.logProbs.some((p) => p.length !== V)) {
      throw new Error(`canary references: item ${i} has ${r.argmax.length} top-1 tokens and ${r.logProbs.length} rows of log-probabilities; ${rows} rows of ${V} expected`);
    }
  });
}

export class CanaryRunner {
  private refs?: Promise<Reference[]>;
  private inputs?: ReferenceInput[];
  private readonly text: TextCanary[];
  private readonly arithmetic: ArithmeticCanary[];
  private running = false;

  constructor(private readonly o: CanaryRunnerOptions) {
    if (!(Number.isInteger(o.items) && o.items >= 1)) throw new RangeError(`canary items must be a whole number ≥ 1, got ${o.items}`);
    if (o.text.length === 0) throw new RangeError('canaries: no text items');
    if (!o.referenceEngine && !o.references) throw new RangeError('canaries: give a reference engine or the references');
    this.text = spread(o.text, o.items);
    this.arithmetic = spread(o.arithmetic ?? [], o.items);
  }

  /** Whether a run is under way (a schedule skips a tick rather than queue runs). */
  get busy(): boolean {
    return this.running;
  }

  /** What each text item of a run is scored on: its tokens and first continuation position. */
  referenceInputs(): ReferenceInput[] {
    this.inputs ??= this.text.map((item, i) => {
      const prompt = this.o.target.encode(item.prompt);
      const continuation = this.o.target.encode(item.continuation);
      if (prompt.length === 0 || continuation.length === 0) throw new RangeError(`canary text item ${i} (${JSON.stringify(item.prompt.slice(0, 40))}): its prompt and its continuation must each be at least one token`);
      return { tokens: [...prompt, ...continuation].slice(0, -1), from: prompt.length - 1 };
    });
    return this.inputs;
  }

  /**
   * The reference outputs: on first use, given by `references` or computed in one batched pass on
   * the reference engine. A failure is not kept: the next call tries again.
   */
  references(): Promise<Reference[]> {
    this.refs ??= (async () => {
      const inputs = this.referenceInputs();
      const refs = this.o.references ? await this.o.references(inputs) : await computeReferences(this.o.target, this.o.referenceEngine!, inputs);
      checkReferences(refs, inputs, this.o.target.vocabSize);
      return refs;
    })().catch((e: unknown) => {
      this.refs = undefined;
      throw e;
    });
    return this.refs;
  }

  /** Scores `plan`: top-1 agreement and mean KL over the text items, exact match over the arithmetic. */
  async score(plan: PrecisionPlan): Promise<CanaryResult> {
    if (this.running) throw new Error('a canary run is already under way');
    if (!this.o.engine) throw new Error('this canary runner has no engine to set plans on (use scoreWith)');
    this.o.engine.setPlan(plan);
    return this.scoreWith(this.o.engine, plan.version);
  }

  /** Scores whatever `engine` computes (the profiler's perturbed experts), reported as plan `version`. */
  async scoreWith(engine: ExpertEngine, version: number): Promise<CanaryResult> {
    if (this.running) throw new Error('a canary run is already under way');
    this.running = true;
    try {
      const refs = await this.references();
      let same = 0;
      let positions = 0;
      let kl = 0;
      for (const ref of refs) {
        await yieldTo(this.o.yieldToServing);
        const rows = this.rows(await this.o.target.logits(ref.tokens, engine), ref.from, ref.tokens.length);
        rows.forEach((row, j) => {
          if (argmax(row) === ref.argmax[j]) same++;
          const q = logSoftmax(row);
          const p = ref.logProbs[j];
          for (let v = 0; v < p.length; v++) kl += Math.exp(p[v]) * (p[v] - q[v]);
          positions++;
        });
      }
      if (!Number.isFinite(kl)) throw new Error('the canaries saw non-finite logits: the experts this engine computes with are not valid numbers');
      let exact: number | undefined;
      if (this.arithmetic.length) {
        let right = 0;
        for (const item of this.arithmetic) {
          await yieldTo(this.o.yieldToServing);
          if ((await this.o.target.greedy(item.prompt, item.answer.length + 1, '\n', engine)) === item.answer) right++;
        }
        exact = right / this.arithmetic.length;
      }
      return { kind: 'canary', at: performance.now() / 1000, planVersion: version, top1Agreement: same / positions, kl: kl / positions, exactMatch: exact };
    } finally {
      this.running = false;
    }
  }

  private rows(logits: Float32Array, from: number, to: number): Float32Array[] {
    return rowsOf(logits, this.o.target.vocabSize, from, to);
  }
}
