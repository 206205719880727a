// GGUF, llama.cpp's model file: the block quantizations against hand-computed blocks, the q/k row
// permutation against llama.cpp's rotary convention, export → load round trips (the embedded
// model at every type, and the Mixtral, OLMoE and Qwen3-MoE shapes of `synth --test-shrink`), the
// exported file read by an independent parser (@huggingface/gguf), `serve --model X.gguf`, and
// damaged or unsupported files refused with an error naming the field.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { gguf as hfGguf } from '@huggingface/gguf';

import { main } from '../src/cli/main.js';
import { openCheckpoint } from '../src/model/checkpoint.js';
import { EMBEDDED_MODEL_DIR } from '../src/model/embedded.js';
import { BYTE_SYMBOLS, dequantize, exportGguf, GgmlType, ggufPlaces, ggufTokenizer, GgufValueType, permuteRows, quantize, readGgufHeader, writeGguf, type ExportType, type TensorToWrite } from '../src/model/gguf/index.js';
import { KvCache } from '../src/model/kv-cache.js';
import { loadModel } from '../src/model/load.js';
import { synthesize, SHAPES } from '../src/model/synth/index.js';
import { post, startEmbedded } from './serve/helpers.js';

const TEXT = 'the compass, and then the dog-vane, and then ascertaining the precise bearing of the odor: 48+27=75\n';

async function logitsOf(model: string, text = TEXT) {
  const m = await loadModel(model);
  try {
    const c = m.checkpoint.config;
    const ids = m.tokenizer.encode(text);
    const logits = await m.model.forward(ids, new KvCache(c.numLayers, c.numKvHeads * c.headDim, c.maxPositions), true);
    return { logits, ids, config: c, tokenizer: m.tokenizer.kind };
  } finally {
    m.dispose();
  }
}

function compare(a: Float32Array, b: Float32Array, vocab: number) {
  let maxDiff = 0;
  let agree = 0;
  const argmax = (x: Float32Array, p: number) => {
    let best = 0;
    for (let j = 1; j < vocab; j++) if (x[p * vocab + j] > x[p * vocab + best]) best = j;
    return best;
  };
  for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
  const positions = a.length / vocab;
  for (let p = 0; p < positions; p++) if (argmax(a, p) === argmax(b, p)) agree++;
  return { maxDiff, agreement: agree / positions };
}

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-gguf-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('GGUF blocks (ggml-quants.c reference layouts)', () => {
  const ramp = Float32Array.from({ length: 32 }, (_, j) => j - 16);

  it('writes a Q8_0 block as ggml does: f16 d = max|x|/127, then round(x/d) half away from zero', () => {
    const b = quantize(ramp, GgmlType.Q8_0);
    assert.equal(b.length, 34);
    const d = dequantize(Uint8Array.of(b[0], b[1], ...new Uint8Array(32)), GgmlType.F16, 1)[0];
    assert.ok(Math.abs(d - 16 / 127) < 1e-4, `d ${d}`);
    const q = new Int8Array(b.buffer, 2, 32);
    assert.equal(q[0], -127); // x = -16
    assert.equal(q[17], 8); // x = 1: 127/16 = 7.94 → 8
    assert.equal(q[16], 0);
    assert.equal(q[31], 119); // x = 15: 119.06 → 119
  });

  it('writes a Q4_0 block as ggml does: d = (value of largest |x|)/−8, nibbles j | (j+16) << 4, min(15, trunc(x/d + 8.5))', () => {
    const b = quantize(ramp, GgmlType.Q4_0);
    assert.equal(b.length, 18);
    assert.equal(new DataView(b.buffer).getUint16(0, true), 0x4000); // d = -16 / -8 = 2 as f16
    assert.equal(b[2], 0x80); // x0 = -16 → 0; x16 = 0 → 8
    assert.equal(b[2 + 15], 0xf8); // x15 = -1: -0.5 + 8.5 → 8; x31 = 15: 7.5 + 8.5 = 16 → min(15, 16) = 15
  });

  it('round-trips random blocks within the format\'s bound (Q8_0: 0.57·d, Q4_0: 1.01·d per block)', () => {
    let s = 7;
    const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 0.04;
    const x = Float32Array.from({ length: 32 * 64 }, rand);
    for (const [type, per] of [[GgmlType.Q8_0, 127], [GgmlType.Q4_0, 8]] as const) {
      const back = dequantize(quantize(x, type), type, x.length);
      for (let b = 0; b < x.length; b += 32) {
        const amax = Math.max(...x.subarray(b, b + 32).map(Math.abs));
        const d = amax / per;
        for (let j = b; j < b + 32; j++) assert.ok(Math.abs(x[j] - back[j]) <= (type === GgmlType.Q8_0 ? 0.57 : 1.01) * d, `${GgmlType[type]} value ${j}`);
      }
    }
  });

  it('reads Q5_0, Q4_1 and Q5_1 blocks (fifth bits from qh, the min m added)', () => {
    // Q5_0: d = 1; qh bit 0 (value 0) and bit 16 (value 16) set; qs[0] = 0x21.
    const q5 = new Uint8Array(22);
    new DataView(q5.buffer).setUint16(0, 0x3c00, true);
    new DataView(q5.buffer).setUint32(2, 0x00010001, true);
    q5[6] = 0x21;
    const v5 = dequantize(q5, GgmlType.Q5_0, 32);
    assert.deepEqual([v5[0], v5[16], v5[1], v5[17]], [1, 2, -16, -16]);
    // Q4_1: d = 0.5, m = -1; nibble 3 low, 4 high.
    const q41 = new Uint8Array(20);
    new DataView(q41.buffer).setUint16(0, 0x3800, true);
    new DataView(q41.buffer).setUint16(2, 0xbc00, true);
    q41[4] = 0x43;
    const v41 = dequantize(q41, GgmlType.Q4_1, 32);
    assert.deepEqual([v41[0], v41[16], v41[1]], [0.5, 1, -1]);
    // Q5_1: d = 1, m = 0.5, qh bit 1 → value 1 gets 16.
    const q51 = new Uint8Array(24);
    new DataView(q51.buffer).setUint16(0, 0x3c00, true);
    new DataView(q51.buffer).setUint16(2, 0x3800, true);
    new DataView(q51.buffer).setUint32(4, 0b10, true);
    q51[9] = 0x02;
    const v51 = dequantize(q51, GgmlType.Q5_1, 32);
    assert.deepEqual([v51[0], v51[1], v51[17]], [0.5, 18.5, 0.5]);
  });
});

