/**
 * Checkpoint → GGUF, as llama.cpp's convert_hf_to_gguf.py (f32, f16, q8_0) and llama-quantize
 * --pure (q4_0) would write it: the architecture's metadata keys, tensor names with the routed
 * experts stacked, q/k rows permuted for the llama architecture (names.ts), 32-byte alignment,
 * and ggml's block layouts (quant.ts).
 *
 * Which tensors take the requested type, as convert_hf_to_gguf.py decides: 1-D tensors (norms)
 * and the router (ffn_gate_inp) stay F32; every other matrix takes the type, except that a matrix
 * whose rows are not a whole number of 32-value blocks falls back to F16 (convert's QuantError
 * fallback). With q4_0 every matrix is Q4_0, as `llama-quantize --pure` writes it (its default mix
 * would put output.weight in Q6_K, which ebserve does not write).
 *
 * The byte tokenizer of the embedded model has no exact llama.cpp counterpart; it is written as a
 * "gpt2" vocabulary of the 256 byte symbols with no merges, which llama.cpp tokenizes and
 * detokenizes byte for byte (vocab.ts).
 *
 * @example
 * await exportGguf({ dir: EMBEDDED_MODEL_DIR, out: 'ebserve-moe-8x.f32.gguf', type: 'f32' });
 */
import fs from 'node:fs';
import path from 'node:path';

import { openCheckpoint } from '../checkpoint.js';
import { CheckpointError } from '../safetensors.js';
import { expectedTensors } from '../names.js';
import { FILE_TYPE, GgmlType, GgufValueType, type GgufEntry } from './format.js';
import { GGUF_ARCH, ggufPlaces, NORM_TOPK, permuteRows, type GgufPlace } from './names.js';
import { quantize, type WrittenType } from './quant.js';
import { bpeVocabEntries, byteVocabEntries, type VocabEntries } from './vocab.js';
import { writeGguf, type TensorToWrite } from './writer.js';

export type ExportType = keyof typeof FILE_TYPE;
export const EXPORT_TYPES: readonly ExportType[] = ['f32', 'f16', 'q8_0', 'q4_0'];

const MATRIX_TYPE: Record<ExportType, WrittenType> = { f32: GgmlType.F32, f16: GgmlType.F16, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0 };

export interface ExportOptions {
  /** A checkpoint folder (or a .gguf file). */
  dir: string;
  out: string;
  type: ExportType;
}

export interface ExportResult {
  arch: string;
  tensors: number;
  bytes: number;
  /** ggml type name → how many tensors have it. */
  types: Record<string, number>;
}

const u32 = (value: number): GgufEntry => ({ type: GgufValueType.UINT32, value });
const f32 = (value: number): GgufEntry => ({ type: GgufValueType.FLOAT32, value });
const str = (value: string): GgufEntry => ({ type: GgufValueType.STRING, value });

