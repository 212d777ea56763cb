// A small line chart on <canvas>: a few named series over the last
// minutes, drawn again on every new sample.  No library: the dashboard
// needs lines, a y scale and a legend, nothing more.
//
// Colours come from the stylesheet (--series-0 ... --series-7, --chart-grid,
// --chart-text) so the chart follows the page's light or dark theme; the
// legend is HTML (readable by screen readers), and the canvas carries a
// text summary of the latest values in its aria-label.

import { compactNumber, el } from './ui.js';

const PALETTE = 8;

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// 0, then 1, 2, 5 x 10^k at or above v.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export class LineChart {
  // opts: {title, id, format (value -> text), windowMs}
  constructor(opts) {
    this.title = opts.title;
    this.format = opts.format || compactNumber;
    this.windowMs = opts.windowMs || 5 * 60 * 1000;
    this.series = new Map(); // name -> {points: [[t, v]], index}
    this.samples = 0;
    this.canvas = el('canvas', { class: 'chart', id: opts.id, role: 'img', 'aria-label': opts.title });
    this.legend = el('ul', { class: 'legend' });
    this.node = el(
      'figure',
      { class: 'chart-card' },
      el('figcaption', {}, opts.title),
      this.canvas,
      this.legend,
    );
  }

  // One sample: {name: value} at time t (ms); a null value leaves a gap.
  push(t, values) {
    for (const [name, v] of Object.entries(values)) {
      if (!this.series.has(name)) {
        this.series.set(name, { points: [], index: this.series.size % PALETTE });
      }
      this.series.get(name).points.push([t, v]);
    }
    const cutoff = t - this.windowMs;
    for (const s of this.series.values()) {
      while (s.points.length && s.points[0][0] < cutoff) s.points.shift();
    }
    this.now = t;
    this.samples += 1;
    this.canvas.dataset.samples = String(this.samples);
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const w = canvas.clientWidth || 300;
    const h = canvas.clientHeight || 140;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(h * ratio);
    }
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const text = cssVar('--chart-text', '#333');
    const grid = cssVar('--chart-grid', '#ddd');
    const font = '12px system-ui, sans-serif';
    g.font = font;

    let max = 0;
    for (const s of this.series.values()) {
      for (const [, v] of s.points) if (v !== null && v > max) max = v;
    }
    max = niceMax(max);
    const labels = [0, 0.5, 1].map((f) => this.format(max * f));
    const labelW = Math.max(...labels.map((l) => g.measureText(l).width)) + 8;
    const left = labelW;
    const top = 8;
    const bottom = h - 18;
    const right = w - 6;
    // The x axis: the last windowMs, or less while the first minutes fill up.
    const t1 = this.now || Date.now();
    let first = t1;
    for (const s of this.series.values()) if (s.points.length) first = Math.min(first, s.points[0][0]);
    const t0 = Math.min(t1 - 1000, Math.max(t1 - this.windowMs, first));
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (right - left);
    const y = (v) => bottom - (v / max) * (bottom - top);

    g.strokeStyle = grid;
    g.fillStyle = text;
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    [0, 0.5, 1].forEach((f, i) => {
      const yy = Math.round(y(max * f)) + 0.5;
      g.beginPath();
      g.moveTo(left, yy);
      g.lineTo(right, yy);
      g.stroke();
      g.fillText(labels[i], left - 4, yy);
    });
    g.textBaseline = 'alphabetic';
    g.textAlign = 'left';
    const span = (t1 - t0) / 1000;
    g.fillText(span >= 90 ? `−${Math.round(span / 60)} min` : `−${Math.round(span)} s`, left, h - 4);
    g.textAlign = 'right';
    g.fillText('now', right, h - 4);

    g.lineWidth = 2;
    g.lineJoin = 'round';
    for (const s of this.series.values()) {
      g.strokeStyle = cssVar(`--series-${s.index}`, '#06c');
      g.beginPath();
      let pen = false;
      for (const [t, v] of s.points) {
        if (v === null || v === undefined || Number.isNaN(v)) {
          pen = false;
          continue;
        }
        if (pen) g.lineTo(x(t), y(v));
        else g.moveTo(x(t), y(v));
        pen = true;
      }
      g.stroke();
    }
    this.drawLegend();
  }

  drawLegend() {
    const items = [];
    const summary = [];
    for (const [name, s] of this.series) {
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      const shown = last === null || last === undefined ? '–' : this.format(last);
      summary.push(`${name} ${shown}`);
      items.push(
        el(
          'li',
          { dataset: { series: name } },
          el('span', { class: `swatch series-${s.index}`, 'aria-hidden': 'true' }),
          `${name}: `,
          el('strong', {}, shown),
        ),
      );
    }
    this.legend.replaceChildren(...items);
    this.canvas.setAttribute('aria-label', `${this.title}: ${summary.join(', ') || 'no data yet'}`);
  }
}
