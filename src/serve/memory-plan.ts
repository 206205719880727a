/**
 * What each tier of a served model holds, and the resident memory that follows: the startup log's
 * memory line, /health's engine details and ebserve_memory_plan_bytes{part}, beside the process's
 * RSS on the dashboard.
 *
 * The parts: the dense weights as the forward holds them (bf16 bits where the checkpoint's values
 * are bf16); the host tier (every level of every expert in memory, or at most --host-budget bytes
 * of them with the rest in the store file on disk); the device tiers (A + B); the KV caches, which
 * are allocated at full context per sequence but whose pages become resident only as tokens are
 * written, so they count per token of context in use; and the runtime (Node, V8's heap,
 * TensorFlow.js's wasm memory, buffers in flight), a stated allowance: 512 MiB, where the embedded
 * model's server measured 172 MB at ready and 396 MB at its peak under 32 clients (bench-serve).
 */
import { denseTensorNames, expectedTensors, expertName } from '../model/names.js';
import { denseRoles, type DenseRole } from '../model/native-forward.js';
import type { ModelConfig } from '../model/types.js';

export const RUNTIME_ALLOWANCE_BYTES = 512 * 2 ** 20;

export interface MemoryPlan {
  /** Dense weights (embeddings, attention, routers, norms, LM head) as held. */
  denseBytes: number;
  /** Expert bytes kept in host memory at most. */
  hostBytes: number;
  /** What the host tier is: 'every level in memory', 'at most the host budget; the store file on disk', … */
  hostHolds: string;
  /** Device tiers A + B (0 where the experts are multiplied where they are held). */
  deviceBytes: number;
  /** The canary engines' own caches (offload with the controller on; 0 otherwise). */
  canaryBytes: number;
  /** KV cache bytes one token of one sequence's context makes resident. */
  kvBytesPerToken: number;
  runtimeBytes: number;
}

/**
 * Bytes of the dense weights as the native forward holds them, from the checkpoint's dtypes
 * alone (NativeForward.heldBytes once loaded): a matrix stored as bf16 (rows of whole 32-value
 * blocks) as its bf16 bits, everything else f32, and the rotary tables.
 */
export function denseHeldBytes(c: ModelConfig, dtypeOf: (name: string) => string): number {
  const r = denseBytesByRole(c, dtypeOf);
  return r.attention + r.router + r.norm + r.embeddings + r.lm_head + r.shared_experts + 2 * c.maxPositions * c.headDim * 4;
}

/**
 * denseHeldBytes by what the tensors are for (the rotary tables left out), and `attention_symbols`:
 * about what the attention projections hold as 8-bit symbols (a profile's dense.form: symbols), a
 * byte a value and ~1/256 of them kept aside at 12 bytes each (lm_head_symbols likewise).
 */
export function denseBytesByRole(c: ModelConfig, dtypeOf: (name: string) => string): Record<DenseRole | 'shared_experts', number> & { attention_symbols: number; lm_head_symbols: number } {
  const experts = new Set<string>();
  for (let l = 0; l < c.numLayers; l++) for (let e = 0; e < c.numExperts; e++) for (const w of ['gate', 'up', 'down'] as const) experts.add(expertName(c, l, e, w));
  const roles = denseRoles(denseTensorNames(c));
  const out = { attention: 0, router: 0, norm: 0, embeddings: 0, lm_head: 0, shared_experts: 0, attention_symbols: 0, lm_head_symbols: 0 };
  const symbolBytes = (n: number) => n * (1 + 12 / 256);
  for (const t of expectedTensors(c)) {
    if (experts.has(t.name)) continue;
    const n = t.shape.reduce((a, b) => a * b, 1);
    const role = roles.get(t.name) ?? 'shared_experts';
    const matrix = t.shape.length === 2 && t.shape[1] % 32 === 0;
    out[role] += n * (matrix && dtypeOf(t.name) === 'BF16' ? 2 : 4);
    if (matrix && role === 'attention') out.attention_symbols += symbolBytes(n);
    if (matrix && role === 'lm_head') out.lm_head_symbols += symbolBytes(n);
  }
  return out;
}

/**
 * What each tier would hold for a checkpoint and its store, before serving (inspect-model's
 * closing lines): the dense weights as held, every level of every expert (the host tier without
 * a host budget), tier A with every expert at each level, and KV bytes per token.
 */
export function tierMemory(
  ckpt: { config: ModelConfig; tensorInfo(name: string): { dtype: string } },
  store: { numLayers: number; numExperts: number; levels: number; totalBytes(): number; levelBytes(l: number, e: number, k: number): number },
) {
  const byLevel = Array.from({ length: store.levels }, (_, k) => {
    let sum = 0;
    for (let l = 0; l < store.numLayers; l++) for (let e = 0; e < store.numExperts; e++) sum += store.levelBytes(l, e, k);
    return sum;
  });
  return {
    dense_bytes: denseHeldBytes(ckpt.config, (name) => ckpt.tensorInfo(name).dtype),
    dense_by_role: denseBytesByRole(ckpt.config, (name) => ckpt.tensorInfo(name).dtype),
    host_bytes: store.totalBytes(),
    tier_a_bytes_by_level: byLevel,
    kv_bytes_per_token: kvBytesPerToken(ckpt.config),
  };
}

/** KV bytes per token of context: keys and values of every layer, f32. */
export function kvBytesPerToken(c: ModelConfig): number {
  return c.numLayers * 2 * c.numKvHeads * c.headDim * 4;
}

/** The RSS the plan allows with `tokensInUse` tokens of context held over all sequences. */
export function expectedRss(p: MemoryPlan, tokensInUse: number): number {
  return p.denseBytes + p.hostBytes + p.deviceBytes + p.canaryBytes + p.kvBytesPerToken * tokensInUse + p.runtimeBytes;
}

const mb = (b: number) => (b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : `${(b / 1e6).toFixed(1)} MB`);

/** The startup log's memory line. */
export function describeMemory(p: MemoryPlan, maxBatch: number, contextTokens: number): string {
  return (
    `memory: dense weights ${mb(p.denseBytes)} + host tier ${mb(p.hostBytes)} (${p.hostHolds}) + device tiers ${mb(p.deviceBytes)}${p.canaryBytes ? ` + canary caches ${mb(p.canaryBytes)}` : ''} + runtime ${mb(p.runtimeBytes)} ` +
    `= ${mb(expectedRss(p, 0))}, plus KV caches as context fills (${(p.kvBytesPerToken / 1e3).toFixed(1)} kB a token; ` +
    `${mb(p.kvBytesPerToken * maxBatch * contextTokens)} with ${maxBatch} sequences at the full ${contextTokens} tokens)`
  );
}

/** The plan as /health's engine details (bytes). */
export function memoryDetails(p: MemoryPlan): Record<string, number | string> {
  return {
    memory_dense_bytes: p.denseBytes, memory_host_bytes: p.hostBytes, memory_host_holds: p.hostHolds,
    memory_device_bytes: p.deviceBytes, memory_canary_bytes: p.canaryBytes, memory_kv_bytes_per_token: p.kvBytesPerToken, memory_runtime_bytes: p.runtimeBytes,
  };
}
