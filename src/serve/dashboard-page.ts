/**
 * The page behind GET /dashboard (dashboard.ts), as one string: HTML with its CSS and JavaScript
 * inline, no build step, nothing loaded from a CDN or vendored — the server's Content-Security-
 * Policy allows only this inline code and the event stream of its own origin. It subscribes to
 * /dashboard/events with EventSource and redraws on every event:
 *
 *   - one bar per layer, taller for a tighter bound (the exact bytes fill the bar), labelled with
 *     the bound; each bar is `#layer-<i>` with data-layer, data-level and data-bound, for tests
 *     and for anyone scripting the page;
 *   - the link bandwidth estimate (EMULATED when the link is), p95 inter-token latency against the
 *     SLA, each with a sparkline of what this page has seen since it opened;
 *   - the canary scores against the floor, and the recent decisions, newest first;
 *   - in the header, the batch: sequences decoding together out of --max-batch, and the requests
 *     waiting for room (`#batch`);
 *   - the routing report over the last served tokens: per layer SRP, the cache that reaches the
 *     target hit rate and the LRU / segment-cache hit rates at that size (`#routing tr`).
 *
 * The script is plain ES2017 written inside a String.raw template: it uses no backticks and no
 * dollar-brace sequences, and sets text with textContent only (reasons are server text).
 */
