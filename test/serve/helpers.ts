// Helpers of the serve tests: a real server on loopback (port 0) over the embedded model, and the
// few client-side pieces the tests need — JSON posts, an SSE reader, a /metrics reader.
import { DEFAULT_POLICY, DEFAULT_PROFILE } from '../../src/cli/check-config.js';
import { loadPolicy } from '../../src/control/policy.js';
import { loadProfile } from '../../src/control/profile.js';
import { EMBEDDED_MODEL_DIR } from '../../src/model/embedded.js';
import { loadServedModel, type ModelSpec } from '../../src/serve/load-model.js';
import { startServer, type RunningServer, type ServeOptions } from '../../src/serve/server.js';

/** Server log lines, kept instead of printed (a failing test can show them). */
export const serverLog: string[] = [];

/**
 * The embedded model with the default policy and profile, every layer fixed at the exact level
 * (no controller) unless a test asks for one with `fixedLevel: undefined`.
 */
export function embeddedSpec(over: Partial<ModelSpec> = {}): ModelSpec {
  return { dir: EMBEDDED_MODEL_DIR, engine: 'offload', policy: loadPolicy(DEFAULT_POLICY), profile: loadProfile(DEFAULT_PROFILE), fixedLevel: 5, ...over };
}

/** A server on 127.0.0.1:0 over the embedded model (offload engine unless `spec` says otherwise), loaded. */
export async function startEmbedded(opts: Partial<ServeOptions> & { spec?: Partial<ModelSpec> } = {}): Promise<RunningServer> {
  const spec = embeddedSpec(opts.spec);
  const log = (line: string) => serverLog.push(line);
  const server = await startServer({ host: '127.0.0.1', port: 0, log, load: (bus, serving) => loadServedModel(spec, bus, log, serving), ...opts });
  await server.ready;
  return server;
}

export function post(url: string, path: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  return fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    ...init,
  });
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: number };
}

/** Every `data:` event of an SSE response, parsed (the literal [DONE] kept as the string). */
export async function readSse(res: Response): Promise<unknown[]> {
  const text = await res.text();
  return parseSse(text);
}

export function parseSse(text: string): unknown[] {
  const events: unknown[] = [];
  for (const block of text.split('\n\n')) {
    if (block.trim() === '') continue;
    if (!block.startsWith('data: ')) throw new Error(`not an SSE data event: ${JSON.stringify(block)}`);
    const data = block.slice('data: '.length);
    events.push(data === '[DONE]' ? data : JSON.parse(data));
  }
  return events;
}

/** Reads an SSE body event by event; `next()` resolves with the next event, or null at the end. */
export function sseEvents(res: Response) {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  return {
    async next(): Promise<unknown | null> {
      for (;;) {
        const at = buffer.indexOf('\n\n');
        if (at >= 0) {
          const block = buffer.slice(0, at);
          buffer = buffer.slice(at + 2);
          return parseSse(`${block}\n\n`)[0];
        }
        const { value, done } = await reader.read();
        if (done) return null;
        buffer += decoder.decode(value, { stream: true });
      }
    },
    cancel: () => reader.cancel(),
  };
}

/** The value of one series in a Prometheus text exposition (labels matched exactly, in any order), or undefined. */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got: Record<string, string> = {};
    for (const [, k, v] of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) got[k] = v;
    const want = Object.entries(labels);
    if (want.length === Object.keys(got).length && want.every(([k, v]) => got[k] === v)) return Number(m[4]);
  }
  return undefined;
}

export async function metricsText(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return res.text();
}

/** Waits until `check` holds (polling), or fails after `ms`. */
export async function until(check: () => Promise<boolean> | boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
