// `ebserve routing-report` on the embedded model: the JSON shape the issue fixes, the plot, and
// every bad flag refused with a message naming it (exit code 2). A small --prompts corpus keeps
// the runs short; the canaries' own report is checked on held-out text in
// control.routing-heldout.test.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { main } from '../src/cli/main.js';

/** main() in this process with stdout and stderr captured. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = process.stdout.write.bind(process.stdout);
  const err = process.stderr.write.bind(process.stderr);
  let stdout = '';
  let stderr = '';
  process.stdout.write = ((chunk: string | Uint8Array) => ((stdout += String(chunk)), true)) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string | Uint8Array) => ((stderr += String(chunk)), true)) as typeof process.stderr.write;
  try {
    return { code: await main(['routing-report', ...args]), stdout, stderr };
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
  }
}

describe('ebserve routing-report', function () {
  let dir: string;
  let prompts: string;
  const lines = [
    'Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse,',
    'and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.',
    '',
    'It is a way I have of driving off the spleen and regulating the circulation.',
  ];
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-routing-'));
    prompts = path.join(dir, 'prompts.txt');
    fs.writeFileSync(prompts, `${lines.join('\n')}\n`);
  });
  after(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('prints {layers: [{layer, srp, sch: [{cache, hit_rate, lru_hit_rate, lfu_hit_rate}], recommended_cache}]} with --json, and a plot with --svg', async function () {
    const svg = path.join(dir, 'r.svg');
    const r = await cli('--prompts', prompts, '--segment', '8', '--target', '0.6', '--json', '--svg', svg);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.segment, 8);
    assert.equal(report.target, 0.6);
    assert.equal(report.sequences, 3, 'one sequence per non-empty line');
    assert.equal(report.layers.length, 8);
    for (const [l, layer] of report.layers.entries()) {
      assert.deepEqual(Object.keys(layer).sort(), ['layer', 'recommended_cache', 'sch', 'srp']);
      assert.equal(layer.layer, l);
      assert.ok(layer.srp >= 0 && layer.srp <= 1, `srp ${layer.srp}`);
      assert.deepEqual(layer.sch.map((p: { cache: number }) => p.cache), [2, 3, 4, 5, 6, 7, 8], 'top-k to all experts');
      for (const p of layer.sch) {
        assert.deepEqual(Object.keys(p).sort(), ['cache', 'hit_rate', 'lfu_hit_rate', 'lru_hit_rate']);
        for (const v of [p.hit_rate, p.lru_hit_rate, p.lfu_hit_rate]) assert.ok(v >= 0 && v <= 1);
      }
      const first = layer.sch.find((p: { lru_hit_rate: number }) => p.lru_hit_rate >= 0.6);
      assert.equal(layer.recommended_cache, first.cache, `layer ${l}: the smallest LRU cache reaching the target`);
    }
    const plot = fs.readFileSync(svg, 'utf8');
    assert.ok(plot.startsWith('<svg') && plot.includes('layer 7: SRP') && plot.includes('target 0.6'));
  });

  it('prints a table by default', async function () {
    const r = await cli('--prompts', prompts);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /segment 16 tokens, target hit rate 0\.9 \(read off LRU\)/);
    assert.match(r.stdout, /^\s+7\s+0\.\d{3}\s+\d/m);
  });

  it('names --segment below 1 or longer than the corpus, and --target outside (0, 1]', async function () {
    for (const [args, message] of [
      [['--segment', '0'], /--segment must be a whole number from 1 to/],
      [['--segment', '2.5'], /--segment must be a whole number from 1 to/],
      [['--target', '0'], /--target must be a hit rate in \(0, 1\], got 0/],
      [['--target', '1.01'], /--target must be a hit rate in \(0, 1\], got 1\.01/],
      [['--target', 'most'], /--target must be a hit rate in \(0, 1\], got most/],
      [['--policy', 'fifo'], /--policy must be one of lru, lfu/],
      [['--segment', '400'], /--segment must be from 1 to 12\d \(the corpus's longest sequence, in tokens\), got 400/],
    ] as const) {
      const r = await cli('--prompts', prompts, ...args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    }
    const empty = path.join(dir, 'empty.txt');
    fs.writeFileSync(empty, '\n\n');
    const r = await cli('--prompts', empty);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /holds no non-empty line/);
  });
});