describe('GGUF K-quant blocks (ggml-quants.c dequantize_row_q*_K, hand-built super-blocks)', () => {
  const half = (b: Uint8Array, at: number, v: number) => new DataView(b.buffer).setUint16(at, v, true);
  const ONE = 0x3c00;
  const HALF = 0x3800;
  const TWO = 0x4000;

  it('Q4_K: 6-bit scales and mins, packed for sub-blocks 4..7', () => {
    const b = new Uint8Array(144);
    half(b, 0, ONE); // d
    half(b, 2, HALF); // dmin
    b[4 + 0] = 2; // sub-block 0: scale 2
    b[4 + 4] = 1; // … min 1
    b[4 + 1] = 3 | 0x40; // sub-block 1: scale 3; bit 6 = high bits of sub-block 5's scale
    b[4 + 5] = 2; // sub-block 1: min 2
    b[4 + 9] = 0x21; // sub-block 5: scale low 1, min 2
    b[16] = 0x53; // value 0 (nibble 3), value 32 (nibble 5)
    b[16 + 64] = 0x10; // value 160 (sub-block 5): nibble 1
    const y = dequantize(b, GgmlType.Q4_K, 256);
    assert.deepEqual([y[0], y[32], y[160], y[1]], [2 * 3 - 0.5, 3 * 5 - 0.5 * 2, 17 * 1 - 0.5 * 2, -0.5]);
  });

  it('Q5_K: the fifth bit from qh', () => {
    const b = new Uint8Array(176);
    half(b, 0, ONE);
    b[4] = 1; // scale of sub-block 0
    b[4 + 1] = 1; // scale of sub-block 1
    b[16] = 0b11; // qh[0]: bit 0 (value 0) and bit 1 (value 32)
    b[48] = 0x43;
    const y = dequantize(b, GgmlType.Q5_K, 256);
    assert.deepEqual([y[0], y[32], y[1]], [3 + 16, 4 + 16, 0]);
  });

  it('Q6_K: low 4 bits in ql, high 2 in qh, int8 scales, −32', () => {
    const b = new Uint8Array(210);
    half(b, 208, ONE);
    b[192] = 2; // scales[0]
    b[194] = 0xff; // scales[2] = -1
    b[0] = 5; // ql[0] low nibble
    b[32] = 7; // ql[32]
    b[128] = 0b1001; // qh[0]: bits 0-1 = 1 (value 0), bits 2-3 = 2 (value 32)
    const y = dequantize(b, GgmlType.Q6_K, 256);
    assert.deepEqual([y[0], y[32]], [2 * ((5 | 16) - 32), -1 * ((7 | 32) - 32)]);
  });

  it('Q2_K and Q3_K: 2-bit values, 4-bit scale/min pairs and 6-bit signed scales with the hmask bit', () => {
    const q2 = new Uint8Array(84);
    half(q2, 80, ONE);
    half(q2, 82, TWO);
    q2[0] = 0x13; // value 0..15: scale 3, min 1
    q2[2] = 0x01; // values 32..47: scale 1, min 0
    q2[16] = 0b1110;
    const y2 = dequantize(q2, GgmlType.Q2_K, 256);
    assert.deepEqual([y2[0], y2[32]], [3 * 2 - 2 * 1, 1 * 3]);
    const q3 = new Uint8Array(110);
    half(q3, 108, ONE);
    q3[96] = 0x1; // sub-block 0: low 4 bits 1
    q3[96 + 8] = 0x2; // … high 2 bits 2 → (1 | 32) − 32 = 1; sub-block 2 stays 0 − 32
    q3[32] = 0b0111; // value 0: 3, value 32: 1
    q3[0] = 0b10; // hmask[0]: bit 1 set (value 32 keeps its third bit), bit 0 clear (value 0: −4)
    const y3 = dequantize(q3, GgmlType.Q3_K, 256);
    assert.deepEqual([y3[0], y3[32]], [1 * (3 - 4), -32 * 1]);
  });
});

