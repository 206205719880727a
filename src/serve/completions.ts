/**
 * POST /v1/completions and POST /v1/chat/completions: validate, wait for a turn in the queue,
 * generate, and answer in OpenAI's shapes — one JSON body, or with "stream": true server-sent
 * events (text_completion / chat.completion.chunk chunks, a last chunk with finish_reason, a usage
 * chunk when stream_options.include_usage asks for it, then [DONE]).
 *
 * The two endpoints differ only in how the prompt is made (the chat template) and in the chunk
 * shapes; everything else — limits, queueing, cancellation, metrics — is one path:
 * - max_tokens defaults to 16 for completions (OpenAI's default) and to the rest of the context
 *   for chat; a generation also ends, with finish_reason "length", where the context ends;
 * - a prompt must leave at least one position of the context for the completion;
 * - a client that hangs up is dropped from the queue, or its generation stops at the next token;
 * - a forced shutdown (the drain timeout ran out) cuts the generation with a 503.
 *
 * @example
 * app.post('/v1/completions', express.json(), completionHandler(ctx, 'text'));
 */
import { randomUUID } from 'node:crypto';

import type { Request, RequestHandler, Response } from 'express';

import type { Generation } from '../model/generate.js';
import { CHAT_STOPS, renderChat } from './chat-template.js';
import { ApiError, badRequest, notFound, toApiError, unavailable } from './errors.js';
import type { ServeMetrics } from './metrics.js';
import { GenerationQueue, QueueFullError } from './queue.js';
import { parseRequest, type ChatRequest, type CompletionRequest, type RequestSchemas } from './schemas.js';
import type { ServedModel } from './served-model.js';
import { SseStream } from './sse.js';

/** What the handlers need from the server around them. */
export interface CompletionContext {
  /** The model, or null while it loads. */
  model(): ServedModel | null;
  schemas(): RequestSchemas;
  queue: GenerationQueue;
  metrics: ServeMetrics;
  /** Aborts when a shutdown stops waiting for in-flight requests. */
  shutdownSignal: AbortSignal;
  maxBodyBytes: number;
  log(line: string): void;
}

export type Kind = 'text' | 'chat';

/** Why a generation was stopped from outside. */
class ClientGone extends Error {}
class ShutDown extends Error {}

/** The completion a request asked for, whatever the endpoint. */
interface Job {
  /** The model the client named, if it named one. */
  model?: string;
  prompt: string;
  /** The field the prompt came from, for errors. */
  promptParam: string;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
}

export function completionHandler(ctx: CompletionContext, kind: Kind): RequestHandler {
  return async (req, res) => {
    await serve(ctx, kind, req, res);
  };
}

async function serve(ctx: CompletionContext, kind: Kind, req: Request, res: Response): Promise<void> {
  const arrived = (res.locals.arrived as number | undefined) ?? performance.now();
  const model = ctx.model();
  if (!model) throw unavailable('Loading model');
  const job = kind === 'text' ? textJob(parseRequest(ctx.schemas().completion, req.body)) : chatJob(parseRequest(ctx.schemas().chat, req.body));
  if (job.model !== undefined && job.model !== model.id) throw notFound(`the model '${job.model}' does not exist; this server serves '${model.id}'`, 'model');
  const promptTokens = model.countTokens(job.prompt);
  if (promptTokens >= model.contextTokens) {
    throw badRequest(`the prompt is ${promptTokens} tokens; the model's context holds ${model.contextTokens}, and at least one must be left for the completion`, job.promptParam);
  }
  const maxTokens = job.maxTokens ?? (kind === 'text' ? 16 : model.contextTokens - promptTokens);

  const abort = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) abort.abort(new ClientGone('the client closed the connection'));
  };
  const onShutdown = () => abort.abort(new ShutDown('the server shut down before this request finished'));
  res.on('close', onClose);
  ctx.shutdownSignal.addEventListener('abort', onShutdown, { once: true });

  const shape = new Shapes(kind, model.id, job.includeUsage);
  const sse = job.stream ? new SseStream(res) : undefined;
  let tokens = 0;
  let last = 0;
  const onToken = () => {
    const now = performance.now();
    if (tokens === 0) ctx.metrics.timeToFirstToken.observe((now - arrived) / 1000);
    else ctx.metrics.interTokenLatency.observe((now - last) / 1000);
    last = now;
    tokens++;
    ctx.metrics.generationTokens.inc();
  };
  try {
    let turn: Promise<Generation>;
    try {
      turn = ctx.queue.run((signal) => {
        const first = shape.first();
        if (sse && first) sse.send(first);
        return model.generate(job.prompt, {
          maxTokens, temperature: job.temperature, topP: job.topP, seed: job.seed, stop: job.stop, signal, onToken,
          onText: sse ? (text) => sse.send(shape.delta(text)) : undefined,
        });
      }, abort.signal);
    } catch (e) {
      if (e instanceof QueueFullError) throw new ApiError(429, 'rate_limit_error', e.message, null, { 'Retry-After': String(e.retryAfterSeconds) });
      throw e;
    }
    // The stream opens while the request waits its turn: the client sees it was accepted. (The
    // queue starts a job in a later microtask, so this runs before the first chunk is sent.)
    sse?.open();
    let g: Generation;
    try {
      g = await turn;
    } catch (e) {
      const reason: unknown = abort.signal.aborted ? abort.signal.reason : e;
      if (reason instanceof ClientGone) return; // nobody is listening
      const err = reason instanceof ShutDown ? unavailable(reason.message) : toApiError(reason, ctx.maxBodyBytes);
      if (err.status >= 500 && !(reason instanceof ShutDown)) ctx.log(`ebserve serve: generation failed: ${reason instanceof Error ? reason.stack ?? reason.message : String(reason)}`);
      if (sse) {
        sse.fail(err);
        return;
      }
      throw err;
    }
    ctx.metrics.promptTokens.inc(g.promptTokens);
    if (sse) {
      sse.send(shape.last(g));
      if (job.includeUsage) sse.send(shape.usageChunk(g));
      sse.done();
    } else {
      res.json(shape.whole(g));
    }
    ctx.metrics.e2eLatency.observe((performance.now() - arrived) / 1000);
  } finally {
    res.off('close', onClose);
    ctx.shutdownSignal.removeEventListener('abort', onShutdown);
  }
}

