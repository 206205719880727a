/**
 * The admin API, under /admin, behind a bearer token (EBSERVE_ADMIN_TOKEN or --admin-token-file;
 * without one the API is off and answers 404 saying how to turn it on):
 *
 *   GET  /admin/plan            the current plan, each layer's level and bound, and why (the last decision that changed it)
 *   GET  /admin/decisions       the decision log, newest last (?limit=N, default 100)
 *   GET  /admin/estimates       what the estimators read: bandwidth (each part), overhead, p95, compute, miss rates
 *   POST /admin/sla             {"p95_inter_token_seconds": S}
 *   POST /admin/policy          {"file": "policies/uniform.yaml"} (same ladder as the running one)
 *   POST /admin/freeze          holds the plan;   POST /admin/unfreeze
 *   POST /admin/dry-run         {"enabled": true|false}
 *   POST /admin/canaries/run    scores the current plan now; a failing score rolls it back
 *   GET  /admin/routing         the routing report over the last served tokens (any engine): per
 *                               layer SRP, hit rate by cache size (segment cache, LRU, LFU) and the
 *                               recommended cache (?segment=L&target=T&policy=lru|lfu: other settings)
 *
 * Errors in OpenAI's shape: 401 without or with a wrong token, 409 when there is no controller
 * (resident engine, or --level) or the request conflicts with what runs (or, for /routing, while
 * the model loads), 400 for bad bodies and query parameters.
 */
import { timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';

import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { z } from 'zod';

import { ConfigError } from '../control/config-file.js';
import type { ReportOptions } from '../control/routing/report.js';
import type { RoutingWindow } from '../control/routing/window.js';
import { ApiError } from './errors.js';
import { ApiConflict, type ServedControl } from './served-control.js';

/** The token from a file (first line, trimmed) or the environment; null when neither gives one. */
export function readAdminToken(file: string | undefined, env: string | undefined): string | null {
  if (file !== undefined) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      throw new Error(`--admin-token-file ${file}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    const token = text.split('\n')[0].trim();
    if (token.length < 16) throw new Error(`--admin-token-file ${file}: the token must be at least 16 characters`);
    return token;
  }
  const t = env?.trim();
  if (t === undefined || t === '') return null;
  if (t.length < 16) throw new Error('EBSERVE_ADMIN_TOKEN must be at least 16 characters');
  return t;
}

function sameToken(given: string, want: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(want);
  return a.length === b.length && timingSafeEqual(a, b);
}

const slaBody = z.strictObject({ p95_inter_token_seconds: z.number({ error: 'expected a number of seconds' }).positive({ error: 'expected a number of seconds > 0' }).max(3600) });
const policyBody = z.strictObject({ file: z.string({ error: 'expected the path of a policy file' }).min(1) });
const dryRunBody = z.strictObject({ enabled: z.boolean({ error: 'expected true or false' }) });

function body<T>(schema: z.ZodType<T>, req: Request): T {
  const r = schema.safeParse(req.body ?? {});
  if (r.success) return r.data;
  const i = r.error.issues[0];
  throw new ApiError(400, 'invalid_request_error', `${i.path.join('.') || 'body'}: ${i.message}`, i.path.join('.') || null);
}

/** ?segment=&target=&policy= over the live report's settings; a 400 naming the parameter when one is wrong. */
function routingQuery(req: Request, live: ReportOptions): { opts: ReportOptions; own: boolean } {
  const q = req.query;
  const bad = (param: string, expected: string) => new ApiError(400, 'invalid_request_error', `${param}: expected ${expected}, got ${String(q[param])}`, param);
  const segment = q.segment === undefined ? live.segment : Number(q.segment);
  if (!(Number.isInteger(segment) && segment >= 1)) throw bad('segment', 'a whole number of tokens ≥ 1');
  const target = q.target === undefined ? live.target : Number(q.target);
  if (!(target > 0 && target <= 1)) throw bad('target', 'a hit rate in (0, 1]');
  const policy = q.policy ?? live.policy ?? 'lru';
  if (policy !== 'lru' && policy !== 'lfu') throw bad('policy', 'lru or lfu');
  return { opts: { segment, target, policy }, own: q.segment === undefined && q.target === undefined && q.policy === undefined };
}

export function adminRouter(opts: { token: string | null; control: () => ServedControl | undefined | null; routing?: () => RoutingWindow | undefined | null; maxBodyBytes: number }): Router {
  const r = express.Router();
  r.use((req: Request, _res: Response, next: NextFunction) => {
    if (!opts.token) {
      next(new ApiError(404, 'invalid_request_error', 'the admin API is off: start ebserve serve with EBSERVE_ADMIN_TOKEN set or --admin-token-file FILE'));
      return;
    }
    const h = req.get('authorization') ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(h);
    if (!m || !sameToken(m[1].trim(), opts.token)) {
      next(new ApiError(401, 'invalid_request_error', m ? 'wrong admin token' : 'the admin API needs "Authorization: Bearer <token>"', null, { 'WWW-Authenticate': 'Bearer' }));
      return;
    }
    next();
  });
  r.use(express.json({ limit: opts.maxBodyBytes }));
  const control = (): ServedControl => {
    const c = opts.control();
    if (!c) throw new ApiError(409, 'invalid_request_error', 'no controller runs: the server was started with the resident engine or with --level (a fixed level), or is still loading');
    return c;
  };
  const wrap = (f: (req: Request, res: Response) => unknown) => async (req: Request, res: Response, next: NextFunction) => {
    try {
      const out = await f(req, res);
      if (!res.headersSent) res.json(out);
    } catch (e) {
      if (e instanceof ApiConflict) next(new ApiError(409, 'invalid_request_error', e.message));
      else if (e instanceof ConfigError) next(new ApiError(400, 'invalid_request_error', e.message, 'file'));
      else if (e instanceof RangeError) next(new ApiError(400, 'invalid_request_error', e.message));
      else next(e);
    }
  };
  r.get('/plan', wrap(() => control().planReport()));
  r.get('/decisions', wrap((req) => {
    const limit = Number(req.query.limit ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new ApiError(400, 'invalid_request_error', 'limit: expected a whole number in 1..10000', 'limit');
    return { decisions: control().decisions(limit) };
  }));
  r.get('/estimates', wrap(() => control().estimates()));
  r.post('/sla', wrap((req) => {
    const b = body(slaBody, req);
    control().setSla(b.p95_inter_token_seconds);
    return { sla_seconds: b.p95_inter_token_seconds };
  }));
  r.post('/policy', wrap((req) => {
    const b = body(policyBody, req);
    const p = control().switchPolicy(b.file);
    return { policy: p.name, file: p.file };
  }));
  r.post('/freeze', wrap(() => {
    control().freeze(true);
    return { frozen: true };
  }));
  r.post('/unfreeze', wrap(() => {
    control().freeze(false);
    return { frozen: false };
  }));
  r.post('/dry-run', wrap((req) => {
    const b = body(dryRunBody, req);
    control().setDryRun(b.enabled);
    return { dry_run: b.enabled };
  }));
  r.get('/routing', wrap(async (req) => {
    const w = opts.routing?.();
    if (!w) throw new ApiError(409, 'invalid_request_error', 'no routing to report yet: the model is still loading');
    const { opts: o, own } = routingQuery(req, w.options);
    if (o.segment > w.capacity) throw new ApiError(400, 'invalid_request_error', `segment: expected at most the window's ${w.capacity} tokens, got ${o.segment}`, 'segment');
    const report = own ? await w.refresh() : await w.compute(o);
    const window = { window_tokens: w.tokens, window_capacity_tokens: w.capacity };
    if (!report) return { ...window, segment: o.segment, target: o.target, recommended_by: o.policy, layers: [], note: `the window holds ${w.tokens} tokens, fewer than a segment of ${o.segment}: serve some first` };
    return { ...window, ...report };
  }));
  r.post('/canaries/run', wrap(async () => {
    const c = control();
    const result = await c.runCanaries();
    return { result, floor: c.canaryFloor(), plan: c.planReport() };
  }));
  return r;
}
