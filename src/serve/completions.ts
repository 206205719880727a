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
 * - a forced shutdown (the drain timeout ran out) cuts the generation with a 503;
 * - a completions prompt may be several prompts (texts or token ids): each brings n choices,
 *   choice p·n + i being prompt p's i-th; usage counts each prompt once.
 *
 * Scores (logprobs.ts has the shapes): completions' `logprobs: N` gives every token its
 * log-probability and the N most likely tokens of its position (and, as OpenAI says, the chosen
 * one: up to N + 1); with `echo` the prompt's text comes first in the choice and, with logprobs,
 * its tokens are scored too — the prompt's first token has null — so `echo: true, logprobs: 1,
 * max_tokens: 0 | 1` is the loglikelihood request of evaluation harnesses. Chat's `logprobs: true`
 * and `top_logprobs: N` give choices[i].logprobs.content. Each streamed chunk carries the scores
 * of the tokens sampled since the choice's previous chunk (text held back for a stop string comes
 * later than its score); the last chunk carries the rest, so a stream's scores are the whole
 * response's. Log-probabilities are the model's own (log-softmax of its logits), whatever
 * temperature, logit_bias and penalties did to the sampling.
 *
 * Time to first token is measured from the request's arrival (the first middleware) to the
 * moment its first token is sampled, whatever it waited for in between.
 *
 * @example
 * app.post('/v1/completions', express.json(), completionHandler(ctx, 'text'));
 */
import { randomUUID } from 'node:crypto';

import type { Request, RequestHandler, Response } from 'express';

import type { Generation, GenerationSequence, TokenLogprob } from '../model/sequence.js';
import { QueueFullError, type BatchScheduler } from './batcher.js';
import { ChatTemplateError } from './chat-template.js';
import { ApiError, badRequest, notFound, toApiError, unavailable } from './errors.js';
import { LogprobsWriter } from './logprobs.js';
import type { ServeMetrics } from './metrics.js';
import { parseRequest, promptList, type ChatRequest, type CompletionRequest, type RequestSchemas } from './schemas.js';
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
  /** One prompt per group of n choices: text, or token ids. */
  prompts: (string | number[])[];
  /** The field the prompt came from, for errors. */
  promptParam: string;
  /** Whether the tokenizer adds its special tokens to a text prompt (not to a chat template's). */
  addSpecialTokens: boolean;
  logitBias?: Map<number, number>;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** Top-N scores per token (completions' logprobs, chat's top_logprobs with logprobs true); undefined: no scores. */
  logprobs?: number;
  /** Completions: the prompt comes first in each choice (scored too, with logprobs). */
  echo: boolean;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  stop: string[];
  /** Generate past the model's end-of-sequence tokens (vLLM's ignore_eos). */
  ignoreEos: boolean;
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
  const job = kind === 'text' ? textJob(parseRequest(ctx.schemas().completion, req.body)) : chatJob(parseRequest(ctx.schemas().chat, req.body), model);
  if (job.model !== undefined && job.model !== model.id) throw notFound(`the model '${job.model}' does not exist; this server serves '${model.id}'`, 'model');
  for (const id of job.logitBias?.keys() ?? []) {
    if (id >= model.vocabSize) throw badRequest(`logit_bias names token ${id}; the model's vocabulary runs from 0 to ${model.vocabSize - 1}`, 'logit_bias');
  }
  const scoreOnly = job.maxTokens === 0;
  const prompts = job.prompts.map((p) => {
    const ids = typeof p === 'string' ? model.tokenizer.encode(p, { addSpecialTokens: job.addSpecialTokens }) : p;
    const bad = typeof p === 'string' ? undefined : p.find((id) => id >= model.vocabSize);
    if (bad !== undefined) throw badRequest(`the prompt holds token ${bad}; the model's vocabulary runs from 0 to ${model.vocabSize - 1}`, job.promptParam);
    if (scoreOnly ? ids.length > model.contextTokens : ids.length >= model.contextTokens) {
      throw badRequest(
        scoreOnly
          ? `the prompt is ${ids.length} tokens; the model's context holds ${model.contextTokens}`
          : `the prompt is ${ids.length} tokens; the model's context holds ${model.contextTokens}, and at least one must be left for the completion`,
        job.promptParam,
      );
    }
    return { source: p, ids, text: typeof p === 'string' ? p : model.tokenizer.decode(p) };
  });

  const shape = new Shapes(kind, model.id, job.includeUsage);
  const sse = job.stream ? new SseStream(res) : undefined;
  const choices = prompts.length * job.n;
  // Each choice's scores as OpenAI writes them; tokens scored but not yet streamed.
  const writers = Array.from({ length: choices }, (_, c) => new LogprobsWriter(model.tokenizer, kind, job.logprobs ?? 0, job.echo ? 0 : prompts[Math.floor(c / job.n)].text.length));
  const pending: TokenLogprob[][] = Array.from({ length: choices }, () => []);
  const scores = (c: number) => (job.logprobs === undefined ? null : writers[c].write(pending[c].splice(0)));
  let tokens = 0;
  const last: number[] = [];
  const onToken = (choice: number, score?: TokenLogprob) => {
    const now = performance.now();
    if (tokens === 0) ctx.metrics.timeToFirstToken.observe((now - arrived) / 1000);
    if (last[choice] !== undefined) ctx.metrics.interTokenLatency.observe((now - last[choice]) / 1000);
    last[choice] = now;
    tokens++;
    ctx.metrics.generationTokens.inc();
    if (score) pending[choice].push(score);
  };
  let seqs: GenerationSequence[];
  try {
    seqs = Array.from({ length: choices }, (_, c) => {
      const p = prompts[Math.floor(c / job.n)];
      // A text prompt the tokenizer's defaults apply to goes as text (the sequence tokenizes it the same way).
      return model.sequence(typeof p.source === 'string' && job.addSpecialTokens ? p.source : p.ids, {
        maxTokens: job.maxTokens ?? (kind === 'text' ? 16 : model.contextTokens - p.ids.length),
        temperature: job.temperature, topP: job.topP, seed: job.seed === undefined ? undefined : job.seed + c, stop: job.stop,
        stopTokens: job.ignoreEos ? [] : undefined,
        logitBias: job.logitBias, presencePenalty: job.presencePenalty, frequencyPenalty: job.frequencyPenalty,
        logprobs: job.logprobs, echo: job.echo,
        prefillChunk: ctx.batcher.prefillChunk,
        onToken: (_token, score) => onToken(c, score),
        onPromptRun: job.echo
          ? (promptScores) => {
              if (promptScores) pending[c].push(...promptScores);
              if (sse) sse.send(shape.delta(p.text, c, scores(c)));
            }
          : undefined,
        onText: sse ? (text) => sse.send(shape.delta(text, c, scores(c))) : undefined,
      });
    });
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
        if (sse) for (let i = 0; i < choices; i++) shape.first(i, (chunk) => sse.send(chunk));
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
    const promptTokens = prompts.reduce((n, p) => n + p.ids.length, 0);
    ctx.metrics.promptTokens.inc(promptTokens);
    if (sse) {
      gs.forEach((g, c) => sse.send(shape.last(g, c, scores(c))));
      if (job.includeUsage) sse.send(shape.usageChunk(gs, promptTokens));
      sse.done();
    } else {
      const fresh = gs.map((_, c) => new LogprobsWriter(model.tokenizer, kind, job.logprobs ?? 0, job.echo ? 0 : prompts[Math.floor(c / job.n)].text.length));
      res.json(shape.whole(gs, promptTokens, (g, c) => ({
        text: job.echo ? prompts[Math.floor(c / job.n)].text + g.text : g.text,
        logprobs: job.logprobs === undefined ? null : fresh[c].write([...(job.echo ? g.promptLogprobs ?? [] : []), ...(g.logprobs ?? [])]),
      })));
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
    ignoreEos: r.ignore_eos === true,
    n: r.n ?? 1,
    stream: r.stream === true,
    includeUsage: r.stream === true && r.stream_options?.include_usage === true,
    logitBias: r.logit_bias == null ? undefined : new Map(Object.entries(r.logit_bias).map(([k, v]) => [Number(k), v])),
    presencePenalty: r.presence_penalty ?? undefined,
    frequencyPenalty: r.frequency_penalty ?? undefined,
  };
}

