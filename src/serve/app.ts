/**
 * The express app: routes, body limits and the error path. Nothing here loads a model or binds a
 * port (server.ts does), so the app answers from the first moment: /health says 503 "Loading
 * model" until the model is there, /metrics always answers.
 *
 *   POST /v1/completions        OpenAI text completions (completions.ts)
 *   POST /v1/chat/completions   OpenAI chat completions, through a plain-text template (chat-template.ts)
 *   GET  /v1/models             the one model served (and which chat template it uses)
 *   POST /tokenize, /detokenize the model's tokenizer (tokenize.ts)
 *   GET  /health                200 with model, backend, engine and the batch/queue when ready; 503 while loading or shutting down
 *   GET  /metrics               Prometheus text format (metrics.ts)
 *   /admin/*                    the admin API behind a bearer token (admin.ts)
 *   GET  /dashboard             the live page (dashboard.ts), fed by GET /dashboard/events (SSE)
 *
 * Every other path is a 404 and every other method on these paths a 405, both in OpenAI's error
 * shape; a body over the limit is a 413, before it is even parsed.
 */
import express, { type Express, type Request } from 'express';

import { adminRouter } from './admin.js';
import { dashboardRouter } from './dashboard.js';
import { dashboardSource } from './dashboard-source.js';
import { completionHandler, type CompletionContext } from './completions.js';
import { ApiError, errorHandler, notFound, unavailable } from './errors.js';
import { detokenizeHandler, tokenizeHandler } from './tokenize.js';

export interface AppContext extends CompletionContext {
  /** Why the model is not there, when loading failed. */
  loadError(): string | null;
  /** True once a shutdown began: new requests get 503. */
  draining(): boolean;
  /** When the model finished loading (seconds since the epoch), for /v1/models. */
  loadedAt(): number;
  /** The admin API's bearer token, or null: the admin API is off. */
  adminToken: string | null;
  /** Aborts when a shutdown begins: long-lived streams (the dashboard's) end at once. */
  closingSignal: AbortSignal;
}

const ROUTES: Record<string, string[]> = {
  '/v1/completions': ['POST'],
  '/v1/chat/completions': ['POST'],
  '/v1/models': ['GET', 'HEAD'],
  '/tokenize': ['POST'],
  '/detokenize': ['POST'],
  '/health': ['GET', 'HEAD'],
  '/metrics': ['GET', 'HEAD'],
};

/** The endpoint label for requests_total: a known route, or "other" (never the raw path). */
function endpoint(req: Request): string {
  if (req.path === '/dashboard' || req.path === '/dashboard/events') return req.path;
  if (req.path.startsWith('/admin/')) return '/admin';
  return Object.hasOwn(ROUTES, req.path) ? req.path : 'other';
}

export function createApp(ctx: AppContext): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  app.use((req, res, next) => {
    res.locals.arrived = performance.now();
    let counted = false;
    const count = (status: string) => {
      if (counted) return;
      counted = true;
      ctx.metrics.requests.inc({ endpoint: endpoint(req), status });
    };
    res.on('finish', () => count(String(res.statusCode)));
    // A client that hung up before the response was complete: nginx's "client closed request".
    res.on('close', () => count(res.writableFinished ? String(res.statusCode) : '499'));
    next();
  });

  app.use((req, res, next) => {
    if (ctx.draining() && req.path !== '/metrics') {
      res.set('Connection', 'close');
      throw unavailable('the server is shutting down');
    }
    next();
  });

  app.get('/health', (_req, res) => {
    const model = ctx.model();
    if (!model) {
      const failed = ctx.loadError();
      throw unavailable(failed ? `the model failed to load: ${failed}` : 'Loading model');
    }
    res.json({
      status: 'ok',
      model: model.id,
      backend: model.backend.name,
      engine: model.engine,
      engine_details: model.details,
      context_tokens: model.contextTokens,
      // running/waiting count requests, sequences the batch's (a request with n choices has n).
      queue: { ...ctx.batcher.state, max_waiting: ctx.batcher.maxWaiting, max_batch: ctx.batcher.maxBatch, prefill_chunk: ctx.batcher.prefillChunk },
    });
  });

  app.get('/v1/models', (_req, res) => {
    const model = ctx.model();
    if (!model) throw unavailable('Loading model');
    res.json({ object: 'list', data: [{ id: model.id, object: 'model', created: ctx.loadedAt(), owned_by: 'ebserve', max_model_len: model.contextTokens, chat_template: model.chatTemplate.source }] });
  });

  app.use(dashboardRouter(dashboardSource(ctx.model, ctx.batcher), { signal: ctx.closingSignal }));
  app.use('/admin', adminRouter({ token: ctx.adminToken, control: () => ctx.model()?.control, routing: () => ctx.model()?.routing, maxBodyBytes: ctx.maxBodyBytes }));

  app.get('/metrics', async (_req, res) => {
    res.set('Content-Type', ctx.metrics.registry.contentType).send(await ctx.metrics.registry.metrics());
  });

  // The limit applies to the raw body, so an oversized one is refused (413) before parsing.
  const json = express.json({ limit: ctx.maxBodyBytes, strict: true });
  app.post('/v1/completions', json, completionHandler(ctx, 'text'));
  app.post('/v1/chat/completions', json, completionHandler(ctx, 'chat'));
  app.post('/tokenize', json, tokenizeHandler(ctx.model));
  app.post('/detokenize', json, detokenizeHandler(ctx.model));

  for (const [path, methods] of Object.entries(ROUTES)) {
    app.all(path, (req) => {
      throw new ApiError(405, 'invalid_request_error', `${req.method} is not allowed on ${path}; use ${methods.filter((m) => m !== 'HEAD').join(' or ')}`, null, { Allow: methods.join(', ') });
    });
  }
  app.use((req) => {
    throw notFound(`no route ${req.method} ${req.path}`);
  });
  app.use(errorHandler({ maxBodyBytes: ctx.maxBodyBytes, log: (line) => ctx.log(line) }));
  return app;
}