export const DASHBOARD_PAGE = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ebserve · dashboard</title>
<link rel="icon" href="data:,">
<style>
  :root {
    --bg: #0f1318; --card: #171d24; --line: #2a333d; --text: #dde3ea; --dim: #8b97a5;
    --good: #3fb67d; --warn: #e0a83a; --bad: #e5534b; --accent: #4f9cf0;
  }
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  body { margin: 0; background: var(--bg); color: var(--text); font: 14px/1.4 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
  header { display: flex; flex-wrap: wrap; align-items: center; gap: 10px 18px; padding: 12px 20px; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 17px; margin: 0; font-weight: 600; letter-spacing: .02em; }
  header .meta { color: var(--dim); }
  header .meta b { color: var(--text); font-weight: 600; }
  .spacer { flex: 1; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; border: 1px solid currentColor; }
  .badge.on { color: var(--good); } .badge.dry-run { color: var(--accent); } .badge.frozen { color: var(--warn); } .badge.off { color: var(--dim); }
  .badge.emulated { color: var(--warn); }
  .conn::before { content: ""; display: inline-block; width: 8px; height: 8px; border-radius: 50%; margin-right: 6px; background: var(--dim); vertical-align: 1px; }
  .conn.live::before { background: var(--good); } .conn.lost::before { background: var(--bad); }
  main { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 14px; padding: 16px 20px 24px; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; min-width: 0; }
  .wide { grid-column: 1 / -1; }
  h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .08em; color: var(--dim); margin: 0 0 10px; font-weight: 600; }
  .big { font-size: 28px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .sub { color: var(--dim); font-size: 12px; }
  .bars { display: flex; align-items: flex-end; gap: 8px; height: 210px; padding-top: 4px; }
  .layer { flex: 1 1 0; min-width: 14px; max-width: 160px; display: flex; flex-direction: column; align-items: stretch; height: 100%; }
  .track { flex: 1; position: relative; background: #1e262f; border-radius: 4px 4px 0 0; overflow: hidden; }
  .fill { position: absolute; left: 0; right: 0; bottom: 0; border-radius: 4px 4px 0 0; transition: height .35s ease, background-color .35s ease; }
  .bound { text-align: center; font-size: 12px; font-variant-numeric: tabular-nums; margin-top: 4px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  .idx { text-align: center; font-size: 11px; color: var(--dim); }
  .legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 10px; color: var(--dim); font-size: 12px; }
  .legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
  .meter { position: relative; height: 10px; background: #1e262f; border-radius: 5px; margin: 10px 0 6px; }
  .meter .mfill { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 5px; transition: width .35s ease; }
  .meter .mark { position: absolute; top: -4px; bottom: -4px; width: 2px; background: var(--text); }
  .row { display: grid; grid-template-columns: 130px 1fr 64px; align-items: center; gap: 10px; margin: 6px 0; }
  .row .meter { margin: 0; }
  .num { font-variant-numeric: tabular-nums; text-align: right; }
  svg.spark { width: 100%; height: 48px; display: block; margin-top: 8px; }
  svg.spark polyline { fill: none; stroke: var(--accent); stroke-width: 1.5; vector-effect: non-scaling-stroke; }
  svg.spark line { stroke: var(--bad); stroke-dasharray: 4 3; stroke-width: 1; vector-effect: non-scaling-stroke; }
  table { width: 100%; border-collapse: collapse; font-size: 13px; }
  th { text-align: left; color: var(--dim); font-weight: 600; font-size: 12px; padding: 4px 8px; border-bottom: 1px solid var(--line); }
  td { padding: 5px 8px; border-bottom: 1px solid #20272f; vertical-align: top; }
  td.t { white-space: nowrap; color: var(--dim); font-variant-numeric: tabular-nums; }
  td.a { white-space: nowrap; font-weight: 600; }
  .act-degrade { color: var(--warn); } .act-upgrade { color: var(--good); } .act-rollback { color: var(--bad); } .act-hold { color: var(--dim); }
  .over { color: var(--bad); } .ok { color: var(--good); }
  .empty { color: var(--dim); font-style: italic; }
  #problem { display: none; margin: 12px 20px 0; padding: 8px 12px; border: 1px solid var(--bad); border-radius: 6px; color: var(--bad); }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<header>
  <h1>ebserve</h1>
  <span class="meta">model <b id="model">—</b></span>
  <span class="meta">controller <span id="controller" class="badge off">—</span></span>
  <span class="meta">plan <b id="plan-version">—</b></span>
  <span class="meta">batch <b id="batch">—</b></span>
  <span class="spacer"></span>
  <span id="updated" class="meta"></span>
  <span id="conn" class="conn meta">connecting…</span>
</header>
<div id="problem" role="alert"></div>
<noscript><p style="padding: 0 20px">This page draws itself with JavaScript; /dashboard/events is the raw stream.</p></noscript>
<main>
  <section class="card wide" aria-labelledby="h-layers">
    <h2 id="h-layers">Error bound per layer <span class="sub">(taller: tighter; full: the exact bytes)</span></h2>
    <div id="bars" class="bars" role="list"></div>
    <div id="legend" class="legend"></div>
  </section>
  <section class="card" aria-labelledby="h-link">
    <h2 id="h-link">Link bandwidth (estimate)</h2>
    <div><span id="bandwidth" class="big">—</span> <span id="emulated" class="badge emulated" hidden>EMULATED</span></div>
    <div id="bandwidth-note" class="sub">no estimate yet</div>
    <svg id="bandwidth-spark" class="spark" viewBox="0 0 100 40" preserveAspectRatio="none" aria-hidden="true"><polyline points=""></polyline></svg>
  </section>
  <section class="card" aria-labelledby="h-latency">
    <h2 id="h-latency">p95 inter-token latency</h2>
    <div><span id="p95" class="big">—</span> <span id="sla" class="sub">no SLA</span></div>
    <div class="meter" id="p95-meter"><div id="p95-fill" class="mfill"></div><div id="sla-mark" class="mark" hidden></div></div>
    <svg id="p95-spark" class="spark" viewBox="0 0 100 40" preserveAspectRatio="none" aria-hidden="true"><line x1="0" x2="100" y1="-10" y2="-10"></line><polyline points=""></polyline></svg>
  </section>
  <section class="card" aria-labelledby="h-canary">
    <h2 id="h-canary">Canaries</h2>
    <div id="canary-none" class="empty">no canary run yet</div>
    <div id="canary-rows" hidden>
      <div class="row"><span>top-1 agreement</span><div class="meter"><div id="top1-fill" class="mfill"></div><div id="floor-mark" class="mark"></div></div><span id="top1" class="num">—</span></div>
      <div class="row"><span>exact match</span><div class="meter"><div id="exact-fill" class="mfill"></div></div><span id="exact" class="num">—</span></div>
      <div class="row"><span>KL (nats)</span><span></span><span id="kl" class="num">—</span></div>
      <div class="sub">floor: top-1 ≥ <span id="floor">—</span> (below it the plan rolls back)</div>
    </div>
  </section>
  <section class="card wide" aria-labelledby="h-routing">
    <h2 id="h-routing">Routing: the cache each layer needs <span id="routing-sub" class="sub"></span></h2>
    <table><thead><tr><th>layer</th><th>SRP</th><th>recommended cache</th><th>LRU hit rate</th><th>best segment cache</th></tr></thead><tbody id="routing"></tbody></table>
    <div id="routing-none" class="empty">not enough served tokens yet</div>
  </section>
  <section class="card wide" aria-labelledby="h-decisions">
    <h2 id="h-decisions">Recent decisions <span class="sub">(newest first)</span></h2>
    <table><thead><tr><th>time</th><th>action</th><th>reason</th></tr></thead><tbody id="decisions"></tbody></table>
    <div id="decisions-none" class="empty">no decisions yet</div>
  </section>
</main>
<script>
"use strict";
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var HISTORY = 180;
  var history = { bandwidth: [], p95: [] };
  var receivedAt = 0;
  var last = null;

  function fmtBytesPerSecond(v) {
    if (v === null || !isFinite(v)) return "—";
    var units = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"];
    var i = 0;
    while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + " " + units[i];
  }
  function fmtSeconds(s) {
    if (s === null || !isFinite(s)) return "—";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
    return s.toFixed(2) + " s";
  }
  function fmtShare(x) { return x === null || !isFinite(x) ? "—" : (x * 100).toFixed(1) + " %"; }
  function fmtTime(ms) {
    var d = new Date(ms);
    var p = function (n) { return (n < 10 ? "0" : "") + n; };
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function clamp01(x) { return Math.max(0, Math.min(1, x)); }

  // Loose rungs warm, tight ones cool (orange → cyan); the exact bytes a colour of their own.
  function levelColor(level, count, exact) {
    if (exact) return "#7a8cff";
    var rungs = Math.max(1, count - 1);
    var t = rungs <= 1 ? 1 : Math.min(1, level / (rungs - 1));
    var hue = 28 + t * 168;
    return "hsl(" + hue.toFixed(0) + ", 68%, 54%)";
  }
  function isExact(state, layer) { return state.layerBounds[layer] === 0; }
  function boundLabel(state, layer) {
    var d = state.drop && state.drop[layer];
    if (d && d !== "none") return d;
    var lv = state.levels[layer];
    var label = state.levelLabels[lv];
    if (typeof label === "string" && label !== "") return label;
    var b = state.layerBounds[layer];
    if (typeof b !== "number") return "level " + lv;
    return b === 0 ? "exact" : String(b);
  }

  function drawBars(state) {
    var bars = $("bars");
    var n = state.levels.length;
    if (bars.children.length !== n) {
      bars.textContent = "";
      for (var i = 0; i < n; i++) {
        var el = document.createElement("div");
        el.className = "layer";
        el.id = "layer-" + i;
        el.setAttribute("role", "listitem");
        el.setAttribute("data-layer", String(i));
        var track = document.createElement("div"); track.className = "track";
        var fill = document.createElement("div"); fill.className = "fill";
        track.appendChild(fill);
        var bound = document.createElement("div"); bound.className = "bound";
        var idx = document.createElement("div"); idx.className = "idx"; idx.textContent = "L" + i;
        el.appendChild(track); el.appendChild(bound); el.appendChild(idx);
        bars.appendChild(el);
      }
    }
    var count = Math.max(1, state.levelLabels.length);
    for (var l = 0; l < n; l++) {
      var bar = bars.children[l];
      var level = state.levels[l];
      var label = boundLabel(state, l);
      bar.setAttribute("data-level", String(level));
      bar.setAttribute("data-bound", String(state.layerBounds[l]));
      bar.setAttribute("aria-label", "layer " + l + ": level " + level + ", bound " + label);
      bar.title = "layer " + l + " · level " + level + " · bound " + label;
      var f = bar.firstChild.firstChild;
      f.style.height = (100 * Math.min(1, (level + 1) / count)).toFixed(1) + "%";
      f.style.backgroundColor = levelColor(level, count, isExact(state, l));
      bar.children[1].textContent = label;
    }
    var legend = $("legend");
    var key = state.levelLabels.join("|");
    if (legend.getAttribute("data-key") !== key) {
      legend.setAttribute("data-key", key);
      legend.textContent = "";
      state.levelLabels.forEach(function (lab, lv) {
        var s = document.createElement("span");
        var sw = document.createElement("i");
        sw.style.backgroundColor = levelColor(lv, count, lab === "exact");
        s.appendChild(sw);
        s.appendChild(document.createTextNode("level " + lv + ": " + lab));
        legend.appendChild(s);
      });
    }
  }

  function push(list, at, value) {
    if (value === null || !isFinite(value)) return;
    if (list.length && list[list.length - 1].at === at) list[list.length - 1].value = value;
    else list.push({ at: at, value: value });
    while (list.length > HISTORY) list.shift();
  }
  // A sparkline over what this page saw; 'ref' (the SLA) is drawn as a dashed line on the same scale.
  function drawSpark(svg, list, ref) {
    var line = svg.querySelector("polyline");
    if (list.length < 2) { line.setAttribute("points", ""); }
    var max = 0;
    list.forEach(function (p) { max = Math.max(max, p.value); });
    if (ref !== null && isFinite(ref)) max = Math.max(max, ref * 1.15);
    if (max <= 0) max = 1;
    var t0 = list.length ? list[0].at : 0, t1 = list.length ? list[list.length - 1].at : 1;
    var span = Math.max(1, t1 - t0);
    if (list.length >= 2) {
      line.setAttribute("points", list.map(function (p) {
        return ((p.at - t0) / span * 100).toFixed(2) + "," + (40 - p.value / max * 38).toFixed(2);
      }).join(" "));
    }
    var refLine = svg.querySelector("line");
    if (refLine) {
      var y = ref !== null && isFinite(ref) ? (40 - ref / max * 38).toFixed(2) : "-10";
      refLine.setAttribute("y1", y); refLine.setAttribute("y2", y);
    }
  }

  function drawLink(state) {
    $("bandwidth").textContent = fmtBytesPerSecond(state.bandwidthBytesPerSecond);
    $("emulated").hidden = !state.linkEmulated;
    $("bandwidth-note").textContent = state.bandwidthBytesPerSecond === null
      ? "no estimate yet"
      : state.linkEmulated ? "emulated link: a set bandwidth and latency, not a real device link" : "the controller's estimate, from measured transfers";
    push(history.bandwidth, state.at, state.bandwidthBytesPerSecond);
    drawSpark($("bandwidth-spark"), history.bandwidth, null);
  }

  function drawLatency(state) {
    var p95 = state.p95Seconds, sla = state.slaSeconds;
    var el = $("p95");
    el.textContent = fmtSeconds(p95);
    var over = p95 !== null && sla !== null && p95 > sla;
    el.className = "big" + (p95 === null || sla === null ? "" : over ? " over" : " ok");
    $("sla").textContent = sla === null ? "no SLA" : (over ? "over" : "within") + " the SLA of " + fmtSeconds(sla);
    var scale = Math.max(sla !== null ? sla * 1.5 : 0, p95 !== null ? p95 * 1.1 : 0) || 1;
    var fill = $("p95-fill");
    fill.style.width = (100 * clamp01((p95 || 0) / scale)).toFixed(1) + "%";
    fill.style.backgroundColor = over ? "var(--bad)" : "var(--good)";
    var mark = $("sla-mark");
    mark.hidden = sla === null;
    if (sla !== null) mark.style.left = (100 * clamp01(sla / scale)).toFixed(1) + "%";
    push(history.p95, state.at, p95);
    drawSpark($("p95-spark"), history.p95, sla);
  }

  function drawCanary(state) {
    var c = state.canary;
    $("canary-none").hidden = c !== null;
    $("canary-rows").hidden = c === null;
    if (c === null) return;
    var below = c.top1 < c.floor;
    var top1 = $("top1");
    top1.textContent = fmtShare(c.top1);
    top1.className = "num " + (below ? "over" : "ok");
    var tf = $("top1-fill");
    tf.style.width = (100 * clamp01(c.top1)).toFixed(1) + "%";
    tf.style.backgroundColor = below ? "var(--bad)" : "var(--good)";
    $("floor-mark").style.left = (100 * clamp01(c.floor)).toFixed(1) + "%";
    $("floor").textContent = fmtShare(c.floor);
    $("exact").textContent = fmtShare(c.exact);
    var ef = $("exact-fill");
    ef.style.width = (100 * clamp01(c.exact === null ? 0 : c.exact)).toFixed(1) + "%";
    ef.style.backgroundColor = "var(--accent)";
    $("kl").textContent = c.kl === null || !isFinite(c.kl) ? "—" : c.kl.toFixed(4);
  }

  function drawDecisions(state) {
    var body = $("decisions");
    body.textContent = "";
    var list = state.decisions.slice().reverse();
    list.forEach(function (d) {
      var tr = document.createElement("tr");
      var t = document.createElement("td"); t.className = "t"; t.textContent = fmtTime(d.at);
      var a = document.createElement("td"); a.className = "a act-" + String(d.action).replace(/[^a-z-]/gi, ""); a.textContent = d.action;
      var r = document.createElement("td"); r.textContent = d.reason;
      tr.appendChild(t); tr.appendChild(a); tr.appendChild(r);
      body.appendChild(tr);
    });
    $("decisions-none").hidden = list.length > 0;
  }

  function drawRouting(state) {
    var r = state.routing || null;
    var body = $("routing");
    body.textContent = "";
    $("routing-none").hidden = r !== null;
    $("routing-sub").textContent = r ? "(last " + r.tokens + " served tokens, segments of " + r.segment + ", target hit rate " + fmtShare(r.target) + ")" : "";
    if (r === null) return;
    r.layers.forEach(function (l) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-layer", String(l.layer));
      [String(l.layer), l.srp.toFixed(3), String(l.recommendedCache), fmtShare(l.lruHitRate), fmtShare(l.segmentCacheHitRate)].forEach(function (text) {
        var td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function drawBatch(state) {
    var b = state.batch;
    $("batch").textContent = b ? b.sequences + " of " + b.maxBatch + " sequences, " + b.waiting + " waiting" : "—";
  }

  function draw(state) {
    $("model").textContent = state.model;
    var c = $("controller");
    c.textContent = state.controller;
    c.className = "badge " + state.controller;
    $("plan-version").textContent = "v" + state.planVersion;
    document.body.setAttribute("data-plan-version", String(state.planVersion));
    drawBars(state);
    drawBatch(state);
    drawLink(state);
    drawLatency(state);
    drawCanary(state);
    drawDecisions(state);
    drawRouting(state);
  }

  function showProblem(text) {
    var p = $("problem");
    p.textContent = text;
    p.style.display = text ? "block" : "none";
  }

  function tick() {
    if (!receivedAt) return;
    var s = Math.round((Date.now() - receivedAt) / 1000);
    $("updated").textContent = "updated " + (s <= 1 ? "just now" : s + " s ago");
  }
  setInterval(tick, 1000);

  var events = location.pathname.replace(/\/+$/, "") + "/events";
  var source = new EventSource(events);
  source.onopen = function () {
    var c = $("conn"); c.textContent = "live"; c.className = "conn meta live";
  };
  source.onerror = function () {
    var c = $("conn"); c.textContent = "reconnecting…"; c.className = "conn meta lost";
  };
  source.onmessage = function (e) {
    var state;
    try { state = JSON.parse(e.data); } catch (err) { showProblem("a state event that is not JSON: " + err); return; }
    last = state;
    receivedAt = Date.now();
    try { draw(state); showProblem(""); } catch (err) { showProblem("could not draw the state: " + err); }
    tick();
  };
  source.addEventListener("failure", function (e) {
    var m = "the server could not take the state";
    try { m += ": " + JSON.parse(e.data).message; } catch (err) { /* keep the plain message */ }
    showProblem(m);
  });
  window.ebserveDashboard = { state: function () { return last; } };
})();
</script>
</body>
</html>
`;
