/**
 * Accuracy canaries: fixed probes scored on the plan being served, against what the
 * uncompressed model answers. Text items are scored by next-token top-1 agreement and KL
 * divergence (reference ‖ plan) over their continuation positions, teacher-forced; arithmetic
 * items by exact match of the greedy answer. The references come from the same model with every
 * layer at the exact level, computed once.
 *
 * The runner scores a plan on its own engine (strict levels: exactly the plan, not whatever
 * tighter copy a cache holds, so a pass means the plan itself is good), one item at a time, and
 * awaits `yieldToServing` before each item so serving goes first: a canary run never delays a
 * token by more than one item's forward pass.
 *
 * @example
 * const runner = new CanaryRunner({ target, engine, referenceEngine, text, arithmetic, items: 16 });
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
  /** The uncompressed model's experts (every layer exact). */
  referenceEngine: ExpertEngine;
  text: TextCanary[];
  arithmetic?: ArithmeticCanary[];
  /** Items of each kind per run, spread evenly over the sets. */
  items: number;
  yieldToServing?: () => Promise<void>;
}

interface Reference {
  tokens: number[];
  /** First continuation position (the prompt's last token predicts the continuation's first). */
  from: number;
  argmax: Int32Array;
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

export class CanaryRunner {
  private refs?: Promise<Reference[]>;
  private readonly text: TextCanary[];
  private readonly arithmetic: ArithmeticCanary[];
  private running = false;

  constructor(private readonly o: CanaryRunnerOptions) {
    if (!(Number.isInteger(o.items) && o.items >= 1)) throw new RangeError(`canary items must be a whole number ≥ 1, got ${o.items}`);
    if (o.text.length === 0) throw new RangeError('canaries: no text items');
    this.text = spread(o.text, o.items);
    this.arithmetic = spread(o.arithmetic ?? [], o.items);
  }

  /** Whether a run is under way (a schedule skips a tick rather than queue runs). */
  get busy(): boolean {
    return this.running;
  }

  /** The reference outputs, computed on first use. */
  references(): Promise<Reference[]> {
    this.refs ??= (async () => {
      const out: Reference[] = [];
      for (const item of this.text) {
        await yieldTo(this.o.yieldToServing);
        const prompt = this.o.target.encode(item.prompt);
        const tokens = [...prompt, ...this.o.target.encode(item.continuation)].slice(0, -1);
        const rows = this.rows(await this.o.target.logits(tokens, this.o.referenceEngine), prompt.length - 1, tokens.length);
        out.push({ tokens, from: prompt.length - 1, argmax: Int32Array.from(rows, argmax), logProbs: rows.map(logSoftmax) });
      }
      return out;
    })();
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

  /** Rows from..to−1 of a [T, V] logits array. */
  private rows(logits: Float32Array, from: number, to: number): Float32Array[] {
    const V = this.o.target.vocabSize;
    return Array.from({ length: to - from }, (_, j) => logits.slice((from + j) * V, (from + j + 1) * V));
  }
}
