/**
 * A progress line for long work (compressing a checkpoint's experts, profiling): a bar redrawn
 * in place on a terminal, or a line every 10 % when stderr is a file or a pipe.
 *
 * @example
 * const bar = progressBar('compressing experts');  bar(3, 64, 'layer 0 expert 3');  bar.done();
 */
export interface ProgressBar {
  (done: number, total: number, what?: string): void;
  done(summary?: string): void;
}

export function progressBar(label: string, out: NodeJS.WriteStream = process.stderr): ProgressBar {
  const t0 = performance.now();
  const tty = Boolean(out.isTTY);
  let lastDecile = -1;
  let drawn = false;
  const elapsed = () => ((performance.now() - t0) / 1000).toFixed(1);
  const bar = ((done: number, total: number, what = '') => {
    const frac = total > 0 ? done / total : 1;
    const eta = done > 0 ? ((performance.now() - t0) / 1000 / done) * (total - done) : 0;
    const line = `${label} [${'#'.repeat(Math.round(frac * 24)).padEnd(24, '.')}] ${done}/${total} ${what} · ${elapsed()} s, ~${eta.toFixed(0)} s left`;
    if (tty) {
      out.write(`\r${line.slice(0, (out.columns || 120) - 1).padEnd(Math.min(out.columns || 120, 120) - 1)}`);
      drawn = true;
    } else {
      const decile = Math.floor(frac * 10);
      if (decile > lastDecile) {
        lastDecile = decile;
        out.write(`${line}\n`);
      }
    }
  }) as ProgressBar;
  bar.done = (summary?: string) => {
    if (drawn) out.write('\n');
    out.write(`${label}: ${summary ?? 'done'} in ${elapsed()} s\n`);
  };
  return bar;
}
