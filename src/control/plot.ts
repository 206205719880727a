/**
 * A small SVG line chart, for the profiler's plots (score versus layer, one line per bound). No
 * dependencies: a self-contained file any browser or image viewer opens.
 *
 * @example
 * fs.writeFileSync('p.svg', lineChart({ title: 'codec error', xLabel: 'layer', yLabel: 'top-1', series }));
 */

export interface Series {
  name: string;
  points: [number, number][];
}

export interface Chart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** y range; default: the data's, padded. */
  yMin?: number;
  yMax?: number;
}

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function lineChart(c: Chart): string {
  const W = 720;
  const H = 420;
  const m = { l: 70, r: 170, t: 40, b: 50 };
  const xs = c.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = c.series.flatMap((s) => s.points.map((p) => p[1]));
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs);
  let y0 = c.yMin ?? Math.min(...ys);
  let y1 = c.yMax ?? Math.max(...ys);
  if (y1 - y0 < 1e-9) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const px = (x: number) => m.l + ((x - x0) / Math.max(1e-9, x1 - x0)) * (W - m.l - m.r);
  const py = (y: number) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="22" font-size="15">${esc(c.title)}</text>`,
  ];
  for (let i = 0; i <= 5; i++) {
    const y = y0 + ((y1 - y0) * i) / 5;
    out.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${py(y)}" y2="${py(y)}" stroke="#ddd"/>`);
    out.push(`<text x="${m.l - 6}" y="${py(y) + 4}" text-anchor="end">${y.toFixed(y1 - y0 < 0.1 ? 4 : 3)}</text>`);
  }
  for (const x of [...new Set(xs)].sort((a, b) => a - b)) {
    out.push(`<text x="${px(x)}" y="${H - m.b + 16}" text-anchor="middle">${x}</text>`);
  }
  out.push(`<line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}" stroke="black"/>`);
  out.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}" stroke="black"/>`);
  out.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  out.push(`<text transform="translate(18 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  c.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of pts) out.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${color}"/>`);
    out.push(`<line x1="${W - m.r + 14}" x2="${W - m.r + 34}" y1="${m.t + 10 + i * 18}" y2="${m.t + 10 + i * 18}" stroke="${color}" stroke-width="2"/>`);
    out.push(`<text x="${W - m.r + 40}" y="${m.t + 14 + i * 18}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}
