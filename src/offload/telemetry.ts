/**
 * What the data plane measures, as plain typed events: every move over the link, every
 * decompression, every cache lookup and every forward step, with the time split the controller
 * needs. Offload defines them and emits them into a TelemetrySink; the controller (src/control)
 * turns the sink into RxJS Subjects. Times are seconds from performance.now()'s origin.
 */

/** What a move of one expert's bytes says, over either hop (disk → host, host → device). */
interface ExpertBytesSample {
  at: number;
  layer: number;
  expert: number;
  /** The level brought up to (a codec rung, or the exact level), and the first one that crossed. */
  rung: number;
  fromRung: number;
  bytes: number;
  seconds: number;
  /** Issued by prefetch rather than by a layer waiting for it. */
  prefetch: boolean;
}

/** One move of expert bytes from host memory to the device. */
export interface TransferSample extends ExpertBytesSample {
  kind: 'transfer';
  /**
   * The link that moved it: 'copy' (a real host copy) or 'emulated' (a set bandwidth and latency);
   * 'disk+copy' / 'disk+emulated' when the expert came from a store on disk: `seconds` then
   * includes its wait for the disk (the read samples time the reads alone).
   */
  link: string;
  emulated: boolean;
}

/**
 * One read of expert bytes from the store file into host memory (the disk tier's hop, before any
 * move to the device): measured on the disk, never emulated. `bytes` are whole aligned blocks,
 * `fromRung` the first level not in host memory already.
 */
export interface ReadSample extends ExpertBytesSample {
  kind: 'read';
  /** Whether the read bypassed the page cache (O_DIRECT). */
  direct: boolean;
}

/** One expert decoded into device memory. */
export interface DecompressSample {
  kind: 'decompress';
  at: number;
  layer: number;
  expert: number;
  rung: number;
  /** Compressed bytes read and values written. */
  bytes: number;
  values: number;
  /** The decode's own time (on the decode stream, its wait for the move and for earlier jobs excluded). */
  seconds: number;
}

/** One lookup in the device cache: tier A (decoded) or tier B (compressed rungs on the device). */
export interface CacheSample {
  kind: 'cache';
  at: number;
  layer: number;
  tier: 'A' | 'B';
  result: 'hit' | 'miss';
  prefetch: boolean;
}

/**
 * One forward step, its time split into compute and the waits for experts. A step serves a batch:
 * `sequences` sequences, `tokens` tokens in all, `prefillTokens` of them prompt tokens (a step
 * with none is a pure decode step: one token per sequence, the inter-token gap its clients see).
 */
export interface TokenSample {
  kind: 'token';
  at: number;
  tokens: number;
  sequences: number;
  prefillTokens: number;
  seconds: number;
  computeSeconds: number;
  transferWaitSeconds: number;
  decompressWaitSeconds: number;
}

export type OffloadSample = TransferSample | ReadSample | DecompressSample | CacheSample | TokenSample;

/** Where samples go. Must not throw and must not block: a slow consumer drops, never stalls decode. */
export interface TelemetrySink {
  emit(sample: OffloadSample): void;
}

/** A sink with listeners, for tests, the CLI and the controller's adapter. */
export class TelemetryBus implements TelemetrySink {
  private readonly listeners = new Set<(s: OffloadSample) => void>();
  /** Samples a listener threw on (counted, never rethrown into the data plane). */
  dropped = 0;

  emit(sample: OffloadSample): void {
    for (const l of this.listeners) {
      try {
        l(sample);
      } catch {
        this.dropped++;
      }
    }
  }

  /** Adds a listener; returns the function that removes it. */
  on(listener: (s: OffloadSample) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

/** A sink that keeps nothing. */
export const NO_TELEMETRY: TelemetrySink = { emit() {} };