function readJson(file: string): Record<string, any> | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Writes `opts.dir`'s checkpoint to `opts.out` as GGUF of `opts.type`. */
export function exportGguf(opts: ExportOptions): ExportResult {
  const ckpt = openCheckpoint(opts.dir);
  try {
    const c = ckpt.config;
    const arch = GGUF_ARCH[c.arch];
    if (!arch) throw new CheckpointError('UNSUPPORTED_ARCH', `${opts.dir}: ${c.arch} has no GGUF export here (supported: mixtral → llama, olmoe, qwen3_moe → qwen3moe)`, { file: opts.dir });
    if (c.normTopkProb !== NORM_TOPK[arch]) {
      throw new CheckpointError('BAD_CONFIG', `${opts.dir}: norm_topk_prob is ${c.normTopkProb}, but llama.cpp's ${arch} ${NORM_TOPK[arch] ? 'always' : 'never'} renormalises the top-k router weights: the GGUF would compute something else`, { file: opts.dir });
    }
    const isDir = fs.statSync(opts.dir).isDirectory();
    const raw = isDir ? readJson(path.join(opts.dir, 'config.json')) ?? {} : {};
    const k = (name: string) => `${arch}.${name}`;
    const meta: [string, GgufEntry][] = [
      ['general.architecture', str(arch)],
      ['general.type', str('model')],
      ['general.name', str(path.basename(path.resolve(opts.dir)).replace(/\.gguf$/i, ''))],
      [k('vocab_size'), u32(c.vocabSize)],
      [k('context_length'), u32(c.maxPositions)],
      [k('embedding_length'), u32(c.hiddenSize)],
      [k('block_count'), u32(c.numLayers)],
      [k('feed_forward_length'), u32(arch === 'qwen3moe' && Number.isInteger(raw.intermediate_size) ? raw.intermediate_size : c.expertFfnSize)],
      [k('attention.head_count'), u32(c.numHeads)],
      [k('attention.head_count_kv'), u32(c.numKvHeads)],
      [k('rope.freq_base'), f32(c.ropeTheta)],
      [k('attention.layer_norm_rms_epsilon'), f32(c.rmsNormEps)],
      [k('expert_count'), u32(c.numExperts)],
      [k('expert_used_count'), u32(c.topK)],
    ];
    if (arch === 'qwen3moe') meta.push([k('expert_feed_forward_length'), u32(c.expertFfnSize)]);
    if (arch === 'qwen3moe' || c.headDim * c.numHeads !== c.hiddenSize) meta.push([k('attention.key_length'), u32(c.headDim)], [k('attention.value_length'), u32(c.headDim)]);
    if (arch === 'llama') meta.push([k('rope.dimension_count'), u32(c.headDim)]);
    meta.push(['general.file_type', u32(FILE_TYPE[opts.type])], ['general.quantization_version', u32(2)]);
    meta.push(...vocabEntries(opts.dir, isDir, c.tokenizer, c.vocabSize, raw));
    // The checkpoint's chat template travels with it, as llama.cpp's converter writes it.
    const template = isDir ? readJson(path.join(opts.dir, 'tokenizer_config.json'))?.chat_template : undefined;
    if (typeof template === 'string') meta.push(['tokenizer.chat_template', str(template)]);

    // GGUF tensor → the HF tensors it is made of (one, or a layer's experts in order).
    const groups = new Map<string, { names: string[]; place: GgufPlace }>();
    for (const [hf, place] of ggufPlaces(c)) {
      const g = groups.get(place.gguf) ?? { names: [], place };
      g.names.push(hf);
      groups.set(place.gguf, g);
    }
    const shapes = new Map(expectedTensors(c).map((t) => [t.name, t.shape]));
    if (arch === 'olmoe' && c.tieWordEmbeddings) groups.set('output.weight', { names: [[...groups.values()][0].names[0]], place: { gguf: 'output.weight' } }); // llama.cpp's olmoe requires output
    const types: Record<string, number> = {};
    const tensors: TensorToWrite[] = [...groups].map(([gguf, g]) => {
      const shape = shapes.get(g.names[0])!;
      const stacked = g.place.expert !== undefined;
      const ne = [...shape].reverse().concat(stacked ? [g.names.length] : []);
      let type: WrittenType = MATRIX_TYPE[opts.type];
      if (shape.length === 1 || gguf.endsWith('ffn_gate_inp.weight')) type = GgmlType.F32;
      else if ((type === GgmlType.Q8_0 || type === GgmlType.Q4_0) && shape[shape.length - 1] % 32 !== 0) type = GgmlType.F16;
      types[GgmlType[type]] = (types[GgmlType[type]] ?? 0) + 1;
      return {
        name: gguf,
        type,
        ne,
        data: () => {
          const per = shape.reduce((a, b) => a * b, 1);
          const all = new Float32Array(per * g.names.length);
          g.names.forEach((hf, i) => {
            let v = ckpt.readTensor(hf);
            if (g.place.permuteHeads) v = new Float32Array(permuteRows(new Uint8Array(v.buffer), shape[0], shape[1] * 4, g.place.permuteHeads).buffer);
            all.set(v, i * per);
          });
          return quantize(all, type);
        },
      };
    });
    const bytes = writeGguf(opts.out, meta, tensors);
    return { arch, tensors: tensors.length, bytes, types };
  } finally {
    ckpt.close();
  }
}

function vocabEntries(dir: string, isDir: boolean, tokenizer: 'bytes' | 'tokenizer.json', vocabSize: number, raw: Record<string, any>): VocabEntries {
  if (tokenizer === 'bytes') return byteVocabEntries();
  if (!isDir) throw new CheckpointError('BAD_TOKENIZER', `${dir}: re-exporting a GGUF file's own tokenizer is not supported; export from the checkpoint folder`, { file: dir });
  const file = path.join(dir, 'tokenizer.json');
  const tok = readJson(file);
  if (!tok) throw new CheckpointError('BAD_TOKENIZER', `${file}: cannot read as JSON`, { file });
  const cfg = readJson(path.join(dir, 'tokenizer_config.json')) ?? {};
  const id = (v: unknown) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) < vocabSize ? (v as number) : undefined);
  return bpeVocabEntries(tok, vocabSize, { bos: id(raw.bos_token_id), eos: id(Array.isArray(raw.eos_token_id) ? raw.eos_token_id[0] : raw.eos_token_id), addBos: cfg.add_bos_token === true }, file);
}
