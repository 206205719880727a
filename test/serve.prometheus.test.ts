// The deploy/ files against the real thing: bin/ebserve serve as a process on the embedded model,
// one completion through it, and Debian's Prometheus (`make test` installs it) scraping it with
// deploy/prometheus/prometheus.yml — its target rewritten to the server's port, its interval cut
// to 1 s. Then every PromQL expression in deploy/grafana/ebserve-dashboard.json (panel targets,
// annotations, the template variable's query) goes through Prometheus's HTTP API, and each must
// return data: a dashboard query that names a metric the server does not expose, a label it
// never sets, or a vector match that cannot hold, fails here rather than as an empty Grafana
// panel. The dashboard and provisioning files are checked for the shape Grafana expects too.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import YAML from 'yaml';

import { EMBEDDED_MODEL_DIR } from '../src/model/embedded.js';
import { post, until } from './serve/helpers.js';

const PROMETHEUS = '/usr/bin/prometheus';
const PROMTOOL = '/usr/bin/promtool';
const DASHBOARD = 'deploy/grafana/ebserve-dashboard.json';
const SCRAPE_CONFIG = 'deploy/prometheus/prometheus.yml';
/** prometheus-adapter's rules for the HPA in deploy/k8s (its Helm values). */
const ADAPTER_VALUES = 'deploy/k8s/prometheus-adapter/values.yaml';
/**
 * The labels the Prometheus Operator gives a ServiceMonitor's targets (deploy/k8s): the test's
 * target carries them too, so the adapter's rules find the series they would in a cluster.
 */
const K8S_TARGET_LABELS = {
  namespace: (YAML.parse(fs.readFileSync('deploy/k8s/kustomization.yaml', 'utf8')) as { namespace: string }).namespace,
  pod: 'ebserve-5f7c9d8b6-x2x7q',
};
/** Turns on the server's admin API, through which the test asks for a canary run. */
const ADMIN_TOKEN = 'prometheus-test-admin-token';

/** What Grafana puts in place of its variables when it runs a query; $instance is the "All" regex. */
const GRAFANA_VARIABLES: Record<string, string> = {
  __rate_interval: '1m',
  __interval: '15s',
  __range: '5m',
  instance: '.+',
  DS_PROMETHEUS: 'ebserve-prometheus',
};

interface Query {
  /** Where in the dashboard it is (panel title and refId, or annotation name). */
  where: string;
  expr: string;
  annotation: boolean;
}

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type: string; uid: string };
  targets?: { refId: string; expr: string; datasource?: { type: string; uid: string } }[];
  panels?: Panel[];
}

interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: unknown; datasource?: { uid: string } }[] };
  annotations: { list: { name: string; expr?: string; datasource?: { type: string; uid: string } }[] };
}

function readDashboard(): Dashboard {
  return JSON.parse(fs.readFileSync(DASHBOARD, 'utf8')) as Dashboard;
}

/** Every panel, rows' collapsed children included. */
function allPanels(d: Dashboard): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** Every PromQL expression of the dashboard: panel targets, annotations, label_values() of the variables (as the metric it reads). */
function dashboardQueries(d: Dashboard): Query[] {
  const queries: Query[] = [];
  for (const p of allPanels(d)) for (const t of p.targets ?? []) queries.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr, annotation: false });
  for (const a of d.annotations.list) if (a.expr) queries.push({ where: `annotation "${a.name}"`, expr: a.expr, annotation: true });
  for (const v of d.templating.list) {
    if (v.type !== 'query') continue;
    const text = typeof v.query === 'string' ? v.query : (v.query as { query: string }).query;
    const m = /^label_values\((.+),\s*(\w+)\)$/.exec(text.trim());
    assert.ok(m, `variable ${v.name}: a label_values(metric, label) query, got ${text}`);
    queries.push({ where: `variable "${v.name}"`, expr: m[1], annotation: false });
  }
  return queries;
}

/** Grafana's variables replaced ($name and ${name} forms); fails on one it does not know. */
function substitute(expr: string): string {
  return expr.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, braced: string | undefined, bare: string | undefined) => {
    const name = braced ?? bare!;
    if (!Object.hasOwn(GRAFANA_VARIABLES, name)) throw new Error(`unknown Grafana variable ${whole} in ${expr}`);
    return GRAFANA_VARIABLES[name];
  });
}

