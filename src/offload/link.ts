/**
 * The link between host memory and the device, and how each move over it is measured.
 *
 * CopyLink: without CUDA, the device is the memory the expert engine computes from, and a move is
 * a real copy into device-side buffers (DeviceMemory's, reused once their holders let go), timed.
 * EmulatedLink: the same copy, but the move
 * completes when a link of a set bandwidth and fixed latency would have finished it — one move at
 * a time, queued — so the whole loop (prefetch overlap, the controller's bandwidth estimates)
 * behaves like PCIe on a machine without a GPU. Its name says "emulated" wherever it is reported.
 *
 * Emulation keeps time by the clock, not by sleeping through compute: a move issued before a
 * layer's compute finishes in the background, and a wait after the compute only waits for what
 * is left — the same overlap a copy engine gives. `start` says when a move will land, so the
 * device's decode stream can begin at that moment without the (possibly busy) event loop.
 */
import { DeviceMemory } from './device-memory.js';

export interface MoveResult {
  /** The device-side copies, one per part. */
  device: Uint8Array[];
  bytes: number;
  /** How long the move took on the link (queueing before it started excluded). */
  seconds: number;
}

/** A move under way: its device copies exist, and the link says when it lands. */
export interface StartedMove extends MoveResult {
  /** When the move lands on the device (performance.now() ms). */
  landsAt: number;
  /** Resolves once it has. */
  landed: Promise<void>;
}

export interface Link {
  /** 'copy' or 'emulated'. */
  readonly name: string;
  /** Where the moves' device copies come from; holders release them back (see DeviceMemory). */
  readonly memory?: DeviceMemory;
  readonly emulated: boolean;
  /** One line for logs: what the link is and, when emulated, its parameters. */
  describe(): string;
  /** Starts a move without waiting for it: the device's decode stream waits for `landsAt` itself. */
  start(parts: Uint8Array[]): StartedMove;
  /** A move, resolved once it has landed. */
  move(parts: Uint8Array[]): Promise<MoveResult>;
}

async function landed(m: StartedMove): Promise<MoveResult> {
  await m.landed;
  return { device: m.device, bytes: m.bytes, seconds: m.seconds };
}

function copyAll(parts: Uint8Array[], memory: DeviceMemory): { device: Uint8Array[]; bytes: number } {
  let bytes = 0;
  const device = parts.map((p) => {
    bytes += p.byteLength;
    return memory.copy(p); // a real copy
  });
  return { device, bytes };
}

export class CopyLink implements Link {
  readonly name = 'copy';
  readonly emulated = false;
  readonly memory = new DeviceMemory();
  describe(): string {
    return 'host copy (no CUDA device: experts are copied into the memory the engine computes from)';
  }
  start(parts: Uint8Array[]): StartedMove {
    const t = performance.now();
    const { device, bytes } = copyAll(parts, this.memory);
    const now = performance.now();
    return { device, bytes, seconds: (now - t) / 1000, landsAt: now, landed: Promise.resolve() };
  }
  move(parts: Uint8Array[]): Promise<MoveResult> {
    return landed(this.start(parts));
  }
}

export interface EmulatedLinkOptions {
  bytesPerSecond: number;
  /** Fixed cost of every move (default 0). */
  latencySeconds?: number;
}

export class EmulatedLink implements Link {
  readonly memory = new DeviceMemory();
  readonly name = 'emulated';
  readonly emulated = true;
  private bandwidth: number;
  private readonly latency: number;
  private busyUntil = 0; // ms, performance.now() clock

  constructor(opts: EmulatedLinkOptions) {
    this.bandwidth = EmulatedLink.check(opts.bytesPerSecond);
    this.latency = opts.latencySeconds ?? 0;
    if (!(this.latency >= 0) || !Number.isFinite(this.latency)) throw new RangeError(`emulated link: latency must be ≥ 0 seconds, got ${opts.latencySeconds}`);
  }

  private static check(bps: number): number {
    if (!(bps > 0) || !Number.isFinite(bps)) throw new RangeError(`emulated link: bandwidth must be a positive number of bytes per second, got ${bps}`);
    return bps;
  }

  get bytesPerSecond(): number {
    return this.bandwidth;
  }

  /** Changes the bandwidth for moves issued from now on (a trace replay, a test's "link drop"). */
  setBandwidth(bytesPerSecond: number): void {
    this.bandwidth = EmulatedLink.check(bytesPerSecond);
  }

  describe(): string {
    return `EMULATED link: ${(this.bandwidth / 1e6).toFixed(3)} MB/s, ${(this.latency * 1e6).toFixed(0)} µs per move (a real copy, completed on the emulated link's schedule)`;
  }

  start(parts: Uint8Array[]): StartedMove {
    const now = performance.now();
    const { device, bytes } = copyAll(parts, this.memory);
    const start = Math.max(now, this.busyUntil);
    const occupancy = (bytes / this.bandwidth) * 1000;
    this.busyUntil = start + occupancy;
    const done = start + occupancy + this.latency * 1000;
    return { device, bytes, seconds: (done - start) / 1000, landsAt: done, landed: sleepUntil(done) };
  }
  move(parts: Uint8Array[]): Promise<MoveResult> {
    return landed(this.start(parts));
  }
}

/**
 * Resolves once performance.now() ≥ t. Timers only keep whole milliseconds, so the last
 * millisecond is waited out in setImmediate turns (other callbacks, such as finished
 * decompressions, still run meanwhile).
 */
async function sleepUntil(t: number): Promise<void> {
  const left = t - performance.now();
  if (left > 2) await new Promise((r) => setTimeout(r, Math.floor(left - 1)));
  while (performance.now() < t) await new Promise((r) => setImmediate(r));
}
