#!/usr/bin/env node
// Rewrites the scaling table in README.md beside this file (between its <!-- scaling-table -->
// markers) from ../../bench/results/serve.json: per-replica requests/s and latencies as
// bench-serve measured them, and the replicas each request rate in the header needs.
// test/deploy.k8s.test.ts recomputes every cell. Run after `make bench-serve`:
//   node deploy/k8s/sync-scaling-table.mjs
// (the prose around the table quotes some of its numbers: read it again afterwards).
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const bench = JSON.parse(fs.readFileSync(here('../../bench/results/serve.json'), 'utf8'));
const readme = here('README.md');
const text = fs.readFileSync(readme, 'utf8');
const table = /<!-- scaling-table -->\n([\s\S]*?)\n<!-- \/scaling-table -->/.exec(text);
if (!table) throw new Error(`${readme}: no table between <!-- scaling-table --> markers`);
const [header, rule] = table[1].split('\n');
const rates = [...header.matchAll(/(\d+) req\/s/g)].map((m) => Number(m[1]));
const rows = bench.rows.map((r) =>
  `| ${[
    r.engine, r.concurrency, r.requests_per_s.toFixed(1), r.latency_p95_s.toFixed(3), (r.inter_token_p95_s * 1000).toFixed(1),
    (r.ttft_p50_s * 1000).toFixed(0), r.status_429, ...rates.map((R) => Math.ceil(R / r.requests_per_s)),
  ].join(' | ')} |`,
);
fs.writeFileSync(readme, text.replace(table[0], `<!-- scaling-table -->\n${[header, rule, ...rows].join('\n')}\n<!-- /scaling-table -->`));
console.log(`${readme}: ${rows.length} rows from bench/results/serve.json`);