interface AdapterRule {
  seriesQuery: string;
  resources: { overrides: Record<string, { resource: string }> };
  name: { matches: string; as: string };
  metricsQuery: string;
}

/**
 * A rule's metricsQuery as prometheus-adapter fills it in (a Go template with << >> delimiters)
 * for an HPA's request about `pods` in `namespace`: .Series is the discovered series' name,
 * .LabelMatchers `ns-label="ns",pod-label="pod"` (`=~"a|b"` for several pods), .GroupBy the pod
 * label. Any other placeholder fails: the test would not be filling it as the adapter does.
 */
function fillAdapterQuery(rule: AdapterRule, series: string, namespace: string, pods: string[]): string {
  const label = (resource: string) => {
    const found = Object.entries(rule.resources.overrides).find(([, v]) => v.resource === resource);
    assert.ok(found, `the rule maps a label to the ${resource} resource`);
    return found[0];
  };
  const pod = label('pod');
  const fields: Record<string, string> = {
    Series: series,
    LabelMatchers: `${label('namespace')}="${namespace}",${pod}${pods.length === 1 ? `="${pods[0]}"` : `=~"${pods.join('|')}"`}`,
    GroupBy: pod,
  };
  return rule.metricsQuery.replace(/<<\s*\.(\w+)\s*>>|<<[^>]*>>/g, (whole, field: string | undefined) => {
    if (!field || !Object.hasOwn(fields, field)) throw new Error(`unknown adapter template ${whole} in ${rule.metricsQuery}`);
    return fields[field];
  });
}

/** A port nobody listens on now (for Prometheus, which needs one up front). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** A child process whose output is kept; `exited` settles when it ends. */
function start(cmd: string, args: string[], env: Record<string, string> = {}) {
  const child: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/** Ends a child: SIGTERM, then SIGKILL if it is still there after `graceMs`. */
async function stop(p: ReturnType<typeof start> | undefined, graceMs = 5000): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill('SIGTERM');
  const timer = setTimeout(() => p.child.kill('SIGKILL'), graceMs);
  await p.exited;
  clearTimeout(timer);
}

interface PromResponse {
  status: 'success' | 'error';
  error?: string;
  errorType?: string;
  data?: { resultType: string; result: { metric: Record<string, string>; value: [number, string] }[] };
}

