// The CPU codec meets the conformance suite called synchronously on one thread, on two threads,
// and through the async API on worker threads.
import {
  compress,
  compressAsync,
  compressLadder,
  compressLadderAsync,
  decompress,
  decompressAsync,
} from '../src/codec/index.js';
import { runCodecConformance } from './codec/conformance.js';

for (const threads of [1, 2]) {
  runCodecConformance({
    name: `CPU, sync, ${threads} thread${threads > 1 ? 's' : ''}`,
    unavailable: () => null,
    compress: async (input, dtype, bound, boundMode, bounds) =>
      bounds
        ? compressLadder(input, { dtype, bounds, boundMode, threads })
        : compress(input, { dtype, bound, boundMode, threads }),
    decompress: async (stream, rung, outDtype) => decompress(stream, { rung, outDtype, threads }),
  });
}

runCodecConformance({
  name: 'CPU, async (worker threads, every core)',
  unavailable: () => null,
  compress: (input, dtype, bound, boundMode, bounds) =>
    bounds ? compressLadderAsync(input, { dtype, bounds, boundMode }) : compressAsync(input, { dtype, bound, boundMode }),
  decompress: (stream, rung, outDtype) => decompressAsync(stream, { rung, outDtype }),
});
