/**
 * How a Hugging Face MoE checkpoint maps onto llama.cpp's GGUF, per architecture, as
 * convert_hf_to_gguf.py and llama.cpp's model loader name things:
 *
 *   HF model_type  GGUF general.architecture   rope in llama.cpp     q/k rows
 *   mixtral        llama (with expert_count)    NORM (adjacent pairs) permuted (below)
 *   olmoe          olmoe                        NEOX (halves, as HF)  as HF
 *   qwen3_moe      qwen3moe                     NEOX                  as HF
 *
 * Tensors (N = layer): token_embd, output_norm, output (absent when tied), and per layer
 * blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, attn_q_norm, attn_k_norm, ffn_norm,
 * ffn_gate_inp, ffn_gate_exps, ffn_up_exps, ffn_down_exps}.weight. The routed experts are stacked:
 * ffn_gate_exps is [E, F, d] (ggml ne [d, F, E]), expert e's matrix the e-th slab, each slab laid
 * out exactly as the HF [out, in] matrix.
 *
 * Rotary attention: HF rotates the two halves of each head (x[i], x[i + hd/2]); llama.cpp's
 * "llama" architecture rotates adjacent pairs (x[2i], x[2i+1]). convert_hf_to_gguf.py's
 * LlamaModel.permute reorders the rows of q_proj (by n_head) and k_proj (by n_head_kv) so that
 * the same mathematics comes out: within each head, row j·(hd/2) + i moves to row 2i + j. The
 * NEOX architectures rotate halves like HF and keep the rows.
 *
 * Mixtral's llama.cpp equivalent is exact (llama.cpp runs Mixtral as "llama" with experts:
 * softmax router, top-k renormalised). llama.cpp fixes the top-k renormalisation per
 * architecture: always for llama and qwen3moe, never for olmoe.
 */
import type { Architecture, ExpertMatrix, ModelConfig } from '../types.js';
import { denseTensorNames, expertName } from '../names.js';

export type GgufArch = 'llama' | 'olmoe' | 'qwen3moe';

/** HF model_type → llama.cpp architecture, for the architectures GGUF files can carry here. */
export const GGUF_ARCH: Partial<Record<Architecture, GgufArch>> = { mixtral: 'llama', olmoe: 'olmoe', qwen3_moe: 'qwen3moe' };

/** llama.cpp architecture → HF model_type. */
export const HF_ARCH: Record<GgufArch, Architecture> = { llama: 'mixtral', olmoe: 'olmoe', qwen3moe: 'qwen3_moe' };

/** Whether llama.cpp renormalises the top-k router weights for this architecture. */
export const NORM_TOPK: Record<GgufArch, boolean> = { llama: true, olmoe: false, qwen3moe: true };

const EXPERT_GGUF: Record<ExpertMatrix, string> = { gate: 'ffn_gate_exps', up: 'ffn_up_exps', down: 'ffn_down_exps' };

/** Where one HF tensor lives in a GGUF file. */
export interface GgufPlace {
  /** The GGUF tensor. */
  gguf: string;
  /** For a routed expert: its slab of the stacked tensor. */
  expert?: number;
  /** For q/k of the llama architecture: the head count whose rows are permuted. */
  permuteHeads?: number;
}

/**
 * Every HF tensor name of `c` → its place in a GGUF file, in the order export writes them.
 * `splitExperts`: the layout of Mixtral GGUFs converted before llama.cpp stacked the experts
 * (early 2024), one tensor per expert, `blk.N.ffn_{gate,up,down}.E.weight`; llama.cpp still reads
 * them, and so does ebserve (export always stacks).
 */
export function ggufPlaces(c: ModelConfig, splitExperts = false): Map<string, GgufPlace> {
  const arch = GGUF_ARCH[c.arch];
  if (!arch) throw new RangeError(`no llama.cpp architecture for ${c.arch}`);
  const names = denseTensorNames(c);
  const m = new Map<string, GgufPlace>();
  m.set(names.embed, { gguf: 'token_embd.weight' });
  names.layers.forEach((L, l) => {
    const b = `blk.${l}.`;
    m.set(L.inputNorm, { gguf: `${b}attn_norm.weight` });
    m.set(L.q, { gguf: `${b}attn_q.weight`, permuteHeads: arch === 'llama' ? c.numHeads : undefined });
    m.set(L.k, { gguf: `${b}attn_k.weight`, permuteHeads: arch === 'llama' ? c.numKvHeads : undefined });
    m.set(L.v, { gguf: `${b}attn_v.weight` });
    m.set(L.o, { gguf: `${b}attn_output.weight` });
    if (L.qNorm) m.set(L.qNorm, { gguf: `${b}attn_q_norm.weight` });
    if (L.kNorm) m.set(L.kNorm, { gguf: `${b}attn_k_norm.weight` });
    m.set(L.postNorm, { gguf: `${b}ffn_norm.weight` });
    m.set(L.router, { gguf: `${b}ffn_gate_inp.weight` });
    for (const w of ['gate', 'up', 'down'] as const) {
      for (let e = 0; e < c.numExperts; e++) {
        m.set(expertName(c, l, e, w), splitExperts ? { gguf: `${b}ffn_${w}.${e}.weight` } : { gguf: `${b}${EXPERT_GGUF[w]}.weight`, expert: e });
      }
    }
  });
  m.set(names.norm, { gguf: 'output_norm.weight' });
  if (!c.tieWordEmbeddings) m.set(names.lmHead, { gguf: 'output.weight' });
  return m;
}

/**
 * LlamaModel.permute on a row-major [rows, cols] matrix of `heads` heads: within each head, HF
 * row j·(hd/2) + i becomes row 2i + j (j ∈ {0, 1}). `inverse` undoes it. Works on any element
 * size (`elemBytes`), so raw f16/bf16 rows move as they are.
 */
export function permuteRows(src: Uint8Array, rows: number, rowBytes: number, heads: number, inverse = false): Uint8Array {
  const hd = rows / heads;
  if (!Number.isInteger(hd) || hd % 2) throw new RangeError(`cannot permute ${rows} rows into ${heads} heads of even size`);
  const half = hd / 2;
  const out = new Uint8Array(src.byteLength);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const hf = h * hd + j * half + i;
        const gg = h * hd + 2 * i + j;
        const [from, to] = inverse ? [gg, hf] : [hf, gg];
        out.set(src.subarray(from * rowBytes, (from + 1) * rowBytes), to * rowBytes);
      }
    }
  }
  return out;
}