describe('deploy/: the Grafana dashboard and the Prometheus config', function () {
  it('is a dashboard Grafana can provision: a datasource variable every query uses, unique panel ids, a grid that fits', function () {
    const d = readDashboard();
    assert.equal(d.uid, 'ebserve-overview');
    assert.ok(d.schemaVersion >= 36);
    const ds = d.templating.list.find((v) => v.type === 'datasource');
    assert.ok(ds, 'a datasource template variable');
    assert.equal(ds.name, 'DS_PROMETHEUS');
    assert.equal(ds.query, 'prometheus');
    const ref = { type: 'prometheus', uid: '${DS_PROMETHEUS}' };
    const panels = allPanels(d);
    assert.equal(new Set(panels.map((p) => p.id)).size, panels.length, 'panel ids are unique');
    for (const p of panels) {
      assert.ok(p.gridPos.x >= 0 && p.gridPos.w > 0 && p.gridPos.x + p.gridPos.w <= 24, `panel "${p.title}" fits the 24-column grid`);
      if (p.type === 'row') continue;
      assert.deepEqual(p.datasource, ref, `panel "${p.title}" reads the datasource variable`);
      assert.ok(p.targets && p.targets.length > 0, `panel "${p.title}" has queries`);
      for (const t of p.targets) assert.deepEqual(t.datasource, ref, `panel "${p.title}" ${t.refId}`);
    }
    for (const a of d.annotations.list.filter((x) => x.expr)) assert.deepEqual(a.datasource, ref, `annotation "${a.name}"`);
    for (const v of d.templating.list.filter((x) => x.type === 'query')) assert.equal(v.datasource?.uid, '${DS_PROMETHEUS}');

    // What the dashboard must show, by the metric it reads.
    const exprs = dashboardQueries(d).map((q) => q.expr).join('\n');
    for (const needed of [
      /histogram_quantile\(0\.5, [^\n]*ebserve_inter_token_latency_seconds_bucket/,
      /histogram_quantile\(0\.95, [^\n]*ebserve_inter_token_latency_seconds_bucket/,
      /histogram_quantile\(0\.99, [^\n]*ebserve_inter_token_latency_seconds_bucket/,
      /ebserve_slo_target_seconds\{slo="p95_inter_token"/,
      /histogram_quantile\(0\.95, [^\n]*ebserve_time_to_first_token_seconds_bucket/,
      /rate\(ebserve_generation_tokens_total/,
      /ebserve_link_bandwidth_estimate_bytes_per_second/,
      /rate\(ebserve_expert_transfer_bytes_total[^\n]*\[1m\]\)\) \/ sum\(rate\(ebserve_expert_transfer_duration_seconds_sum[^\n]*\[1m\]\)\)/,
      /ebserve_layer_error_bound/, /ebserve_layer_rung/, /ebserve_compression_ratio/,
      /ebserve_expert_cache_requests_total\{result="hit"/,
      /ebserve_canary_score/, /ebserve_canary_floor/,
      /sum by \(direction\) \(rate\(ebserve_controller_decisions_total/, /ebserve_controller_rollbacks_total/,
      /ebserve_queue_depth/,
      /rate\(ebserve_batch_size_sum[^\n]*\/ sum\(rate\(ebserve_batch_size_count/, /histogram_quantile\(0\.95, [^\n]*ebserve_batch_size_bucket/,
    ]) assert.match(exprs, needed);
    const annotations = d.annotations.list.filter((a) => a.expr).map((a) => a.expr!);
    assert.ok(annotations.some((e) => /changes\(ebserve_controller_decisions_total/.test(e)), 'decisions as annotations');
    assert.ok(annotations.some((e) => /changes\(ebserve_controller_rollbacks_total/.test(e)), 'rollbacks as annotations');
  });

  it('has provisioning files Grafana reads: apiVersion 1, a file provider for the dashboard folder, the Prometheus datasource the variable names', function () {
    const dashboards = YAML.parse(fs.readFileSync('deploy/grafana/provisioning/dashboards/ebserve.yaml', 'utf8')) as { apiVersion: number; providers: { type: string; options: { path: string } }[] };
    assert.equal(dashboards.apiVersion, 1);
    assert.equal(dashboards.providers.length, 1);
    assert.equal(dashboards.providers[0].type, 'file');
    assert.ok(path.isAbsolute(dashboards.providers[0].options.path));
    const sources = YAML.parse(fs.readFileSync('deploy/grafana/provisioning/datasources/prometheus.yaml', 'utf8')) as { apiVersion: number; datasources: { type: string; uid: string; url: string; jsonData: { timeInterval: string } }[] };
    assert.equal(sources.apiVersion, 1);
    assert.equal(sources.datasources[0].type, 'prometheus');
    const variable = readDashboard().templating.list.find((v) => v.type === 'datasource') as unknown as { current: { value: string } };
    assert.equal(variable.current.value, sources.datasources[0].uid, 'the dashboard selects the provisioned datasource by default');
    const scrape = YAML.parse(fs.readFileSync(SCRAPE_CONFIG, 'utf8')) as { scrape_configs: { scrape_interval: string }[] };
    assert.equal(sources.datasources[0].jsonData.timeInterval, scrape.scrape_configs[0].scrape_interval, "Grafana's interval is Prometheus's scrape interval");
  });

  it('ships a scrape config that promtool (Debian\'s prometheus package) accepts as it is', function () {
    const r = spawnSync(PROMTOOL, ['check', 'config', SCRAPE_CONFIG], { encoding: 'utf8' });
    assert.equal(r.error, undefined, `${PROMTOOL}: ${r.error?.message} (\`make test\` installs Debian's prometheus)`);
    assert.equal(r.status, 0, r.stdout + r.stderr);
  });

  describe('every dashboard query against Prometheus scraping a real server', function () {
    let server: ReturnType<typeof start> | undefined;
    let prometheus: ReturnType<typeof start> | undefined;
    let tmp: string | undefined;
    let promUrl = '';
    let serverUrl = '';

    before(async function () {
      if (!fs.existsSync(PROMETHEUS)) throw new Error(`${PROMETHEUS} is missing: \`make test\` installs Debian's prometheus`);
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-prometheus-'));

      // The default policy with fewer canary items per run, so the run the test asks for is short.
      const policy = YAML.parse(fs.readFileSync('policies/u-shape.yaml', 'utf8')) as { canaries: { items: number } };
      policy.canaries.items = 4;
      const policyFile = path.join(tmp, 'u-shape-short-canaries.yaml');
      fs.writeFileSync(policyFile, YAML.stringify(policy));
      server = start(path.resolve('bin/ebserve'), ['serve', '--port', '0', '--model', EMBEDDED_MODEL_DIR, '--policy', policyFile], { EBSERVE_ADMIN_TOKEN: ADMIN_TOKEN });
      await until(() => /ready in/.test(server!.output()) || server!.child.exitCode !== null, 60_000, `the server to be ready:\n${server.output()}`);
      assert.match(server.output(), /ready in/, server.output());
      const url = /listening on (http:\/\/127\.0\.0\.1:(\d+));/.exec(server.output());
      assert.ok(url, server.output());
      serverUrl = url[1];

      // The shipped scrape config, pointed at this server and made faster; everything else as shipped.
      const config = YAML.parse(fs.readFileSync(SCRAPE_CONFIG, 'utf8')) as {
        global: Record<string, string>;
        scrape_configs: { job_name: string; scrape_interval: string; scrape_timeout: string; static_configs: { targets: string[]; labels?: Record<string, string> }[] }[];
      };
      assert.deepEqual(config.scrape_configs[0].static_configs[0].targets, ['localhost:8080']);
      config.global.scrape_interval = '1s';
      config.global.evaluation_interval = '1s';
      config.scrape_configs[0].scrape_interval = '1s';
      config.scrape_configs[0].scrape_timeout = '1s';
      config.scrape_configs[0].static_configs[0].targets = [`127.0.0.1:${url[2]}`];
      // As a pod behind deploy/k8s's ServiceMonitor would be labelled (for the adapter's rules).
      Object.assign(config.scrape_configs[0].static_configs[0], { labels: K8S_TARGET_LABELS });
      const configFile = path.join(tmp, 'prometheus.yml');
      fs.writeFileSync(configFile, YAML.stringify(config));

      // A canary run now (it yields to serving), so the canary panels have scores without waiting
      // for the policy's schedule (every 30 s).
      const canaries = fetch(`${url[1]}/admin/canaries/run`, { method: 'POST', headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });

      const port = await freePort();
      promUrl = `http://127.0.0.1:${port}`;
      prometheus = start(PROMETHEUS, [
        `--config.file=${configFile}`, `--storage.tsdb.path=${path.join(tmp, 'data')}`, `--web.listen-address=127.0.0.1:${port}`,
        '--storage.tsdb.retention.time=1h', '--log.level=warn',
      ]);
      const up = async () => {
        if (prometheus!.child.exitCode !== null) throw new Error(`prometheus exited:\n${prometheus!.output()}`);
        const r = await query('up{job="ebserve"}').catch(() => null);
        return r?.data?.result[0]?.value[1] === '1';
      };
      await until(up, 30_000, `Prometheus to scrape the server (up == 1):\n${prometheus.output()}`);

      // One completion after the first scrape, so every rate() window holds an increase.
      const res = await post(url[1], '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 16 });
      assert.equal(res.status, 200, await res.clone().text());
      await res.json();
      await until(async () => ((await query('ebserve_generation_tokens_total')).data?.result[0]?.value[1] ?? '0') !== '0', 15_000, 'a scrape after the completion');
      const ran = await canaries;
      assert.equal(ran.status, 200, await ran.text());
      await until(async () => ((await query('ebserve_canary_score')).data?.result.length ?? 0) > 0, 15_000, 'a scrape after the canary run');
      // And two more scrapes, so the newest sample of every series is from after it.
      await new Promise((r) => setTimeout(r, 2500));
    });

    after(async function () {
      await stop(prometheus);
      await stop(server);
      if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    });

    async function query(expr: string): Promise<PromResponse> {
      const res = await fetch(`${promUrl}/api/v1/query`, { method: 'POST', body: new URLSearchParams({ query: expr }) });
      const body = (await res.json()) as PromResponse;
      if (body.status !== 'success') throw new Error(`Prometheus refused ${expr}: ${body.errorType}: ${body.error}`);
      return body;
    }

    it('returns data for every expression of the dashboard', async function () {
      const queries = dashboardQueries(readDashboard());
      assert.ok(queries.length >= 40, `${queries.length} expressions`);
      const empty: string[] = [];
      const report: string[] = [];
      for (const q of queries) {
        const expr = substitute(q.expr);
        assert.doesNotMatch(expr, /\$/, `${q.where}: a Grafana variable left in ${expr}`);
        // An annotation keeps only the moments its counter moved (`… > 0`): Prometheus must accept
        // the whole expression, and the series it filters must exist, or it could never fire.
        const filtered = q.annotation ? /^(.*\S)\s*>\s*0$/.exec(expr) : null;
        if (q.annotation) assert.ok(filtered, `${q.where}: an annotation filters with "> 0" (Grafana draws one at every non-empty point)`);
        const full = await query(expr);
        const body = filtered ? await query(filtered[1]) : full;
        const result = body.data!.result;
        report.push(`${result.length ? `${String(result.length).padStart(2)} series, ${result[0].value[1].slice(0, 12).padEnd(12)}` : ' no data            '}  ${q.where}`);
        if (result.length === 0) empty.push(`${q.where}: ${filtered ? filtered[1] : expr}`);
      }
      console.log(`      Prometheus's answers:\n${report.map((l) => `        ${l}`).join('\n')}`);
      assert.deepEqual(empty, [], `expressions without data:\n${empty.join('\n')}`);
    });

    it('answers the prometheus-adapter rules behind deploy/k8s\'s HPA: each seriesQuery finds the series, each metricsQuery filled in as the adapter does gives the pod a value', async function () {
      const rules = (YAML.parse(fs.readFileSync(ADAPTER_VALUES, 'utf8')) as { rules: { custom: AdapterRule[] } }).rules.custom;
      const hpa = YAML.parse(fs.readFileSync('deploy/k8s/hpa.yaml', 'utf8')) as { spec: { metrics: { pods: { metric: { name: string } } }[] } };
      for (const m of hpa.spec.metrics) assert.ok(rules.some((r) => r.name.as === m.pods.metric.name), `a rule serves the HPA's ${m.pods.metric.name}`);

      // A completion now, so every rate over the last minute holds one.
      const before = Number((await query('ebserve_generation_tokens_total')).data!.result[0].value[1]);
      const res = await post(serverUrl, '/v1/completions', { prompt: 'Call me Ishmael.', max_tokens: 16 });
      assert.equal(res.status, 200, await res.clone().text());
      await res.json();
      await until(async () => Number((await query('ebserve_generation_tokens_total')).data!.result[0].value[1]) > before, 15_000, 'a scrape after the completion');

      const { namespace, pod } = K8S_TARGET_LABELS;
      const report: string[] = [];
      for (const rule of rules) {
        // Discovery, as the adapter does it: the series API, then the rule's name mapping.
        const res = await fetch(`${promUrl}/api/v1/series?${new URLSearchParams({ 'match[]': rule.seriesQuery, start: String(Date.now() / 1000 - 300) })}`);
        const found = (await res.json()) as { status: string; error?: string; data: Record<string, string>[] };
        assert.equal(found.status, 'success', `${rule.seriesQuery}: ${found.error}`);
        const names = [...new Set(found.data.map((s) => s.__name__))];
        assert.ok(names.length > 0, `seriesQuery ${rule.seriesQuery} finds series`);
        for (const s of found.data) assert.ok(s.namespace === namespace && s.pod === pod, `${s.__name__} carries the pod's labels`);
        for (const series of names) {
          assert.equal(series.replace(new RegExp(rule.name.matches), rule.name.as), rule.name.as, `${series} is exposed as ${rule.name.as}`);
          // One pod, and several (a regex over the HPA's pods, one of them gone).
          for (const pods of [[pod], [pod, 'ebserve-5f7c9d8b6-gone0']]) {
            const expr = fillAdapterQuery(rule, series, namespace, pods);
            const result = (await query(expr)).data!.result;
            report.push(`${rule.name.as} [${pods.length} pod${pods.length > 1 ? 's' : ''}] = ${result.map((r) => r.value[1]).join(', ') || 'no data'}`);
            assert.equal(result.length, 1, `${rule.name.as}: one series for the pod from ${expr}`);
            assert.equal(result[0].metric[fillAdapterQuery({ ...rule, metricsQuery: '<<.GroupBy>>' }, series, namespace, pods)], pod, `${rule.name.as}: labelled by the pod, so the adapter can hand it to the HPA`);
            const value = Number(result[0].value[1]);
            assert.ok(Number.isFinite(value) && value > 0, `${rule.name.as} = ${result[0].value[1]} from ${expr}: a finite value above 0 after a completion in the last minute`);
          }
        }
      }
      console.log(`      the adapter's metrics:\n${report.map((l) => `        ${l}`).join('\n')}`);
    });
  });
});
