// `ebserve doctor [--json]` — what this machine offers ebserve, and why each choice falls where it
// does: the CPU codec's SIMD level and threads, the fused expert path's block decoder, CUDA (built into the addon or not; runtime and
// driver versions, devices, or the runtime's error), and the TensorFlow.js backend the model
// would run on, with the reason earlier choices were passed over.
import { native } from '../codec/native.js';
import { parse } from './args.js';

export const usage = `usage: ebserve doctor [--json]`;

const version = (v?: number) => (v ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : 'none');

export async function doctorCommand(argv: string[]): Promise<number> {
  const { values, help } = parse('doctor', argv, { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, []);
  if (help) {
    console.log(usage);
    return 0;
  }
  const info = native.info();
  const { initBackend } = await import('../model/backend.js');
  const backend = await initBackend();
  const c = info.cuda;
  const report = {
    node: process.version,
    cpu: { simd: info.simd, threads: info.threads, fused_decoder: info.fusedDecoder, int_dot: info.intDot },
    cuda: { built: c.built, available: c.available, devices: c.devices ?? 0, runtime_version: c.runtimeVersion ?? null, driver_version: c.driverVersion ?? null, error: c.error ?? null },
    tensorflow_backend: { name: backend.name, reason: backend.reason },
    engine: c.available
      ? 'CUDA device available'
      : `CPU: no usable CUDA device; the cpu engine multiplies on ${info.threads} threads, fused on compressed blocks with the ${info.fusedDecoder} decoder` +
        (info.fusedDecoder === 'gfni' ? '' : ' (no GFNI with AVX-512 VBMI here, so the fused path is slower than on CPUs that have them)') +
        `; symbols with 8-bit activations on the ${info.intDot} integer dot` + (info.intDot === 'vnni' ? '' : ' (no AVX-512 VNNI here: int16 products, slower)'),
  };
  if (values.json) {
    console.log(JSON.stringify(report, null, 2));
    return 0;
  }
  console.log([
    `node        ${report.node}`,
    `cpu codec   ${info.simd}, ${info.threads} threads; fused decoder ${info.fusedDecoder}; integer dot ${info.intDot}`,
    `cuda        ${!c.built ? 'not built into the addon (no nvcc when it was built)' : c.available ? `${c.devices} device(s), runtime ${version(c.runtimeVersion)}, driver ${version(c.driverVersion)}` : `built (runtime ${version(c.runtimeVersion)}), unusable: ${c.error}`}`,
    `tensorflow  ${backend.name} (${backend.reason})`,
    `engine      ${report.engine}`,
  ].join('\n'));
  return 0;
}
