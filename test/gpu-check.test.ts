// The GPU check kit (gpu-check/), built and run the way CI runs it: `make gpu-check-emulated`, the
// CUDA kernels' bodies on the CPU under cuda/emulate.h, at the kit's --small size. It must pass
// every check and report in the format a device run uses; and a scratch build whose decode kernels
// are handed a wrong bound must fail those checks and exit non-zero, so a broken kernel cannot pass.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..');
const OUT = join(ROOT, 'build', 'gpu-check-test');
const OBJ = join(ROOT, 'build', 'gpu-check-emulated.obj');
const LAST_LINE = /^gpu-check: (\d+) checks, (\d+) failed \((EMULATED|DEVICE .+)\)$/;
// The Makefile's GPU_CHECK_CXXFLAGS: the scratch build differs from the real one by its define only.
const CXXFLAGS = ['-std=c++17', '-O2', '-ffp-contract=off', '-fno-math-errno', '-Wall', '-Wno-psabi', '-Wno-unknown-pragmas'];

type Check = { group: string; name: string; passed: boolean; criterion: string; summary: string; figures: Record<string, number | null> };
type KitJson = {
  target: string;
  device: { emulated: boolean; name: string };
  anchor: string;
  options: { mib: number; d: number; ff: number };
  checks: Check[];
  summary: { checks: number; failed: number };
  last_line: string;
};
type Run = { code: number | null; stdout: string; stderr: string; lines: string[]; json: KitJson };

// Generous: a fresh clone builds the kit's objects (the codec, the expert engine's kernels, the
// native forward) one after another here, minutes on 2 shared cores.
function sh(cmd: string, args: string[]) {
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', timeout: 600_000, maxBuffer: 1 << 24 });
  if (r.error) throw r.error;
  return r;
}