describe('q/k rows for llama.cpp\'s rotary attention', () => {
  it('moves row j·(hd/2) + i of each head to 2i + j, as convert_hf_to_gguf.py\'s permute', () => {
    const rows = Uint8Array.from({ length: 8 }, (_, i) => i);
    assert.deepEqual([...permuteRows(rows, 8, 1, 2)], [0, 2, 1, 3, 4, 6, 5, 7]);
    assert.deepEqual([...permuteRows(permuteRows(rows, 8, 1, 2), 8, 1, 2, true)], [...rows]);
  });

  it('makes adjacent-pair rotation (llama.cpp "llama") of the permuted rows equal half rotation (HF) of the originals', () => {
    const hd = 8;
    const heads = 2;
    const q = Float32Array.from({ length: hd * heads }, (_, i) => Math.sin(i * 1.7) + 0.3 * i);
    const pos = 5;
    const angle = (i: number) => pos * Math.pow(10000, (-2 * i) / hd);
    const halves = new Float32Array(q.length);
    const pairs = new Float32Array(q.length);
    const permuted = new Float32Array(permuteRows(new Uint8Array(q.slice().buffer), hd * heads, 4, heads).buffer);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < hd / 2; i++) {
        const [c, s] = [Math.cos(angle(i)), Math.sin(angle(i))];
        const a = h * hd + i;
        const b = a + hd / 2;
        halves[a] = q[a] * c - q[b] * s;
        halves[b] = q[b] * c + q[a] * s;
        const x = h * hd + 2 * i;
        pairs[x] = permuted[x] * c - permuted[x + 1] * s;
        pairs[x + 1] = permuted[x] * s + permuted[x + 1] * c;
      }
    }
    const expect = new Float32Array(permuteRows(new Uint8Array(halves.buffer), hd * heads, 4, heads).buffer);
    for (let i = 0; i < q.length; i++) assert.ok(Math.abs(expect[i] - pairs[i]) < 1e-6, `element ${i}`);
  });
});

