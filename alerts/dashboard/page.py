"""The dashboard's single HTML page: inline CSS, plain JavaScript and SVG, no external assets.

It polls ``v1/dashboard/summary`` (relative, so the router may be mounted under a prefix)
every few seconds and renders: a stale banner, a drift banner (detectors whose live alert rate
left their calibrated FPR behind), alerts per minute per detector (SVG), sidecar health, detector
thresholds with their calibration, live rate against the calibrated FPR and live score histograms
beside the calibration ones, and recent alerts (and drift events) with the tokens and latents that
fired. All text from the data is inserted with ``textContent``.

The poll URL is built without the user name and password a user may have typed into the
address (``http://admin:TOKEN@host/dashboard``): browsers refuse to ``fetch`` such URLs. The
banner names what went wrong: the sidecar unreachable, signed out (401) or refused (403), an
HTTP error, or the store stale. ``login_html`` is the sign-in page (a plain HTML form).
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  :root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e4e7ec;
          --low:#5b8def; --medium:#e3a008; --high:#e8590c; --critical:#c92a2a; --ok:#2f9e44; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
  header { display:flex; align-items:center; gap:16px; padding:14px 24px; background:#111827; color:#fff; }
  header h1 { font-size:18px; margin:0; font-weight:600; }
  header .model { color:#cbd5e1; font-family:ui-monospace,monospace; font-size:13px; }
  header .spacer { flex:1; }
  header .updated { color:#94a3b8; font-size:12px; }
  .pill { padding:2px 10px; border-radius:999px; font-size:12px; font-weight:600; }
  .pill.live { background:#d3f9d8; color:#1b5e20; } .pill.stale { background:#ffe3e3; color:#a61e1e; }
  #stale-banner { display:none; padding:10px 24px; background:#fff4e6; border-bottom:2px solid #e8590c; color:#7c2d12; font-weight:500; }
  #stale-banner.visible { display:block; }
  #drift-banner { display:none; padding:10px 24px; background:#fff0f6; border-bottom:2px solid #c2255c; color:#5c0b2e; font-weight:500; }
  #drift-banner.visible { display:block; }
  .drift-drifting { color:#c2255c; font-weight:600; } .drift-ok { color:var(--ok); }
  .bars.calibration i { background:#cbd5e1; } .bars.calibration i.over { background:#f59f00; }
  .hists { display:flex; gap:10px; align-items:flex-end; } .hists small { display:block; color:var(--muted); font-size:11px; }
  main { display:grid; grid-template-columns: 2fr 1fr; gap:16px; padding:16px 24px 32px; }
  .card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px; min-width:0; }
  .card h2 { font-size:13px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); margin:0 0 10px; font-weight:600; }
  .wide { grid-column: 1 / -1; }
  table { width:100%; border-collapse:collapse; }
  th { text-align:left; font-size:12px; color:var(--muted); font-weight:600; border-bottom:1px solid var(--line); padding:6px 8px; }
  td { border-bottom:1px solid var(--line); padding:7px 8px; vertical-align:top; }
  tr:last-child td { border-bottom:none; }
  .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
  .muted { color:var(--muted); }
  .sev { display:inline-block; min-width:64px; text-align:center; padding:1px 8px; border-radius:6px; color:#fff; font-size:12px; font-weight:600; }
  .sev.low { background:var(--low); } .sev.medium { background:var(--medium); } .sev.high { background:var(--high); } .sev.critical { background:var(--critical); }
  .chip { display:inline-block; margin:0 4px 3px 0; padding:1px 7px; border-radius:6px; background:#eef2ff; color:#3730a3; font-size:12px; white-space:nowrap; }
  .chip b { font-weight:600; }
  .snippet { margin-top:3px; color:#495057; font-style:italic; }
  .legend { display:flex; flex-wrap:wrap; gap:14px; margin-top:6px; font-size:12px; }
  .legend span::before { content:""; display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:5px; background:var(--c); vertical-align:-1px; }
  #rate-chart { width:100%; height:240px; display:block; }
  .kv { display:grid; grid-template-columns:auto 1fr; gap:4px 12px; font-size:13px; }
  .kv dt { color:var(--muted); } .kv dd { margin:0; }
  .instance { padding:8px 0; border-bottom:1px solid var(--line); } .instance:last-child { border-bottom:none; }
  .dot { display:inline-block; width:8px; height:8px; border-radius:50%; margin-right:6px; }
  .bars { display:inline-flex; align-items:flex-end; gap:1px; height:22px; vertical-align:middle; }
  .bars i { display:block; width:5px; background:#94a3b8; } .bars i.over { background:var(--high); }
  .empty { color:var(--muted); padding:10px 0; }
  header form { margin:0; } header button { font:inherit; font-size:12px; color:#cbd5e1; background:none;
    border:1px solid #475569; border-radius:6px; padding:2px 10px; cursor:pointer; }
  .pill.signed-out { background:#fff3bf; color:#7c5d00; }
  .pill.unreachable, .pill.error { background:#ffe3e3; color:#a61e1e; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <span class="model" id="model"></span>
  <span class="spacer"></span>
  <span class="updated" id="updated">loading…</span>
  <span class="pill live" id="status-pill">live</span>
__SIGN_OUT__
</header>
<div id="stale-banner" role="alert"></div>
<div id="drift-banner" role="alert"></div>
<main>
  <section class="card">
    <h2>Alerts per minute, by detector (last 60 min, UTC)</h2>
    <svg id="rate-chart" viewBox="0 0 800 240" preserveAspectRatio="none" aria-label="alerts per minute chart"></svg>
    <div class="legend" id="rate-legend"></div>
  </section>
  <section class="card" id="health">
    <h2>Health</h2>
    <div id="health-body"></div>
  </section>
  <section class="card wide">
    <h2>Detectors and thresholds</h2>
    <table id="thresholds"><thead><tr>
      <th>Detector</th><th>Status</th><th>Threshold</th><th>Target FPR</th><th>Achieved FPR (95% CI)</th>
      <th>Recall</th><th>AUROC</th><th>Calibrated</th><th>Live rate vs calibrated FPR</th><th>Alerts (60 min)</th>
      <th>Scores / threshold: live (24 h) · calibration</th>
    </tr></thead><tbody></tbody></table>
  </section>
  <section class="card wide">
    <h2>Recent alerts</h2>
    <table id="recent-alerts"><thead><tr>
      <th>Time (UTC)</th><th>Severity</th><th>Detector</th><th>Score / threshold</th><th>Request</th>
      <th>Tokens</th><th>Top latents</th>
    </tr></thead><tbody></tbody></table>
  </section>
</main>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const SUMMARY_PATH = "v1/dashboard/summary?minutes=60&recent=__RECENT__";
const COLORS = ["#4263eb","#e8590c","#2f9e44","#ae3ec9","#1098ad","#f08c00","#d6336c","#5c940d"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}
// Relative to the page (the router may sit under a prefix), but without the user name and password of an
// address like http://admin:TOKEN@host/dashboard: fetch() refuses URLs that carry credentials. The browser
// still authenticates the request: with the session cookie the sign-in set, or the Basic credentials it keeps.
function apiUrl(path) {
  const url = new URL(path, window.location.href);
  url.username = ""; url.password = "";
  return url.href;
}
async function errorDetail(response) {
  try {
    const body = await response.json();
    return body.detail || body.error || response.statusText;
  } catch (err) {
    return response.statusText || "no detail";
  }
}
function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
function fmt(x, digits) { return (x == null || Number.isNaN(x)) ? "–" : Number(x).toPrecision(digits || 3); }
function pct(x) { return x == null ? "–" : (100 * x).toFixed(2) + "%"; }
function hhmm(unix) { const d = new Date(unix * 1000); return d.toISOString().slice(11, 16); }
function ago(seconds) { return seconds < 90 ? Math.round(seconds) + " s ago" : Math.round(seconds / 60) + " min ago"; }

function renderChart(rates) {
  const chart = document.getElementById("rate-chart");
  const legend = document.getElementById("rate-legend");
  chart.replaceChildren(); legend.replaceChildren();
  const W = 800, H = 240, L = 36, R = 8, T = 10, B = 24;
  const n = rates.minutes.length;
  let max = 1;
  for (let i = 0; i < n; i++) max = Math.max(max, rates.series.reduce((a, s) => a + s.total[i], 0));
  const step = Math.max(1, Math.ceil(max / 4));
  const top = step * Math.ceil(max / step);
  const x = i => L + (i + 0.5) * (W - L - R) / Math.max(1, n);
  const y = v => T + (H - T - B) * (1 - v / top);
  for (let v = 0; v <= top; v += step) {
    chart.append(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e4e7ec"}));
    const t = svg("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#667085"});
    t.textContent = v; chart.append(t);
  }
  for (let i = 0; i < n; i += 10) {
    const t = svg("text", {x: x(i), y: H - 6, "text-anchor": "middle", "font-size": 11, fill: "#667085"});
    t.textContent = hhmm(rates.minutes[i]); chart.append(t);
  }
  // One stacked column per minute, a segment per detector.
  const slot = (W - L - R) / Math.max(1, n);
  const stack = new Array(n).fill(0);
  rates.series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    s.total.forEach((v, i) => {
      if (v <= 0) return;
      const rect = svg("rect", {x: (L + i * slot + slot * 0.1).toFixed(1), y: y(stack[i] + v).toFixed(1),
                                width: (slot * 0.8).toFixed(1), height: (y(stack[i]) - y(stack[i] + v)).toFixed(1),
                                fill: color, "data-detector": s.detector, "data-minute": rates.minutes[i],
                                "data-count": v});
      const tip = svg("title", {});
      tip.textContent = hhmm(rates.minutes[i]) + " UTC  " + s.detector + ": " + v;
      rect.append(tip);
      chart.append(rect);
      stack[i] += v;
    });
    const total = s.total.reduce((a, b) => a + b, 0);
    legend.append(el("span", {style: "--c:" + color}, s.detector + " (" + total + ")"));
  });
  if (!rates.series.length) legend.append(el("span", {class: "muted", style: "--c:transparent"}, "no detectors yet"));
}

function renderHealth(data) {
  const body = document.getElementById("health-body");
  body.replaceChildren();
  const store = data.store;
  const dl = el("dl", {class: "kv"},
    el("dt", {}, "Dashboard store"), el("dd", {}, store.backend + (store.stale ? " — stale" : " — ok")),
    el("dt", {}, "Store queue"), el("dd", {}, store.queue_depth + " waiting, " + store.write_failures_total + " failed batches, " + store.dropped_total + " dropped"));
  for (const [k, v] of Object.entries(data.sidecar || {})) dl.append(el("dt", {}, k), el("dd", {}, String(v)));
  body.append(dl);
  const list = el("div", {id: "instances"});
  if (!data.instances.length) list.append(el("div", {class: "empty"}, "no sidecar heartbeats"));
  for (const inst of data.instances) {
    const fresh = inst.age_s < 30;
    const details = Object.entries(inst.details || {}).map(([k, v]) => k + "=" + v).join(" · ");
    list.append(el("div", {class: "instance"},
      el("span", {class: "dot", style: "background:" + (fresh ? "var(--ok)" : "var(--critical)")}),
      el("b", {class: "mono"}, inst.instance), " ", el("span", {class: "muted"}, "heartbeat " + ago(inst.age_s)),
      el("div", {class: "muted mono"}, details)));
  }
  body.append(list);
}

function bars(hist, cls) {
  const box = el("span", {class: "bars" + (cls ? " " + cls : ""), title: "score/threshold buckets from " + hist.edges.join(", ")});
  const max = Math.max(1, ...hist.counts);
  hist.counts.forEach((c, i) => {
    const bar = el("i", {class: hist.edges[i] >= 1 ? "over" : ""});
    bar.style.height = Math.max(1, Math.round(22 * c / max)) + "px";
    box.append(bar);
  });
  return box;
}

function liveRate(d) {
  if (!d) return el("span", {class: "muted"}, "–");
  const bound = d.calibrated_fpr_upper_bound;
  const rate = d.live_alert_rate;
  const text = (rate == null ? "–" : pct(rate)) + " vs ≤" + pct(bound) +
    (d.ratio != null ? " (" + Number(d.ratio).toFixed(1) + "×)" : "");
  const state = d.state === "insufficient_data" ? "insufficient data (" + d.window_requests + "/" + d.min_requests + " requests)"
                                                : d.state;
  return el("span", {class: "drift-" + d.state, "data-drift": d.state}, text, el("div", {class: "muted"}, state));
}

function renderDrift(data) {
  const banner = document.getElementById("drift-banner");
  const drifting = data.thresholds.filter(t => t.drift && t.drift.state === "drifting");
  if (!drifting.length) { banner.classList.remove("visible"); banner.textContent = ""; return; }
  banner.textContent = "Drifting: " + drifting.map(t => t.detector + " alerts on " + pct(t.drift.live_alert_rate) +
    " of requests (95% CI " + pct(t.drift.live_rate_ci[0]) + "–" + pct(t.drift.live_rate_ci[1]) + ") against a calibrated FPR of at most " +
    pct(t.drift.calibrated_fpr_upper_bound)).join("; ") + ". Its threshold no longer holds on this traffic: review the alerts, " +
    "then recalibrate on traffic samples (safety-monitor calibrate --thresholds-from).";
  banner.classList.add("visible");
}

function renderThresholds(data) {
  const tbody = document.querySelector("#thresholds tbody");
  tbody.replaceChildren();
  const totals = Object.fromEntries(data.rates.series.map(s => [s.detector, s.total.reduce((a, b) => a + b, 0)]));
  const hists = Object.fromEntries(data.histograms.map(h => [h.detector, h]));
  const names = new Set([...data.thresholds.map(t => t.detector), ...Object.keys(totals)]);
  const byName = Object.fromEntries(data.thresholds.map(t => [t.detector, t]));
  if (!names.size) tbody.append(el("tr", {}, el("td", {colspan: 11, class: "empty"}, "no detectors reported yet")));
  for (const name of [...names].sort()) {
    const t = byName[name] || {};
    const c = t.calibration || {};
    const ci = c.fpr_ci_low != null ? " (" + pct(c.fpr_ci_low) + "–" + pct(c.fpr_ci_high) + ")" : "";
    tbody.append(el("tr", {"data-detector": name},
      el("td", {}, el("b", {}, name), t.version ? el("span", {class: "muted"}, " v" + t.version) : "",
         t.concept ? el("div", {class: "muted"}, t.concept) : ""),
      el("td", {}, t.status || "–"),
      el("td", {class: "mono"}, fmt(t.threshold, 4)),
      el("td", {}, pct(c.target_fpr)),
      el("td", {}, pct(c.achieved_fpr) + ci),
      el("td", {}, fmt(c.recall)),
      el("td", {}, fmt(c.auroc)),
      el("td", {class: "muted"}, c.calibrated_at || "–"),
      el("td", {class: "drift"}, liveRate(t.drift)),
      el("td", {}, String(totals[name] || 0)),
      el("td", {}, histograms(hists[name], t.calibration_histogram))));
  }
}

function histograms(live, calibration) {
  const box = el("span", {class: "hists"});
  box.append(el("span", {}, live ? bars(live) : el("span", {class: "muted"}, "–"), el("small", {}, "live")));
  if (calibration && live) {
    box.append(el("span", {}, bars({edges: live.edges, counts: calibration}, "calibration"), el("small", {}, "calibration")));
  }
  return box;
}

function renderAlerts(alerts) {
  const tbody = document.querySelector("#recent-alerts tbody");
  tbody.replaceChildren();
  if (!alerts.length) tbody.append(el("tr", {}, el("td", {colspan: 7, class: "empty"}, "no alerts")));
  for (const a of alerts) {
    const span = a.token_span;
    const tokens = el("td", {class: "mono"}, "[" + span.start + ", " + span.end + ")",
      span.peak != null ? " peak " + span.peak : "", span.role ? el("div", {class: "muted"}, span.role) : "");
    const latents = el("td", {});
    for (const l of a.top_latents.slice(0, 5)) {
      latents.append(el("span", {class: "chip"}, el("b", {}, "#" + l.latent), " " + (l.label || "") + " " + fmt(l.activation)));
    }
    if (a.snippet) latents.append(el("div", {class: "snippet"}, "“" + a.snippet + "”"));
    tbody.append(el("tr", {"data-event-id": a.event_id},
      el("td", {class: "mono"}, a.time.slice(0, 19).replace("T", " ")),
      el("td", {}, el("span", {class: "sev " + a.severity}, a.severity),
         a.kind === "detector_drift" ? el("div", {class: "drift-drifting"}, "drift") : ""),
      el("td", {}, a.detector, el("span", {class: "muted"}, " v" + a.detector_version)),
      el("td", {class: "mono"}, fmt(a.score, 4) + " / " + fmt(a.threshold, 4)),
      el("td", {class: "mono"}, a.request_id),
      tokens, latents));
  }
}

function setStale(message, state) {
  const banner = document.getElementById("stale-banner");
  const pill = document.getElementById("status-pill");
  if (message) {
    banner.textContent = message;
    banner.classList.add("visible");
    const name = state || "stale";
    banner.dataset.state = name;
    pill.textContent = name; pill.className = "pill " + name.replace(" ", "-");
  } else {
    delete banner.dataset.state;
    banner.classList.remove("visible");
    banner.textContent = "";
    pill.textContent = "live"; pill.className = "pill live";
  }
}

async function refresh() {
  try {
    let response;
    try {
      response = await fetch(apiUrl(SUMMARY_PATH), {cache: "no-store", credentials: "same-origin"});
    } catch (err) {
      setStale("Stale: cannot reach the sidecar (" + err.message + "); retrying. The data shown is from the last " +
               "successful read.", "unreachable");
      return;
    }
    if (response.status === 401 || response.status === 403) {
      const detail = await errorDetail(response);
      setStale((response.status === 401 ? "Signed out" : "Access refused") + ": the sidecar answered HTTP " +
               response.status + " (" + detail + "). Reload the page to sign in with the admin token; the data " +
               "shown is from the last successful read.", "signed out");
      return;
    }
    if (!response.ok) {
      const detail = await errorDetail(response);
      setStale("Stale: the sidecar answered HTTP " + response.status + " (" + detail + "); retrying.", "error");
      return;
    }
    const data = await response.json();
    document.getElementById("model").textContent = data.model;
    const asOf = data.data_as_of ? data.data_as_of.slice(11, 19) + " UTC" : "never";
    document.getElementById("updated").textContent = "data as of " + asOf;
    const reason = (data.stale_reason || "the dashboard store is unreachable").replace(/[.]+$/, "");
    setStale(data.stale ? "Stale: " + reason +
      ". Alerts still flow to Kafka; this page shows the last data it could read (as of " + asOf + ")." : null);
    renderChart(data.rates);
    renderHealth(data);
    renderDrift(data);
    renderThresholds(data);
    renderAlerts(data.recent);
  } catch (err) {
    setStale("Stale: the page could not show the data (" + err.message + "); retrying.", "error");
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
</script>
</body>
</html>
"""


