/**
 * POST /v1/completions and POST /v1/chat/completions: validate, hand the request's choices to the
 * batch scheduler as sequences, and answer in OpenAI's shapes — one JSON body, or with
 * "stream": true server-sent events (text_completion / chat.completion.chunk chunks, each carrying
 * its choice's index, a last chunk per choice with finish_reason, a usage chunk when
 * stream_options.include_usage asks for it, then [DONE]).
 *
 * The two endpoints differ only in how the prompt is made (the chat template) and in the chunk
 * shapes; everything else — limits, batching, cancellation, metrics — is one path:
 * - max_tokens defaults to 16 for completions (OpenAI's default) and to the rest of the context
 *   for chat; a generation also ends, with finish_reason "length", where the context ends;
 * - a prompt must leave at least one position of the context for the completion;
 * - n choices are n sequences in the batch, choice i sampled with seed + i when a seed is given;
 *   usage counts the prompt once and every choice's tokens;
 * - a client that hangs up is dropped from the line, or its sequences leave the batch at once;
 * - a request that fails inside the batch (its step fails the model's checks, sampling throws)
 *   fails alone: a RangeError or TypeError is the request's own fault (400), anything else a 500;
 * - a forced shutdown (the drain timeout ran out) cuts the generation with a 503.
 *
 * Time to first token is measured from the request's arrival (the first middleware) to the
 * moment its first token is sampled, whatever it waited for in between.
 *
 * @example
 * app.post('/v1/completions', express.json(), completionHandler(ctx, 'text'));
 */
import { randomUUID } from 'node:crypto';

import type { Request, RequestHandler, Response } from 'express';

import type { Generation, GenerationSequence } from '../model/sequence.js';
import { QueueFullError, type BatchScheduler } from './batcher.js';
import { CHAT_STOPS, renderChat } from './chat-template.js';
import { ApiError, badRequest, notFound, toApiError, unavailable } from './errors.js';
import type { ServeMetrics } from './metrics.js';
import { parseRequest, type ChatRequest, type CompletionRequest, type RequestSchemas } from './schemas.js';
import type { ServedModel } from './served-model.js';
import { SseStream } from './sse.js';

/** What the handlers need from the server around them. */
export interface CompletionContext {
  /** The model, or null while it loads. */
  model(): ServedModel | null;
  schemas(): RequestSchemas;
  batcher: BatchScheduler;
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
  /** Choices asked for (OpenAI's n). */
  n: number;
  stream: boolean;
  includeUsage: boolean;
}

