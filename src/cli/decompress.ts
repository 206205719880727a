// `ebserve decompress [--out-dtype f32|f16|bf16] [--rung K] IN OUT`
// Decodes a stream (checksums verified) into raw little-endian values; by default in the
// stream's source dtype, from every rung.
import { decompressAsync, DTYPES, inspect } from '../codec/index.js';
import { integer, oneOf, parse } from './args.js';
import { readInput, writeOutput } from './files.js';

export const usage = `usage: ebserve decompress [--out-dtype f32|f16|bf16] [--rung K] [--threads N] IN OUT
  --out-dtype D    element type of OUT (default: the stream's source dtype)
  --rung K         decode rungs 0..K only, within rung K's bound (default: every rung)`;

export async function decompressCommand(argv: string[]): Promise<number> {
  const { values, positionals, help } = parse('decompress', argv, {
    'out-dtype': { type: 'string' },
    rung: { type: 'string' },
    threads: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, ['IN', 'OUT']);
  if (help) {
    console.log(usage);
    return 0;
  }
  const [input, output] = positionals;
  const stream = await readInput(input);
  const info = inspect(stream, { verify: true });
  const outDtype = oneOf('decompress', 'out-dtype', values['out-dtype'], DTYPES, info.dtype);
  const rung = integer('decompress', 'rung', values.rung, 0, info.rungs.length - 1, info.rungs.length - 1);
  const threads = integer('decompress', 'threads', values.threads, 1, 256, 0);
  const out = await decompressAsync(stream, { outDtype, rung, verify: false, threads });
  await writeOutput(output, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
  console.log(`${input}: ${info.count} values as ${outDtype}, within ${info.rungs[rung].bound.toPrecision(8)} (rung ${rung}) → ${output}`);
  return 0;
}