function textJob(r: CompletionRequest): Job {
  return {
    ...common(r), prompts: promptList(r.prompt), promptParam: 'prompt', addSpecialTokens: true, maxTokens: r.max_tokens ?? undefined,
    logprobs: r.logprobs ?? undefined, echo: r.echo === true,
  };
}

function chatJob(r: ChatRequest, model: ServedModel): Job {
  const c = common(r);
  const template = model.chatTemplate;
  let prompt: string;
  try {
    prompt = template.render(r.messages);
  } catch (e) {
    if (e instanceof ChatTemplateError) throw badRequest(`the model's chat template refused these messages: ${e.message}`, 'messages');
    throw e;
  }
  return {
    ...c, prompts: [prompt], promptParam: 'messages', addSpecialTokens: template.addSpecialTokens, stop: [...c.stop, ...template.stops],
    maxTokens: r.max_completion_tokens ?? r.max_tokens ?? undefined,
    logprobs: r.logprobs === true ? r.top_logprobs ?? 0 : undefined, echo: false,
  };
}

/** OpenAI's response and chunk shapes for one request; `index` is a choice's (0..choices−1). */
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

  private chunk(choice: Record<string, unknown> | null, index = 0, logprobs: unknown = null) {
    return { id: this.id, object: this.object, created: this.created, model: this.model, choices: choice ? [{ index, ...choice, logprobs }] : [], ...(this.includeUsage ? { usage: null } : {}) };
  }

  /** Sends the chunk a chat stream's choice starts with when it joins the batch, announcing the role (completions have none). */
  first(index: number, send: (chunk: unknown) => void): void {
    if (this.kind === 'chat') send(this.chunk({ delta: { role: 'assistant', content: '' }, finish_reason: null }, index));
  }

  /** A chunk of text, with the scores of its tokens (null without logprobs). */
  delta(text: string, index: number, logprobs: unknown = null) {
    return this.kind === 'chat' ? this.chunk({ delta: { content: text }, finish_reason: null }, index, logprobs) : this.chunk({ text, finish_reason: null }, index, logprobs);
  }

  last(g: Generation, index: number, logprobs: unknown = null) {
    return this.kind === 'chat' ? this.chunk({ delta: {}, finish_reason: g.finishReason }, index, logprobs) : this.chunk({ text: '', finish_reason: g.finishReason }, index, logprobs);
  }

  usageChunk(gs: Generation[], promptTokens: number) {
    return { ...this.chunk(null), usage: usage(gs, promptTokens) };
  }

  /** The whole response; `content` gives each choice's text and scores. */
  whole(gs: Generation[], promptTokens: number, content: (g: Generation, index: number) => { text: string; logprobs: unknown }) {
    const choices = gs.map((g, index) => {
      const { text, logprobs } = content(g, index);
      return this.kind === 'chat'
        ? { index, message: { role: 'assistant', content: text }, logprobs, finish_reason: g.finishReason }
        : { index, text, logprobs, finish_reason: g.finishReason };
    });
    return { id: this.id, object: this.kind === 'chat' ? 'chat.completion' : 'text_completion', created: this.created, model: this.model, choices, usage: usage(gs, promptTokens) };
  }
}

/** Every prompt once (each prompt's choices continue the same one) and every choice's tokens. */
function usage(gs: Generation[], promptTokens: number) {
  const completion = gs.reduce((n, g) => n + g.completionTokens, 0);
  return { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion };
}
