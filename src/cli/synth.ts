// `ebserve synth --shape NAME [--layers N] [--seed S] [--locality R] --out DIR`
// A synthetic checkpoint of a real MoE's shape (src/model/synth): its exact config.json and tensor
// names, random bf16 weights, a tokenizer of its vocabulary size, and routers calibrated to route
// like a trained model's (routing.json says how well). Every flag is checked before anything is
// written; a failure or an interrupt leaves nothing behind.
import { integer, numberIn, oneOf, parse, UsageError, wholeNumber } from './args.js';
import { DEFAULT_CALIBRATION_TOKENS, DEFAULT_MAX_SHARD_BYTES, outProblem, removePartial, SHAPES, shapeDepth, synthesize } from '../model/synth/index.js';

export const usage = `usage: ebserve synth --shape ${SHAPES.join('|')} --out DIR [options]
  Writes a Hugging Face folder of that model's shape: its config.json (depth cut to --layers),
  sharded bf16 safetensors with random N(0, initializer_range) weights (norms at 1), a byte-level
  BPE tokenizer.json of its vocabulary size, and routing.json: each layer's expert-load entropy
  and reuse of the previous token's experts after router calibration on the canary text.
  --shape NAME              olmoe-1b-7b (16 layers), qwen3-30b-a3b (48), mixtral-8x7b (32)
  --out DIR                 the folder to create (absent, or empty)
  --layers N                depth, 1 to the model's (default: the model's)
  --seed S                  seed of the random weights (default 0): same seed, same bytes
  --locality R              target share (0..1) of a token's experts reused from the previous
                            token (default: what balanced calibration gives, stated in routing.json)
  --calibration-tokens N    tokens of calibration text, 256 or more (default ${DEFAULT_CALIBRATION_TOKENS})
  --max-shard-bytes N       largest shard file (default ${DEFAULT_MAX_SHARD_BYTES})
  --threads N               threads for the calibration's expert products (default: every core)`;

export async function synthCommand(argv: string[]): Promise<number> {
  const { values, help } = parse('synth', argv, {
    shape: { type: 'string' },
    out: { type: 'string' },
    layers: { type: 'string' },
    seed: { type: 'string' },
    locality: { type: 'string' },
    'calibration-tokens': { type: 'string' },
    'max-shard-bytes': { type: 'string' },
    threads: { type: 'string' },
    // Not in the usage: divides every width so the tests can run the whole command in seconds.
    'test-shrink': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, []);
  if (help) {
    console.log(usage);
    return 0;
  }
  const shape = oneOf('synth', 'shape', values.shape, SHAPES);
  if (typeof values.out !== 'string' || values.out === '') throw new UsageError('synth: --out DIR is required (the folder to create)');
  const layers = wholeNumber('synth', 'layers', values.layers, shapeDepth(shape), shapeDepth(shape));
  const seed = values.seed === undefined ? 0 : wholeNumberFrom0('seed', String(values.seed));
  const locality = values.locality === undefined ? undefined : numberIn('synth', 'locality', values.locality, 0, 1, 0);
  // Fewer tokens than a few per expert cannot estimate a logit covariance worth whitening.
  const calibrationTokens = integer('synth', 'calibration-tokens', values['calibration-tokens'], 256, 1 << 20, DEFAULT_CALIBRATION_TOKENS);
  const maxShardBytes = wholeNumber('synth', 'max-shard-bytes', values['max-shard-bytes'], Number.MAX_SAFE_INTEGER, DEFAULT_MAX_SHARD_BYTES);
  const threads = values.threads === undefined ? 0 : wholeNumber('synth', 'threads', values.threads, 256, 0);
  const testShrink = wholeNumber('synth', 'test-shrink', values['test-shrink'], 64, 1);
  const problem = outProblem(values.out);
  if (problem) throw new UsageError(`synth: --out: ${problem}`);

  // An interrupt must not leave a half-written folder: remove it, then exit as interrupted.
  const onSignal = (signal: NodeJS.Signals) => {
    removePartial();
    process.stderr.write(`ebserve synth: interrupted (${signal}); nothing written\n`);
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const r = await synthesize({ shape, out: values.out, layers, seed, locality, calibrationTokens, maxShardBytes, threads, testShrink });
    const s = r.routing.summary;
    console.log(
      `${r.out}: ${shape}${testShrink > 1 ? ` (test shrink ${testShrink})` : ''}, ${r.config.numLayers} layers, ${r.shards.length} shard${r.shards.length === 1 ? '' : 's'}, ` +
        `${(r.checkpointBytes / 1e9).toFixed(2)} GB in ${r.seconds.write.toFixed(1)} s; routers calibrated in ${r.seconds.calibrate.toFixed(1)} s: ` +
        `load entropy ≥ ${s.load_entropy_min_bits.toFixed(3)} bits of ${Math.log2(r.config.numExperts).toFixed(0)}, ` +
        `reuse of the previous token's experts ${s.reuse_prev_mean.toFixed(3)} (routing.json)`,
    );
    return s.entropy_floor_met ? 0 : 1;
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}

/** --name as a whole number from 0 (a seed), else a UsageError naming the flag. */
function wholeNumberFrom0(name: string, value: string): number {
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(Number(value))) throw new UsageError(`synth: --${name} must be a whole number from 0, got ${value}`);
  return Number(value);
}
