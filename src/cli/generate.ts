// `ebserve generate [--model DIR] --prompt TEXT | --prompts FILE [--max-tokens N] [--temperature T]
// [--top-p P] [--seed S] [--stop S]… [--backend B] [--engine tfjs|cpu] [--bound EB]` — runs the model on a prompt and prints only
// the continuation on stdout (streamed as it becomes final); with --prompts, one JSON line
// {"prompt", "text"} per non-empty line of FILE. What was loaded, on which TensorFlow.js backend
// and why, goes to stderr.
import type { BackendName } from '../model/backend.js';
import { EMBEDDED_MODEL_DIR } from '../model/embedded.js';
import type { GenerateOptions } from '../model/generate.js';
import type { CpuExpertEngine } from '../offload/cpu-engine.js';
import { UsageError, integer, numberIn, oneOf, parse } from './args.js';
import { readInput } from './files.js';

export const usage = `usage: ebserve generate [--model DIR] (--prompt TEXT | --prompts FILE) [--max-tokens N]
                        [--temperature T] [--top-p P] [--seed S] [--stop TEXT]... [--backend wasm|cpu|tensorflow]
                        [--engine tfjs|cpu] [--bound EB]
  --model DIR      a Hugging Face checkpoint folder or a .gguf file (default: the embedded model, ${EMBEDDED_MODEL_DIR})
  --max-tokens N   tokens to generate at most (default 64)
  --temperature T  0 (default) is greedy; above 0 samples
  --top-p P        nucleus sampling mass in (0, 1] (default 1)
  --seed S         seed of the sampler, so a sampled continuation can be reproduced
  --engine E       tfjs (default): the TensorFlow.js model, experts as tensors; cpu: the native CPU engine
  --bound EB       cpu: experts compressed within this absolute error bound, multiplied in place`;

export async function generateCommand(argv: string[]): Promise<number> {
  const { values, help } = parse('generate', argv, {
    model: { type: 'string' },
    prompt: { type: 'string' },
    prompts: { type: 'string' },
    'max-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-p': { type: 'string' },
    seed: { type: 'string' },
    stop: { type: 'string', multiple: true },
    backend: { type: 'string' },
    engine: { type: 'string' },
    bound: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, []);
  if (help) {
    console.log(usage);
    return 0;
  }
  if ((values.prompt === undefined) === (values.prompts === undefined)) {
    throw new UsageError('generate: give exactly one of --prompt TEXT and --prompts FILE');
  }
  const opts: GenerateOptions = {
    maxTokens: integer('generate', 'max-tokens', values['max-tokens'], 1, 1 << 20, 64),
    temperature: numberIn('generate', 'temperature', values.temperature, 0, 100, 0),
    topP: numberIn('generate', 'top-p', values['top-p'], Number.MIN_VALUE, 1, 1),
    seed: integer('generate', 'seed', values.seed, 0, 2 ** 32 - 1, 0),
    stop: (values.stop as string[] | undefined) ?? [],
  };
  const backend = values.backend === undefined ? undefined : oneOf<BackendName>('generate', 'backend', values.backend, ['tensorflow', 'wasm', 'cpu']);
  const engine = oneOf<'tfjs' | 'cpu'>('generate', 'engine', values.engine, ['tfjs', 'cpu'], 'tfjs');
  if (values.bound !== undefined && engine !== 'cpu') throw new UsageError('generate: --bound is a setting of --engine cpu');
  const bound = values.bound === undefined ? undefined : numberIn('generate', 'bound', values.bound, Number.MIN_VALUE, 1e6, 1e-3);
  // Read the prompts before the model: a missing file should fail fast.
  const prompts = values.prompts !== undefined
    ? (await readInput(values.prompts as string)).toString('utf8').split(/\r?\n/).filter((line) => line.length > 0)
    : [values.prompt as string];

  const dir = (values.model as string | undefined) ?? EMBEDDED_MODEL_DIR;
  // Loaded here, not at the top: TensorFlow.js takes ~0.6 s to import, which the codec commands
  // should not pay.
  const { loadModel } = await import('../model/load.js');
  const { generate } = await import('../model/generate.js');
  const m = await loadModel(dir, { backend, cpu: engine === 'cpu' ? { bound } : undefined });
  try {
    process.stderr.write(`ebserve generate: ${dir} (${m.checkpoint.config.arch}), TensorFlow.js backend ${m.backend.name} (${m.backend.reason})\n`);
    if (engine === 'cpu') {
      process.stderr.write(`ebserve generate: engine cpu, experts ${bound === undefined ? (m.engine as CpuExpertEngine).describeForm() : `compressed within ${bound}`}, ${m.model.nativeForward ? 'whole forward pass native' : 'dense layers on TensorFlow.js'}\n`);
    }
    if (values.prompt !== undefined) {
      const g = await generate(m.model, m.tokenizer, prompts[0], { ...opts, onText: (t) => process.stdout.write(t) });
      if (process.stdout.isTTY) process.stdout.write('\n');
      process.stderr.write(`ebserve generate: ${g.completionTokens} tokens, finished by ${g.finishReason}\n`);
    } else {
      for (const prompt of prompts) {
        const g = await generate(m.model, m.tokenizer, prompt, opts);
        process.stdout.write(`${JSON.stringify({ prompt, text: g.text })}\n`);
      }
    }
  } finally {
    m.dispose();
  }
  return 0;
}
