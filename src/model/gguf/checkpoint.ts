/**
 * A GGUF file opened as a Checkpoint: the same interface the safetensors folder has, with the Hugging
 * Face tensor names and [out, in] layouts the runtime reads, so the model, the engines and the
 * offload store never know the weights came from llama.cpp's format.
 *
 * Opening reads the header only (reader.ts) and checks it: the architecture (llama with experts =
 * Mixtral, olmoe, qwen3moe), the hyperparameters under `<arch>.*` (each error names its key),
 * every tensor the configuration implies present with its shape, none extra, every type one that
 * quant.ts decodes. Tensors are read on demand: F32, F16 and BF16 come back as stored; block
 * quantizations (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K … Q6_K) are dequantized to F32 on read,
 * which is said once, on stderr, at open. A routed expert is its slab of the stacked tensor; q/k
 * of the llama architecture get llama.cpp's row permutation undone (names.ts).
 *
 * @example
 * const ckpt = openGgufCheckpoint('mixtral.Q8_0.gguf');
 * ckpt.readTensor('model.layers.0.block_sparse_moe.experts.3.w1.weight');   // Float32Array [F·d]
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';

import type { Checkpoint } from '../checkpoint.js';
import { parseConfig } from '../config.js';
import { expectedTensors, expertName } from '../names.js';
import { CheckpointError } from '../safetensors.js';
import type { ExpertMatrix, ModelConfig, TensorDtype, TensorInfo } from '../types.js';
import { GgmlType, ggmlTypeName, GgufValueType, type GgufEntry } from './format.js';
import { ggufPlaces, HF_ARCH, NORM_TOPK, permuteRows, type GgufArch, type GgufPlace } from './names.js';
import { DECODED_TYPES, dequantize } from './quant.js';
import { readGgufHeader, type GgufHeader, type GgufTensor } from './reader.js';
import { isByteVocab } from './vocab.js';

const AS_STORED: Partial<Record<number, TensorDtype>> = { [GgmlType.F32]: 'F32', [GgmlType.F16]: 'F16', [GgmlType.BF16]: 'BF16' };
const DTYPE_SIZE: Record<TensorDtype, number> = { F32: 4, F16: 2, BF16: 2 };

/** Whether `p` names a GGUF file (by its extension) rather than a checkpoint folder. */
export function isGgufPath(p: string): boolean {
  return /\.gguf$/i.test(p);
}

/** Typed reads of `<arch>.*` metadata, each failure naming the key. */
class Keys {
  constructor(
    private readonly h: GgufHeader,
    private readonly prefix: string,
  ) {}
  fail(key: string, expected: string): never {
    const e = this.h.metadata.get(key);
    throw new CheckpointError('BAD_GGUF', `${this.h.file}: metadata ${key} must be ${expected} (${e ? `got ${JSON.stringify(String(e.value)).slice(0, 60)}` : 'missing'})`, { file: this.h.file });
  }
  entry(key: string): GgufEntry | undefined {
    return this.h.metadata.get(key);
  }
  uint(name: string, dflt?: number): number {
    const key = this.prefix + name;
    const e = this.entry(key);
    const v = e === undefined ? dflt : e.value;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || (e && e.type === GgufValueType.ARRAY)) this.fail(key, 'a positive integer');
    return v;
  }
  float(name: string, dflt?: number): number {
    const key = this.prefix + name;
    const e = this.entry(key);
    let v = e === undefined ? dflt : e.value;
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) this.fail(key, 'a positive number');
    // An f32 key: the shortest decimal that rounds to it (1e-5, not 9.99999974738e-06), as the
    // config.json it came from most likely said.
    if (e?.type === GgufValueType.FLOAT32) v = shortestF32(v);
    return v;
  }
}

function shortestF32(x: number): number {
  for (let p = 1; p <= 9; p++) {
    const y = Number(x.toPrecision(p));
    if (Math.fround(y) === x) return y;
  }
  return x;
}