describe('export-gguf → load: the embedded model', function () {
  this.timeout(120_000);
  let ref: Awaited<ReturnType<typeof logitsOf>>;
  const files: Partial<Record<ExportType, string>> = {};
  before(async () => {
    ref = await logitsOf(EMBEDDED_MODEL_DIR);
    for (const type of ['f32', 'f16', 'q8_0', 'q4_0'] as const) {
      files[type] = path.join(tmp, `embedded.${type}.gguf`);
      exportGguf({ dir: EMBEDDED_MODEL_DIR, out: files[type]!, type });
    }
  });

  it('f32: every tensor reads back bit for bit, and the logits equal the safetensors model\'s exactly', async () => {
    const a = openCheckpoint(EMBEDDED_MODEL_DIR);
    const b = openCheckpoint(files.f32!);
    try {
      assert.deepEqual(b.config, a.config);
      assert.deepEqual(b.tensorNames(), a.tensorNames());
      for (const name of a.tensorNames()) assert.deepEqual(b.readTensor(name), a.readTensor(name), name);
    } finally {
      a.close();
      b.close();
    }
    const g = await logitsOf(files.f32!);
    assert.equal(g.tokenizer, 'bytes');
    assert.deepEqual(g.ids, ref.ids);
    assert.equal(compare(g.logits, ref.logits, 256).maxDiff, 0);
  });

  // Measured on this text (100 positions): f16 1.2e-5, q8_0 0.20, q4_0 2.8 (max |Δ logit|); top-1 1.0, 1.0, 0.96.
  for (const [type, maxDiff, agreement] of [['f16', 1e-3, 1], ['q8_0', 0.5, 0.95], ['q4_0', 5, 0.85]] as const) {
    it(`${type}: logits within ${maxDiff} of the safetensors model's, top-1 agreement ≥ ${agreement}`, async () => {
      const g = await logitsOf(files[type]!);
      const r = compare(g.logits, ref.logits, 256);
      assert.ok(r.maxDiff > 0, 'a lossy type changes something');
      assert.ok(r.maxDiff <= maxDiff, `max |Δ logit| ${r.maxDiff}`);
      assert.ok(r.agreement >= agreement, `top-1 agreement ${r.agreement}`);
    });
  }

  it('reads the older Mixtral layout too (one tensor per expert, blk.N.ffn_gate.E.weight): same logits', async () => {
    const h = readGgufHeader(files.f32!);
    const bytes = fs.readFileSync(files.f32!);
    const tensors: TensorToWrite[] = [];
    for (const t of h.tensors.values()) {
      const m = /^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$/.exec(t.name);
      const data = bytes.subarray(t.offset, t.offset + t.byteLength);
      if (!m) {
        tensors.push({ name: t.name, type: t.type, ne: t.ne, data: () => data });
        continue;
      }
      const experts = t.ne[2];
      const slab = t.byteLength / experts;
      for (let e = 0; e < experts; e++) tensors.push({ name: `blk.${m[1]}.ffn_${m[2]}.${e}.weight`, type: t.type, ne: t.ne.slice(0, 2), data: () => data.subarray(e * slab, (e + 1) * slab) });
    }
    const split = path.join(tmp, 'embedded.split-experts.gguf');
    writeGguf(split, [...h.metadata], tensors);
    assert.equal(readGgufHeader(split).tensors.has('blk.7.ffn_down.7.weight'), true);
    const g = await logitsOf(split);
    assert.equal(compare(g.logits, ref.logits, 256).maxDiff, 0);
  });

  it('is what llama.cpp reads: an independent parser (@huggingface/gguf) sees its keys, names, types and bytes', async () => {
    const { metadata, tensorInfos, tensorDataOffset } = await hfGguf(files.f32!, { allowLocalFile: true });
    const md = metadata as unknown as Record<string, unknown>;
    assert.equal(md['general.architecture'], 'llama');
    assert.equal(md['general.file_type'], 0);
    for (const [k, v] of Object.entries({ 'llama.expert_count': 8, 'llama.expert_used_count': 2, 'llama.block_count': 8, 'llama.embedding_length': 128, 'llama.feed_forward_length': 256, 'llama.attention.head_count': 4, 'llama.attention.head_count_kv': 2, 'llama.rope.dimension_count': 32, 'llama.context_length': 256 })) {
      assert.equal(md[k], v, k);
    }
    assert.equal(md['tokenizer.ggml.model'], 'gpt2');
    assert.deepEqual(md['tokenizer.ggml.tokens'], BYTE_SYMBOLS);
    assert.deepEqual(md['tokenizer.ggml.merges'], []);
    const names = tensorInfos.map((t) => t.name);
    assert.deepEqual(names.filter((n) => n.startsWith('blk.0.')).sort(), ['attn_k', 'attn_norm', 'attn_output', 'attn_q', 'attn_v', 'ffn_down_exps', 'ffn_gate_exps', 'ffn_gate_inp', 'ffn_norm', 'ffn_up_exps'].map((n) => `blk.0.${n}.weight`));
    assert.ok(names.includes('token_embd.weight') && names.includes('output_norm.weight') && names.includes('output.weight'));
    const gate = tensorInfos.find((t) => t.name === 'blk.3.ffn_gate_exps.weight')!;
    assert.deepEqual(gate.shape.map(Number), [128, 256, 8]); // ne: d, F, E
    for (const t of tensorInfos) assert.equal(Number(t.offset) % 32, 0, `${t.name} aligned`);
    // blk.1.attn_k as stored: HF k_proj's rows in llama.cpp's order (2 KV heads of 32).
    const ckpt = openCheckpoint(EMBEDDED_MODEL_DIR);
    const k = ckpt.readTensor('model.layers.1.self_attn.k_proj.weight');
    ckpt.close();
    const info = tensorInfos.find((t) => t.name === 'blk.1.attn_k.weight')!;
    const fd = fs.openSync(files.f32!, 'r');
    const stored = Buffer.alloc(k.length * 4);
    fs.readSync(fd, stored, 0, stored.length, Number(tensorDataOffset) + Number(info.offset));
    fs.closeSync(fd);
    const asStored = new Float32Array(stored.buffer, stored.byteOffset, k.length);
    for (let h = 0; h < 2; h++) {
      for (let j = 0; j < 2; j++) {
        for (let i = 0; i < 16; i++) {
          const hfRow = h * 32 + j * 16 + i;
          const ggRow = h * 32 + 2 * i + j;
          assert.deepEqual(asStored.subarray(ggRow * 128, ggRow * 128 + 128), k.subarray(hfRow * 128, hfRow * 128 + 128));
        }
      }
    }
  });

  it('serves over HTTP with --model X.gguf (offload engine): greedy completions equal the safetensors model\'s', async () => {
    const texts: string[] = [];
    for (const dir of [EMBEDDED_MODEL_DIR, files.f32!]) {
      const server = await startEmbedded({ spec: { dir } });
      try {
        const res = await post(server.url, '/v1/completions', { model: path.basename(dir), prompt: '48+27=', max_tokens: 12, temperature: 0 });
        assert.equal(res.status, 200);
        texts.push(((await res.json()) as { choices: { text: string }[] }).choices[0].text);
      } finally {
        await server.shutdown();
      }
    }
    assert.equal(texts[1], texts[0]);
    assert.ok(texts[0].length > 0);
  });

  it('the CLI writes one (exit 0) and refuses a bad --type (exit 2)', async () => {
    const out = path.join(tmp, 'cli.q8_0.gguf');
    const log = console.log;
    console.log = () => {};
    try {
      assert.equal(await main(['export-gguf', 'embedded', out, '--type', 'q8_0']), 0);
    } finally {
      console.log = log;
    }
    assert.deepEqual(fs.readFileSync(out), fs.readFileSync(files.q8_0!));
    const write = process.stderr.write.bind(process.stderr);
    let err = '';
    process.stderr.write = ((c: string) => ((err += c), true)) as typeof process.stderr.write;
    try {
      assert.equal(await main(['export-gguf', 'embedded', path.join(tmp, 'x.gguf'), '--type', 'q5_k']), 2);
    } finally {
      process.stderr.write = write;
    }
    assert.match(err, /--type must be one of f32, f16, q8_0, q4_0/);
  });
});

