/**
 * Continuous batching: the requests being generated decode together, one forward step for all of
 * their sequences (MoeTransformer.forwardBatch), and requests join and leave between steps.
 *
 * - Up to `maxBatch` sequences are in the batch; a request with n choices brings n sequences and
 *   joins whole (n ≤ maxBatch), at the next step boundary, in arrival order.
 * - Beyond that, requests wait in a line of at most `maxWaiting`; a request that would have to
 *   wait when the line is full is refused at once (QueueFullError: the API answers 429 with
 *   Retry-After) rather than left to wait without end.
 * - A prompt is run in chunks of `prefillChunk` tokens (the sequence cuts them: the same chunks
 *   whatever else is in the step, so a sequence's numbers do not depend on its company). One step
 *   carries every decoding sequence's token plus prompt chunks, oldest request first, while their
 *   total stays within `prefillChunk` tokens — at least one chunk, so a step holds at most about
 *   one chunk of prompt and a long prompt never stalls the running sequences for more than that.
 *   Short prompts that arrive together share one step.
 * - A sequence that finishes leaves at once (its slot is free at the next boundary); a request
 *   whose signal aborts (client gone, shutdown) leaves at once, waiting or running, and rejects
 *   with the signal's reason.
 * - Every sequence's step is checked (checkStep) before it joins a step: one that fails fails its
 *   request alone, with the check's error, and the step goes on without it. What advancing a
 *   sequence throws (sampling, stop strings, the streaming hooks) fails that request alone too.
 *   Only if the forward step itself throws after every check passed do all of its requests fail,
 *   with a StepFailed (a server fault: their caches may have advanced part way).
 * - Work that must not run inside a step — the canaries, which run the same model on their own
 *   engine — goes through betweenSteps(): it runs at the next step boundary, and the next step
 *   (and any admission) waits for it.
 *
 * Retry-After is an estimate from measured requests: the mean time a request spends in the batch
 * times the number of batches' worth of sequences ahead of a newcomer.
 *
 * @example
 * const batcher = new BatchScheduler({ maxBatch: 8, maxWaiting: 8, prefillChunk: 64 });
 * batcher.attach(servedModel);
 * const [g] = await batcher.run([servedModel.sequence(prompt, opts)], controller.signal);
 */
import type { Generation, GenerationSequence } from '../model/sequence.js';
import type { SequenceStep } from '../model/transformer.js';

/** Thrown by run() when the request would have to wait and the waiting line is full. */
export class QueueFullError extends Error {
  constructor(
    readonly waiting: number,
    /** Whole seconds after which a retry may find room. */
    readonly retryAfterSeconds: number,
  ) {
    super(`the server is busy: ${waiting} request${waiting === 1 ? '' : 's'} already waiting; retry in ${retryAfterSeconds} s`);
    this.name = 'QueueFullError';
  }
}

