// The checkpoint loader: Hugging Face folders in the four naming schemes (spelled out below, from
// the transformers modeling files, independently of src/model/names.ts) and three dtypes load
// with the right shapes and values; every kind of damage fails at open with an error that names
// the file and, where there is one, the tensor.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, halfUlp } from '../src/codec/halfs.js';
import { CheckpointError, openCheckpoint } from '../src/model/checkpoint.js';
import { initBackend } from '../src/model/backend.js';
import { parseConfig } from '../src/model/config.js';
import { ResidentExpertEngine } from '../src/model/engine.js';
import { bf16ToF32, decodeTensor, encodeTensor, f16ToF32, f32ToBf16 } from '../src/codec/halfs-array.js';
import { KvCache } from '../src/model/kv-cache.js';
import { denseTensorNames, expertName } from '../src/model/names.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../src/model/safetensors.js';
import type { Architecture, TensorDtype } from '../src/model/types.js';
import { MoeTransformer } from '../src/model/transformer.js';
import { rng } from './codec/data.js';
import { referenceLogits } from './model/reference.js';

// ---- the four schemes, as a specification --------------------------------------------------

const BASE = { vocab_size: 256, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4, rms_norm_eps: 1e-5, rope_theta: 1e6, max_position_embeddings: 64, hidden_act: 'silu', ebserve_tokenizer: 'bytes' };
const CONFIGS: Record<Architecture, Record<string, unknown>> = {
  mixtral: { ...BASE, model_type: 'mixtral', num_key_value_heads: 2, intermediate_size: 12, num_local_experts: 3, num_experts_per_tok: 2, sliding_window: null, tie_word_embeddings: false },
  qwen2_moe: { ...BASE, model_type: 'qwen2_moe', num_key_value_heads: 4, intermediate_size: 40, moe_intermediate_size: 12, shared_expert_intermediate_size: 20, num_experts: 3, num_experts_per_tok: 2, norm_topk_prob: false, decoder_sparse_step: 1, mlp_only_layers: [], use_sliding_window: false, sliding_window: 32 },
  qwen3_moe: { ...BASE, model_type: 'qwen3_moe', num_key_value_heads: 2, head_dim: 8, moe_intermediate_size: 12, num_experts: 3, num_experts_per_tok: 2, norm_topk_prob: true, attention_bias: false, decoder_sparse_step: 1, mlp_only_layers: [] },
  olmoe: { ...BASE, model_type: 'olmoe', num_key_value_heads: 4, intermediate_size: 12, num_experts: 3, num_experts_per_tok: 2, norm_topk_prob: false, clip_qkv: null, tie_word_embeddings: true },
};

