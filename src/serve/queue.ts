/**
 * One generation at a time, in arrival order, with a bounded waiting line. The model and its KV
 * cache are not re-entrant, so requests take turns; a request that finds the line full is refused
 * at once (the API answers 429 with Retry-After) rather than left to wait without end. A request
 * whose client hangs up leaves the line (its signal aborts); a running one is told through the
 * same signal, which the generation checks between tokens.
 *
 * `maxWaiting` counts the requests waiting behind the one that runs: 0 means no waiting at all.
 * Retry-After is an estimate from measured turns: the mean duration of recent jobs times the
 * number of turns ahead of a new arrival.
 *
 * @example
 * const q = new GenerationQueue(8);
 * const text = await q.run((signal) => model.generate(prompt, { signal }), controller.signal);
 */

/** Thrown by run() when the waiting line is full. */
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

interface Waiter {
  start: () => void;
  signal: AbortSignal;
  onAbort: () => void;
}

export interface QueueState {
  running: number;
  waiting: number;
}

export class GenerationQueue {
  private readonly line: Waiter[] = [];
  private busy = false;
  private idleWaiters: (() => void)[] = [];
  /** Exponentially weighted mean of job durations (seconds), 0 until one finished. */
  private meanSeconds = 0;

  constructor(
    readonly maxWaiting: number,
    /** Called whenever the number running or waiting changes (for the queue gauges). */
    private readonly onChange: (s: QueueState) => void = () => {},
  ) {
    if (!(Number.isInteger(maxWaiting) && maxWaiting >= 0)) throw new RangeError(`the queue bound must be a whole number ≥ 0, got ${maxWaiting}`);
  }

  get state(): QueueState {
    return { running: this.busy ? 1 : 0, waiting: this.line.length };
  }

  /**
   * Runs `job` when its turn comes and settles with its result. Throws QueueFullError at once
   * (synchronously, so the caller can still answer 429) when the line is full; rejects with the
   * signal's reason if `signal` aborts while waiting (the job then never runs).
   */
  run<T>(job: (signal: AbortSignal) => Promise<T>, signal: AbortSignal): Promise<T> {
    if (this.busy && this.line.length >= this.maxWaiting) throw new QueueFullError(this.line.length, this.retryAfterSeconds());
    return new Promise<T>((resolve, reject) => {
      const go = () => {
        const started = performance.now();
        // Settle first, then hand the turn on, in the same tick: the caller's continuation is
        // queued before the next job's start, and it already sees the queue's new state.
        Promise.resolve()
          .then(() => job(signal))
          .then(
            (value) => {
              resolve(value);
              this.finished(started);
            },
            (e: unknown) => {
              reject(e);
              this.finished(started);
            },
          );
      };
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      if (!this.busy) {
        this.busy = true;
        this.changed();
        go();
        return;
      }
      const waiter: Waiter = {
        start: go,
        signal,
        onAbort: () => {
          const i = this.line.indexOf(waiter);
          if (i >= 0) {
            this.line.splice(i, 1);
            this.changed();
            reject(signal.reason);
          }
        },
      };
      signal.addEventListener('abort', waiter.onAbort, { once: true });
      this.line.push(waiter);
      this.changed();
    });
  }

  /** Resolves when nothing runs and nothing waits. */
  idle(): Promise<void> {
    if (!this.busy && this.line.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Whole seconds until a newcomer would probably get its turn (at least 1). */
  retryAfterSeconds(): number {
    const turns = this.line.length + (this.busy ? 1 : 0);
    return Math.max(1, Math.ceil(turns * this.meanSeconds));
  }

  private finished(started: number): void {
    const s = (performance.now() - started) / 1000;
    this.meanSeconds = this.meanSeconds === 0 ? s : 0.7 * this.meanSeconds + 0.3 * s;
    this.next();
  }

  private next(): void {
    const w = this.line.shift();
    if (w) {
      w.signal.removeEventListener('abort', w.onAbort);
      this.changed();
      w.start();
      return;
    }
    this.busy = false;
    this.changed();
    const idle = this.idleWaiters;
    this.idleWaiters = [];
    for (const r of idle) r();
  }

  private changed(): void {
    this.onChange(this.state);
  }
}