/** The ModelConfig a GGUF header describes (checked as config.json would be, keys named). */
export function ggufConfig(h: GgufHeader): ModelConfig {
  const fail = (key: string, expected: string): never => new Keys(h, '').fail(key, expected);
  const archEntry = h.metadata.get('general.architecture');
  if (!archEntry || typeof archEntry.value !== 'string') fail('general.architecture', 'a string');
  const arch = archEntry!.value as string;
  if (!(arch in HF_ARCH)) {
    throw new CheckpointError('UNSUPPORTED_ARCH', `${h.file}: unsupported architecture ${JSON.stringify(arch)} in metadata general.architecture (supported: llama with experts (Mixtral), olmoe, qwen3moe)`, { file: h.file });
  }
  const a = arch as GgufArch;
  const k = new Keys(h, `${a}.`);
  if (a === 'llama' && !h.metadata.has('llama.expert_count')) {
    throw new CheckpointError('UNSUPPORTED_ARCH', `${h.file}: a dense llama model (no metadata llama.expert_count); ebserve serves MoE models (Mixtral is llama with experts)`, { file: h.file });
  }
  const hidden = k.uint('embedding_length');
  const heads = k.uint('attention.head_count');
  const headDim = k.uint('attention.key_length', hidden / heads);
  if (k.uint('attention.value_length', headDim) !== headDim) k.fail(`${a}.attention.value_length`, `equal to the key length ${headDim}`);
  if (k.entry(`${a}.rope.dimension_count`) && k.uint('rope.dimension_count') !== headDim) k.fail(`${a}.rope.dimension_count`, `the head size ${headDim} (partial rotary is not supported)`);
  const scaling = k.entry(`${a}.rope.scaling.type`);
  if (scaling && scaling.value !== 'none') k.fail(`${a}.rope.scaling.type`, '"none" (scaled rope is not supported)');
  const numExperts = k.uint('expert_count');
  const embd = tensorOf(h, 'token_embd.weight');
  const gate0 = tensorOf(h, hasSplitExperts(h) ? 'blk.0.ffn_gate.0.weight' : 'blk.0.ffn_gate_exps.weight');
  const expertFfn = gate0.ne[1];
  if (k.entry(`${a}.expert_feed_forward_length`) && k.uint('expert_feed_forward_length') !== expertFfn) {
    k.fail(`${a}.expert_feed_forward_length`, `the experts' width ${expertFfn} (blk.0.ffn_gate_exps.weight)`);
  }
  const json: Record<string, unknown> = {
    model_type: HF_ARCH[a],
    vocab_size: embd.ne[1],
    hidden_size: hidden,
    num_hidden_layers: k.uint('block_count'),
    num_attention_heads: heads,
    num_key_value_heads: k.uint('attention.head_count_kv', heads),
    num_experts_per_tok: k.uint('expert_used_count'),
    max_position_embeddings: k.uint('context_length'),
    rms_norm_eps: k.float('attention.layer_norm_rms_epsilon'),
    rope_theta: k.float('rope.freq_base', 10000),
    tie_word_embeddings: !h.tensors.has('output.weight'),
    hidden_act: 'silu',
    norm_topk_prob: NORM_TOPK[a],
  };
  if (a === 'llama') Object.assign(json, { num_local_experts: numExperts, intermediate_size: expertFfn, head_dim: headDim });
  if (a === 'olmoe') Object.assign(json, { num_experts: numExperts, intermediate_size: expertFfn });
  if (a === 'qwen3moe') Object.assign(json, { num_experts: numExperts, moe_intermediate_size: expertFfn, head_dim: headDim });
  if (isByteVocab(h.metadata)) json.ebserve_tokenizer = 'bytes';
  const eos = h.metadata.get('tokenizer.ggml.eos_token_id');
  if (eos) json.eos_token_id = Number(eos.value);
  return parseConfig(json, `${h.file} (GGUF metadata)`);
}

/** Whether the experts are one tensor each (Mixtral files converted before llama.cpp stacked them). */
function hasSplitExperts(h: GgufHeader): boolean {
  return !h.tensors.has('blk.0.ffn_gate_exps.weight') && h.tensors.has('blk.0.ffn_gate.0.weight');
}

function tensorOf(h: GgufHeader, name: string): GgufTensor {
  const t = h.tensors.get(name);
  if (!t) throw new CheckpointError('MISSING_TENSOR', `${h.file}: missing tensor ${name}`, { file: h.file, tensor: name });
  return t;
}