/** Every tensor of a checkpoint of `cfg`, with its shape, as Hugging Face names them. */
function hfTensors(cfg: Record<string, unknown>): [string, number[]][] {
  const arch = cfg.model_type as Architecture;
  const d = 16;
  const hd = (cfg.head_dim as number) ?? d / 4;
  const [q, kv] = [4 * hd, (cfg.num_key_value_heads as number) * hd];
  const F = arch === 'mixtral' || arch === 'olmoe' ? (cfg.intermediate_size as number) : (cfg.moe_intermediate_size as number);
  const out: [string, number[]][] = [['model.embed_tokens.weight', [256, d]]];
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}`;
    out.push([`${p}.input_layernorm.weight`, [d]], [`${p}.post_attention_layernorm.weight`, [d]]);
    out.push([`${p}.self_attn.q_proj.weight`, [q, d]], [`${p}.self_attn.k_proj.weight`, [kv, d]], [`${p}.self_attn.v_proj.weight`, [kv, d]], [`${p}.self_attn.o_proj.weight`, [d, q]]);
    if (arch === 'qwen2_moe') out.push([`${p}.self_attn.q_proj.bias`, [q]], [`${p}.self_attn.k_proj.bias`, [kv]], [`${p}.self_attn.v_proj.bias`, [kv]]);
    if (arch === 'qwen3_moe') out.push([`${p}.self_attn.q_norm.weight`, [hd]], [`${p}.self_attn.k_norm.weight`, [hd]]);
    if (arch === 'olmoe') out.push([`${p}.self_attn.q_norm.weight`, [q]], [`${p}.self_attn.k_norm.weight`, [kv]]);
    const moe = arch === 'mixtral' ? `${p}.block_sparse_moe` : `${p}.mlp`;
    out.push([`${moe}.gate.weight`, [3, d]]);
    for (let e = 0; e < 3; e++) {
      const [g, u, dn] = arch === 'mixtral' ? ['w1', 'w3', 'w2'] : ['gate_proj', 'up_proj', 'down_proj'];
      out.push([`${moe}.experts.${e}.${g}.weight`, [F, d]], [`${moe}.experts.${e}.${u}.weight`, [F, d]], [`${moe}.experts.${e}.${dn}.weight`, [d, F]]);
    }
    if (arch === 'qwen2_moe') {
      out.push([`${moe}.shared_expert.gate_proj.weight`, [20, d]], [`${moe}.shared_expert.up_proj.weight`, [20, d]], [`${moe}.shared_expert.down_proj.weight`, [d, 20]]);
      out.push([`${moe}.shared_expert_gate.weight`, [1, d]]);
    }
  }
  out.push(['model.norm.weight', [d]]);
  if (!cfg.tie_word_embeddings) out.push(['lm_head.weight', [256, d]]);
  return out;
}

// ---- writing checkpoints -------------------------------------------------------------------

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ebserve-ckpt-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let dirs = 0;

interface Written {
  dir: string;
  values: Map<string, Float32Array>;
  file: string;
}

/** Writes a checkpoint of `cfg` in `dtype` with seeded random values; `edit` may change the tensor list first. */
function writeCheckpoint(cfg: Record<string, unknown>, dtype: TensorDtype, opts: { shards?: number; edit?: (t: [string, number[]][]) => void } = {}): Written {
  const dir = path.join(tmp, `ckpt${dirs++}`);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  const list = hfTensors(cfg);
  opts.edit?.(list);
  const r = rng(dirs);
  const values = new Map<string, Float32Array>();
  const tensors = new Map<string, TensorToWrite>();
  for (const [name, shape] of list) {
    const v = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => (r() - 0.5) * 0.8);
    values.set(name, v);
    tensors.set(name, { dtype, shape, data: v });
  }
  const shards = opts.shards ?? 1;
  if (shards === 1) {
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
    return { dir, values, file: path.join(dir, 'model.safetensors') };
  }
  const names = [...tensors.keys()];
  const per = Math.ceil(names.length / shards);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const shard = `model-0000${s + 1}-of-0000${shards}.safetensors`;
    const part = new Map(names.slice(s * per, (s + 1) * per).map((n) => [n, tensors.get(n)!]));
    for (const n of part.keys()) weightMap[n] = shard;
    writeSafetensors(path.join(dir, shard), part);
  }
  const file = path.join(dir, 'model.safetensors.index.json');
  fs.writeFileSync(file, JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  return { dir, values, file };
}

/** The value a float32 `x` has once stored as `dtype`. */
function stored(x: number, dtype: TensorDtype): number {
  return dtype === 'BF16' ? bf16BitsToF32(f32ToBf16Bits(x)) : dtype === 'F16' ? f16BitsToF32(f32ToF16Bits(x)) : Math.fround(x);
}

/** Rewrites a safetensors file's header through `edit`, keeping its data bytes. */
function editHeader(file: string, edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void): void {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString());
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, buf.subarray(8 + n)]));
}

/** Asserts that opening `dir` fails with `code`, a message naming `file` and each of `mentions`. */
function assertFails(dir: string, code: string, file: string, ...mentions: (string | RegExp)[]): void {
  assert.throws(
    () => openCheckpoint(dir),
    (e: unknown) => {
      assert.ok(e instanceof CheckpointError, `not a CheckpointError: ${e}`);
      assert.equal(e.code, code, e.message);
      assert.ok(e.message.includes(file), `message does not name ${file}: ${e.message}`);
      for (const m of mentions) assert.ok(typeof m === 'string' ? e.message.includes(m) : m.test(e.message), `message lacks ${m}: ${e.message}`);
      return true;
    },
  );
}

// ---- the specification ---------------------------------------------------------------------

describe('half-precision arrays', function () {
  it('decode bytes at an odd offset inside a larger Node Buffer (the disk cache hands out such views)', function () {
    const values = Float32Array.from([0.5, -1.25, 3, 1e-3, -7]);
    for (const dtype of ['BF16', 'F16', 'F32'] as const) {
      const enc = encodeTensor(values, dtype);
      const file = Buffer.alloc(enc.byteLength + 9, 0xab);
      file.set(enc, 5);
      const view = file.subarray(5, 5 + enc.byteLength); // byteOffset 5: not a multiple of 2 or 4
      assert.deepEqual(decodeTensor(view, dtype), decodeTensor(Uint8Array.from(enc), dtype), dtype);
    }
  });

  it('convert every f16 and bf16 bit pattern exactly as the scalar reference does', function () {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const f16 = f16ToF32(all);
    const bf16 = bf16ToF32(all);
    for (let h = 0; h < 65536; h++) {
      assert.ok(Object.is(f16[h], f16BitsToF32(h)) || (Number.isNaN(f16[h]) && Number.isNaN(f16BitsToF32(h))), `f16 ${h}`);
      assert.ok(Object.is(bf16[h], bf16BitsToF32(h)) || (Number.isNaN(bf16[h]) && Number.isNaN(bf16BitsToF32(h))), `bf16 ${h}`);
    }
  });

  it('round f32 to bf16 to nearest even, like the scalar reference, NaN and infinities included', function () {
    const r = rng(5);
    const xs = Float32Array.from({ length: 20000 }, () => (r() - 0.5) * 10 ** (r() * 12 - 6));
    xs.set([0, -0, Infinity, -Infinity, NaN, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, 1e-40]);
    const got = f32ToBf16(xs);
    xs.forEach((x, i) => assert.equal(got[i], f32ToBf16Bits(x), `x = ${x}`));
  });
});

describe('safetensors files', function () {
  it('round-trip values, shapes and metadata; the header is padded with spaces to a multiple of 8', function () {
    const file = path.join(tmp, 'plain.safetensors');
    const a = Float32Array.from([1.5, -2, 0.1, 65504, 1e-7, -0]);
    writeSafetensors(file, { a: { dtype: 'F32', shape: [2, 3], data: a }, b: { dtype: 'BF16', shape: [6], data: a }, s: { dtype: 'F16', shape: [], data: Float32Array.of(3) } }, { format: 'pt' });
    const f = SafetensorsFile.open(file);
    try {
      assert.equal(f.header.length % 8, 0);
      assert.deepEqual(f.metadata, { format: 'pt' });
      assert.deepEqual(f.info('a').shape, [2, 3]);
      assert.deepEqual(f.info('s').shape, []);
      assert.deepEqual(decodeTensor(f.read('a'), 'F32'), a);
      assert.deepEqual(decodeTensor(f.read('s'), 'F16'), Float32Array.of(3));
      assert.deepEqual(f.read('b'), Buffer.from(encodeTensor(a, 'BF16')));
    } finally {
      f.close();
    }
  });

  it('read lazily: opening reads the header, reading a tensor reads only its bytes', function () {
    const { file } = writeCheckpoint(CONFIGS.mixtral, 'F32');
    const realRead = fs.readSync;
    let bytes = 0;
    (fs as { readSync: unknown }).readSync = (...args: Parameters<typeof fs.readSync>) => {
      const got = (realRead as (...a: unknown[]) => number)(...args);
      bytes += got;
      return got;
    };
    try {
      const f = SafetensorsFile.open(file);
      assert.equal(bytes, 8 + f.header.length);
      f.read('model.norm.weight');
      assert.equal(bytes, 8 + f.header.length + 16 * 4);
      assert.ok(bytes < fs.statSync(file).size / 10);
      f.close();
    } finally {
      (fs as { readSync: unknown }).readSync = realRead;
    }
  });
});

describe('checkpoint loading', function () {
  for (const arch of Object.keys(CONFIGS) as Architecture[]) {
    for (const dtype of ['F32', 'F16', 'BF16'] as const) {
      it(`loads ${arch} in ${dtype}: every tensor with its shape, values as stored`, function () {
        const w = writeCheckpoint(CONFIGS[arch], dtype);
        const ckpt = openCheckpoint(w.dir);
        try {
          assert.equal(ckpt.config.arch, arch);
          assert.deepEqual(ckpt.tensorNames().sort(), [...w.values.keys()].sort());
          for (const [name, shape] of hfTensors(CONFIGS[arch])) {
            const info = ckpt.tensorInfo(name);
            assert.deepEqual([info.dtype, info.shape], [dtype, shape], name);
            const got = ckpt.readTensor(name);
            const want = w.values.get(name)!;
            for (let i = 0; i < want.length; i++) {
              assert.equal(got[i], stored(want[i], dtype), `${name}[${i}]`);
              if (dtype === 'BF16') assert.ok(Math.abs(got[i] - want[i]) <= halfUlp(got[i], 'bf16'), `${name}[${i}] within bf16 rounding`);
            }
          }
          const name = ckpt.expertInfo(1, 2, 'down').name;
          assert.deepEqual(ckpt.readRaw(name).bytes, Buffer.from(encodeTensor(w.values.get(name)!, dtype)));
        } finally {
          ckpt.close();
        }
      });
    }
  }

  it('names experts and normalises config per architecture (head_dim, renormalisation, q/k norms, shared expert)', function () {
    const open = (arch: Architecture) => {
      const c = openCheckpoint(writeCheckpoint(CONFIGS[arch], 'BF16').dir);
      c.close();
      return c;
    };
    const mix = open('mixtral');
    assert.equal(mix.expertInfo(0, 1, 'gate').name, 'model.layers.0.block_sparse_moe.experts.1.w1.weight');
    assert.equal(mix.expertInfo(0, 1, 'up').name, 'model.layers.0.block_sparse_moe.experts.1.w3.weight');
    assert.equal(mix.expertInfo(0, 1, 'down').name, 'model.layers.0.block_sparse_moe.experts.1.w2.weight');
    assert.deepEqual([mix.config.normTopkProb, mix.config.headDim, mix.config.qkNorm, mix.config.ropeTheta], [true, 4, 'none', 1e6]);
    const q2 = open('qwen2_moe');
    assert.equal(q2.expertInfo(1, 0, 'up').name, 'model.layers.1.mlp.experts.0.up_proj.weight');
    assert.deepEqual([q2.config.sharedExpertFfnSize, q2.config.attentionBias, q2.config.normTopkProb, q2.config.maxPositions], [20, true, false, 64]);
    const q3 = open('qwen3_moe');
    assert.deepEqual([q3.config.headDim, q3.config.qkNorm, q3.config.normTopkProb], [8, 'head', true]);
    const ol = open('olmoe');
    assert.deepEqual([ol.config.qkNorm, ol.config.tieWordEmbeddings, ol.config.normTopkProb], ['full', true, false]);
    assert.throws(() => ol.tensorInfo('lm_head.weight'), /no tensor lm_head.weight/);
  });

  for (const arch of Object.keys(CONFIGS) as Architecture[]) {
    it(`feeds the forward pass: a loaded ${arch} checkpoint runs and matches the float64 reference`, async function () {
      await initBackend();
      const ckpt = openCheckpoint(writeCheckpoint(CONFIGS[arch], 'BF16').dir);
      const c = ckpt.config;
      const read = (name: string) => ckpt.readTensor(name);
      const experts = (l: number, e: number) => ({ gate: read(expertName(c, l, e, 'gate')), up: read(expertName(c, l, e, 'up')), down: read(expertName(c, l, e, 'down')) });
      const engine = new ResidentExpertEngine(c.hiddenSize, c.expertFfnSize, c.numLayers, c.numExperts, experts);
      const model = new MoeTransformer(c, read, denseTensorNames(c), engine);
      try {
        const tokens = [...Buffer.from('MoE!')];
        const logits = await model.forward(tokens, KvCache.forModel(c), true);
        const ref = referenceLogits(c, read, denseTensorNames(c), experts, tokens);
        for (let t = 0; t < tokens.length; t++) {
          const row = logits.subarray(t * c.vocabSize, (t + 1) * c.vocabSize);
          const scale = Math.max(...ref[t].map(Math.abs));
          assert.ok(row.every((x, i) => Math.abs(x - ref[t][i]) <= 1e-4 * scale), `position ${t}`);
        }
      } finally {
        model.dispose();
        engine.dispose();
        ckpt.close();
      }
    });
  }

  it('loads a sharded checkpoint through model.safetensors.index.json', function () {
    const w = writeCheckpoint(CONFIGS.qwen2_moe, 'BF16', { shards: 3 });
    const ckpt = openCheckpoint(w.dir);
    try {
      const files = new Set(ckpt.tensorNames().map((n) => path.basename(ckpt.tensorInfo(n).file)));
      assert.equal(files.size, 3);
      const name = 'model.layers.1.mlp.shared_expert_gate.weight';
      assert.deepEqual(ckpt.readTensor(name), w.values.get(name)!.map((x) => stored(x, 'BF16')));
    } finally {
      ckpt.close();
    }
  });

  it('hashes config and headers: stable across opens, different when config.json changes', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'F16');
    const hash = () => {
      const c = openCheckpoint(w.dir);
      c.close();
      return c.hash;
    };
    const h1 = hash();
    assert.match(h1, /^[0-9a-f]{64}$/);
    assert.equal(hash(), h1);
    fs.writeFileSync(path.join(w.dir, 'config.json'), JSON.stringify({ ...CONFIGS.mixtral, rope_theta: 1e4 }));
    assert.notEqual(hash(), h1);
  });

  it('reads rope_theta from transformers 5 rope_parameters, and caps the context at a sliding window', function () {
    const { rope_theta: _, ...rest } = CONFIGS.mixtral;
    const c = parseConfig({ ...rest, rope_parameters: { rope_type: 'default', rope_theta: 5e5 }, sliding_window: 32 }, 'config.json');
    assert.deepEqual([c.ropeTheta, c.maxPositions], [5e5, 32]);
  });
});

describe('checkpoint damage', function () {
  const model = (w: Written) => path.join(w.dir, 'model.safetensors');
  const lastTensor = 'lm_head.weight'; // written last, so its bytes are the file's last bytes

  it('truncated file → TRUNCATED naming the file and the first tensor cut off', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'BF16');
    const size = fs.statSync(model(w)).size;
    fs.truncateSync(model(w), size - 1);
    assertFails(w.dir, 'TRUNCATED', model(w), `tensor ${lastTensor} needs`);
    fs.truncateSync(model(w), size - 256 * 16 * 2 - 10); // all of lm_head and the end of the tensor before it
    assertFails(w.dir, 'TRUNCATED', model(w), 'tensor model.norm.weight needs');
  });

  it('header length larger than the file → BAD_HEADER naming the file', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'F32');
    const fd = fs.openSync(model(w), 'r+');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(fs.statSync(model(w)).size));
    fs.writeSync(fd, len, 0, 8, 0);
    fs.closeSync(fd);
    assertFails(w.dir, 'BAD_HEADER', model(w), 'larger than the file');
  });

  it('invalid JSON header → BAD_HEADER naming the file', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'F32');
    const fd = fs.openSync(model(w), 'r+');
    fs.writeSync(fd, Buffer.from('x'), 0, 1, 8);
    fs.closeSync(fd);
    assertFails(w.dir, 'BAD_HEADER', model(w), 'not valid JSON');
  });

  it('overlapping offsets → BAD_OFFSETS naming the file and both tensors', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'F32');
    editHeader(model(w), (h) => {
      const t = h['model.layers.0.input_layernorm.weight'];
      t.data_offsets = t.data_offsets.map((o) => o - 8);
    });
    assertFails(w.dir, 'BAD_OFFSETS', model(w), 'model.layers.0.input_layernorm.weight overlaps tensor model.embed_tokens.weight');
  });

  it('byte length that does not fit the shape → BAD_OFFSETS naming the file and tensor', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'F32');
    editHeader(model(w), (h) => void (h['model.norm.weight'].shape = [17]));
    assertFails(w.dir, 'BAD_OFFSETS', model(w), 'model.norm.weight spans 64 bytes but F32 [17] needs 68');
  });

  it('unsupported dtype (I8) → UNSUPPORTED_DTYPE naming the file and tensor', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'F32');
    editHeader(model(w), (h) => Object.assign(h['model.norm.weight'], { dtype: 'I8', shape: [64] }));
    assertFails(w.dir, 'UNSUPPORTED_DTYPE', model(w), 'model.norm.weight', 'I8');
  });

  it('missing tensor → MISSING_TENSOR naming the file (the index when sharded) and tensor', function () {
    const gone = 'model.layers.1.mlp.experts.2.down_proj.weight';
    const drop = (t: [string, number[]][]) => void t.splice(t.findIndex(([n]) => n === gone), 1);
    const w = writeCheckpoint(CONFIGS.qwen3_moe, 'BF16', { edit: drop });
    assertFails(w.dir, 'MISSING_TENSOR', model(w), gone);
    const s = writeCheckpoint(CONFIGS.qwen3_moe, 'BF16', { edit: drop, shards: 2 });
    assertFails(s.dir, 'MISSING_TENSOR', s.file, gone);
  });

  it('tensor the config does not imply → EXTRA_TENSOR naming the file and tensor (lm_head when tied, too)', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'F16', { edit: (t) => void t.push(['model.layers.0.self_attn.rotary_emb.inv_freq', [2]]) });
    assertFails(w.dir, 'EXTRA_TENSOR', model(w), 'model.layers.0.self_attn.rotary_emb.inv_freq');
    const tied = writeCheckpoint(CONFIGS.olmoe, 'F16', { edit: (t) => void t.push(['lm_head.weight', [256, 16]]) });
    assertFails(tied.dir, 'EXTRA_TENSOR', model(tied), 'lm_head.weight');
  });

  it('shape other than config.json implies → SHAPE_MISMATCH naming the file and tensor', function () {
    const router = 'model.layers.1.block_sparse_moe.gate.weight';
    const w = writeCheckpoint(CONFIGS.mixtral, 'F32', { edit: (t) => void (t.find(([n]) => n === router)![1] = [16, 3]) });
    assertFails(w.dir, 'SHAPE_MISMATCH', model(w), `${router} has shape [16,3] but config.json implies [3,16]`);
  });

  it('sharded: a shard listed in the index that does not exist → IO naming the shard', function () {
    const s = writeCheckpoint(CONFIGS.olmoe, 'F32', { shards: 2 });
    const shard = path.join(s.dir, 'model-00002-of-00002.safetensors');
    fs.rmSync(shard);
    assertFails(s.dir, 'IO', shard);
  });

  it('unsupported architecture → UNSUPPORTED_ARCH naming config.json and the supported ones', function () {
    const w = writeCheckpoint(CONFIGS.mixtral, 'F32');
    fs.writeFileSync(path.join(w.dir, 'config.json'), JSON.stringify({ ...CONFIGS.mixtral, model_type: 'llama' }));
    assertFails(w.dir, 'UNSUPPORTED_ARCH', path.join(w.dir, 'config.json'), 'unsupported architecture llama', 'supported: mixtral, qwen2_moe, qwen3_moe, olmoe');
  });

  it('missing or ill-typed config field → BAD_CONFIG naming config.json, the field and what was expected', function () {
    const { hidden_size: _, ...noHidden } = CONFIGS.olmoe;
    const w = writeCheckpoint(noHidden, 'F32');
    assertFails(w.dir, 'BAD_CONFIG', path.join(w.dir, 'config.json'), 'field hidden_size must be a positive integer (missing)');
    const v = writeCheckpoint({ ...CONFIGS.olmoe, num_experts: '3' }, 'F32');
    assertFails(v.dir, 'BAD_CONFIG', path.join(v.dir, 'config.json'), 'field num_experts must be a positive integer (got "3")');
  });

  it('reads eos_token_id as one id or a list, and refuses one outside the vocabulary naming the field', function () {
    assert.deepEqual(parseConfig({ ...CONFIGS.olmoe, eos_token_id: 3 }, 'c').eosTokenIds, [3]);
    assert.deepEqual(parseConfig({ ...CONFIGS.olmoe, eos_token_id: [3, 5] }, 'c').eosTokenIds, [3, 5]);
    assert.equal(parseConfig({ ...CONFIGS.olmoe, eos_token_id: null }, 'c').eosTokenIds, undefined);
    for (const bad of [-1, 1.5, 'x', [2, CONFIGS.olmoe.vocab_size]]) {
      assert.throws(() => parseConfig({ ...CONFIGS.olmoe, eos_token_id: bad }, 'x/config.json'), (e: unknown) => e instanceof CheckpointError && e.code === 'BAD_CONFIG' && /eos_token_id/.test((e as Error).message), JSON.stringify(bad));
    }
  });

  it('config the forward pass does not implement → BAD_CONFIG saying what is unsupported', function () {
    const cases: [Record<string, unknown>, string][] = [
      [{ ...CONFIGS.qwen2_moe, decoder_sparse_step: 2 }, 'decoder_sparse_step must be 1 (every layer sparse'],
      [{ ...CONFIGS.qwen3_moe, mlp_only_layers: [0] }, 'mlp_only_layers must be [] (every layer sparse'],
      [{ ...CONFIGS.mixtral, rope_scaling: { rope_type: 'yarn', factor: 4 } }, 'scaled rope is not supported'],
      [{ ...CONFIGS.olmoe, clip_qkv: 8 }, 'clip_qkv must be null'],
      [{ ...CONFIGS.mixtral, hidden_act: 'gelu' }, 'hidden_act must be "silu"'],
    ];
    for (const [cfg, says] of cases) {
      assert.throws(() => parseConfig(cfg, 'x/config.json'), (e: unknown) => e instanceof CheckpointError && e.code === 'BAD_CONFIG' && e.message.includes('x/config.json') && e.message.includes(says));
    }
  });

  it('no tokenizer.json and no "ebserve_tokenizer": "bytes" → NO_TOKENIZER naming the file', function () {
    const { ebserve_tokenizer: _, ...cfg } = CONFIGS.mixtral;
    const w = writeCheckpoint(cfg, 'F32');
    assertFails(w.dir, 'NO_TOKENIZER', path.join(w.dir, 'tokenizer.json'));
    fs.writeFileSync(path.join(w.dir, 'tokenizer.json'), '{}');
    assert.equal(openCheckpoint(w.dir).config.tokenizer, 'tokenizer.json');
  });
});
