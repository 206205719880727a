/**
 * Server-sent events the way OpenAI streams completions: every chunk is one `data: {json}` event,
 * the stream ends with `data: [DONE]`, and a failure after the stream started is sent as a last
 * `data: {"error": …}` event, after which the stream ends (the status line, 200, was already sent).
 * Writes after the client hung up are dropped, never thrown.
 *
 * @example
 * const sse = new SseStream(res);  sse.open();  sse.send(chunk);  sse.done();
 */
import type { Response } from 'express';

import type { ApiError } from './errors.js';

export class SseStream {
  constructor(private readonly res: Response) {}

  /** Sends the status line and headers now, so the client sees the stream begin while it waits its turn. */
  open(): void {
    this.res.status(200).set({
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache',
      Connection: 'keep-alive',
      // Proxies such as nginx buffer responses unless told not to; a buffered stream is no stream.
      'X-Accel-Buffering': 'no',
    });
    this.res.flushHeaders();
  }

  get closed(): boolean {
    return this.res.writableEnded || this.res.destroyed;
  }

  send(data: unknown): void {
    if (!this.closed) this.res.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** The normal end: `data: [DONE]`. */
  done(): void {
    if (this.closed) return;
    this.res.write('data: [DONE]\n\n');
    this.res.end();
  }

  /** The end after a failure: the error object as the last event. */
  fail(err: ApiError): void {
    if (this.closed) return;
    this.send(err.body());
    this.res.end();
  }
}
