/**
 * The controller's run as a picture: above, every decode step's time against the SLA over the
 * link's bandwidth (shaded: the trace's multiple of link2x); below, each layer's ladder level
 * over time (dark: tight, light: loose). A self-contained SVG, no dependencies.
 */

export interface TimelineStep {
  /** Seconds since the trace started. */
  t: number;
  /** The decode step's time. */
  seconds: number;
  /** The link's bandwidth as a multiple of link2x. */
  multiple: number;
  levels: number[];
  /** The controller's bandwidth estimate after the step, as a multiple of link2x. */
  estimatedMultiple?: number;
  /** The step's measured over predicted time (the controller's model error). */
  modelRatio?: number;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function timelineChart(o: { title: string; steps: TimelineStep[]; slaSeconds: number; traceSeconds: number; levelNames: string[] }): string {
  const W = 900;
  const m = { l: 70, r: 110, t: 40 };
  const top = { y: m.t, h: 260 };
  const L = o.steps[0]?.levels.length ?? 0;
  const row = 18;
  const bottom = { y: top.y + top.h + 40, h: L * row };
  const H = bottom.y + bottom.h + 50;
  // The run's last generation may finish a little after the trace: keep its steps on the chart.
  const span = Math.max(o.traceSeconds, ...o.steps.map((s) => s.t));
  const px = (t: number) => m.l + (t / span) * (W - m.l - m.r);
  const yMax = Math.max(2 * o.slaSeconds, ...o.steps.map((s) => Math.min(s.seconds, 4 * o.slaSeconds)));
  const py = (y: number) => top.y + top.h - (Math.min(y, yMax) / yMax) * top.h;
  const maxMultiple = Math.max(1, ...o.steps.map((s) => s.multiple));
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="22" font-size="15">${esc(o.title)}</text>`,
  ];
  // The link's multiple, as bands behind the steps: one band per run of equal multiples.
  for (let i = 0; i < o.steps.length; ) {
    let j = i;
    while (j + 1 < o.steps.length && o.steps[j + 1].multiple === o.steps[i].multiple) j++;
    const x0 = px(i === 0 ? 0 : o.steps[i].t);
    const x1 = px(j + 1 < o.steps.length ? o.steps[j + 1].t : span);
    const h = (o.steps[i].multiple / maxMultiple) * top.h;
    out.push(`<rect x="${x0.toFixed(1)}" y="${(top.y + top.h - h).toFixed(1)}" width="${Math.max(0, x1 - x0).toFixed(1)}" height="${h.toFixed(1)}" fill="#e8eef8"/>`);
    i = j + 1;
  }
  for (let k = 0; k <= 4; k++) {
    const y = (yMax * k) / 4;
    out.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${py(y)}" y2="${py(y)}" stroke="#ddd"/>`);
    out.push(`<text x="${m.l - 6}" y="${py(y) + 4}" text-anchor="end">${(1000 * y).toFixed(0)}</text>`);
  }
  out.push(`<text transform="translate(18 ${top.y + top.h / 2}) rotate(-90)" text-anchor="middle">decode step, ms</text>`);
  out.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${py(o.slaSeconds)}" y2="${py(o.slaSeconds)}" stroke="#d62728" stroke-dasharray="6 4"/>`);
  out.push(`<text x="${W - m.r + 6}" y="${py(o.slaSeconds) + 4}" fill="#d62728">SLA ${(1000 * o.slaSeconds).toFixed(0)} ms</text>`);
  out.push(`<text x="${W - m.r + 6}" y="${top.y + 12}" fill="#6a84b0">shade: link</text>`);
  out.push(`<text x="${W - m.r + 6}" y="${top.y + 26}" fill="#6a84b0">(× link2x, top ${maxMultiple})</text>`);
  for (const s of o.steps) {
    const over = s.seconds > o.slaSeconds;
    out.push(`<circle cx="${px(s.t).toFixed(1)}" cy="${py(s.seconds).toFixed(1)}" r="2" fill="${over ? '#d62728' : '#1f77b4'}"/>`);
  }
  // Levels per layer: one row per layer, one cell per step, shaded by level.
  const levels = o.levelNames.length;
  const shade = (lv: number) => {
    const g = Math.round(235 - (200 * lv) / Math.max(1, levels - 1));
    return `rgb(${g},${g},${Math.min(255, g + 20)})`;
  };
  for (let l = 0; l < L; l++) {
    const y = bottom.y + l * row;
    out.push(`<text x="${m.l - 6}" y="${y + row - 5}" text-anchor="end">layer ${l}</text>`);
    // One cell per run of steps at the same level (cells per step would leave hairline gaps).
    for (let i = 0; i < o.steps.length; ) {
      let j = i;
      while (j + 1 < o.steps.length && o.steps[j + 1].levels[l] === o.steps[i].levels[l]) j++;
      const x0 = px(i === 0 ? 0 : o.steps[i].t);
      const x1 = px(j + 1 < o.steps.length ? o.steps[j + 1].t : span);
      out.push(`<rect x="${x0.toFixed(1)}" y="${y}" width="${Math.max(0.5, x1 - x0).toFixed(1)}" height="${row - 2}" fill="${shade(o.steps[i].levels[l])}" shape-rendering="crispEdges"/>`);
      i = j + 1;
    }
  }
  o.levelNames.forEach((name, k) => {
    const y = bottom.y + k * 16;
    out.push(`<rect x="${W - m.r + 6}" y="${y}" width="12" height="12" fill="${shade(k)}"/>`);
    out.push(`<text x="${W - m.r + 22}" y="${y + 10}">${esc(name)}</text>`);
  });
  for (let t = 0; t <= span; t += 10) {
    out.push(`<text x="${px(t)}" y="${bottom.y + bottom.h + 16}" text-anchor="middle">${t}</text>`);
  }
  out.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 10}" text-anchor="middle">seconds into the trace</text>`);
  out.push('</svg>');
  return out.join('\n');
}