describe('export-gguf → load: Mixtral, OLMoE and Qwen3-MoE shapes (synth --test-shrink 16, 2 layers)', function () {
  this.timeout(120_000);
  const ARCH = { 'mixtral-8x7b': 'llama', 'olmoe-1b-7b': 'olmoe', 'qwen3-30b-a3b': 'qwen3moe' } as Record<string, string>;
  for (const shape of SHAPES) {
    it(`${shape} → ${ARCH[shape]}: f32 logits and token ids equal the checkpoint's; q8_0 within 0.5`, async () => {
      const dir = path.join(tmp, shape);
      const quiet = process.stderr.write.bind(process.stderr);
      process.stderr.write = (() => true) as typeof process.stderr.write;
      try {
        await synthesize({ shape, out: dir, layers: 2, seed: 3, calibrationTokens: 256, maxShardBytes: 1 << 30, threads: 1, testShrink: 16 });
      } finally {
        process.stderr.write = quiet;
      }
      const ref = await logitsOf(dir);
      const out = path.join(tmp, `${shape}.gguf`);
      assert.equal(exportGguf({ dir, out, type: 'f32' }).arch, ARCH[shape]);
      const g = await logitsOf(out);
      assert.equal(g.tokenizer, 'tokenizer.json');
      assert.deepEqual(g.ids, ref.ids);
      assert.deepEqual(g.config, { ...ref.config, tokenizer: 'tokenizer.json' });
      assert.equal(compare(g.logits, ref.logits, ref.config.vocabSize).maxDiff, 0);
      const q8 = path.join(tmp, `${shape}.q8_0.gguf`);
      exportGguf({ dir, out: q8, type: 'q8_0' });
      const quieter = process.stderr.write.bind(process.stderr);
      process.stderr.write = (() => true) as typeof process.stderr.write;
      let r;
      try {
        r = compare((await logitsOf(q8)).logits, ref.logits, ref.config.vocabSize);
      } finally {
        process.stderr.write = quieter;
      }
      assert.ok(r.maxDiff > 0 && r.maxDiff < 0.5, `max |Δ logit| ${r.maxDiff}`);
    });
  }
});

