/**
 * The GGUF container (llama.cpp's model file), as ggml's gguf.cpp reads it, version 3:
 *
 *   "GGUF" (u32 0x46554747 LE) · version u32 · tensor_count u64 · kv_count u64
 *   kv_count × { key: string · value_type u32 · value }
 *   tensor_count × { name: string · n_dims u32 · ne[n_dims] u64 · ggml_type u32 · offset u64 }
 *   padding to general.alignment (default 32) · tensor data (each tensor at its offset from here,
 *   every offset a multiple of the alignment)
 *
 * string = u64 length + UTF-8 bytes; array = element type u32 · count u64 · elements. Everything
 * little-endian. ne[0] is the fastest-varying dimension, so a PyTorch [out, in] matrix is
 * ne = [in, out] and a stack of E experts [E, F, d] is ne = [d, F, E]: the shape reversed.
 *
 * The ggml types ebserve knows by id, with their block (elements) and bytes per block; `decoded`
 * marks those it can turn into float32 (the rest are named in the load error).
 */

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** Metadata value types (gguf_type). */
export enum GgufValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** Bytes of one scalar of each fixed-size value type (strings and arrays are variable). */
export const VALUE_BYTES: Partial<Record<GgufValueType, number>> = {
  [GgufValueType.UINT8]: 1,
  [GgufValueType.INT8]: 1,
  [GgufValueType.UINT16]: 2,
  [GgufValueType.INT16]: 2,
  [GgufValueType.UINT32]: 4,
  [GgufValueType.INT32]: 4,
  [GgufValueType.FLOAT32]: 4,
  [GgufValueType.BOOL]: 1,
  [GgufValueType.UINT64]: 8,
  [GgufValueType.INT64]: 8,
  [GgufValueType.FLOAT64]: 8,
};

/** A metadata value as read: numbers (u64/i64 beyond 2^53 are refused), strings, arrays of those. */
export type GgufValue = number | bigint | boolean | string | GgufValue[];

/** One metadata entry with its declared type (arrays also carry their element type). */
export interface GgufEntry {
  type: GgufValueType;
  itemType?: GgufValueType;
  value: GgufValue;
}

/** ggml tensor types (ggml_type ids). */
export enum GgmlType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
}

/** Block size (elements) and bytes per block of each ggml type (ggml.c's type_traits). */
export const GGML_BLOCKS: Readonly<Record<number, { block: number; bytes: number }>> = {
  [GgmlType.F32]: { block: 1, bytes: 4 },
  [GgmlType.F16]: { block: 1, bytes: 2 },
  [GgmlType.Q4_0]: { block: 32, bytes: 18 },
  [GgmlType.Q4_1]: { block: 32, bytes: 20 },
  [GgmlType.Q5_0]: { block: 32, bytes: 22 },
  [GgmlType.Q5_1]: { block: 32, bytes: 24 },
  [GgmlType.Q8_0]: { block: 32, bytes: 34 },
  [GgmlType.Q8_1]: { block: 32, bytes: 36 },
  [GgmlType.Q2_K]: { block: 256, bytes: 84 },
  [GgmlType.Q3_K]: { block: 256, bytes: 110 },
  [GgmlType.Q4_K]: { block: 256, bytes: 144 },
  [GgmlType.Q5_K]: { block: 256, bytes: 176 },
  [GgmlType.Q6_K]: { block: 256, bytes: 210 },
  [GgmlType.Q8_K]: { block: 256, bytes: 292 },
  [GgmlType.IQ2_XXS]: { block: 256, bytes: 66 },
  [GgmlType.IQ2_XS]: { block: 256, bytes: 74 },
  [GgmlType.IQ3_XXS]: { block: 256, bytes: 98 },
  [GgmlType.IQ1_S]: { block: 256, bytes: 50 },
  [GgmlType.IQ4_NL]: { block: 32, bytes: 18 },
  [GgmlType.IQ3_S]: { block: 256, bytes: 110 },
  [GgmlType.IQ2_S]: { block: 256, bytes: 82 },
  [GgmlType.IQ4_XS]: { block: 256, bytes: 136 },
  [GgmlType.I8]: { block: 1, bytes: 1 },
  [GgmlType.I16]: { block: 1, bytes: 2 },
  [GgmlType.I32]: { block: 1, bytes: 4 },
  [GgmlType.I64]: { block: 1, bytes: 8 },
  [GgmlType.F64]: { block: 1, bytes: 8 },
  [GgmlType.IQ1_M]: { block: 256, bytes: 56 },
  [GgmlType.BF16]: { block: 1, bytes: 2 },
  [GgmlType.TQ1_0]: { block: 256, bytes: 54 },
  [GgmlType.TQ2_0]: { block: 256, bytes: 66 },
  [GgmlType.MXFP4]: { block: 32, bytes: 17 },
};

/** The name ggml gives a type id ('Q8_0'), or `type N` for an id it does not know. */
export function ggmlTypeName(type: number): string {
  return GgmlType[type] ?? `type ${type}`;
}

/** general.file_type values (llama_ftype) of the files export writes. */
export const FILE_TYPE = { f32: 0, f16: 1, q4_0: 2, q8_0: 7 } as const;

/** Token types of tokenizer.ggml.token_type (llama_token_type). */
export enum TokenType {
  UNDEFINED = 0,
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}
