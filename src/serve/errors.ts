/**
 * The errors the API answers with, in OpenAI's shape (also vLLM's and llama.cpp's):
 *
 *   {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": 400}}
 *
 * `code` is the HTTP status, as vLLM and llama.cpp send it, so a client reading only the body
 * still knows what happened. Everything a handler or express's body parser throws goes through
 * toApiError: a client's mistake keeps its 4xx status and says what was wrong; anything else is a
 * 500 whose details go to the server's log, not to the client.
 *
 * @example
 * throw badRequest('max_tokens must be at least 1', 'max_tokens');   // → 400 with param "max_tokens"
 */
import type { ErrorRequestHandler } from 'express';

export type ErrorType = 'invalid_request_error' | 'not_found_error' | 'rate_limit_error' | 'unavailable_error' | 'server_error';

export interface ErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: number };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: ErrorType,
    message: string,
    readonly param: string | null = null,
    /** Extra response headers (Retry-After on a 429, Allow on a 405). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }

  body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.status } };
  }
}

export const badRequest = (message: string, param: string | null = null) => new ApiError(400, 'invalid_request_error', message, param);
export const notFound = (message: string, param: string | null = null) => new ApiError(404, 'not_found_error', message, param);
export const unavailable = (message: string) => new ApiError(503, 'unavailable_error', message);

/** What express's JSON body parser (body-parser) attaches to the errors it throws. */
interface BodyParserError extends Error {
  type?: string;
  status?: number;
  limit?: number;
  length?: number;
}

/** Turns anything thrown while serving a request into the error the client gets. */
export function toApiError(err: unknown, maxBodyBytes?: number): ApiError {
  if (err instanceof ApiError) return err;
  const e = err as BodyParserError;
  if (e instanceof Error && typeof e.status === 'number' && e.status >= 400 && e.status < 500) {
    switch (e.type) {
      case 'entity.parse.failed':
        return badRequest(`the body is not valid JSON: ${e.message}`);
      case 'entity.too.large': {
        const limit = e.limit ?? maxBodyBytes;
        const size = e.length === undefined || Number.isNaN(e.length) ? 'larger than' : `${e.length} bytes; the limit is`;
        return new ApiError(413, 'invalid_request_error', `the body is ${size} ${limit} bytes (--max-body-bytes)`);
      }
      default:
        // body-parser's other client errors (an unsupported charset or encoding, a body that does
        // not inflate, an upload cut short): its status and message say what went wrong.
        return new ApiError(e.status, 'invalid_request_error', `the body could not be read: ${e.message}`);
    }
  }
  return new ApiError(500, 'server_error', 'the server failed while handling this request; its log has the details');
}

/** Sends `err` as the response (or, when a response already started, ends it). */
export function errorHandler(opts: { maxBodyBytes: number; log: (line: string) => void }): ErrorRequestHandler {
  return (err, req, res, _next) => {
    const api = toApiError(err, opts.maxBodyBytes);
    if (api.status >= 500 && !(err instanceof ApiError)) opts.log(`ebserve serve: ${req.method} ${req.path} failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    if (res.headersSent) {
      // Streams report their own failures as a last event; here there is nothing left to say.
      res.end();
      return;
    }
    res.status(api.status).set(api.headers).json(api.body());
  };
}