describe('GGUF tokenizers from tokenizer.ggml.*', () => {
  const S = (value: string) => ({ type: GgufValueType.STRING, value });
  const A = (itemType: GgufValueType, value: (string | number)[]) => ({ type: GgufValueType.ARRAY, itemType, value });

  it('"llama" (SentencePiece): merges from the scores, byte fallback, BOS added', () => {
    const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    const pieces = ['▁', 'h', 'e', 'l', 'o', '▁h', 'll', '▁he', '▁hell', '▁hello', 'w', 'r', 'd', '▁w', 'or', '▁wor', 'ld', '▁world'];
    const tokens = ['<unk>', '<s>', '</s>', ...bytes, ...pieces];
    const types = tokens.map((_, i) => (i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1));
    const meta = new Map([
      ['tokenizer.ggml.model', S('llama')],
      ['tokenizer.ggml.tokens', A(GgufValueType.STRING, tokens)],
      ['tokenizer.ggml.scores', A(GgufValueType.FLOAT32, tokens.map((_, i) => -i))],
      ['tokenizer.ggml.token_type', A(GgufValueType.INT32, types)],
      ['tokenizer.ggml.bos_token_id', { type: GgufValueType.UINT32, value: 1 }],
    ]);
    const tok = ggufTokenizer(meta, 'spm.gguf');
    const ids = tok.encode('hello world é');
    assert.deepEqual(ids.map((i) => tokens[i]), ['<s>', '▁hello', '▁world', '▁', '<0xC3>', '<0xA9>']);
    assert.equal(tok.decode(ids.slice(1)), 'hello world é');
  });

  it('"gpt2" with a named pre-tokenizer (qwen2), and a clear error for one it does not know', () => {
    const tokens = [...BYTE_SYMBOLS, 'he', 'll', 'hell'];
    const meta = new Map([
      ['tokenizer.ggml.model', S('gpt2')],
      ['tokenizer.ggml.pre', S('qwen2')],
      ['tokenizer.ggml.tokens', A(GgufValueType.STRING, tokens)],
      ['tokenizer.ggml.merges', A(GgufValueType.STRING, ['h e', 'l l', 'he ll'])],
    ]);
    const tok = ggufTokenizer(meta, 'bpe.gguf');
    const ids = tok.encode('hello 123');
    assert.deepEqual(ids, [258, 111, 32, 49, 50, 51]);
    assert.equal(tok.decode(ids), 'hello 123');
    meta.set('tokenizer.ggml.pre', S('deepseek-v3'));
    assert.throws(() => ggufTokenizer(meta, 'bpe.gguf'), /bpe\.gguf: metadata tokenizer\.ggml\.pre must be one of .*deepseek-v3/);
  });
});

