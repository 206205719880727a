/**
 * GGUF, llama.cpp's model file: read as a Checkpoint (checkpoint.ts, with reader.ts for the header,
 * quant.ts for the blocks, names.ts for the HF ⇄ llama.cpp mapping, vocab.ts for the tokenizer),
 * and written from a checkpoint (export.ts through writer.ts). The container is described in
 * format.ts.
 */
export { GgufCheckpoint, ggufConfig, isGgufPath, openGgufCheckpoint } from './checkpoint.js';
export { EXPORT_TYPES, exportGguf, type ExportOptions, type ExportResult, type ExportType } from './export.js';
export { GgmlType, GgufValueType, ggmlTypeName, type GgufEntry } from './format.js';
export { GGUF_ARCH, ggufPlaces, permuteRows } from './names.js';
export { dequantize, quantize } from './quant.js';
export { readGgufHeader, type GgufHeader, type GgufTensor } from './reader.js';
export { BYTE_SYMBOLS, ggufTokenizer, isByteVocab } from './vocab.js';
export { writeGguf, type TensorToWrite } from './writer.js';
