// The codec implementations the addon offers beside the CPU codec, as CodecImpls for the
// conformance suite: the CUDA kernels emulated on the host, and CUDA itself when a GPU is there.
import { codecCall } from '../../src/codec/errors.js';
import { BOUND_MODES, DTYPES, ladderCuts, type DType } from '../../src/codec/index.js';
import { native } from '../../src/codec/native.js';
import type { CodecImpl } from './conformance.js';

type Compress = NonNullable<typeof native.emulatedCompress>;
type Decompress = NonNullable<typeof native.emulatedDecompress>;

function typedOut(raw: Uint8Array, dtype: DType): Float32Array | Uint16Array {
  return dtype === 'f32'
    ? new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4)
    : new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
}

function impl(name: string, unavailable: () => string | null, compress: () => Compress, decompress: () => Decompress): CodecImpl {
  return {
    name,
    unavailable,
    compress: async (input, dtype, bound, mode, bounds) =>
      codecCall(() =>
        compress()(input, DTYPES.indexOf(dtype), bounds ? bounds[bounds.length - 1] : bound, BOUND_MODES.indexOf(mode), bounds ? ladderCuts(bounds) : [0]),
      ),
    decompress: async (stream, rung, outDtype) =>
      typedOut(codecCall(() => decompress()(stream, rung, DTYPES.indexOf(outDtype))), outDtype),
  };
}

export const emulatedKernels = impl(
  'CUDA kernels emulated on the host',
  () => (native.emulatedCompress ? null : 'the addon has no emulated kernels'),
  () => native.emulatedCompress!,
  () => native.emulatedDecompress!,
);

export const cudaKernels = impl(
  'CUDA on a GPU',
  () => {
    const probe = native.info().cuda;
    if (!probe.built) return `built without CUDA: ${probe.error}`;
    return probe.available ? null : `no usable GPU: ${probe.error}`;
  },
  () => native.cudaCompress!,
  () => native.cudaDecompress!,
);
