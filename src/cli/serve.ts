// `ebserve serve [--model DIR] [--policy FILE] [--profile FILE] [--host H] [--port N] [--engine offload|resident|cpu]
// [--experts-per-layer N] [--host-budget BYTES] [--level N] [--dry-run] [--admin-token-file FILE] [--max-batch N] [--prefill-chunk N]
// [--max-queue N] [--max-body-bytes N] [--drain-timeout S] [--backend B]` — the OpenAI-compatible server, with
// continuous batching, and the controller choosing every layer's error bound live (unless --level
// fixes one). The port is bound before the model loads, so /health answers 503 meanwhile; what
// was loaded, and where to look, goes to stderr. SIGTERM or SIGINT stops
// accepting, lets in-flight requests finish (at most --drain-timeout seconds) and exits 0; a
// second signal stops waiting.
import path from 'node:path';

import type { BackendName } from '../model/backend.js';
import { EMBEDDED_MODEL_DIR } from '../model/embedded.js';
import type { EngineName } from '../serve/served-model.js';
import { UsageError, bytesFlag, integer, numberIn, oneOf, parse, wholeNumber } from './args.js';
import { DEFAULT_POLICY, DEFAULT_PROFILE, EMBEDDED_PROFILE } from './check-config.js';

export const usage = `usage: ebserve serve [--model DIR] [--policy FILE] [--profile FILE] [--host H] [--port N] [--engine offload|resident|cpu]
                     [--bound EB] [--experts-per-layer N] [--host-budget BYTES] [--level N] [--dry-run] [--admin-token-file FILE] [--max-batch N]
                     [--prefill-chunk N] [--max-queue N] [--max-body-bytes N] [--drain-timeout S] [--backend wasm|cpu|tensorflow]
  --model DIR            a Hugging Face checkpoint folder or a .gguf file (default: the profile's model, else the embedded one,
                         ${EMBEDDED_MODEL_DIR})
  --policy FILE          how levels may move: ladder, floors, ceilings, hysteresis, canaries (default policies/u-shape.yaml)
  --profile FILE         where it runs: device budget, link (or an emulated one), SLA, accuracy floor (default: for the
                         embedded model profiles/tiny-moe.yaml, profiles/cpu.yaml with its measured sensitivity; else
                         profiles/cpu.yaml)
  --dry-run              the controller decides and reports, but changes nothing
  --admin-token-file F   the bearer token of /admin/* (or EBSERVE_ADMIN_TOKEN); without one the admin API is off
  --host H               address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)
  --port N               port (default 8080; 0 picks a free one, printed at startup)
  --engine E             offload (default): experts in host memory as precision-ladder rungs, a device cache
                         in front; resident: every expert held as TensorFlow.js tensors; cpu: the native
                         CPU engine (every expert in the addon, the whole forward pass there for Mixtral-style
                         layers), dense f32, or compressed within --bound and multiplied in place
  --bound EB             cpu: keep experts compressed within this absolute error bound (fused path)
  --experts-per-layer N  offload: experts per layer the device cache holds (default: the profile's device budget)
  --host-budget BYTES    offload: keep the experts on disk, in the store file, and at most BYTES of them in host
                         memory (e.g. 4G); the rest is read from the disk as needed, around the page cache
                         (default: the profile's host.budget_bytes, else every expert in host memory)
  --level N              offload: fix every layer at this level, 0 (the ladder's loosest bound) .. its exact bytes;
                         no controller
  --max-batch N          sequences that decode together in one forward step (default 8); a request joins at the
                         next step and leaves when it finishes; its n choices count n
  --prefill-chunk N      prompt tokens one step carries at most (default 64; at most the model's context): a long
                         prompt is run in chunks, so the sequences decoding beside it wait for one chunk per step
  --max-queue N          requests that may wait for room in the batch (default 8); beyond it: 429
  --max-body-bytes N     largest request body (default 1048576); beyond it: 413
  --drain-timeout S      on SIGTERM/SIGINT, seconds to let in-flight requests finish (default 30)
  --backend B            force a TensorFlow.js backend (default: tensorflow if installed, else wasm, else cpu)`;