function common(r: CompletionRequest | ChatRequest) {
  const stop = r.stop == null ? [] : typeof r.stop === 'string' ? [r.stop] : r.stop;
  return {
    model: r.model ?? undefined,
    temperature: r.temperature ?? undefined,
    topP: r.top_p ?? undefined,
    seed: r.seed ?? undefined,
    stop,
    stream: r.stream === true,
    includeUsage: r.stream === true && r.stream_options?.include_usage === true,
  };
}

function textJob(r: CompletionRequest): Job {
  return { ...common(r), prompt: r.prompt, promptParam: 'prompt', maxTokens: r.max_tokens ?? undefined };
}

function chatJob(r: ChatRequest): Job {
  const c = common(r);
  return { ...c, prompt: renderChat(r.messages), promptParam: 'messages', stop: [...c.stop, ...CHAT_STOPS], maxTokens: r.max_completion_tokens ?? r.max_tokens ?? undefined };
}

/** OpenAI's response and chunk shapes for one request. */
class Shapes {
  private readonly id: string;
  private readonly created = Math.floor(Date.now() / 1000);
  private readonly object: string;

  constructor(
    private readonly kind: Kind,
    private readonly model: string,
    /** With include_usage every chunk carries "usage": null, and a last chunk the counts. */
    private readonly includeUsage: boolean,
  ) {
    this.id = `${kind === 'text' ? 'cmpl' : 'chatcmpl'}-${randomUUID().replaceAll('-', '')}`;
    this.object = kind === 'text' ? 'text_completion' : 'chat.completion.chunk';
  }

  private chunk(choice: Record<string, unknown> | null) {
    return { id: this.id, object: this.object, created: this.created, model: this.model, choices: choice ? [{ index: 0, ...choice, logprobs: null }] : [], ...(this.includeUsage ? { usage: null } : {}) };
  }

  /** The chunk a chat stream starts with when its turn comes, announcing the role (completions have none). */
  first() {
    return this.kind === 'chat' ? this.chunk({ delta: { role: 'assistant', content: '' }, finish_reason: null }) : null;
  }

  delta(text: string) {
    return this.kind === 'chat' ? this.chunk({ delta: { content: text }, finish_reason: null }) : this.chunk({ text, finish_reason: null });
  }

  last(g: Generation) {
    return this.kind === 'chat' ? this.chunk({ delta: {}, finish_reason: g.finishReason }) : this.chunk({ text: '', finish_reason: g.finishReason });
  }

  usageChunk(g: Generation) {
    return { ...this.chunk(null), usage: usage(g) };
  }

  whole(g: Generation) {
    const choice = this.kind === 'chat'
      ? { index: 0, message: { role: 'assistant', content: g.text }, logprobs: null, finish_reason: g.finishReason }
      : { index: 0, text: g.text, logprobs: null, finish_reason: g.finishReason };
    return { id: this.id, object: this.kind === 'chat' ? 'chat.completion' : 'text_completion', created: this.created, model: this.model, choices: [choice], usage: usage(g) };
  }
}

function usage(g: Generation) {
  return { prompt_tokens: g.promptTokens, completion_tokens: g.completionTokens, total_tokens: g.promptTokens + g.completionTokens };
}