describe('damaged and unsupported GGUF files', function () {
  this.timeout(60_000);
  let good: Buffer;
  before(() => {
    const f = path.join(tmp, 'good.gguf');
    if (!fs.existsSync(f)) exportGguf({ dir: EMBEDDED_MODEL_DIR, out: f, type: 'q8_0' });
    good = fs.readFileSync(f);
  });

  /** A mutated copy of the good file, loaded: must reject with `re`. */
  async function rejects(name: string, mutate: (b: Buffer) => Buffer, re: RegExp) {
    const f = path.join(tmp, `${name}.gguf`);
    fs.writeFileSync(f, mutate(Buffer.from(good)));
    await assert.rejects(loadModel(f), (e: Error) => {
      assert.equal(e.name, 'CheckpointError', e.stack);
      assert.match(e.message, re);
      return true;
    });
  }
  /** Offset of the value right after metadata key `key` (its u32 type). */
  const afterKey = (b: Buffer, key: string) => b.indexOf(Buffer.from(key)) + key.length;
  /** Offset of tensor `name`'s type field in the directory. */
  const tensorType = (b: Buffer, name: string) => {
    const at = b.lastIndexOf(Buffer.from(name)) + name.length;
    return at + 4 + 8 * b.readUInt32LE(at);
  };

  it('bad magic', () => rejects('magic', (b) => (b.write('GGML', 0), b), /bad magic "GGML"/));
  it('a version it does not know', () => rejects('version', (b) => (b.writeUInt32LE(9, 4), b), /version 9 is not supported/));
  it('an unsupported architecture', () => rejects('arch', (b) => (b.write('bloom', afterKey(b, 'general.architecture') + 12), b), /unsupported architecture "bloom" in metadata general\.architecture/));
  it('a dense llama (no expert_count)', () => rejects('dense', (b) => (b.write('llama.expert_xount', afterKey(b, 'llama.expert_count') - 18), b), /dense llama model \(no metadata llama\.expert_count\)/));
  it('a required key missing', () => rejects('eps', (b) => (b.write('X', afterKey(b, 'llama.attention.layer_norm_rms_epsilon') - 1), b), /metadata llama\.attention\.layer_norm_rms_epsilon must be a positive number \(missing\)/));
  it('a metadata count past the end of the file', () =>
    rejects('count', (b) => (b.writeBigUInt64LE(1n << 40n, afterKey(b, 'tokenizer.ggml.tokens') + 8), b), /metadata tokenizer\.ggml\.tokens \(array count\) is 1099511627776, more than the \d+ bytes left in the file can hold/));
  it('a string length past the end of the file', () => rejects('strlen', (b) => (b.writeBigUInt64LE(1n << 50n, afterKey(b, 'general.name') + 4), b), /metadata general\.name \(string length\) is \d+, more than/));
  it('truncated tensor data', () => rejects('truncated', (b) => b.subarray(0, b.length - 1000), /tensor output\.weight: data truncated/));
  it('an unknown tensor type', () => rejects('type', (b) => (b.writeUInt32LE(99, tensorType(b, 'blk.2.attn_v.weight')), b), /tensor blk\.2\.attn_v\.weight: unknown tensor type 99/));
  it('a ggml type it cannot dequantize', () => rejects('iq4', (b) => (b.writeUInt32LE(GgmlType.IQ4_NL, tensorType(b, 'blk.2.attn_v.weight')), b), /tensor blk\.2\.attn_v\.weight is IQ4_NL, which ebserve cannot dequantize/));
  it('a block type whose blocks do not divide the rows', () => rejects('q4k', (b) => (b.writeUInt32LE(GgmlType.Q4_K, tensorType(b, 'blk.2.attn_v.weight')), b), /tensor blk\.2\.attn_v\.weight: ne\[0\] = 128 is not a multiple of Q4_K's block of 256/));
  it('a tensor of the wrong shape', () => rejects('shape', (b) => (b.writeBigUInt64LE(96n, tensorType(b, 'blk.0.attn_k.weight') - 8), b), /tensor blk\.0\.attn_k\.weight has shape \[96,128\]/));
  it('an empty file', () => rejects('empty', () => Buffer.alloc(0), /magic runs past the end of the file/));
});

describe('GGUF names', () => {
  it('map every HF tensor of each architecture to one llama.cpp tensor (experts stacked)', async () => {
    const ckpt = openCheckpoint(EMBEDDED_MODEL_DIR);
    const places = ggufPlaces(ckpt.config);
    ckpt.close();
    assert.equal(places.get('model.layers.4.block_sparse_moe.experts.6.w2.weight')?.gguf, 'blk.4.ffn_down_exps.weight');
    assert.equal(places.get('model.layers.4.block_sparse_moe.experts.6.w2.weight')?.expert, 6);
    assert.equal(places.get('model.layers.4.self_attn.k_proj.weight')?.permuteHeads, 2);
    assert.equal(places.get('lm_head.weight')?.gguf, 'output.weight');
  });
});
