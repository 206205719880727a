// `ebserve inspect [--json] IN` — validates a stream (checksums included) and shows its header,
// rungs (bound, bytes, cumulative ratio), and how its blocks' rates are spread (fixed coder) or
// what its symbols are (entropy coder: table, bits per value, where rung 0's bytes go).
import { dtypeBytes, inspect, type StreamInfo } from '../codec/index.js';
import { parse } from './args.js';
import { readInput } from './files.js';

export const usage = `usage: ebserve inspect [--json] IN`;

export async function inspectCommand(argv: string[]): Promise<number> {
  const { values, positionals, help } = parse('inspect', argv, {
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  }, ['IN']);
  if (help) {
    console.log(usage);
    return 0;
  }
  const info = inspect(await readInput(positionals[0]), { verify: true });
  console.log(values.json ? JSON.stringify(info, null, 2) : describe(positionals[0], info));
  return 0;
}

function describe(file: string, s: StreamInfo): string {
  const source = s.count * dtypeBytes(s.dtype);
  const lines = [
    `${file}: ebserve codec stream v${s.version}, checksums ok`,
    `  values     ${s.count} ${s.dtype} (${source} bytes)`,
    `  bound      eb ${s.eb.toPrecision(8)} absolute (asked: ${s.boundParam} ${s.boundMode})`,
    `  coder      ${s.mode === 'fixed' ? 'fixed-length bit-planes, 32-value blocks' : 'entropy (32-lane interleaved rANS)'}; ${s.escapes} escape${s.escapes === 1 ? '' : 's'} kept exactly`,
    `  size       ${s.totalBytes} bytes, ratio ${s.ratio.toFixed(3)}`,
    '  rung  bound          bytes        up to here  ratio',
  ];
  for (const [k, r] of s.rungs.entries()) {
    const ratio = s.count ? (source / r.cumulativeBytes).toFixed(3) : '-';
    lines.push(`  ${String(k).padEnd(4)}  ${r.bound.toExponential(4).padEnd(13)}  ${String(r.bytes).padEnd(11)}  ${String(r.cumulativeBytes).padEnd(10)}  ${ratio}`);
  }
  if (s.symbolStats) {
    const y = s.symbolStats;
    const perValue = (bytes: number) => (s.count ? ((8 * bytes) / s.count).toFixed(3) : '-');
    lines.push(
      `  symbols    ${y.symbols} in the table (u = |q| >> ${y.codedShift}, with its sign), table entropy ${y.tableBits.toFixed(3)} bits`,
      `  rung 0     lanes ${y.codedBytes} bytes (${perValue(y.codedBytes)} bits/value), raw planes ${y.rawPlanes} (${y.rawBytes} bytes), tables ${y.tableBytes} bytes`,
    );
    return lines.join('\n');
  }
  const blocks = s.rateHistogram.reduce((a, b) => a + b, 0);
  const used = s.rateHistogram.map((c, r) => [r, c]).filter(([, c]) => c > 0);
  lines.push(`  rates      ${used.map(([r, c]) => `${r}:${((100 * c) / blocks).toFixed(1)}%`).join(' ') || 'none'}`);
  return lines.join('\n');
}
