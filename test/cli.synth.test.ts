// `ebserve synth`: a synthetic checkpoint of a real MoE's shape that loads with the project's own
// loader, is deterministic, respects its shard cap, refuses bad input without writing anything,
// and routes like a trained model (load entropy ≥ 0.95·log2(E) per layer on the calibration text).
//
// The full-size shapes are gigabytes even at one layer (Mixtral's embeddings alone are 262 MB), so
// the runs here use the hidden, test-only `--test-shrink 16`: every width divided by 16, depth,
// heads, experts and top-k kept. The real shapes are checked without writing their bytes: their
// configs, tensor lists and parameter totals against the published figures.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { main } from '../src/cli/main.js';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { parseConfig } from '../src/model/config.js';
import { KvCache } from '../src/model/kv-cache.js';
import { loadModel } from '../src/model/load.js';
import { EMBEDDED_MODEL_DIR } from '../src/model/embedded.js';
import { expectedTensors } from '../src/model/names.js';
import { calibrationText, measureLogitSpread, routingStats, TRAINED_LOGIT_SPREAD } from '../src/model/synth/calibrate.js';
import { SHAPES, synthConfig, tensorSpecs, type RoutingReport } from '../src/model/synth/index.js';
import { bf16ToFloat, GaussianStream } from '../src/model/synth/random.js';

const run = promisify(execFile);
const MAIN = path.resolve('src/cli/main.ts');

/** src/cli/main.ts in a process of its own, as bin/ebserve runs its build: exit code, stdout, stderr. */
async function synthCli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const script = `import(${JSON.stringify(MAIN)}).then(async (m) => { process.exitCode = await m.main(process.argv.slice(1)); })`;
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', '-e', script, 'synth', ...args], { maxBuffer: 1 << 24 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

/** main() in this process with stderr captured (for the quick usage errors). */
async function synthInProcess(...args: string[]): Promise<{ code: number; stderr: string }> {
  const write = process.stderr.write.bind(process.stderr);
  let stderr = '';
  process.stderr.write = ((chunk: string | Uint8Array) => {
    stderr += String(chunk);
    return true;
  }) as typeof process.stderr.write;
  try {
    return { code: await main(['synth', ...args]), stderr };
  } finally {
    process.stderr.write = write;
  }
}