/** A request failed because the forward step it was in failed (not because of anything it asked). */
export class StepFailed extends Error {
  constructor(cause: unknown) {
    super(`the forward step failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = 'StepFailed';
  }
}

/** What the scheduler steps: the model's batched forward step, and its check of one sequence's step. */
export interface StepModel {
  /** Tokens the context holds (the prefill chunk must fit in it). */
  readonly contextTokens: number;
  /** One forward step on the model's own engine; each sequence's last-position logits. */
  forwardBatch(steps: SequenceStep[]): Promise<Float32Array[]>;
  /** Throws (a RangeError) naming what is wrong with one sequence's step. */
  checkStep(step: SequenceStep): void;
}

/**
 * Hooks for work that must not overlap a step, handed to the model loader for the canaries:
 * stepBoundary() resolves at the next step boundary (at once when nothing is generating);
 * betweenSteps(task) runs `task` there and holds the next step until it settles.
 */
export interface ServingHooks {
  stepBoundary(): Promise<void>;
  /** Whether a step is under way or coming (requests are being served). */
  readonly serving?: () => boolean;
  betweenSteps<T>(task: () => Promise<T>): Promise<T>;
  /** Prompt tokens a serving step carries at most: work between steps should come in pieces this size. */
  readonly prefillChunk?: number;
}

export interface BatchState {
  /** Requests in the batch. */
  running: number;
  /** Requests not yet in it (those that fit join at the next step boundary). */
  waiting: number;
  /** Sequences in the batch (a request with n choices has n until they finish). */
  sequences: number;
}

/** What one forward step held, for the batch-size metric. */
export interface StepInfo {
  sequences: number;
  tokens: number;
  prefillTokens: number;
}

export interface BatchSchedulerOptions {
  /** Sequences that decode together at most (≥ 1). */
  maxBatch: number;
  /** Requests that may wait for room in the batch (≥ 0; 0: none wait). */
  maxWaiting: number;
  /** Prompt tokens per step at most (≥ 1); the sequences must be made with this chunk. */
  prefillChunk: number;
  /** Called whenever the number running or waiting changes (the queue gauges). */
  onChange?: (s: BatchState) => void;
  /** Called before every forward step. */
  onStep?: (s: StepInfo) => void;
}

interface Request {
  seqs: GenerationSequence[];
  signal: AbortSignal;
  onStart?: () => void;
  resolve: (g: Generation[]) => void;
  reject: (e: unknown) => void;
  onAbort: () => void;
  /** When it joined the batch (performance.now()). */
  joined: number;
  settled: boolean;
}

export class BatchScheduler implements ServingHooks {
  readonly maxBatch: number;
  readonly maxWaiting: number;
  readonly prefillChunk: number;
  private model: StepModel | null = null;
  private readonly line: Request[] = [];
  private running: Request[] = [];
  private looping = false;
  private tasks: (() => Promise<void>)[] = [];
  private boundaryWaiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  /** Exponentially weighted mean of the seconds a request spends in the batch, 0 until one finished. */
  private meanSeconds = 0;

  /** Takes the limits and hooks; throws a RangeError naming a limit that is not a whole number in range. */
  constructor(private readonly o: BatchSchedulerOptions) {
    const whole = (name: string, v: number, min: number) => {
      if (!(Number.isInteger(v) && v >= min)) throw new RangeError(`${name} must be a whole number ≥ ${min}, got ${v}`);
      return v;
    };
    this.maxBatch = whole('the batch size', o.maxBatch, 1);
    this.maxWaiting = whole('the queue bound', o.maxWaiting, 0);
    this.prefillChunk = whole('the prefill chunk', o.prefillChunk, 1);
  }

  /**
   * Steps `model` from now on (the server calls it once the model is loaded). Throws a RangeError
   * naming --prefill-chunk when a chunk would not fit in the model's context.
   */
  attach(model: StepModel): void {
    if (this.prefillChunk > model.contextTokens) {
      throw new RangeError(`--prefill-chunk ${this.prefillChunk} is longer than the model's context of ${model.contextTokens} tokens`);
    }
    this.model = model;
  }

  get state(): BatchState {
    return { running: this.running.length, waiting: this.line.length, sequences: this.batchSequences() };
  }

