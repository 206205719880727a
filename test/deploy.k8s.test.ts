// deploy/k8s and the Dockerfile, checked without a cluster or docker:
// - every manifest against the Kubernetes API schemas (kubernetes-models; the Prometheus
//   Operator's CRDs from @kubernetes-models/prometheus-operator), and the references between them
//   (selectors, ports, the HPA's metrics and the prometheus-adapter rules that serve them);
// - the drain: the grace period against preStop + the server's --drain-timeout + its exit, the
//   exit measured on the real server started with the Deployment's own arguments;
// - the probes: every probe path asked of the real server while its model loads and once it is
//   loaded (readiness must fail while loading, every path must be a route it serves);
// - resources against bench/results/serve.json, the model volume against the model's size;
// - the Grafana dashboard ConfigMap against deploy/grafana/ebserve-dashboard.json, byte for byte;
// - the Dockerfile: dockerfile-utils' linter (Docker's own parse errors), then the rules that
//   matter here (pinned base, the addon built, a numeric non-root user, the port, a HEALTHCHECK,
//   the embedded model served by default), on the dockerfile-ast parse;
// - the scaling table in deploy/k8s/README.md against bench/results/serve.json.
// The checks are functions that return what is wrong, and each is fed mutated copies too: a
// check that cannot fail would pass them.
// The adapter rules' queries run against a live Prometheus in test/serve.prometheus.test.ts.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { DockerfileParser, type Dockerfile } from 'dockerfile-ast';
import { validate as lintDockerfile } from 'dockerfile-utils';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, Namespace, Service } from 'kubernetes-models/v1';
import YAML from 'yaml';

import { usage as serveUsage } from '../src/cli/serve.js';
import { loadServedModel } from '../src/serve/load-model.js';
import { startServer, type RunningServer } from '../src/serve/server.js';
import { embeddedSpec, until } from './serve/helpers.js';

const K8S = 'deploy/k8s';
const DASHBOARD = 'deploy/grafana/ebserve-dashboard.json';
const ADAPTER_VALUES = `${K8S}/prometheus-adapter/values.yaml`;
const BENCH = 'bench/results/serve.json';
const README = `${K8S}/README.md`;
const REPO = process.cwd();

/**
 * What the server needs after its drain before the process is gone: up to 1 s for idle sockets
 * (server.ts closes what lingers after 1 s), 1 s for the process (serve.ts's exitSoon), the model
 * freed; 5 s leaves room for a loaded node. The test below measures it on the real server.
 */
const EXIT_MARGIN_S = 5;
/** Kubernetes' default terminationGracePeriodSeconds. */
const DEFAULT_GRACE_S = 30;
/** kubectl apply (client-side) keeps the whole object in an annotation; annotations total 256 KiB. */
const ANNOTATION_LIMIT = 262144;

// ---------------------------------------------------------------------------------------------
// Manifests

type Obj = { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> }; spec?: any; data?: Record<string, string> };
interface Manifest { file: string; obj: Obj }

/** The schema of each kind the manifests may use; another kind fails the test. */
const MODELS: Record<string, new (o: any) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/Service': Service,
  'v1/ConfigMap': ConfigMap,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