export async function serveCommand(argv: string[]): Promise<number> {
  const { values, help } = parse('serve', argv, {
    model: { type: 'string' },
    policy: { type: 'string' },
    profile: { type: 'string' },
    'dry-run': { type: 'boolean' },
    'admin-token-file': { type: 'string' },
    host: { type: 'string' },
    port: { type: 'string' },
    engine: { type: 'string' },
    bound: { type: 'string' },
    'experts-per-layer': { type: 'string' },
    'host-budget': { type: 'string' },
    level: { type: 'string' },
    'max-batch': { type: 'string' },
    'prefill-chunk': { type: 'string' },
    'max-queue': { type: 'string' },
    'max-body-bytes': { type: 'string' },
    'drain-timeout': { type: 'string' },
    backend: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, []);
  if (help) {
    console.log(usage);
    return 0;
  }
  const engine = oneOf<EngineName>('serve', 'engine', values.engine, ['offload', 'resident', 'cpu'], 'offload');
  // Policy and profile are checked before the port is bound: a bad file is a usage problem.
  const { loadPolicy } = await import('../control/policy.js');
  const { loadProfile } = await import('../control/profile.js');
  const policy = loadPolicy((values.policy as string | undefined) ?? DEFAULT_POLICY);
  // Serving the embedded model, the default is its measured profile: the controller then plans on
  // the sensitivity ebserve profile measured, not the policy's prior.
  const model = values.model as string | undefined;
  const embedded = model === undefined || path.resolve(model) === path.resolve(EMBEDDED_MODEL_DIR);
  const profile = loadProfile((values.profile as string | undefined) ?? (embedded ? EMBEDDED_PROFILE : DEFAULT_PROFILE));
  const levels = policy.ladder.bounds.length + (policy.ladder.exact ? 1 : 0);
  const spec = {
    dir: (values.model as string | undefined) ?? profile.modelDir ?? EMBEDDED_MODEL_DIR,
    engine,
    policy,
    profile,
    expertsPerLayer: values['experts-per-layer'] === undefined ? undefined : integer('serve', 'experts-per-layer', values['experts-per-layer'], 1, 1 << 16, 4),
    hostBudgetBytes: bytesFlag('serve', 'host-budget', values['host-budget'], 1),
    fixedLevel: values.level === undefined ? undefined : integer('serve', 'level', values.level, 0, levels - 1, levels - 1),
    dryRun: Boolean(values['dry-run']),
    backend: values.backend === undefined ? undefined : oneOf<BackendName>('serve', 'backend', values.backend, ['tensorflow', 'wasm', 'cpu']),
    cpuBound: values.bound === undefined ? undefined : numberIn('serve', 'bound', values.bound, Number.MIN_VALUE, 1e6, 1e-3),
  };
  if (engine !== 'offload' && (values['experts-per-layer'] !== undefined || values['host-budget'] !== undefined || values.level !== undefined || values['dry-run'])) {
    throw new UsageError(`serve: --experts-per-layer, --host-budget, --level and --dry-run are offload settings; the ${engine} engine holds every expert`);
  }
  if (values.bound !== undefined && engine !== 'cpu') throw new UsageError('serve: --bound is a setting of the cpu engine');
  const { readAdminToken } = await import('../serve/admin.js');
  const adminToken = readAdminToken(values['admin-token-file'] as string | undefined, process.env.EBSERVE_ADMIN_TOKEN);
  const host = (values.host as string | undefined) ?? '127.0.0.1';
  if (host.trim() === '') throw new UsageError('serve: --host must not be empty');
  const port = integer('serve', 'port', values.port, 0, 65535, 8080);
  const maxBatch = wholeNumber('serve', 'max-batch', values['max-batch'], 1 << 12, 8);
  // Checked against the model's context once it is loaded (the load fails naming the flag).
  const prefillChunk = wholeNumber('serve', 'prefill-chunk', values['prefill-chunk'], 1 << 24, 64);
  const maxQueue = integer('serve', 'max-queue', values['max-queue'], 0, 1 << 20, 8);
  const maxBodyBytes = integer('serve', 'max-body-bytes', values['max-body-bytes'], 1, 2 ** 31 - 1, 1 << 20);
  const drainTimeoutSeconds = numberIn('serve', 'drain-timeout', values['drain-timeout'], 0, 24 * 3600, 30);

  const log = (line: string) => process.stderr.write(`${line}\n`);
  const { startServer } = await import('../serve/server.js');
  const started = performance.now();
  const server = await startServer({
    host, port, maxBatch, prefillChunk, maxQueue, maxBodyBytes, drainTimeoutSeconds, log, adminToken,
    // Loaded here, not at the top: TensorFlow.js takes ~0.6 s to import, and the port should be
    // bound (and /health answering 503) before that.
    load: async (telemetry, serving) => (await import('../serve/load-model.js')).loadServedModel({ ...spec, maxBatch }, telemetry, log, serving),
  });
  let signals = 0;
  const stopped = new Promise<number>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      if (signals === 1) {
        log(`ebserve serve: ${sig}: no longer accepting; letting in-flight requests finish (at most ${drainTimeoutSeconds} s; ${sig} again stops waiting)`);
        void server.shutdown().then((r) => {
          log(r.drained ? 'ebserve serve: drained; exiting' : `ebserve serve: drain timeout; cut ${r.cut} request${r.cut === 1 ? '' : 's'}; exiting`);
          resolve(0);
        });
      } else {
        log(`ebserve serve: ${sig} again: cutting in-flight requests`);
        void server.shutdown({ drainTimeoutSeconds: 0 });
      }
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  // Only now: whoever reads this line may signal at once, and the handlers must already be there.
  log(`ebserve serve: listening on ${server.url}; loading ${spec.dir} (/health answers 503 until it is ready)`);

  // A signal may come while the model still loads: then there is nothing to wait for.
  const loaded = await Promise.race([
    server.ready.then(() => ({ ok: true as const }), (e: unknown) => ({ ok: false as const, e })),
    stopped.then(() => ({ ok: false as const, e: null })),
  ]);
  if (signals > 0 && !loaded.ok) return exitSoon(await stopped);
  if (!loaded.ok) {
    log(`ebserve serve: the model failed to load: ${loaded.e instanceof Error ? loaded.e.message : String(loaded.e)}`);
    await server.shutdown({ drainTimeoutSeconds: 0 });
    return exitSoon(1);
  }
  const at = server.url;
  // One write, so that whoever watches the log sees the whole block at once.
  log([
    `ebserve serve: ready in ${((performance.now() - started) / 1000).toFixed(1)} s`,
    `  API      ${at}/v1/completions, ${at}/v1/chat/completions, ${at}/v1/models (OpenAI-compatible)`,
    `  metrics  ${at}/metrics`,
    `  health   ${at}/health`,
    `  live     ${at}/dashboard`,
    `  admin    ${adminToken ? `${at}/admin/plan (bearer token)` : 'off (no EBSERVE_ADMIN_TOKEN or --admin-token-file)'}`,
    `  batch    up to ${maxBatch} sequences per step, prompts in chunks of ${prefillChunk} tokens, ${maxQueue} request${maxQueue === 1 ? '' : 's'} may wait`,
  ].join('\n'));
  return exitSoon(await stopped);
}

/**
 * Returns `code`, and makes sure the process ends soon after: a model still loading when the
 * signal came (a first start compresses the experts in worker threads for a while) would
 * otherwise keep it alive after the server has stopped. The timer does not itself hold the process.
 */
function exitSoon(code: number): number {
  setTimeout(() => process.exit(code), 1000).unref();
  return code;
}
