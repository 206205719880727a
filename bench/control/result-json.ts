/**
 * bench/results/control.json as text: pretty-printed, but a timeline step on one line. Printed
 * with an indent alone, each step's numbers take a line apiece and a 60 s replay's ~17,000
 * steps made a 12 MB file; one line per step keeps it readable and a quarter the size.
 */
export function resultJson(result: unknown): string {
  const steps: unknown[][] = [];
  // Timelines out first (as placeholders), the rest pretty-printed, then each step put back on a line.
  const text = JSON.stringify(result, (key, value) => (key === 'timeline' && Array.isArray(value) ? `\u0000timeline ${steps.push(value) - 1}` : value), 2);
  return (
    text.replace(/"\\u0000timeline (\d+)"/g, (_m, i: string) => {
      const rows = steps[Number(i)];
      // (rows sit at two levels of indent, a row's keys at three)
      return rows.length ? `[\n${rows.map((s) => `        ${JSON.stringify(s)}`).join(',\n')}\n      ]` : '[]';
    }) + '\n'
  );
}
