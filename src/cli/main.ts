// What bin/ebserve runs: picks the command, runs it, and turns every failure into a message on
// stderr and an exit code (2 for usage, 1 for anything else) — never a stack trace for bad input.
import { CodecError } from '../codec/index.js';
import { ConfigError } from '../control/config-file.js';
import { CheckpointError } from '../model/checkpoint.js';
import { UsageError } from './args.js';
import { checkConfigCommand, usage as checkConfigUsage } from './check-config.js';
import { compressCommand, usage as compressUsage } from './compress.js';
import { decompressCommand, usage as decompressUsage } from './decompress.js';
import { doctorCommand, usage as doctorUsage } from './doctor.js';
import { exportGgufCommand, usage as exportGgufUsage } from './export-gguf.js';
import { generateCommand, usage as generateUsage } from './generate.js';
import { inspectCommand, usage as inspectUsage } from './inspect.js';
import { inspectModelCommand, usage as inspectModelUsage } from './inspect-model.js';
import { profileCommand, usage as profileUsage } from './profile.js';
import { routingReportCommand, usage as routingReportUsage } from './routing-report.js';
import { serveCommand, usage as serveUsage } from './serve.js';
import { synthCommand, usage as synthUsage } from './synth.js';

const commands: Record<string, { run: (argv: string[]) => Promise<number>; usage: string; what: string }> = {
  'check-config': { run: checkConfigCommand, usage: checkConfigUsage, what: 'validate a policy and a profile without serving' },
  compress: { run: compressCommand, usage: compressUsage, what: 'compress a raw tensor file within an error bound' },
  doctor: { run: doctorCommand, usage: doctorUsage, what: 'report what this machine offers: SIMD, CUDA (or why not), TensorFlow.js backend' },
  decompress: { run: decompressCommand, usage: decompressUsage, what: 'decode a stream back to raw values' },
  'export-gguf': { run: exportGgufCommand, usage: exportGgufUsage, what: 'write a checkpoint (or the embedded model) as a llama.cpp GGUF file: f32, f16, q8_0 or q4_0' },
  generate: { run: generateCommand, usage: generateUsage, what: 'continue a prompt with a model (default: the embedded one)' },
  inspect: { run: inspectCommand, usage: inspectUsage, what: 'validate a stream and show its header and rungs' },
  profile: { run: profileCommand, usage: profileUsage, what: 'measure per-layer sensitivity to each bound on the canaries; write a profile and plots' },
  'inspect-model': { run: inspectModelCommand, usage: inspectModelUsage, what: "show what a precision ladder costs a checkpoint's experts, per layer" },
  'routing-report': { run: routingReportCommand, usage: routingReportUsage, what: 'how well a model suits expert offloading: per-layer routing consistency and the cache size each layer needs' },
  serve: { run: serveCommand, usage: serveUsage, what: 'serve a model over an OpenAI-compatible HTTP API, with /metrics and /health' },
  synth: { run: synthCommand, usage: synthUsage, what: "write a synthetic checkpoint of a real MoE's shape (OLMoE, Qwen3-MoE, Mixtral) that routes like a trained one" },
};

function help(): string {
  const rows = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(15)}${c.what}`);
  return ['usage: ebserve <command> [options]', '', 'commands:', ...rows, '', 'ebserve <command> --help shows its options.'].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(help());
    return name ? 0 : 2;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`ebserve: unknown command '${name}'\n${help()}\n`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`ebserve ${e.message}\n${command.usage}\n`);
      return 2;
    }
    const what = e instanceof CodecError || e instanceof CheckpointError ? `${e.message} [${e.code}]` : e instanceof ConfigError ? `\n${e.message}` : e instanceof Error ? e.message : String(e);
    process.stderr.write(`ebserve ${name}: ${what}\n`);
    return 1;
  }
}