function sha256Of(dir: string): Record<string, string> {
  const files = fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => fs.statSync(path.join(dir, f)).isFile());
  return Object.fromEntries(files.sort().map((f) => [f, createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex')]));
}

const floorBits = (experts: number) => 0.95 * Math.log2(experts);

describe('ebserve synth', function () {
  let tmp: string;
  before(function () {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-synth-'));
  });
  after(function () {
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  describe('the real shapes (configs and tensor lists, no bytes written)', function () {
    // Published totals: OLMoE-1B-7B 6.92 B (model card "7B", 6.9 B), Qwen3-30B-A3B 30.5 B
    // (29.9 B without embeddings), Mixtral-8x7B 46.7 B.
    const published: Record<string, { params: number; arch: string; layers: number; experts: number; topK: number }> = {
      'olmoe-1b-7b': { params: 6.92e9, arch: 'olmoe', layers: 16, experts: 64, topK: 8 },
      'qwen3-30b-a3b': { params: 30.5e9, arch: 'qwen3_moe', layers: 48, experts: 128, topK: 8 },
      'mixtral-8x7b': { params: 46.7e9, arch: 'mixtral', layers: 32, experts: 8, topK: 2 },
    };
    for (const shape of SHAPES) {
      it(`${shape}: the config parses as ${published[shape].arch} and its tensors add up to the published ${published[shape].params / 1e9} B parameters`, function () {
        const c = parseConfig(synthConfig(shape), shape);
        const p = published[shape];
        assert.equal(c.arch, p.arch);
        assert.deepEqual([c.numLayers, c.numExperts, c.topK], [p.layers, p.experts, p.topK]);
        const params = tensorSpecs(c).reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
        assert.ok(Math.abs(params - p.params) / p.params < 0.005, `${params} parameters`);
      });
    }

    it('names tensors as the real checkpoints do', function () {
      const shapeOf = (shape: (typeof SHAPES)[number], name: string) =>
        tensorSpecs(parseConfig(synthConfig(shape), shape)).find((t) => t.name === name)?.shape;
      assert.deepEqual(shapeOf('olmoe-1b-7b', 'model.layers.15.mlp.experts.63.down_proj.weight'), [2048, 1024]);
      assert.deepEqual(shapeOf('olmoe-1b-7b', 'model.layers.0.self_attn.q_norm.weight'), [2048]);
      assert.deepEqual(shapeOf('olmoe-1b-7b', 'model.layers.0.mlp.gate.weight'), [64, 2048]);
      assert.deepEqual(shapeOf('qwen3-30b-a3b', 'model.layers.47.mlp.experts.127.gate_proj.weight'), [768, 2048]);
      assert.deepEqual(shapeOf('qwen3-30b-a3b', 'model.layers.0.self_attn.k_norm.weight'), [128]);
      assert.deepEqual(shapeOf('qwen3-30b-a3b', 'model.layers.0.self_attn.q_proj.weight'), [4096, 2048]);
      assert.deepEqual(shapeOf('mixtral-8x7b', 'model.layers.31.block_sparse_moe.experts.7.w2.weight'), [4096, 14336]);
      assert.deepEqual(shapeOf('mixtral-8x7b', 'model.layers.0.block_sparse_moe.gate.weight'), [8, 4096]);
      assert.deepEqual(shapeOf('mixtral-8x7b', 'model.embed_tokens.weight'), [32000, 4096]);
      assert.deepEqual(shapeOf('mixtral-8x7b', 'lm_head.weight'), [32000, 4096]);
    });

    it('--layers cuts the depth and nothing else', function () {
      const full = synthConfig('qwen3-30b-a3b');
      const cut = synthConfig('qwen3-30b-a3b', { layers: 3 });
      assert.equal(cut.num_hidden_layers, 3);
      for (const key of Object.keys(full)) if (!['num_hidden_layers', 'max_window_layers'].includes(key)) assert.deepEqual(cut[key], full[key], key);
      const names = tensorSpecs(parseConfig(cut, 'cut')).map((t) => t.name);
      assert.ok(names.some((n) => n.startsWith('model.layers.2.')) && !names.some((n) => n.startsWith('model.layers.3.')));
    });

    it('draws each tensor from its own seeded stream: same seed and name, same values; another seed, others', function () {
      const a = new Uint16Array(4096);
      const b = new Uint16Array(4096);
      new GaussianStream(3, 'model.embed_tokens.weight', 0.02).fillBf16(a);
      new GaussianStream(3, 'model.embed_tokens.weight', 0.02).fillBf16(b);
      assert.deepEqual(a, b);
      new GaussianStream(4, 'model.embed_tokens.weight', 0.02).fillBf16(b);
      assert.notDeepEqual(a, b);
      const v = Array.from(a, bf16ToFloat);
      const std = Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
      assert.ok(Math.abs(std - 0.02) < 0.001, `std ${std}`);
    });
  });

  describe('a run per shape (--test-shrink 16)', function () {
    const runs: { shape: (typeof SHAPES)[number]; layers: number }[] = [
      { shape: 'olmoe-1b-7b', layers: 2 },
      { shape: 'qwen3-30b-a3b', layers: 1 },
      { shape: 'mixtral-8x7b', layers: 1 },
    ];
    for (const { shape, layers } of runs) {
      it(`${shape} --layers ${layers}: loads with the project's loader, every tensor bf16 with the right name and shape, and routes evenly`, async function () {
        const out = path.join(tmp, shape);
        const r = await synthCli('--shape', shape, '--layers', String(layers), '--test-shrink', '16', '--out', out);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /writing: .* in [\d.]+ s/);
        assert.match(r.stderr, /calibrating routers .*~\d+ s left/);
        const ckpt = openCheckpoint(out);
        try {
          const c = ckpt.config;
          assert.equal(c.numLayers, layers);
          const expected = expectedTensors(c);
          assert.deepEqual(ckpt.tensorNames(), expected.map((t) => t.name));
          for (const t of expected) {
            const info = ckpt.tensorInfo(t.name);
            assert.equal(info.dtype, 'BF16', t.name);
            assert.deepEqual(info.shape, t.shape, t.name);
          }
          assert.ok(ckpt.readTensor('model.norm.weight').every((x) => x === 1));
          const embed = ckpt.readTensor('model.embed_tokens.weight');
          const std = Math.sqrt(embed.reduce((s, x) => s + x * x, 0) / embed.length);
          assert.ok(Math.abs(std - 0.02) < 0.0005, `embedding std ${std}`);
        } finally {
          ckpt.close();
        }
        assert.ok(fs.readFileSync(path.join(out, 'canaries', 'text.jsonl')).equals(fs.readFileSync(path.join(EMBEDDED_MODEL_DIR, 'canaries', 'text.jsonl'))), 'the text canaries beside it, for the controller');
        const routing = JSON.parse(fs.readFileSync(path.join(out, 'routing.json'), 'utf8')) as RoutingReport;
        assert.equal(routing.layers.length, layers);
        assert.equal(routing.calibration.tokens, 2048);
        for (const l of routing.layers) assert.ok(l.load_entropy_bits >= floorBits(routing.num_experts), `layer ${l.layer}: ${l.load_entropy_bits} bits`);

        // Independently of routing.json: the written routers, run by the project's own forward
        // over the same 2,048 tokens, balance every layer's load.
        const m = await loadModel(out);
        try {
          const c = m.checkpoint.config;
          const seen: Int32Array[] = [];
          m.model.onRouting = (x) => (seen[x.layer] = x.ids);
          const ids = m.tokenizer.encode(calibrationText()).slice(0, 2048);
          await m.model.forward(ids, new KvCache(c.numLayers, c.numKvHeads * c.headDim, c.maxPositions));
          for (let l = 0; l < c.numLayers; l++) {
            const s = routingStats(seen[l], 2048, c.topK, c.numExperts);
            assert.ok(s.loadEntropyBits >= floorBits(c.numExperts), `layer ${l}: ${s.loadEntropyBits} bits`);
            assert.ok(Math.abs(s.reusePrev - routing.layers[l].reuse_prev) < 0.02, `layer ${l}: reuse ${s.reusePrev} vs routing.json ${routing.layers[l].reuse_prev}`);
          }
        } finally {
          m.dispose();
        }
      });
    }

    it('the uncalibrated routers would collapse where the calibrated ones do not (routing.json keeps both)', function () {
      const routing = JSON.parse(fs.readFileSync(path.join(tmp, 'olmoe-1b-7b', 'routing.json'), 'utf8')) as RoutingReport;
      const deep = routing.layers[1];
      assert.ok(deep.uncalibrated.load_entropy_bits < deep.load_entropy_bits - 0.3, JSON.stringify(deep));
      assert.ok(deep.params.common_direction_energy_share > 0.2, JSON.stringify(deep.params));
    });
  });

  it('is deterministic and keeps every shard under --max-shard-bytes, with an index that names each tensor\'s shard', async function () {
    const cap = 1_000_000;
    const a = path.join(tmp, 'det-a');
    const b = path.join(tmp, 'det-b');
    for (const out of [a, b]) {
      const r = await synthCli('--shape', 'olmoe-1b-7b', '--layers', '1', '--seed', '7', '--test-shrink', '16', '--max-shard-bytes', String(cap), '--calibration-tokens', '512', '--out', out);
      assert.equal(r.code, 0, r.stderr);
    }
    assert.deepEqual(sha256Of(a), sha256Of(b));
    const shards = fs.readdirSync(a).filter((f) => f.endsWith('.safetensors'));
    assert.ok(shards.length >= 3, `${shards.length} shards`);
    shards.forEach((f, i) => {
      assert.equal(f, `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`);
      assert.ok(fs.statSync(path.join(a, f)).size <= cap, `${f} is ${fs.statSync(path.join(a, f)).size} bytes`);
    });
    const index = JSON.parse(fs.readFileSync(path.join(a, 'model.safetensors.index.json'), 'utf8'));
    const ckpt = openCheckpoint(a); // checks every index entry against the shard's own header
    try {
      assert.deepEqual(Object.keys(index.weight_map).sort(), ckpt.tensorNames().sort());
      assert.equal(index.metadata.total_size, ckpt.tensorNames().reduce((s, n) => s + ckpt.tensorInfo(n).byteLength, 0));
      for (const n of ckpt.tensorNames()) assert.equal(path.basename(ckpt.tensorInfo(n).file), index.weight_map[n]);
    } finally {
      ckpt.close();
    }
  });

  it('--locality R moves the reuse of the previous token\'s experts toward R and says so in routing.json', async function () {
    const out = path.join(tmp, 'local');
    const r = await synthCli('--shape', 'olmoe-1b-7b', '--layers', '3', '--test-shrink', '16', '--locality', '0.3', '--out', out);
    assert.equal(r.code, 0, r.stderr);
    const routing = JSON.parse(fs.readFileSync(path.join(out, 'routing.json'), 'utf8')) as RoutingReport;
    assert.equal(routing.calibration.locality_target, 0.3);
    const deepest = routing.layers[2];
    assert.ok(Math.abs(deepest.reuse_prev - 0.3) < 0.03, JSON.stringify(deepest));
    assert.ok(deepest.params.locality_gamma > 0);
    for (const l of routing.layers) assert.ok(l.load_entropy_bits >= floorBits(64), `layer ${l.layer}: ${l.load_entropy_bits} bits`);
  });

  describe('bad input: exit code 2, the flag named, nothing written', function () {
    const cases: [string, string[], RegExp][] = [
      ['an unknown shape', ['--shape', 'gpt-5', '--out', 'X'], /--shape must be one of olmoe-1b-7b, qwen3-30b-a3b, mixtral-8x7b, got gpt-5/],
      ['no shape', ['--out', 'X'], /--shape must be one of/],
      ['--layers 0', ['--shape', 'olmoe-1b-7b', '--layers', '0', '--out', 'X'], /--layers must be a whole number from 1 to 16, got 0/],
      ['--layers -2', ['--shape', 'olmoe-1b-7b', '--layers=-2', '--out', 'X'], /--layers must be a whole number from 1 to 16, got -2/],
      ['--layers 1.5', ['--shape', 'olmoe-1b-7b', '--layers', '1.5', '--out', 'X'], /--layers must be a whole number from 1 to 16, got 1.5/],
      ['--layers beyond the depth', ['--shape', 'mixtral-8x7b', '--layers', '33', '--out', 'X'], /--layers must be a whole number from 1 to 32, got 33/],
      ['no --out', ['--shape', 'olmoe-1b-7b'], /--out DIR is required/],
      ['--locality outside 0..1', ['--shape', 'olmoe-1b-7b', '--locality', '1.5', '--out', 'X'], /--locality must be a number in 0..1, got 1.5/],
      ['a negative --seed', ['--shape', 'olmoe-1b-7b', '--seed=-1', '--out', 'X'], /--seed must be a whole number from 0, got -1/],
      ['too few calibration tokens', ['--shape', 'olmoe-1b-7b', '--calibration-tokens', '10', '--out', 'X'], /--calibration-tokens must be an integer in 256\.\.1048576, got 10/],
    ];
    for (const [what, args, message] of cases) {
      it(`refuses ${what}`, async function () {
        const out = path.join(tmp, `bad-${what.replace(/\W+/g, '-')}`);
        const r = await synthInProcess(...args.map((a) => (a === 'X' ? out : a)));
        assert.equal(r.code, 2);
        assert.match(r.stderr, message);
        assert.equal(fs.existsSync(out), false);
      });
    }

    it('refuses an --out that exists and is not empty, leaving it untouched', async function () {
      const out = path.join(tmp, 'occupied');
      fs.mkdirSync(out);
      fs.writeFileSync(path.join(out, 'keep.txt'), 'mine');
      const r = await synthInProcess('--shape', 'olmoe-1b-7b', '--layers', '1', '--out', out);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /--out: .*occupied exists and is not empty/);
      assert.deepEqual(fs.readdirSync(out), ['keep.txt']);
    });

    it('refuses a shard cap smaller than a tensor (exit code 1), before writing anything', async function () {
      const out = path.join(tmp, 'tiny-cap');
      const r = await synthInProcess('--shape', 'olmoe-1b-7b', '--layers', '1', '--test-shrink', '16', '--max-shard-bytes', '100000', '--out', out);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /--max-shard-bytes: tensor model\.embed_tokens\.weight \[3144,128\] needs a \d+-byte shard, over the cap of 100000 bytes/);
      assert.equal(fs.existsSync(out), false);
      assert.deepEqual(fs.readdirSync(tmp).filter((f) => f.includes('tiny-cap')), []);
    });

    it('refuses an --out that is a file', async function () {
      const out = path.join(tmp, 'a-file');
      fs.writeFileSync(out, 'x');
      const r = await synthInProcess('--shape', 'olmoe-1b-7b', '--out', out);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /--out: .*a-file exists and is not a folder/);
    });
  });

  it('leaves nothing behind when interrupted while writing', async function () {
    // The real OLMoE width at one layer: 1.25 GB to write, interrupted at its first progress line.
    const parent = path.join(tmp, 'interrupt');
    fs.mkdirSync(parent);
    const out = path.join(parent, 'olmoe');
    const script = `import(${JSON.stringify(MAIN)}).then(async (m) => { process.exitCode = await m.main(process.argv.slice(1)); })`;
    const child = spawn(process.execPath, ['--import', 'tsx', '-e', script, 'synth', '--shape', 'olmoe-1b-7b', '--layers', '1', '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (b: Buffer) => {
        stderr += b.toString();
        if (/writing \[/.test(stderr) && fs.readdirSync(parent).length) child.kill('SIGINT');
      });
      child.on('exit', (c) => resolve(c));
    });
    assert.equal(code, 130, stderr);
    assert.match(stderr, /interrupted \(SIGINT\); nothing written/);
    assert.deepEqual(fs.readdirSync(parent), []);
  });

  it(`scales router logits to the trained embedded model's measured spread (${TRAINED_LOGIT_SPREAD})`, async function () {
    const { rms } = await measureLogitSpread();
    assert.ok(Math.abs(rms - TRAINED_LOGIT_SPREAD) / TRAINED_LOGIT_SPREAD < 0.05, `measured ${rms}`);
  });
});