/** The express handler of one endpoint: `kind` says which (text completions or chat). */
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

  const shape = new Shapes(kind, model.id, job.includeUsage);
  const sse = job.stream ? new SseStream(res) : undefined;
  let tokens = 0;
  const last: number[] = [];
  const onToken = (choice: number) => {
    const now = performance.now();
    if (tokens === 0) ctx.metrics.timeToFirstToken.observe((now - arrived) / 1000);
    if (last[choice] !== undefined) ctx.metrics.interTokenLatency.observe((now - last[choice]) / 1000);
    last[choice] = now;
    tokens++;
    ctx.metrics.generationTokens.inc();
  };
  let seqs: GenerationSequence[];
  try {
    seqs = Array.from({ length: job.n }, (_, i) =>
      model.sequence(job.prompt, {
        maxTokens, temperature: job.temperature, topP: job.topP, seed: job.seed === undefined ? undefined : job.seed + i, stop: job.stop,
        prefillChunk: ctx.batcher.prefillChunk,
        onToken: () => onToken(i),
        onText: sse ? (text) => sse.send(shape.delta(text, i)) : undefined,
      }));
  } catch (e) {
    if (e instanceof RangeError || e instanceof TypeError) throw badRequest(e.message, job.promptParam);
    throw e;
  }

  const abort = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) abort.abort(new ClientGone('the client closed the connection'));
  };
  const onShutdown = () => abort.abort(new ShutDown('the server shut down before this request finished'));
  res.on('close', onClose);
  ctx.shutdownSignal.addEventListener('abort', onShutdown, { once: true });
  try {
    let turn: Promise<Generation[]>;
    try {
      turn = ctx.batcher.run(seqs, abort.signal, () => {
        if (sse) for (let i = 0; i < job.n; i++) shape.first(i, (chunk) => sse.send(chunk));
      });
    } catch (e) {
      if (e instanceof QueueFullError) throw new ApiError(429, 'rate_limit_error', e.message, null, { 'Retry-After': String(e.retryAfterSeconds) });
      throw e;
    }
    // The stream opens while the request waits for room in the batch: the client sees it was
    // accepted. (The scheduler admits in a later microtask, so this runs before the first chunk.)
    sse?.open();
    let gs: Generation[];
    try {
      gs = await turn;
    } catch (e) {
      const reason: unknown = abort.signal.aborted ? abort.signal.reason : e;
      if (reason instanceof ClientGone) return; // nobody is listening
      const err = reason instanceof ShutDown
        ? unavailable(reason.message)
        : reason instanceof RangeError || reason instanceof TypeError ? badRequest(reason.message) : toApiError(reason, ctx.maxBodyBytes);
      if (err.status >= 500 && !(reason instanceof ShutDown)) ctx.log(`ebserve serve: generation failed: ${reason instanceof Error ? reason.stack ?? reason.message : String(reason)}`);
      if (sse) {
        sse.fail(err);
        return;
      }
      throw err;
    }
    ctx.metrics.promptTokens.inc(gs[0].promptTokens);
    if (sse) {
      gs.forEach((g, i) => sse.send(shape.last(g, i)));
      if (job.includeUsage) sse.send(shape.usageChunk(gs));
      sse.done();
    } else {
      res.json(shape.whole(gs));
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
    n: r.n ?? 1,
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

/** OpenAI's response and chunk shapes for one request; `index` is a choice's (0..n−1). */
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

  private chunk(choice: Record<string, unknown> | null, index = 0) {
    return { id: this.id, object: this.object, created: this.created, model: this.model, choices: choice ? [{ index, ...choice, logprobs: null }] : [], ...(this.includeUsage ? { usage: null } : {}) };
  }

  /** Sends the chunk a chat stream's choice starts with when it joins the batch, announcing the role (completions have none). */
  first(index: number, send: (chunk: unknown) => void): void {
    if (this.kind === 'chat') send(this.chunk({ delta: { role: 'assistant', content: '' }, finish_reason: null }, index));
  }

  delta(text: string, index: number) {
    return this.kind === 'chat' ? this.chunk({ delta: { content: text }, finish_reason: null }, index) : this.chunk({ text, finish_reason: null }, index);
  }

  last(g: Generation, index: number) {
    return this.kind === 'chat' ? this.chunk({ delta: {}, finish_reason: g.finishReason }, index) : this.chunk({ text: '', finish_reason: g.finishReason }, index);
  }

  usageChunk(gs: Generation[]) {
    return { ...this.chunk(null), usage: usage(gs) };
  }

  whole(gs: Generation[]) {
    const choices = gs.map((g, index) => this.kind === 'chat'
      ? { index, message: { role: 'assistant', content: g.text }, logprobs: null, finish_reason: g.finishReason }
      : { index, text: g.text, logprobs: null, finish_reason: g.finishReason });
    return { id: this.id, object: this.kind === 'chat' ? 'chat.completion' : 'text_completion', created: this.created, model: this.model, choices, usage: usage(gs) };
  }
}

/** The prompt once (every choice continues the same one) and every choice's tokens. */
function usage(gs: Generation[]) {
  const completion = gs.reduce((n, g) => n + g.completionTokens, 0);
  return { prompt_tokens: gs[0].promptTokens, completion_tokens: completion, total_tokens: gs[0].promptTokens + completion };
}