/** The schema's complaint about `obj`, or null when it validates. */
function schemaProblem(obj: Obj): string | null {
  const Model = MODELS[`${obj.apiVersion}/${obj.kind}`];
  if (!Model) return `no schema for ${obj.apiVersion} ${obj.kind}`;
  try {
    new Model(structuredClone(obj)).validate();
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

function readYamlDocs(file: string): Obj[] {
  return YAML.parseAllDocuments(fs.readFileSync(file, 'utf8')).map((d) => {
    assert.equal(d.errors.length, 0, `${file}: ${d.errors.map((e) => e.message).join('; ')}`);
    return d.toJS() as Obj;
  });
}

function kustomization(): { namespace: string; resources: string[]; images?: { name: string; newTag?: string }[] } {
  return YAML.parse(fs.readFileSync(`${K8S}/kustomization.yaml`, 'utf8'));
}

/** Every object kustomization.yaml deploys, with the file it came from. */
function manifests(): Manifest[] {
  return kustomization().resources.flatMap((f) => readYamlDocs(path.join(K8S, f)).map((obj) => ({ file: f, obj })));
}

function one(kind: string, list = manifests()): Obj {
  const found = list.filter((m) => m.obj.kind === kind);
  assert.equal(found.length, 1, `one ${kind} in ${K8S}`);
  return found[0].obj;
}

const clone = <T>(x: T): T => structuredClone(x);
const matches = (selector: Record<string, string>, labels: Record<string, string> = {}) =>
  Object.entries(selector).every(([k, v]) => labels[k] === v);

/** The value of a `--name=value` or `--name value` argument, or undefined. */
function flag(args: string[], name: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${name}`) return args[i + 1];
    if (args[i].startsWith(`--${name}=`)) return args[i].slice(name.length + 3);
  }
  return undefined;
}

/** The default of a serve flag, as `ebserve serve --help` states it ("(default N)"). */
function serveDefault(name: string): number {
  const m = new RegExp(`--${name} \\S+\\s+[^\\n]*\\(default (\\d+)`).exec(serveUsage);
  assert.ok(m, `ebserve serve --help states the default of --${name}`);
  return Number(m[1]);
}

function serverContainer(dep: Obj): any {
  const c = dep.spec.template.spec.containers.find((x: { name: string }) => x.name === 'ebserve');
  assert.ok(c, 'a container named ebserve');
  return c;
}

// ---------------------------------------------------------------------------------------------
// The drain

/** Seconds a preStop hook holds SIGTERM back: `sleep N` (exec), or the sleep action. */
function preStopSeconds(container: any): number | null {
  const pre = container.lifecycle?.preStop;
  if (!pre) return null;
  if (pre.sleep) return Number(pre.sleep.seconds);
  const cmd: string[] | undefined = pre.exec?.command;
  const m = cmd && /^(?:\/bin\/)?sleep$/.test(cmd[0]) && cmd.length === 2 ? /^(\d+(?:\.\d+)?)s?$/.exec(cmd[1]) : null;
  return m ? Number(m[1]) : 0;
}

/**
 * What would break SIGTERM's drain: no preStop (the Service still routes to a pod that stopped
 * accepting), or a grace period that ends before preStop + --drain-timeout + the exit.
 */
function drainProblems(dep: Obj): string[] {
  const problems: string[] = [];
  const c = serverContainer(dep);
  const drain = Number(flag(c.args ?? [], 'drain-timeout') ?? serveDefault('drain-timeout'));
  const pre = preStopSeconds(c);
  if (pre === null || pre <= 0) problems.push('no preStop delay: endpoints may still send requests after SIGTERM closed the listener');
  const grace = dep.spec.template.spec.terminationGracePeriodSeconds ?? DEFAULT_GRACE_S;
  const need = (pre ?? 0) + drain + EXIT_MARGIN_S;
  if (grace < need) problems.push(`terminationGracePeriodSeconds ${grace} < preStop ${pre ?? 0} s + --drain-timeout ${drain} s + exit ${EXIT_MARGIN_S} s = ${need} s: the kubelet would kill a drain in progress`);
  return problems;
}

// ---------------------------------------------------------------------------------------------
// The probes

/** What the real server answered on a path (GET), while the model loaded and once loaded. */
interface Answer { loading: number; ready: number }
const ok = (status: number) => status >= 200 && status < 400; // the kubelet's success range

function probePaths(dep: Obj): string[] {
  const c = serverContainer(dep);
  return ['startupProbe', 'readinessProbe', 'livenessProbe'].map((k) => c[k]?.httpGet?.path).filter((p): p is string => typeof p === 'string');
}

/**
 * What is wrong with the server container's probes, given the real server's answers: a path it
 * does not serve, a readiness probe that passes while the model loads, a liveness probe that
 * would kill a loading pod without a startup probe in front, a port that is not the container's.
 */
function probeProblems(dep: Obj, answer: (path: string) => Answer): string[] {
  const problems: string[] = [];
  const c = serverContainer(dep);
  const ports = new Set<string | number>((c.ports ?? []).flatMap((p: { name?: string; containerPort: number }) => [p.containerPort, ...(p.name ? [p.name] : [])]));
  if (!c.readinessProbe) problems.push('no readinessProbe: traffic would reach a pod whose model is loading');
  for (const kind of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    const probe = c[kind];
    if (!probe) continue;
    if (!probe.httpGet) {
      problems.push(`${kind}: not an HTTP GET; only /health tells loading (503) from ready`);
      continue;
    }
    if (!ports.has(probe.httpGet.port)) problems.push(`${kind}: port ${probe.httpGet.port} is not a port of the container`);
    const a = answer(probe.httpGet.path);
    if (a.ready === 404 || a.ready === 405) {
      problems.push(`${kind}: the server does not serve GET ${probe.httpGet.path} (${a.ready})`);
      continue;
    }
    if (!ok(a.ready)) problems.push(`${kind}: GET ${probe.httpGet.path} answers ${a.ready} once the model is loaded`);
    if (kind === 'readinessProbe' && ok(a.loading)) problems.push(`readinessProbe: GET ${probe.httpGet.path} answers ${a.loading} while the model loads: traffic would reach a loading pod`);
    if (kind === 'livenessProbe' && !ok(a.loading) && !c.startupProbe) problems.push(`livenessProbe: GET ${probe.httpGet.path} answers ${a.loading} while the model loads and no startupProbe holds it off: a slow load would be killed`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

function parseDockerfile(text: string): Dockerfile {
  return DockerfileParser.parse(text);
}

/** The final stage's JSON-form arguments of an instruction (ENTRYPOINT, CMD), or null. */
function jsonArgs(df: Dockerfile, keyword: string): string[] | null {
  const stages = df.getFROMs();
  const last = stages[stages.length - 1];
  const found = df.getInstructions().filter((i) => i.getKeyword() === keyword && i.getRange().start.line > last.getRange().start.line);
  if (found.length === 0) return null;
  const raw = found[found.length - 1].getRawArgumentsContent();
  try {
    return raw ? (JSON.parse(raw) as string[]) : null;
  } catch {
    return null;
  }
}

/** Instructions of the final stage. */
function finalStage(df: Dockerfile) {
  const froms = df.getFROMs();
  const start = froms[froms.length - 1].getRange().start.line;
  return df.getInstructions().filter((i) => i.getRange().start.line >= start);
}

/**
 * What is wrong with the Dockerfile: the linter's diagnostics (dockerfile-utils: what Docker's
 * parser would refuse), then this project's rules.
 */
function dockerfileProblems(text: string, dockerignore: string): string[] {
  const problems = lintDockerfile(text).map((d) => `line ${d.range.start.line + 1}: ${d.message}`);
  const df = parseDockerfile(text);
  const froms = df.getFROMs();
  if (froms.length === 0) return [...problems, 'no FROM'];
  const stageNames = new Set(froms.map((f) => f.getBuildStage()).filter((s): s is string => !!s));
  for (const f of froms) {
    const image = f.getImageName() ?? '';
    if (stageNames.has(image)) continue;
    const tag = f.getImageTag();
    const digest = f.getImageDigest();
    if (!digest && (!tag || !/^\d+\.\d+\.\d+/.test(tag))) problems.push(`FROM ${f.getImage()}: not pinned to a full version (x.y.z tag) or a digest`);
  }
  const runs = df.getInstructions().filter((i) => i.getKeyword() === 'RUN').map((i) => i.getArgumentsContent() ?? '');
  if (!runs.some((r) => /\bmake build\b/.test(r))) problems.push('no RUN make build: the addon is not built');
  const last = finalStage(df);
  const user = last.filter((i) => i.getKeyword() === 'USER').pop()?.getArgumentsContent()?.trim();
  const uid = user ? /^(\d+)(?::\d+)?$/.exec(user) : null;
  if (!uid) problems.push(`final stage USER ${user ?? '(none)'}: not a numeric user (Kubernetes' runAsNonRoot cannot check a name)`);
  else if (Number(uid[1]) === 0) problems.push('final stage runs as root');
  const exposed = last.filter((i) => i.getKeyword() === 'EXPOSE').flatMap((i) => (i.getArgumentsContent() ?? '').split(/\s+/)).map((p) => Number(p.split('/')[0]));
  const cmd = [...(jsonArgs(df, 'ENTRYPOINT') ?? []), ...(jsonArgs(df, 'CMD') ?? [])];
  const port = Number(flag(cmd, 'port') ?? serveDefault('port'));
  if (!exposed.includes(port)) problems.push(`EXPOSE ${exposed.join(' ') || '(none)'} does not include the port served, ${port}`);
  if (!cmd.includes('serve')) problems.push(`the default command (${cmd.join(' ')}) does not run ebserve serve`);
  if (flag(cmd, 'model') !== undefined) problems.push('the default command names --model: the embedded model is the default');
  if (flag(cmd, 'host') !== '0.0.0.0') problems.push('the default command listens on the loopback only (--host 0.0.0.0 is needed in a container)');
  const health = last.find((i) => i.getKeyword() === 'HEALTHCHECK');
  if (!health) problems.push('no HEALTHCHECK');
  else if (!new RegExp(`:${port}/health\\b`).test(health.getArgumentsContent() ?? '')) problems.push(`HEALTHCHECK does not ask :${port}/health`);
  const copies = last.filter((i) => i.getKeyword() === 'COPY').map((i) => i.getArgumentsContent() ?? '');
  for (const needed of ['models', 'build/Release/ebserve_native.node', 'dist', 'node_modules']) {
    if (!copies.some((c) => c.split(/\s+/).some((a) => a === needed || a.endsWith(`/${needed}`)))) problems.push(`the final stage does not COPY ${needed}`);
  }
  // What the build sends must not be ignored: COPY sources from the context against .dockerignore.
  const ignored = dockerignore.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  for (const c of df.getInstructions().filter((i) => i.getKeyword() === 'COPY')) {
    const args = (c.getArgumentsContent() ?? '').split(/\s+/);
    if (args.some((a) => a.startsWith('--from'))) continue;
    for (const src of args.filter((a) => !a.startsWith('--')).slice(0, -1)) {
      const hit = ignored.find((p) => !p.includes('*') && (src === p || src.startsWith(`${p}/`)));
      if (hit) problems.push(`COPY ${src}: excluded by .dockerignore (${hit})`);
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------

describe('deploy/k8s: the Kubernetes manifests', function () {
  describe('against the Kubernetes API schemas', function () {
    it('deploys every YAML file of deploy/k8s through kustomization.yaml, in one namespace that it also creates', function () {
      const k = kustomization();
      const files = fs.readdirSync(K8S).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml').sort();
      assert.deepEqual([...k.resources].sort(), files);
      assert.equal(one('Namespace').metadata.name, k.namespace);
      const ebserveImages = one('Deployment').spec.template.spec.containers.concat(one('Deployment').spec.template.spec.initContainers ?? []).map((c: { image: string }) => c.image);
      const version = (JSON.parse(fs.readFileSync('package.json', 'utf8')) as { version: string }).version;
      for (const image of ebserveImages) assert.equal(image, `ebserve:${version}`, 'the image is tagged with the package version');
      assert.equal(k.images?.find((i) => i.name === 'ebserve')?.newTag, version, 'kustomize tags the image with the package version');
    });

    it('validates every object against its kind\'s schema (kubernetes-models 1.27; prometheus-operator\'s ServiceMonitor)', function () {
      const all = manifests();
      assert.deepEqual(all.map((m) => m.obj.kind).sort(), ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'Namespace', 'PodDisruptionBudget', 'Service', 'ServiceMonitor']);
      for (const m of all) assert.equal(schemaProblem(m.obj), null, `${m.file}: ${m.obj.kind} ${m.obj.metadata.name}`);
    });

    it('refuses objects the API would refuse (mutated copies: a named containerPort, no maxReplicas, a malformed scrape interval, an unknown kind)', function () {
      const dep = clone(one('Deployment'));
      dep.spec.template.spec.containers[0].ports[0].containerPort = 'http';
      assert.match(schemaProblem(dep) ?? '', /containerPort must be integer/);
      const hpa = clone(one('HorizontalPodAutoscaler'));
      delete hpa.spec.maxReplicas;
      assert.match(schemaProblem(hpa) ?? '', /required property maxReplicas/);
      const sm = clone(one('ServiceMonitor'));
      sm.spec.endpoints[0].interval = '5 seconds';
      assert.match(schemaProblem(sm) ?? '', /interval must match pattern/);
      assert.match(schemaProblem({ ...clone(one('Service')), apiVersion: 'v2' }) ?? '', /no schema for v2 Service/);
    });
  });

  describe('references between the objects', function () {
    it('Service, PodDisruptionBudget and ServiceMonitor select the Deployment\'s pods through its named port', function () {
      const dep = one('Deployment');
      const pod = dep.spec.template.metadata.labels;
      assert.ok(matches(dep.spec.selector.matchLabels, pod));
      const svc = one('Service');
      assert.ok(matches(svc.spec.selector, pod), 'the Service selects the pods');
      const containerPorts = serverContainer(dep).ports.map((p: { name: string }) => p.name);
      for (const p of svc.spec.ports) assert.ok(containerPorts.includes(p.targetPort), `Service port ${p.name} → a container port`);
      const pdb = one('PodDisruptionBudget');
      assert.ok(matches(pdb.spec.selector.matchLabels, pod), 'the PDB covers the pods');
      const sm = one('ServiceMonitor');
      assert.ok(matches(sm.spec.selector.matchLabels, svc.metadata.labels), 'the ServiceMonitor selects the Service');
      for (const e of sm.spec.endpoints) {
        assert.ok(svc.spec.ports.some((p: { name: string }) => p.name === e.port), `ServiceMonitor endpoint ${e.port} is a Service port`);
        assert.equal(e.path, '/metrics');
      }
    });

    it('scales the Deployment on metrics the prometheus-adapter rules serve, below a replica\'s batch, never to no pods on a drain', function () {
      const dep = one('Deployment');
      const hpa = one('HorizontalPodAutoscaler');
      assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: dep.apiVersion, kind: dep.kind, name: dep.metadata.name });
      assert.equal(dep.spec.replicas, undefined, 'the HPA owns the replica count');
      const values = YAML.parse(fs.readFileSync(ADAPTER_VALUES, 'utf8')) as { rules: { custom: { name: { as: string } }[] } };
      const served = values.rules.custom.map((r) => r.name.as);
      const maxBatch = Number(flag(serverContainer(dep).args, 'max-batch') ?? serveDefault('max-batch'));
      assert.ok(hpa.spec.metrics.length > 0);
      for (const m of hpa.spec.metrics) {
        assert.equal(m.type, 'Pods');
        assert.ok(served.includes(m.pods.metric.name), `${m.pods.metric.name} is one of the adapter's metrics (${served.join(', ')})`);
        if (m.pods.metric.name === 'ebserve_requests_in_flight') {
          const target = Number(m.pods.target.averageValue);
          assert.ok(target > 0 && target <= maxBatch, `in-flight target ${target} within a replica's batch (${maxBatch}): beyond it requests queue before a replica is added`);
        }
      }
      const pdb = one('PodDisruptionBudget');
      const allowed = pdb.spec.maxUnavailable !== undefined ? Number(pdb.spec.maxUnavailable) : hpa.spec.minReplicas - Number(pdb.spec.minAvailable);
      assert.ok(allowed >= 1, 'the PDB lets a node drain evict a pod at minReplicas');
      assert.ok(hpa.spec.minReplicas - allowed >= 1, 'a drain at minReplicas leaves a pod serving');
    });

    it('reads the admin token from a Secret, mounted where --admin-token-file points', function () {
      const dep = one('Deployment');
      const c = serverContainer(dep);
      const file = flag(c.args, 'admin-token-file');
      assert.ok(file, '--admin-token-file');
      assert.equal(c.env?.find((e: { name: string }) => e.name === 'EBSERVE_ADMIN_TOKEN'), undefined, 'not in the environment');
      const mount = c.volumeMounts.find((m: { mountPath: string }) => file.startsWith(`${m.mountPath}/`));
      assert.ok(mount, `a volume mounted above ${file}`);
      const volume = dep.spec.template.spec.volumes.find((v: { name: string }) => v.name === mount.name);
      assert.ok(volume.secret?.secretName, `${file} comes from a Secret`);
      const item = path.relative(mount.mountPath, file);
      assert.ok(volume.secret.items.some((i: { path: string }) => i.path === item), `the Secret's items put ${item} there`);
    });
  });

  describe('the drain', function () {
    it('gives SIGTERM\'s drain its time: grace ≥ preStop + --drain-timeout + exit', function () {
      assert.deepEqual(drainProblems(one('Deployment')), []);
    });

    it('catches a grace period shorter than the drain, a longer --drain-timeout, a missing preStop (mutated copies)', function () {
      const shorter = clone(one('Deployment'));
      shorter.spec.template.spec.terminationGracePeriodSeconds = 30;
      assert.match(drainProblems(shorter).join('\n'), /terminationGracePeriodSeconds 30 < preStop 5 s \+ --drain-timeout 30 s/);
      const longer = clone(one('Deployment'));
      const args: string[] = serverContainer(longer).args;
      args[args.findIndex((a) => a.startsWith('--drain-timeout'))] = '--drain-timeout=120';
      assert.match(drainProblems(longer).join('\n'), /--drain-timeout 120 s/);
      const unset = clone(one('Deployment'));
      delete unset.spec.template.spec.terminationGracePeriodSeconds; // Kubernetes' 30 s
      assert.match(drainProblems(unset).join('\n'), /terminationGracePeriodSeconds 30 </);
      const noHook = clone(one('Deployment'));
      delete serverContainer(noHook).lifecycle;
      assert.match(drainProblems(noHook).join('\n'), /no preStop delay/);
    });
  });

  describe('the probes and the volume, against the real server', function () {
    // The paths the manifests probe, and those the mutated copies below use.
    const MUTATED_PATHS = ['/healthz', '/metrics', '/v1/completions'];
    const answers = new Map<string, Answer>();
    let server: RunningServer | undefined;

    before(async function () {
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const log = () => {};
      server = await startServer({
        host: '127.0.0.1', port: 0, log,
        load: async (bus, serving) => {
          await gate; // held until the loading answers are in
          return loadServedModel(embeddedSpec(), bus, log, serving);
        },
      });
      const paths = [...new Set([...probePaths(one('Deployment')), ...MUTATED_PATHS])];
      const get = async (p: string) => (await fetch(`${server!.url}${p}`)).status;
      const loading = new Map<string, number>();
      for (const p of paths) loading.set(p, await get(p));
      release();
      await server.ready;
      for (const p of paths) answers.set(p, { loading: loading.get(p)!, ready: await get(p) });
    });

    after(async function () {
      await server?.shutdown({ drainTimeoutSeconds: 0 });
    });

    const answer = (p: string): Answer => {
      const a = answers.get(p);
      assert.ok(a, `the server was asked GET ${p}`);
      return a;
    };

    it('probes paths the server serves; readiness fails while the model loads and passes once loaded', function () {
      assert.deepEqual(probePaths(one('Deployment')).sort(), ['/health', '/health', '/health']);
      assert.deepEqual(answer('/health'), { loading: 503, ready: 200 });
      assert.deepEqual(probeProblems(one('Deployment'), answer), []);
    });

    it('catches a probe path the server does not serve, a readiness that passes while loading, a liveness without a startup probe (mutated copies)', function () {
      const typo = clone(one('Deployment'));
      serverContainer(typo).readinessProbe.httpGet.path = '/healthz';
      assert.match(probeProblems(typo, answer).join('\n'), /readinessProbe: the server does not serve GET \/healthz \(404\)/);
      const post = clone(one('Deployment'));
      serverContainer(post).livenessProbe.httpGet.path = '/v1/completions';
      assert.match(probeProblems(post, answer).join('\n'), /livenessProbe: the server does not serve GET \/v1\/completions \(405\)/);
      const early = clone(one('Deployment'));
      serverContainer(early).readinessProbe.httpGet.path = '/metrics';
      assert.match(probeProblems(early, answer).join('\n'), /readinessProbe: GET \/metrics answers 200 while the model loads/);
      const noStartup = clone(one('Deployment'));
      delete serverContainer(noStartup).startupProbe;
      assert.match(probeProblems(noStartup, answer).join('\n'), /livenessProbe: .* no startupProbe/);
      const port = clone(one('Deployment'));
      serverContainer(port).readinessProbe.httpGet.port = 9090;
      assert.match(probeProblems(port, answer).join('\n'), /readinessProbe: port 9090 is not a port of the container/);
    });

    it('sizes the model volume for the model and the expert store cache the server wrote beside it', function () {
      const dep = one('Deployment');
      const mount = serverContainer(dep).volumeMounts.find((m: { mountPath: string }) => flag(serverContainer(dep).args, 'model')!.startsWith(`${m.mountPath}/`));
      const volume = dep.spec.template.spec.volumes.find((v: { name: string }) => v.name === mount.name);
      const du = (dir: string): number => fs.readdirSync(dir, { withFileTypes: true }).reduce((s, e) => s + (e.isDirectory() ? du(path.join(dir, e.name)) : fs.statSync(path.join(dir, e.name)).size), 0);
      const dir = embeddedSpec().dir;
      assert.ok(fs.existsSync(path.join(dir, '.ebserve-cache')), 'the server wrote its store cache');
      const bytes = du(dir);
      const limit = quantity(volume.emptyDir.sizeLimit);
      assert.ok(limit >= bytes, `sizeLimit ${volume.emptyDir.sizeLimit} holds the model and its cache (${(bytes / 2 ** 20).toFixed(1)} MiB)`);
    });
  });

  describe('resources, from the measured bench', function () {
    it('asks for the cores the bench measured on and memory above its peak RSS, requests = limits', function () {
      const bench = JSON.parse(fs.readFileSync(BENCH, 'utf8')) as { machine: { cpus: number }; rows: { engine: string; rss_max_bytes: number }[] };
      const c = serverContainer(one('Deployment'));
      const engine = flag(c.args, 'engine') ?? 'offload';
      assert.deepEqual(c.resources.requests, c.resources.limits, 'Guaranteed QoS');
      assert.equal(quantity(c.resources.requests.cpu), bench.machine.cpus, 'the per-replica numbers of the scaling model are for these cores');
      const peak = Math.max(...bench.rows.filter((r) => r.engine === engine).map((r) => r.rss_max_bytes));
      assert.ok(quantity(c.resources.requests.memory) >= peak * 1.5, `memory ${c.resources.requests.memory} ≥ 1.5 × the ${engine} engine's peak RSS (${(peak / 2 ** 20).toFixed(0)} MiB)`);
    });
  });

  describe('the container, started as the Deployment starts it', function () {
    it('serves with the Deployment\'s arguments (paths of the image and volumes mapped here), takes the admin token from the file, drains and exits within the margin', async function () {
      const dep = one('Deployment');
      const c = serverContainer(dep);
      const docker = parseDockerfile(fs.readFileSync('Dockerfile', 'utf8'));
      const workdir = finalStage(docker).filter((i) => i.getKeyword() === 'WORKDIR').pop()!.getArgumentsContent()!;
      const entrypoint = jsonArgs(docker, 'ENTRYPOINT')!;
      assert.equal(c.command, undefined, 'the image\'s ENTRYPOINT runs');
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-k8s-'));
      try {
        // Each mount becomes a folder here; the image's WORKDIR is this repository.
        const mounts = new Map<string, string>(c.volumeMounts.map((m: { name: string; mountPath: string }) => [m.mountPath, path.join(tmp, m.name)]));
        const local = (p: string): string => {
          if (p === workdir || p.startsWith(`${workdir}/`)) return path.join(REPO, path.relative(workdir, p));
          for (const [at, here] of mounts) if (p.startsWith(`${at}/`)) return path.join(here, path.relative(at, p));
          return p;
        };
        for (const dir of mounts.values()) fs.mkdirSync(dir, { recursive: true });
        // The init container: cp -R SRC DST/ (a link here, not a copy).
        for (const init of dep.spec.template.spec.initContainers ?? []) {
          const [cp, recursive, src, dst] = init.command;
          assert.deepEqual([cp, recursive], ['cp', '-R']);
          fs.symlinkSync(local(src), path.join(local(dst), path.basename(src)));
        }
        const tokenFile = local(flag(c.args, 'admin-token-file')!);
        const token = 'k8s-test-admin-token-0123456789';
        fs.writeFileSync(tokenFile, `${token}\n`);
        const port = Number(flag(c.args, 'port'));
        assert.equal(port, c.ports.find((p: { name: string }) => p.name === 'http').containerPort);
        const args = c.args.map((a: string) => {
          if (a.startsWith('--host')) return '--host=127.0.0.1'; // loopback only, here
          if (a.startsWith('--port')) return '--port=0';
          const m = /^(--[\w-]+=)(\/.*)$/.exec(a);
          return m ? m[1] + local(m[2]) : a;
        });
        const [node, script] = entrypoint;
        assert.equal(node, 'node');
        const env = { ...process.env };
        delete env.EBSERVE_ADMIN_TOKEN;
        const child = spawn(process.execPath, [local(script), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (out += d.toString()));
        const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
        try {
          await until(() => /ready in/.test(out) || child.exitCode !== null, 60_000, `the server to be ready:\n${out}`);
          assert.match(out, /ready in/, out);
          const url = /listening on (http:\/\/127\.0\.0\.1:\d+);/.exec(out)![1];
          assert.equal((await fetch(`${url}/health`)).status, 200);
          assert.equal((await fetch(`${url}/admin/plan`, { headers: { Authorization: `Bearer ${token}` } })).status, 200, 'the token from the Secret\'s file opens the admin API');
          assert.equal((await fetch(`${url}/admin/plan`)).status, 401);
          const t0 = performance.now();
          child.kill('SIGTERM');
          const code = await exited;
          const seconds = (performance.now() - t0) / 1000;
          assert.equal(code, 0, out);
          assert.match(out, /drained; exiting/);
          console.log(`      (the server exited ${seconds.toFixed(2)} s after SIGTERM)`);
          assert.ok(seconds < EXIT_MARGIN_S, `an idle server exits ${seconds.toFixed(2)} s after SIGTERM, within the ${EXIT_MARGIN_S} s the grace period allows for it`);
        } finally {
          if (child.exitCode === null) child.kill('SIGKILL');
        }
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    });
  });

  describe('the Grafana dashboard ConfigMap', function () {
    /** What is wrong with the dashboard ConfigMap against the dashboard JSON. */
    function dashboardProblems(cm: Obj, dashboard: string): string[] {
      const problems: string[] = [];
      if (cm.metadata.labels?.grafana_dashboard !== '1') problems.push('no grafana_dashboard: "1" label: the sidecar would not load it');
      const keys = Object.keys(cm.data ?? {});
      if (keys.length !== 1 || !keys[0].endsWith('.json')) problems.push(`data keys ${keys.join(', ')}: one .json file expected`);
      else if (cm.data![keys[0]] !== dashboard) problems.push(`the ConfigMap differs from ${DASHBOARD}: run node deploy/k8s/sync-dashboard.mjs`);
      if (Buffer.byteLength(JSON.stringify(cm)) >= ANNOTATION_LIMIT) problems.push('too large for kubectl apply\'s last-applied-configuration annotation');
      return problems;
    }

    it('holds deploy/grafana/ebserve-dashboard.json byte for byte, labelled for the sidecar, small enough for kubectl apply', function () {
      assert.deepEqual(dashboardProblems(one('ConfigMap'), fs.readFileSync(DASHBOARD, 'utf8')), []);
    });

    it('catches a dashboard edited without the ConfigMap, a lost label (mutated copies)', function () {
      const dashboard = fs.readFileSync(DASHBOARD, 'utf8');
      const edited = dashboard.replace('"title": "ebserve"', '"title": "ebserve (edited)"');
      assert.notEqual(edited, dashboard);
      assert.match(dashboardProblems(one('ConfigMap'), edited).join('\n'), /differs from/);
      const unlabelled = clone(one('ConfigMap'));
      delete unlabelled.metadata.labels!.grafana_dashboard;
      assert.match(dashboardProblems(unlabelled, dashboard).join('\n'), /no grafana_dashboard/);
    });
  });

  describe('the Dockerfile', function () {
    const dockerfile = () => fs.readFileSync('Dockerfile', 'utf8');
    const ignore = () => fs.readFileSync('.dockerignore', 'utf8');

    it('passes the linter and the rules: pinned base, the addon built, a numeric non-root user, the port, a HEALTHCHECK, the embedded model by default', function () {
      assert.deepEqual(dockerfileProblems(dockerfile(), ignore()), []);
      // And it agrees with the Deployment: the user, the port.
      const dep = one('Deployment');
      const user = finalStage(parseDockerfile(dockerfile())).filter((i) => i.getKeyword() === 'USER').pop()!.getArgumentsContent()!;
      assert.equal(Number(user.split(':')[0]), dep.spec.template.spec.securityContext.runAsUser);
    });

    it('catches an unpinned base, root, no HEALTHCHECK, a broken instruction, no addon build, --model in the default command, an ignored source (mutated copies)', function () {
      const cases: [string, (s: string) => string, RegExp][] = [
        ['latest', (s) => s.replace(/^FROM node:\S+ AS build$/m, 'FROM node:latest AS build'), /FROM node:latest: not pinned/],
        ['major only', (s) => s.replace(/^FROM node:\S+$/m, 'FROM node:20-bookworm-slim'), /FROM node:20-bookworm-slim: not pinned/],
        ['root', (s) => s.replace(/^USER .*$/m, 'USER root'), /USER root: not a numeric user/],
        ['uid 0', (s) => s.replace(/^USER .*$/m, 'USER 0'), /runs as root/],
        ['no HEALTHCHECK', (s) => s.replace(/^HEALTHCHECK[^\n]*\\\n[^\n]*\n/m, ''), /no HEALTHCHECK/],
        ['bad EXPOSE', (s) => s.replace(/^EXPOSE 8080$/m, 'EXPOSE http'), /line \d+: Invalid containerPort: http/],
        ['unknown instruction', (s) => s.replace('RUN apt-get', 'RUNN apt-get'), /line \d+: Unknown instruction: RUNN/],
        ['bad duration', (s) => s.replace('--interval=10s', '--interval=10x'), /line \d+: .*unknown unit x/],
        ['no make build', (s) => s.replace('RUN make build && ', 'RUN '), /no RUN make build/],
        ['--model', (s) => s.replace('CMD ["serve", ', 'CMD ["serve", "--model", "/m", '), /names --model/],
        ['loopback', (s) => s.replace('"--host", "0.0.0.0", ', ''), /loopback only/],
      ];
      for (const [name, mutate, expected] of cases) {
        const text = mutate(dockerfile());
        assert.notEqual(text, dockerfile(), `${name}: the mutation applies`);
        assert.match(dockerfileProblems(text, ignore()).join('\n'), expected, name);
      }
      assert.match(dockerfileProblems(dockerfile(), `${ignore()}\nsrc\n`).join('\n'), /COPY src: excluded by \.dockerignore/);
    });
  });

  describe('the scaling model in deploy/k8s/README.md', function () {
    it('states per-replica throughput and latency as bench/results/serve.json measured them, and the replicas they imply', function () {
      const bench = JSON.parse(fs.readFileSync(BENCH, 'utf8')) as { rows: { engine: string; concurrency: number; requests_per_s: number; latency_p95_s: number; inter_token_p95_s: number; ttft_p50_s: number; status_429: number }[] };
      const text = fs.readFileSync(README, 'utf8');
      const table = /<!-- scaling-table -->\n([\s\S]*?)\n<!-- \/scaling-table -->/.exec(text);
      assert.ok(table, 'the table between <!-- scaling-table --> markers');
      const header = table[1].split('\n')[0];
      const rates = [...header.matchAll(/(\d+) req\/s/g)].map((m) => Number(m[1]));
      assert.ok(rates.length >= 3, header);
      const rows = table[1].split('\n').slice(2).map((l) => l.split('|').slice(1, -1).map((x) => x.trim()));
      assert.equal(rows.length, bench.rows.length);
      for (const [i, r] of bench.rows.entries()) {
        const cells = rows[i];
        const expected = [
          r.engine, String(r.concurrency), r.requests_per_s.toFixed(1), r.latency_p95_s.toFixed(3), (r.inter_token_p95_s * 1000).toFixed(1),
          (r.ttft_p50_s * 1000).toFixed(0), String(r.status_429), ...rates.map((R) => String(Math.ceil(R / r.requests_per_s))),
        ];
        assert.deepEqual(cells, expected, `row ${i + 1}`);
      }
    });
  });
});

/** A Kubernetes quantity ("2", "500m", "512Mi", "1G") as a number. */
function quantity(q: string | number): number {
  if (typeof q === 'number') return q;
  const m = /^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/.exec(q);
  assert.ok(m, `a quantity: ${q}`);
  const unit: Record<string, number> = { m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 };
  return Number(m[1]) * (m[2] ? unit[m[2]] : 1);
}
