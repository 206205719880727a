// `ebserve compress --dtype f32|f16|bf16 --bound X [--bound-mode abs|rel|sigma] [--rungs N] IN OUT`
// Compresses a raw little-endian file of values; with --rungs N, as a precision ladder of N rungs
// (loosest first, each twice the next, the finest at --bound).
import { BOUND_MODES, compressAsync, compressLadderAsync, DTYPES, dtypeBytes, inspect, ladderBounds } from '../codec/index.js';
import { integer, oneOf, parse, positiveNumber, UsageError } from './args.js';
import { readInput, writeOutput } from './files.js';

export const usage = `usage: ebserve compress --dtype f32|f16|bf16 --bound X [--bound-mode abs|rel|sigma] [--rungs N] [--threads N] IN OUT
  IN is raw little-endian values of --dtype; OUT gets one stream (src/codec/FORMAT.md).
  --bound X        error bound: every value decodes within it (abs), within X·(max−min) (rel)
                   or within X·σ (sigma)
  --rungs N        write a precision ladder of N rungs with bounds X·2^(N−1) … 2X, X (default 1)
  --threads N      threads to use (default: every core)`;

export async function compressCommand(argv: string[]): Promise<number> {
  const { values, positionals, help } = parse('compress', argv, {
    dtype: { type: 'string' },
    bound: { type: 'string' },
    'bound-mode': { type: 'string' },
    rungs: { type: 'string' },
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
  const threads = integer('compress', 'threads', values.threads, 1, 256, 0);
  const [input, output] = positionals;
  const raw = await readInput(input);
  if (raw.byteLength % dtypeBytes(dtype) !== 0) {
    throw new UsageError(`compress: ${input} is ${raw.byteLength} bytes, not a whole number of ${dtype} values (${dtypeBytes(dtype)} bytes each)`);
  }
  const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
  const stream = rungs === 1
    ? await compressAsync(bytes, { dtype, bound, boundMode, threads })
    : await compressLadderAsync(bytes, { dtype, bounds: ladderBounds(bound, rungs), boundMode, threads });
  await writeOutput(output, stream);
  const info = inspect(stream, { verify: false });
  console.log(
    `${input}: ${info.count} ${dtype} values, ${raw.byteLength} → ${stream.byteLength} bytes ` +
      `(ratio ${info.ratio.toFixed(3)}), eb ${info.eb.toPrecision(8)}, ${info.rungs.length} rung${info.rungs.length > 1 ? 's' : ''}, ` +
      `${info.escapes} escape${info.escapes === 1 ? '' : 's'} → ${output}`,
  );
  return 0;
}
