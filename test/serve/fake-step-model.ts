// A stand-in for the model under the batch scheduler, for the tests of the scheduler's own rules
// (the line, 429, aborts, failures): every step is recorded, steps can be held until the test
// lets them go, and the "model" continues a byte prompt with the next byte value (…, 'c' → 'd'),
// so what each sequence generates is known in advance. Its check is the real one
// (checkSequence), on a context of `contextTokens` and a vocabulary of 256 bytes.
import { GenerationSequence, type SequenceOptions } from '../../src/model/sequence.js';
import { ByteTokenizer } from '../../src/model/tokenizer.js';
import { checkSequence, type SequenceStep } from '../../src/model/transformer.js';
import type { ModelConfig } from '../../src/model/types.js';
import type { StepModel } from '../../src/serve/batcher.js';

/** One recorded step: each sequence's token count and whether they were a prompt chunk. */
export type RecordedStep = { tokens: number; prefill: boolean }[];

export class FakeStepModel implements StepModel {
  readonly steps: RecordedStep[] = [];
  /** Set to make the next forward step throw it (after the checks passed). */
  failNext: Error | null = null;
  private gate: Promise<void> | null = null;
  private open: () => void = () => {};

  constructor(readonly contextTokens = 64) {}

  /** What GenerationSequence needs of the configuration. */
  get config() {
    return { numLayers: 1, numKvHeads: 1, headDim: 1, maxPositions: this.contextTokens };
  }

  /** A sequence over this model's byte vocabulary. */
  sequence(prompt: string | number[], opts: SequenceOptions = {}): GenerationSequence {
    return new GenerationSequence(this.config, new ByteTokenizer(), prompt, opts);
  }

  /** Holds every step from now until the returned function is called. */
  hold(): () => void {
    this.gate = new Promise<void>((resolve) => (this.open = resolve));
    return () => {
      this.gate = null;
      this.open();
    };
  }

  async forwardBatch(steps: SequenceStep[]): Promise<Float32Array[]> {
    this.steps.push(steps.map((s) => ({ tokens: s.tokens.length, prefill: s.prefill ?? s.tokens.length > 1 })));
    await new Promise<void>((resolve) => setImmediate(resolve)); // a step takes some time
    while (this.gate) await this.gate;
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = null;
      throw e;
    }
    return steps.map((s) => {
      s.cache.advance(s.tokens.length);
      const logits = new Float32Array(256);
      logits[(s.tokens.at(-1)! + 1) % 256] = 1;
      return logits;
    });
  }

  checkStep(step: SequenceStep): void {
    checkSequence({ maxPositions: this.contextTokens, vocabSize: 256 } as ModelConfig, step);
  }
}

/** Resolves after the event loop turned once (I/O and timers included). */
export const tick = () => new Promise<void>((resolve) => setImmediate(resolve));
