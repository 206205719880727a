// `ebserve compress --dtype f32|f16|bf16 --bound X [--bound-mode abs|rel|sigma] [--rungs N] [--coder entropy|fixed] IN OUT`
// Compresses a raw little-endian file of values; with --rungs N, as a precision ladder of N rungs
// (loosest first, each twice the next, the finest at --bound).
import { BOUND_MODES, CODERS, compressAsync, compressLadderAsync, DTYPES, dtypeBytes, inspect, ladderBounds } from '../codec/index.js';
import { integer, oneOf, parse, positiveNumber, UsageError } from './args.js';
import { readInput, writeOutput } from './files.js';

// A file is for storing and moving, so the coder that writes fewer bytes is the default: on
// N(0, 0.02) f32 at eb 1e-3 the entropy coder's 5.93× against the fixed coder's 5.09× (16 % fewer
// bytes), decoded on one CPU core at ~4.7 GB/s of f32 (AVX-512; the fixed coder ~7). `fixed` is
// for streams that the GPU kernels or the fused CPU product read directly.
export const DEFAULT_CODER = 'entropy';

export const usage = `usage: ebserve compress --dtype f32|f16|bf16 --bound X [--bound-mode abs|rel|sigma] [--rungs N] [--coder entropy|fixed] [--threads N] IN OUT
  IN is raw little-endian values of --dtype; OUT gets one stream (src/codec/FORMAT.md).
  --bound X        error bound: every value decodes within it (abs), within X·(max−min) (rel)
                   or within X·σ (sigma)
  --rungs N        write a precision ladder of N rungs with bounds X·2^(N−1) … 2X, X (default 1)
  --coder C        entropy (default): rANS lanes near the values' entropy, ~16 % fewer bytes than
                   fixed on Gaussian weights, decoded on the CPU; fixed: bit-planes, the format the
                   GPU kernels and the fused CPU product read directly
  --threads N      threads to use (default: every core)`;

export async function compressCommand(argv: string[]): Promise<number> {
  const { values, positionals, help } = parse('compress', argv, {
    dtype: { type: 'string' },
    bound: { type: 'string' },
    'bound-mode': { type: 'string' },
    rungs: { type: 'string' },
    coder: { type: 'string' },
    threads: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, ['IN', 'OUT']);
  if (help) {
    console.log(usage);
    return 0;
  }
  const dtype = oneOf('compress', 'dtype', values.dtype, DTYPES);
  const bound = positiveNumber('compress', 'bound', values.bound);
  const boundMode = oneOf('compress', 'bound-mode', values['bound-mode'], BOUND_MODES, 'abs');
  const rungs = integer('compress', 'rungs', values.rungs, 1, 16, 1);
  const coder = oneOf('compress', 'coder', values.coder, CODERS, DEFAULT_CODER);
  const threads = integer('compress', 'threads', values.threads, 1, 256, 0);
  const [input, output] = positionals;
  const raw = await readInput(input);
  if (raw.byteLength % dtypeBytes(dtype) !== 0) {
    throw new UsageError(`compress: ${input} is ${raw.byteLength} bytes, not a whole number of ${dtype} values (${dtypeBytes(dtype)} bytes each)`);
  }
  const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
  const stream = rungs === 1
    ? await compressAsync(bytes, { dtype, bound, boundMode, threads, coder })
    : await compressLadderAsync(bytes, { dtype, bounds: ladderBounds(bound, rungs), boundMode, threads, coder });
  await writeOutput(output, stream);
  const info = inspect(stream, { verify: false });
  console.log(
    `${input}: ${info.count} ${dtype} values, ${raw.byteLength} → ${stream.byteLength} bytes ` +
      `(ratio ${info.ratio.toFixed(3)}, ${info.mode} coder), eb ${info.eb.toPrecision(8)}, ${info.rungs.length} rung${info.rungs.length > 1 ? 's' : ''}, ` +
      `${info.escapes} escape${info.escapes === 1 ? '' : 's'} → ${output}`,
  );
  return 0;
}