/** Opens and checks the GGUF file `file` (see the file comment); `log` hears what is dequantized. */
export function openGgufCheckpoint(file: string, log: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): GgufCheckpoint {
  const h = readGgufHeader(file);
  const config = ggufConfig(h);
  const places = ggufPlaces(config, hasSplitExperts(h));
  const used = new Set<string>();
  const quantized = new Map<string, number>();
  for (const want of expectedTensors(config)) {
    const p = places.get(want.name)!;
    const t = tensorOf(h, p.gguf);
    const shape = [...t.ne].reverse();
    const expect = p.expert === undefined ? want.shape : [config.numExperts, ...want.shape];
    if (shape.join() !== expect.join()) {
      throw new CheckpointError('SHAPE_MISMATCH', `${file}: tensor ${p.gguf} has shape [${shape}] (ggml ne [${t.ne}]) but the metadata implies [${expect}]`, { file, tensor: p.gguf });
    }
    if (!used.has(p.gguf)) {
      used.add(p.gguf);
      if (!DECODED_TYPES.has(t.type)) {
        throw new CheckpointError('UNSUPPORTED_DTYPE', `${file}: tensor ${p.gguf} is ${ggmlTypeName(t.type)}, which ebserve cannot dequantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K … Q6_K)`, { file, tensor: p.gguf });
      }
      if (!AS_STORED[t.type]) quantized.set(ggmlTypeName(t.type), (quantized.get(ggmlTypeName(t.type)) ?? 0) + 1);
    }
  }
  for (const name of h.tensors.keys()) {
    if (!used.has(name)) throw new CheckpointError('EXTRA_TENSOR', `${file}: unexpected tensor ${name} (not part of a ${h.metadata.get('general.architecture')!.value} model ebserve runs)`, { file, tensor: name });
  }
  if (quantized.size) log(`ebserve: ${file}: ${[...quantized].map(([t, n]) => `${n} ${t} tensor${n === 1 ? '' : 's'}`).join(', ')} dequantized to f32 as they are read`);
  const hash = createHash('sha256').update('ebserve-gguf-v1\0').update(`${h.size}\0${h.mtimeMs}\0`).update(h.headerBytes).digest('hex');
  return new GgufCheckpoint(config, h, places, expectedTensors(config).map((t) => t.name), hash);
}

/** An open GGUF file seen as a Checkpoint (plus its header, for the tokenizer). */
export class GgufCheckpoint implements Checkpoint {
  private fd: number | undefined;
  constructor(
    readonly config: ModelConfig,
    readonly header: GgufHeader,
    private readonly places: Map<string, GgufPlace>,
    private readonly names: string[],
    readonly hash: string,
  ) {
    this.fd = fs.openSync(header.file, 'r');
  }

  get dir(): string {
    return this.header.file;
  }

  tensorNames(): string[] {
    return [...this.names];
  }

  private locate(name: string): { p: GgufPlace; t: GgufTensor; offset: number; bytes: number; shape: number[] } {
    const p = this.places.get(name);
    if (!p) throw new CheckpointError('MISSING_TENSOR', `${this.dir}: no tensor ${name} in this checkpoint`, { file: this.dir, tensor: name });
    const t = this.header.tensors.get(p.gguf)!;
    const shape = [...t.ne].reverse();
    if (p.expert === undefined) return { p, t, offset: t.offset, bytes: t.byteLength, shape };
    const slab = t.byteLength / shape[0];
    return { p, t, offset: t.offset + p.expert * slab, bytes: slab, shape: shape.slice(1) };
  }

  tensorInfo(name: string): TensorInfo {
    const { t, offset, bytes, shape } = this.locate(name);
    const dtype = AS_STORED[t.type] ?? 'F32';
    // A quantized tensor is presented as the F32 it reads as; offset still points at its blocks.
    const byteLength = AS_STORED[t.type] ? bytes : shape.reduce((x, y) => x * y, 1) * 4;
    return { name, dtype, shape, file: this.dir, offset, byteLength };
  }

  readRaw(name: string): { dtype: TensorDtype; shape: number[]; bytes: Buffer } {
    if (this.fd === undefined) throw new CheckpointError('CLOSED', `${this.dir}: read after close`, { file: this.dir, tensor: name });
    const { p, t, offset, bytes, shape } = this.locate(name);
    const stored = Buffer.allocUnsafe(bytes);
    let got = 0;
    while (got < bytes) {
      const r = fs.readSync(this.fd, stored, got, bytes - got, offset + got);
      if (r === 0) throw new CheckpointError('BAD_GGUF', `${this.dir}: tensor ${p.gguf}: the file ended early (was it truncated after opening?)`, { file: this.dir, tensor: p.gguf });
      got += r;
    }
    const count = shape.reduce((x, y) => x * y, 1);
    const dtype = AS_STORED[t.type] ?? 'F32';
    let out: Uint8Array = AS_STORED[t.type] ? stored : new Uint8Array(dequantize(stored, t.type, count).buffer);
    if (p.permuteHeads) out = permuteRows(out, shape[0], (out.byteLength / shape[0]) | 0, p.permuteHeads, true);
    return { dtype, shape, bytes: Buffer.from(out.buffer, out.byteOffset, out.byteLength) };
  }

  readTensor(name: string): Float32Array {
    const r = this.readRaw(name);
    if (r.dtype === 'F32') return new Float32Array(r.bytes.buffer.slice(r.bytes.byteOffset, r.bytes.byteOffset + r.bytes.byteLength));
    return dequantize(r.bytes, r.dtype === 'F16' ? GgmlType.F16 : GgmlType.BF16, r.bytes.byteLength / DTYPE_SIZE[r.dtype]);
  }

  expertInfo(layer: number, expert: number, which: ExpertMatrix): TensorInfo {
    return this.tensorInfo(expertName(this.config, layer, expert, which));
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}
