/**
 * The tensor names (and shapes) of a Hugging Face checkpoint for each architecture, as the
 * transformers modeling files name their modules. All four share the skeleton
 *   model.embed_tokens.weight [V, d]   model.norm.weight [d]   lm_head.weight [V, d] (absent when tied)
 *   model.layers.L.{input_layernorm,post_attention_layernorm}.weight [d]
 *   model.layers.L.self_attn.{q,k,v,o}_proj.weight  [H·hd, d] [KV·hd, d] [KV·hd, d] [d, H·hd]
 * and differ in the MoE block:
 *   mixtral   block_sparse_moe.gate.weight [E, d], block_sparse_moe.experts.X.{w1,w3,w2}.weight
 *             (w1 = gate, w3 = up: [F, d]; w2 = down: [d, F])
 *   the others mlp.gate.weight [E, d], mlp.experts.X.{gate,up,down}_proj.weight
 *   qwen2_moe adds mlp.shared_expert.{gate,up,down}_proj.weight ([S, d], [S, d], [d, S]) and
 *             mlp.shared_expert_gate.weight [1, d]; q/k/v_proj.bias [H·hd], [KV·hd], [KV·hd]
 *   qwen3_moe self_attn.{q,k}_norm.weight [hd] (per head)
 *   olmoe     self_attn.q_norm.weight [H·hd], self_attn.k_norm.weight [KV·hd] (full width)
 * Linear weights are [out, in], as PyTorch stores them.
 *
 * @example
 * expertName(config, 3, 7, 'gate')  // 'model.layers.3.block_sparse_moe.experts.7.w1.weight' (mixtral)
 */
import type { DenseTensorNames, LayerTensorNames } from './transformer.js';
import type { ExpertMatrix, ModelConfig } from './types.js';

/** A tensor a checkpoint must hold, with the shape its config implies. */
export interface ExpectedTensor {
  name: string;
  shape: number[];
}

const MIXTRAL_EXPERT: Record<ExpertMatrix, string> = { gate: 'w1', up: 'w3', down: 'w2' };

function moePrefix(c: ModelConfig, layer: number): string {
  return `model.layers.${layer}.${c.arch === 'mixtral' ? 'block_sparse_moe' : 'mlp'}`;
}

/** Layer `layer`'s router (gate) weight, [numExperts, hiddenSize]. */
export function routerName(c: ModelConfig, layer: number): string {
  return `${moePrefix(c, layer)}.gate.weight`;
}

/** Expert `expert` of layer `layer`: its gate, up or down matrix (a RangeError for one the model does not have). */
export function expertName(c: ModelConfig, layer: number, expert: number, which: ExpertMatrix): string {
  if (!(layer >= 0 && layer < c.numLayers && expert >= 0 && expert < c.numExperts)) {
    throw new RangeError(`no expert ${expert} in layer ${layer} (${c.numLayers} layers × ${c.numExperts} experts)`);
  }
  const m = c.arch === 'mixtral' ? MIXTRAL_EXPERT[which] : `${which}_proj`;
  return `${moePrefix(c, layer)}.experts.${expert}.${m}.weight`;
}

/** The shape of a routed expert's matrix: gate and up [F, d], down [d, F]. */
export function expertShape(c: ModelConfig, which: ExpertMatrix): [number, number] {
  return which === 'down' ? [c.hiddenSize, c.expertFfnSize] : [c.expertFfnSize, c.hiddenSize];
}

/** Qwen2-MoE's shared expert of layer `layer` and its sigmoid gate; undefined when the model has none. */
export function sharedExpertNames(c: ModelConfig, layer: number): { gate: string; up: string; down: string; sharedGate: string } | undefined {
  if (!c.sharedExpertFfnSize) return undefined;
  const p = `${moePrefix(c, layer)}.shared_expert`;
  return { gate: `${p}.gate_proj.weight`, up: `${p}.up_proj.weight`, down: `${p}.down_proj.weight`, sharedGate: `${p}_gate.weight` };
}

/** The names of every dense (non-routed-expert) tensor, in the shape the transformer takes them. */
export function denseTensorNames(c: ModelConfig): DenseTensorNames {
  const layers: LayerTensorNames[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const a = `${p}self_attn.`;
    const L: LayerTensorNames = {
      inputNorm: `${p}input_layernorm.weight`,
      postNorm: `${p}post_attention_layernorm.weight`,
      q: `${a}q_proj.weight`,
      k: `${a}k_proj.weight`,
      v: `${a}v_proj.weight`,
      o: `${a}o_proj.weight`,
      router: routerName(c, l),
    };
    if (c.attentionBias) Object.assign(L, { qBias: `${a}q_proj.bias`, kBias: `${a}k_proj.bias`, vBias: `${a}v_proj.bias` });
    if (c.qkNorm !== 'none') Object.assign(L, { qNorm: `${a}q_norm.weight`, kNorm: `${a}k_norm.weight` });
    const s = sharedExpertNames(c, l);
    if (s) Object.assign(L, { sharedGate: s.sharedGate, shared: { gate: s.gate, up: s.up, down: s.down } });
    layers.push(L);
  }
  const embed = 'model.embed_tokens.weight';
  return { embed, norm: 'model.norm.weight', lmHead: c.tieWordEmbeddings ? embed : 'lm_head.weight', layers };
}

/** Every tensor the checkpoint of `c` must hold, and nothing else, with its shape. */
export function expectedTensors(c: ModelConfig): ExpectedTensor[] {
  const d = c.hiddenSize;
  const qw = c.numHeads * c.headDim;
  const kw = c.numKvHeads * c.headDim;
  const names = denseTensorNames(c);
  const out: ExpectedTensor[] = [{ name: names.embed, shape: [c.vocabSize, d] }];
  names.layers.forEach((L, l) => {
    const add = (name: string | undefined, shape: number[]) => name && out.push({ name, shape });
    add(L.inputNorm, [d]);
    add(L.q, [qw, d]);
    add(L.k, [kw, d]);
    add(L.v, [kw, d]);
    add(L.o, [d, qw]);
    add(L.qBias, [qw]);
    add(L.kBias, [kw]);
    add(L.vBias, [kw]);
    add(L.qNorm, [c.qkNorm === 'head' ? c.headDim : qw]);
    add(L.kNorm, [c.qkNorm === 'head' ? c.headDim : kw]);
    add(L.postNorm, [d]);
    add(L.router, [c.numExperts, d]);
    for (let e = 0; e < c.numExperts; e++) {
      for (const w of ['gate', 'up', 'down'] as const) add(expertName(c, l, e, w), expertShape(c, w));
    }
    if (L.shared) {
      const f = c.sharedExpertFfnSize;
      add(L.shared.gate, [f, d]);
      add(L.shared.up, [f, d]);
      add(L.shared.down, [d, f]);
      add(L.sharedGate, [1, d]);
    }
  });
  out.push({ name: names.norm, shape: [d] });
  if (!c.tieWordEmbeddings) out.push({ name: names.lmHead, shape: [c.vocabSize, d] });
  return out;
}