// Runs a kit binary (or make) that writes its JSON to `json`, and reads back what it said.
function run(cmd: string, args: string[], json: string): Run {
  rmSync(json, { force: true });
  const r = sh(cmd, args);
  const lines = r.stdout.trimEnd().split('\n');
  assert.ok(existsSync(json), `no JSON at ${json}; stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, lines, json: JSON.parse(readFileSync(json, 'utf8')) as KitJson };
}

// The table's rows: "  3  codec     decode eb 1e-4, 1 MiB   PASS   …"
function tableRows(lines: string[]) {
  return lines.filter((l) => /^\s*\d+ {2}\S/.test(l)).map((l) => / (PASS|FAIL) {3}/.exec(l)?.[1]);
}

describe('gpu-check, emulated (make gpu-check-emulated)', function () {
  this.timeout(900_000);
  let ok: Run;

  before(function () {
    mkdirSync(OUT, { recursive: true });
    const json = join(OUT, 'emulated.json');
    ok = run('make', ['--no-print-directory', 'gpu-check-emulated', `GPU_CHECK_ARGS=--small --json ${json}`], json);
  });

  it('passes every check: exit status 0 and 0 failed', function () {
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.deepEqual(ok.json.checks.filter((c) => !c.passed).map((c) => `${c.group}: ${c.summary}`), []);
  });

  it('ends with the line `gpu-check: N checks, 0 failed (EMULATED)`, N the rows of its table', function () {
    const m = LAST_LINE.exec(ok.lines.at(-1)!);
    assert.ok(m, `last line: ${ok.lines.at(-1)}`);
    const rows = tableRows(ok.lines);
    assert.equal(Number(m[1]), rows.length);
    assert.ok(rows.length >= 8, `${rows.length} rows`);
    assert.equal(m[2], '0');
    assert.equal(m[3], 'EMULATED');
    assert.ok(rows.every((r) => r === 'PASS'));
    assert.match(ok.stdout, /^gpu-check on EMULATED: /m);
  });

  it('writes the JSON: the target, every check with its criterion and figures, the counts and the last line', function () {
    const j = ok.json;
    assert.equal(j.target, 'EMULATED');
    assert.equal(j.device.emulated, true);
    assert.match(j.anchor, /510 GB\/s on an A100/);
    assert.deepEqual({ mib: j.options.mib, d: j.options.d, ff: j.options.ff }, { mib: 1, d: 128, ff: 256 });
    assert.deepEqual([...new Set(j.checks.map((c) => c.group))], ['codec', 'expert', 'pipeline', 'model']);
    assert.deepEqual(j.summary, { checks: j.checks.length, failed: 0 });
    assert.equal(j.last_line, ok.lines.at(-1));
    for (const c of j.checks) {
      assert.ok(c.name && c.criterion && c.summary, JSON.stringify(c));
      assert.ok(Object.keys(c.figures).length > 0, `${c.name}: no figures`);
    }
  });

  it('measures what each check claims: bounds met with escapes patched, FFN and logits within tolerance, link bytes moved', function () {
    const by = (g: string) => ok.json.checks.filter((c) => c.group === g);
    // Four fixed-length rows, three entropy-coded (v2) ones.
    assert.equal(by('codec').length, 7);
    assert.equal(by('codec').filter((c) => c.name.startsWith('entropy ')).length, 3);
    for (const c of by('codec')) {
      assert.ok(c.figures.max_error_over_bound! <= 1 && c.figures.max_error_over_bound! > 0.5, c.name);
      assert.ok(c.figures.escapes! > 0, `${c.name}: the escape-patch kernel ran on nothing`);
      assert.ok(c.figures.decode_gbps! > 0 && c.figures.memcpy_d2d_gbps! > 0, c.name);
    }
    // N(0, 0.02) at 1e-3: the fixed-length coder's 5.09× (DESIGN.md).
    const ratio = by('codec').find((c) => c.name.startsWith('decode eb 1e-3'))!.figures.ratio_vs_f32!;
    assert.ok(Math.abs(ratio - 5.09) < 0.05, `ratio ${ratio}`);
    // The entropy coder on the same data: issue 16's ≥ 5.7 (its symbols' entropy allows 5.96).
    const entropyRatio = by('codec').find((c) => c.name.startsWith('entropy eb 1e-3'))!.figures.ratio_vs_f32!;
    assert.ok(entropyRatio >= 5.7 && entropyRatio <= 5.96, `entropy ratio ${entropyRatio}`);
    for (const c of by('expert')) assert.ok(c.figures.scaled_error! <= 1e-5, c.name);
    const [pipe] = by('pipeline');
    assert.ok(pipe.figures.link_bytes! > 0 && pipe.figures.overlap! > 0, JSON.stringify(pipe.figures));
    const [model] = by('model');
    assert.ok(model.figures.max_abs_logit_diff_decode! <= 1e-4 && model.figures.top1_agrees === 1, JSON.stringify(model.figures));
  });

  describe('a scratch build whose decode kernels are given twice the stream\'s bound', function () {
    let broken: Run;

    before(function () {
      // Every object of the real build but check_codec, which is compiled again with the define.
      const dir = join(OUT, 'wrong-bound');
      mkdirSync(dir, { recursive: true });
      const objects = (readdirSync(OBJ, { recursive: true }) as string[])
        .filter((f) => f.endsWith('.o') && !f.endsWith('check_codec.o'))
        .map((f) => join(OBJ, f));
      assert.ok(objects.length >= 10, `objects of the real build: ${objects.join(' ')}`);
      const codec = join(dir, 'check_codec.o'), bin = join(dir, 'gpu-check-emulated');
      rmSync(bin, { force: true });
      for (const [cmd, args] of [
        ['g++', [...CXXFLAGS, '-DGPU_CHECK_WRONG_BOUND=2', '-c', 'gpu-check/check_codec.cc', '-o', codec]],
        ['g++', ['-o', bin, ...objects, codec, '-lpthread']],
      ] as [string, string[]][]) {
        const r = sh(cmd, args);
        assert.equal(r.status, 0, r.stderr);
      }
      broken = run(bin, ['--small', '--json', join(dir, 'result.json')], join(dir, 'result.json'));
    });

    it('fails every codec check (fixed-length and entropy-coded) and no other, and exits 1', function () {
      assert.equal(broken.code, 1, broken.stdout + broken.stderr);
      const failed = broken.json.checks.filter((c) => !c.passed);
      assert.deepEqual(failed.map((c) => c.group), Array(7).fill('codec'));
      assert.equal(failed.filter((c) => c.name.startsWith('entropy ')).length, 3);
      for (const c of failed) assert.match(c.summary, /differs from eb::decode's at value \d+/);
    });

    it('says so in its last line and its JSON', function () {
      const m = LAST_LINE.exec(broken.lines.at(-1)!);
      assert.ok(m, `last line: ${broken.lines.at(-1)}`);
      assert.equal(Number(m[1]), broken.json.checks.length);
      assert.equal(m[2], '7');
      assert.deepEqual(broken.json.summary, { checks: broken.json.checks.length, failed: 7 });
      assert.deepEqual(tableRows(broken.lines).filter((r) => r === 'FAIL').length, 7);
    });
  });
});
