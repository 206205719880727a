// `ebserve export-gguf DIR OUT.gguf --type f32|f16|q8_0|q4_0`
// Writes a checkpoint folder (or the embedded model: DIR = "embedded") as a llama.cpp GGUF file:
// the llama.cpp architecture's metadata, tensor names, q/k row order and block layouts
// (src/model/gguf/export.ts says which tensors take which type).
import { EMBEDDED_MODEL_DIR } from '../model/embedded.js';
import { EXPORT_TYPES, exportGguf } from '../model/gguf/export.js';
import { oneOf, parse, UsageError } from './args.js';

export const usage = `usage: ebserve export-gguf DIR OUT.gguf --type ${EXPORT_TYPES.join('|')}
  DIR          a Hugging Face checkpoint folder (mixtral, olmoe or qwen3_moe), or "embedded"
  OUT.gguf     the file to write (replaced when it exists; written whole or not at all)
  --type T     f32 and f16 as convert_hf_to_gguf.py writes them (norms and routers stay f32);
               q8_0 as its --outtype q8_0; q4_0 as llama-quantize --pure Q4_0`;

export async function exportGgufCommand(argv: string[]): Promise<number> {
  const { values, positionals, help } = parse('export-gguf', argv, {
    type: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, ['DIR', 'OUT.gguf']);
  if (help) {
    console.log(usage);
    return 0;
  }
  const type = oneOf('export-gguf', 'type', values.type, EXPORT_TYPES);
  const [dirArg, out] = positionals;
  if (!/\.gguf$/i.test(out)) throw new UsageError(`export-gguf: OUT must end in .gguf, got ${out}`);
  const dir = dirArg === 'embedded' ? EMBEDDED_MODEL_DIR : dirArg;
  const t0 = performance.now();
  const r = exportGguf({ dir, out, type });
  const types = Object.entries(r.types).map(([t, n]) => `${n} ${t}`).join(', ');
  console.log(`${out}: ${r.arch}, ${r.tensors} tensors (${types}), ${(r.bytes / 1e6).toFixed(1)} MB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return 0;
}