def dashboard_html(
    *, title: str = "Safety monitor", refresh_s: float = 5.0, recent: int = 50, sign_out_url: str | None = None
) -> str:
    """The page, with its title, refresh period (seconds) and number of recent alerts filled in.

    sign_out_url: where a "Sign out" button posts (relative to the page); ``None``: no button.
    """
    sign_out = (
        f'  <form method="post" action="{html.escape(sign_out_url)}"><button type="submit" id="sign-out">'
        "Sign out</button></form>"
        if sign_out_url
        else ""
    )
    return (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__REFRESH_MS__", json.dumps(int(refresh_s * 1000)))
        .replace("__RECENT__", str(int(recent)))
        .replace("__SIGN_OUT__", sign_out)
    )


_LOGIN = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · __TITLE__</title>
<style>
  body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:#f5f6f8; color:#1d2330; }
  header { padding:14px 24px; background:#111827; color:#fff; } header h1 { font-size:18px; margin:0; font-weight:600; }
  main { max-width:440px; margin:48px auto; background:#fff; border:1px solid #e4e7ec; border-radius:10px; padding:20px 24px; }
  h2 { font-size:16px; margin:0 0 12px; } label { display:block; font-weight:600; margin:12px 0 4px; }
  input { width:100%; box-sizing:border-box; font:inherit; padding:7px 9px; border:1px solid #cbd5e1; border-radius:6px; }
  button { margin-top:14px; font:inherit; font-weight:600; padding:7px 16px; border:0; border-radius:6px;
           background:#1d4ed8; color:#fff; cursor:pointer; }
  #login-error { padding:8px 10px; border-radius:6px; background:#ffe3e3; color:#a61e1e; }
  .muted { color:#667085; font-size:13px; }
</style>
</head>
<body>
<header><h1>__TITLE__</h1></header>
<main>
  <h2>Sign in to the dashboard</h2>
  __MESSAGE__
  <form method="post" action="__ACTION__" id="login-form">
    <label for="token">Admin token</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
    <button type="submit">Sign in</button>
  </form>
  <p class="muted">Or <a id="basic-sign-in" href="__BASIC__">sign in with your browser's password prompt</a>
  (HTTP Basic: any user name, the token as the password).</p>
  <p class="muted">The sidecar's admin token (<code>auth.admin_token</code>). Signing in sets a session cookie
  (HttpOnly) that expires after __HOURS__ hours. An address with the token as its password
  (<code>http://admin:TOKEN@host/dashboard</code>) signs in by itself; scripts can send the token as a bearer
  token or as the password of HTTP Basic auth instead.</p>
</main>
<script>
"use strict";
// An address like http://admin:TOKEN@host/dashboard: sign in with its password, then open the page at the same
// address without it (fetch() refuses URLs that carry credentials, so the page must not keep them).
(async function () {
  const here = new URL(document.URL);
  if (!here.password) return;
  const token = decodeURIComponent(here.password);
  here.username = ""; here.password = "";
  const target = new URL(document.getElementById("login-form").getAttribute("action"), here);
  let problem;
  try {
    const response = await fetch(target.href, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({token: token})});
    if (response.ok) { window.location.replace(here.href); return; }
    problem = response.status === 403 ? "The password in the address is not the admin token."
                                       : "Signing in with the address's password failed (HTTP " + response.status + ").";
  } catch (err) {
    problem = "Cannot reach the sidecar to sign in (" + err.message + ").";
  }
  let shown = document.getElementById("login-error");
  if (!shown) {
    shown = document.createElement("p"); shown.id = "login-error"; shown.setAttribute("role", "alert");
    document.getElementById("login-form").before(shown);
  }
  shown.textContent = problem;
})();
</script>
</body>
</html>
"""


def login_html(
    *, title: str = "Safety monitor", action: str = "v1/dashboard/login", message: str | None = None,
    session_hours: float = 12,
) -> str:
    """The sign-in page: a form posting the admin token (field ``token``) to ``action`` (relative to the page), a
    link to the same address with GET (HTTP Basic: the browser's password prompt); ``message``: an error."""
    shown = f'<p id="login-error" role="alert">{html.escape(message)}</p>' if message else ""
    return (
        _LOGIN.replace("__TITLE__", html.escape(title))
        .replace("__ACTION__", html.escape(action))
        .replace("__BASIC__", html.escape(action))
        .replace("__MESSAGE__", shown)
        .replace("__HOURS__", f"{session_hours:g}")
    )