  /**
   * Generates `seqs` (one request's choices, made with this scheduler's prefill chunk) in the
   * batch; settles with their generations in order, or with the first error of any. Throws
   * QueueFullError at once (synchronously, so the caller can still answer 429) when the request
   * would wait and the line is full. `onStart` is called when the request joins the batch. Rejects
   * with the signal's reason if `signal` aborts, waiting or running.
   */
  run(seqs: GenerationSequence[], signal: AbortSignal, onStart?: () => void): Promise<Generation[]> {
    if (!this.model) throw new Error('no model to step yet: attach() one first');
    if (!(seqs.length >= 1 && seqs.length <= this.maxBatch)) throw new RangeError(`a request runs 1..${this.maxBatch} sequences (the batch size), got ${seqs.length}`);
    const waiting = this.waitingBeyondNextStep();
    if (this.wouldWait(seqs.length) && waiting >= this.maxWaiting) throw new QueueFullError(waiting, this.retryAfterSeconds());
    return new Promise<Generation[]>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const req: Request = { seqs, signal, onStart, resolve, reject, onAbort: () => this.fail(req, signal.reason), joined: 0, settled: false };
      signal.addEventListener('abort', req.onAbort, { once: true });
      this.line.push(req);
      this.changed();
      this.kick();
    });
  }

  /** Resolves when nothing runs, waits or steps. */
  idle(): Promise<void> {
    if (!this.looping && this.line.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Whether a step is under way or coming. */
  serving(): boolean {
    return this.looping;
  }

  /** Resolves at the next step boundary, or at once when no step is under way or coming. */
  stepBoundary(): Promise<void> {
    if (!this.looping) return Promise.resolve();
    return new Promise((resolve) => this.boundaryWaiters.push(resolve));
  }

  /** Runs `task` at the next step boundary (at once when idle); no step starts until it settles. */
  betweenSteps<T>(task: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.tasks.push(() => Promise.resolve().then(task).then(resolve, reject));
      this.kick();
    });
  }

  /** Whole seconds until a newcomer would probably be in the batch (at least 1). */
  retryAfterSeconds(): number {
    const ahead = this.batchSequences() + this.line.reduce((n, r) => n + r.seqs.length, 0);
    return Math.max(1, Math.ceil(Math.ceil(ahead / this.maxBatch) * this.meanSeconds));
  }

  private batchSequences(): number {
    let n = 0;
    for (const r of this.running) for (const s of r.seqs) if (!s.done) n++;
    return n;
  }

  /** Whether a request of n sequences could not join at the next boundary (behind the line). */
  private wouldWait(n: number): boolean {
    return this.batchSequences() + this.line.reduce((k, r) => k + r.seqs.length, 0) + n > this.maxBatch;
  }

  /** Requests of the line that will not join at the next boundary either. */
  private waitingBeyondNextStep(): number {
    let free = this.maxBatch - this.batchSequences();
    let joining = 0;
    for (const r of this.line) {
      if (r.seqs.length > free) break;
      free -= r.seqs.length;
      joining++;
    }
    return this.line.length - joining;
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    // In a microtask: run() returns (and its caller opens its stream) before onStart is called.
    queueMicrotask(() => void this.loop());
  }

  private async loop(): Promise<void> {
    try {
      for (;;) {
        // Between-steps work first: it has waited for this boundary.
        for (const task of this.tasks.splice(0)) await task();
        this.admit();
        if (this.running.length === 0) {
          if (this.tasks.length) continue;
          return;
        }
        await this.step(this.model!);
        this.reachedBoundary();
        // Let I/O run: requests arrive, clients hang up, a canary item queues itself.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } catch (e) {
      // A fault of the scheduler itself: fail what it holds rather than leave it hanging.
      for (const r of [...this.running, ...this.line]) this.fail(r, e);
    } finally {
      this.looping = false;
      this.reachedBoundary();
      this.changed();
      if (this.line.length === 0) {
        for (const resolve of this.idleWaiters.splice(0)) resolve();
      } else {
        this.kick(); // arrived during the last turn's wind-down
      }
    }
  }

  /** Moves requests from the head of the line into the batch while their sequences fit. */
  private admit(): void {
    let free = this.maxBatch - this.batchSequences();
    let moved = false;
    while (this.line.length > 0 && this.line[0].seqs.length <= free) {
      const req = this.line.shift()!;
      free -= req.seqs.length;
      req.joined = performance.now();
      this.running.push(req);
      moved = true;
      try {
        req.onStart?.();
      } catch (e) {
        this.fail(req, e);
      }
    }
    if (moved) this.changed();
  }

  /** One forward step over the batch, then each sequence advanced with its logits. */
  private async step(model: StepModel): Promise<void> {
    const going: { req: Request; seq: GenerationSequence; step: SequenceStep }[] = [];
    let prefill = 0;
    for (const req of this.running) {
      for (const seq of req.seqs) {
        if (seq.done || req.settled) continue;
        try {
          const step = seq.step();
          const prompt = step.prefill ? step.tokens.length : 0;
          if (prompt > 0 && prefill > 0 && prefill + prompt > this.prefillChunk) continue; // its chunk goes next step
          model.checkStep(step);
          prefill += prompt;
          going.push({ req, seq, step });
        } catch (e) {
          this.fail(req, e);
        }
      }
    }
    const live = going.filter((g) => !g.req.settled);
    if (live.length === 0) return;
    const tokens = live.reduce((n, g) => n + g.step.tokens.length, 0);
    this.o.onStep?.({ sequences: live.length, tokens, prefillTokens: live.reduce((n, g) => n + (g.step.prefill ? g.step.tokens.length : 0), 0) });
    let logits: Float32Array[];
    try {
      logits = await model.forwardBatch(live.map((g) => g.step));
    } catch (e) {
      const failed = new StepFailed(e);
      for (const g of live) this.fail(g.req, failed);
      return;
    }
    live.forEach(({ req, seq }, i) => {
      if (req.settled) return; // left while the step ran
      try {
        seq.advance(logits[i]);
      } catch (e) {
        this.fail(req, e);
        return;
      }
      if (req.seqs.every((s) => s.done)) this.complete(req);
    });
  }

  private complete(req: Request): void {
    if (!this.leave(req)) return;
    const s = (performance.now() - req.joined) / 1000;
    this.meanSeconds = this.meanSeconds === 0 ? s : 0.7 * this.meanSeconds + 0.3 * s;
    req.resolve(req.seqs.map((q) => q.result));
  }

  private fail(req: Request, e: unknown): void {
    if (this.leave(req)) req.reject(e);
  }

  /** Takes `req` out of the line or the batch; false if it had already left. */
  private leave(req: Request): boolean {
    if (req.settled) return false;
    req.settled = true;
    req.signal.removeEventListener('abort', req.onAbort);
    const i = this.line.indexOf(req);
    if (i >= 0) this.line.splice(i, 1);
    this.running = this.running.filter((r) => r !== req);
    this.changed();
    return true;
  }

  private reachedBoundary(): void {
    for (const resolve of this.boundaryWaiters.splice(0)) resolve();
  }

  private changed(): void {
    this.o.onChange?.(this.state);
  }
}
