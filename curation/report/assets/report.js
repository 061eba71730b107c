// reelsift report: the threshold workbench and the clip previews. Plain JS, no library, no network.
// The tier decision below mirrors filters/policy.py decide() and curation/stages/filter.py (duplicates,
// reason strings and the keys reasons are counted under); tests/test_report_browser.py holds them equal.
(() => {
  "use strict";
  const D = JSON.parse(document.getElementById("reelsift-data").textContent);
  const S = D.sample, n = S.n, N = D.n_total, tiers = D.tiers;

  // ------------------------------------------------------------------ the sample
  function decode(b64, type) {
    const bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new type(bytes.buffer);
  }
  const TYPES = { f4: Float32Array, f8: Float64Array };
  const short = decode(S.short_side, Int32Array), dur = decode(S.duration_s, Float32Array);
  const col = {};
  for (const [c, v] of Object.entries(S.cols)) col[c] = decode(v.b64, TYPES[v.dtype]);

  // ------------------------------------------------------------------ the policy, as Python runs it
  // Python's f"{x:.4g}": 4 significant digits, exact value rounded half to even.
  function fmt4g(x) {
    if (Number.isNaN(x)) return "nan";
    if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
    const sign = x < 0 || Object.is(x, -0) ? "-" : "";
    const ax = Math.abs(x);
    if (ax === 0) return sign + "0";
    const [m, e] = ax.toExponential(60).split("e");
    const digits = m.replace(".", "");
    let exp = parseInt(e, 10), head = parseInt(digits.slice(0, 4), 10);
    const rest = digits.slice(4);
    if (rest[0] > "5" || (rest[0] === "5" && (/[1-9]/.test(rest.slice(1)) || head % 2 === 1))) head += 1;
    if (head === 10000) { head = 1000; exp += 1; }
    const d = String(head);
    const strip = (s) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
    if (exp >= -4 && exp < 4) {
      const s = exp >= 0 ? d.slice(0, exp + 1) + "." + d.slice(exp + 1) : "0." + "0".repeat(-exp - 1) + d;
      return sign + strip(s);
    }
    const mant = strip(d[0] + "." + d.slice(1));
    return sign + mant + "e" + (exp < 0 ? "-" : "+") + String(Math.abs(exp)).padStart(2, "0");
  }

  // decide() with every reason string: {tier: index into tiers or -1, keep, reasons}.
  function decideRow(i, B) {
    const reasons = [];
    let tier = -1;
    for (let j = 0; j < tiers.length && tier < 0; j++) {
      const t = tiers[j], failed = [];
      if (short[i] < t.min_short) failed.push(`short_side=${short[i]}<${t.min_short}@${t.name}`);
      t.bounds.forEach((b, k) => {
        const v = col[b.col][i], lo = B[j][k].min, hi = B[j][k].max;
        if (Number.isNaN(v)) { failed.push(`${b.col}=missing@${t.name}`); return; }
        if (lo !== null && v < lo) failed.push(`${b.col}=${fmt4g(v)}<${fmt4g(lo)}@${t.name}`);
        if (hi !== null && v > hi) failed.push(`${b.col}=${fmt4g(v)}>${fmt4g(hi)}@${t.name}`);
      });
      if (failed.length === 0) tier = j; else reasons.push(...failed);
    }
    const dupOf = S.dup[i];
    if (dupOf !== undefined) return { tier: -1, keep: false, reasons: [`duplicate_of=${dupOf}`, ...reasons] };
    return { tier, keep: tier >= 0, reasons };
  }

  // The same decision, counted as `filter` counts it: the kept tier (-1: rejected) and, for a
  // rejected clip, the keys of its reasons (precomputed per bound: no string is built per row).
  function decideFast(i, B) {
    const heads = [];
    let tier = -1;
    for (let j = 0; j < tiers.length && tier < 0; j++) {
      const t = tiers[j], before = heads.length;
      if (short[i] < t.min_short) heads.push(t.short_head);
      t.bounds.forEach((b, k) => {
        const v = col[b.col][i], lo = B[j][k].min, hi = B[j][k].max;
        if (Number.isNaN(v) || (lo !== null && v < lo) || (hi !== null && v > hi)) heads.push(b.head);
      });
      if (heads.length === before) tier = j;
    }
    if (S.dup[i] !== undefined) return { tier: -1, heads: ["duplicate_of", ...heads] };
    return tier >= 0 ? { tier, heads: [] } : { tier: -1, heads };
  }

  // ------------------------------------------------------------------ state: one value per slider
  const cfgB = tiers.map((t) => t.bounds.map((b) => ({ min: b.min, max: b.max })));
  let cur = cfgB.map((bs) => bs.map((b) => ({ ...b })));
  const where = {}; // slider id -> [tier index, bound index, end]
  D.sliders.forEach((s) => {
    const j = tiers.findIndex((t) => t.name === s.tier);
    where[s.id] = [j, tiers[j].bounds.findIndex((b) => b.col === s.col), s.end];
  });
  const atConfig = Array.from({ length: n }, (_, i) => decideFast(i, cfgB));

  // Contributions of one row to every counted quantity.
  function contrib(r, i) {
    const out = new Map([[r.tier >= 0 ? "kept:" + tiers[r.tier].name : "rejected", 1],
                         [r.tier >= 0 ? "kept_s:" + tiers[r.tier].name : "rejected_s", dur[i]]]);
    for (const h of r.heads) out.set("r:" + h, (out.get("r:" + h) || 0) + 1);
    return out;
  }

  // Exact at the config + N/n x (change on the sample); a 95% interval unless the sample is the run.
  function estimate() {
    const sum = new Map(), sq = new Map(), changed = [];
    for (let i = 0; i < n; i++) {
      const a = atConfig[i], b = decideFast(i, cur);
      if (a.tier === b.tier && a.heads.join("|") === b.heads.join("|")) continue;
      changed.push([i, a.tier, b.tier]);
      const ca = contrib(a, i), cb = contrib(b, i);
      for (const k of new Set([...ca.keys(), ...cb.keys()])) {
        const d = (cb.get(k) || 0) - (ca.get(k) || 0);
        sum.set(k, (sum.get(k) || 0) + d);
        sq.set(k, (sq.get(k) || 0) + d * d);
      }
    }
    const moved = D.sliders.some((s) => value(s) !== s.value);
    const exact = new Map([["rejected", D.exact.rejected[0]], ["rejected_s", D.exact.rejected[1]]]);
    for (const [t, [c, sec]] of Object.entries(D.exact.kept)) { exact.set("kept:" + t, c); exact.set("kept_s:" + t, sec); }
    for (const [h, c] of Object.entries(D.exact.reasons)) exact.set("r:" + h, c);
    const meanDur = n ? dur.reduce((a, b) => a + b, 0) / n : 0;
    const est = (k) => {
      const s = sum.get(k) || 0, s2 = sq.get(k) || 0, base = exact.get(k) || 0;
      if (n >= N || !moved) return { v: base + s, err: 0 };
      const varD = n > 1 ? (s2 - (s * s) / n) / (n - 1) : s2;
      let err = 1.96 * N * Math.sqrt(Math.max(0, (1 - n / N) * varD / n));
      const seconds = k.startsWith("kept_s:") || k === "rejected_s";
      if (s2 === 0) err = ((3 * N) / n) * (seconds ? meanDur : 1); // rule of three: no change seen
      return { v: base + (N / n) * s, err, seen: s2 > 0 };
    };
    const keys = new Set([...exact.keys(), ...sum.keys()]);
    return { est, keys, changed, estimated: n < N && moved };
  }
  const value = (s) => { const [j, k, end] = where[s.id]; return cur[j][k][end]; };

  // ------------------------------------------------------------------ rendering
  const el = (tag, attrs = {}, ...kids) => {
    const x = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) (k === "text" ? (x.textContent = v) : x.setAttribute(k, v));
    for (const c of kids) x.append(c);
    return x;
  };
  const SVG = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs) => {
    const x = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) x.setAttribute(k, v);
    return x;
  };
  const hoursText = (sec) => { const h = sec / 3600; return h >= 1 ? h.toFixed(2) + " h" : h * 60 >= 1 ? (h * 60).toFixed(1) + " min" : sec.toFixed(1) + " s"; };
  const setValue = (v) => { let s = String(v); if (Number.isInteger(v)) s += ".0"; else if (s.includes("e") && !s.includes(".")) s = s.replace("e", ".0e"); return s; };

  function commandText() {
    const quote = (a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : "'" + a.replace(/'/g, "'\\''") + "'"); // as shlex.quote
    const sets = D.sliders.filter((s) => value(s) !== s.value).map((s) => "--set " + quote(`${s.key}=${setValue(value(s))}`));
    return { sets, line: [D.command, ...sets, "--dry-run"].join(" ") };
  }

  const wb = document.getElementById("wb");
  if (!wb) return;
  wb.innerHTML = "";
  const sampleNote = n >= N
    ? `every one of the ${N} clips filter decides is in the page: every number below is exact.`
    : `the page holds a fixed random sample of ${n} of the ${N} clips filter decides. At the config's values the ` +
      "counts are exact (computed over every clip); once a slider moves they are estimates, marked ≈, with a 95% " +
      "interval (exact count at the config + N/n × the change seen on the sample). The histograms are exact per-bin counts over every clip.";
  wb.append(el("p", { text: "Each slider is one bound of one tier, starting at this config's value. The tables show what " +
    "`reelsift filter` would decide with the sliders' values: " + sampleNote }));
  const top = el("div", { class: "bench-top" });
  const funnelT = el("table", { class: "data", id: "wb-funnel" });
  const reasonsT = el("table", { class: "data", id: "wb-reasons" });
  const cmdBox = el("div", { class: "cmd" });
  top.append(el("div", {}, el("h3", { text: "Decisions" }), funnelT), el("div", {}, el("h3", { text: "Rejection reasons (rejected clips)" }), reasonsT));
  const cmdPre = el("pre", { id: "wb-command" });
  const copyB = el("button", { type: "button", text: "copy" }), resetB = el("button", { type: "button", text: "reset sliders" });
  cmdBox.append(el("h3", { text: "Run it: reelsift filter with these --set (drop --dry-run to write the decisions)" }), cmdPre, copyB, resetB);
  const histT = el("table", { class: "hist" });
  const crossing = el("div", { id: "wb-crossing" });
  wb.append(top, cmdBox, el("h3", { text: "Scores per tier: exact counts over every clip whose source is large enough for the tier; shaded = fails the bound" }),
    histT, el("h3", { text: "Clips that cross a moved bound (from the sample)" }), crossing);

  function cell(q, r, cls = "") {
    const td = el("td", { "data-q": q, class: cls });
    td.textContent = r;
    return td;
  }
  function renderTables(E) {
    const fmtN = (x) => (E.estimated ? "≈" : "") + Math.round(x.v) + (E.estimated ? ` ±${Math.ceil(x.err)}` : "");
    const delta = (a, b) => { const d = Math.round(b) - Math.round(a); return d === 0 ? "" : (d > 0 ? "+" : "") + d; };
    funnelT.replaceChildren(el("tr", {}, el("th", { text: "" }), el("th", { text: "at the config (exact)" }),
      el("th", { text: "with the sliders" }), el("th", { text: "change" }), el("th", { text: "hours with the sliders" })));
    const rows = [...tiers.map((t) => ["kept:" + t.name, "kept_s:" + t.name, "kept @" + t.name]), ["rejected", "rejected_s", "rejected"]];
    for (const [k, ks, label] of rows) {
      const base = k === "rejected" ? D.exact.rejected[0] : D.exact.kept[k.slice(5)][0];
      const x = E.est(k), xs = E.est(ks);
      funnelT.append(el("tr", {}, el("th", { text: label }), cell(k + ":config", String(base)), cell(k, fmtN(x)),
        cell(k + ":change", delta(base, x.v), delta(base, x.v).startsWith("+") ? "chg up" : "chg"), cell(ks, (E.estimated ? "≈" : "") + hoursText(Math.max(0, xs.v)))));
    }
    funnelT.append(el("tr", {}, el("th", { text: "decided" }), cell("decided", String(N)), cell("decided:now", String(N)), cell("", ""), cell("", "")));
    reasonsT.replaceChildren(el("tr", {}, el("th", { text: "reason" }), el("th", { text: "at the config" }), el("th", { text: "with the sliders" }), el("th", { text: "change" })));
    const heads = [...E.keys].filter((k) => k.startsWith("r:")).map((k) => k.slice(2)).sort();
    for (const h of heads) {
      const base = D.exact.reasons[h] || 0, x = E.est("r:" + h);
      if (base === 0 && Math.round(x.v) === 0) continue;
      reasonsT.append(el("tr", {}, el("th", { text: h }), cell("r:" + h + ":config", String(base)), cell("r:" + h, fmtN(x)), cell("", delta(base, x.v), "chg")));
    }
    const c = commandText();
    cmdPre.textContent = c.line;
    cmdPre.dataset.sets = JSON.stringify(c.sets);
  }

  // Histograms: one row per score, one column per tier, sliders under the bounded ones.
  const W = 260, H = 110, L = 30, R = W - 8, T = 6, Bm = H - 22;
  const hists = [];
  function drawHist(svg, h, t, j) {
    svg.replaceChildren();
    const counts = h.counts[t.name], nb = D.n_bins, ymax = Math.max(1, ...counts);
    const x = (v) => Math.min(R, Math.max(L, L + ((R - L) * (v - h.lo)) / (h.hi - h.lo)));
    const k = tiers[j].bounds.findIndex((b) => b.col === svg.dataset.col);
    if (k >= 0) {
      const b = cur[j][k];
      if (b.min !== null) svg.append(svgEl("rect", { x: L, y: T, width: x(b.min) - L, height: Bm - T, class: "fail" }));
      if (b.max !== null) svg.append(svgEl("rect", { x: x(b.max), y: T, width: R - x(b.max), height: Bm - T, class: "fail" }));
    }
    const bw = (R - L) / nb;
    counts.forEach((c, i) => {
      if (!c) return;
      const bh = ((Bm - T) * c) / ymax, r = svgEl("rect", { x: L + i * bw + 0.3, y: Bm - bh, width: Math.max(0.5, bw - 0.6), height: bh, class: "bar" });
      r.append(svgEl("title", {}));
      r.firstChild.textContent = `${fmt4g(h.lo + i * (h.hi - h.lo) / nb)}..${fmt4g(h.lo + (i + 1) * (h.hi - h.lo) / nb)}: ${c} clips`;
      svg.append(r);
    });
    if (k >= 0) {
      for (const end of ["min", "max"]) {
        const v0 = cfgB[j][k][end], v = cur[j][k][end];
        if (v0 !== null) svg.append(svgEl("line", { x1: x(v0), x2: x(v0), y1: T, y2: Bm, class: "cfg" }));
        if (v !== null) svg.append(svgEl("line", { x1: x(v), x2: x(v), y1: T, y2: Bm, class: "bound" }));
      }
    }
    const tot = counts.reduce((a, b) => a + b, 0), miss = h.missing[t.name];
    const txt = (x0, y, s, anchor = "start") => { const e = svgEl("text", { x: x0, y, "text-anchor": anchor }); e.textContent = s; svg.append(e); };
    svg.append(svgEl("line", { x1: L, x2: R, y1: Bm, y2: Bm, class: "axis" }));
    txt(L - 3, T + 8, String(ymax), "end");
    txt(L, Bm + 11, fmt4g(h.lo));
    txt(R, Bm + 11, fmt4g(h.hi), "end");
    txt(L, H - 1, `n=${tot}` + (miss ? `, ${miss} missing` : ""));
  }
  function slider(s) {
    const box = el("div", { class: "slider" });
    const range = el("input", { type: "range", min: s.lo, max: s.hi, step: s.step, value: s.value, id: "s-" + s.id, "aria-label": s.key });
    const num = el("input", { type: "number", step: "any", value: String(s.value), class: "num" });
    const dec = Math.max(0, -Math.floor(Math.log10(s.step)));
    const set = (v) => {
      const [j, k, end] = where[s.id], b = cur[j][k];
      if (end === "min" && b.max !== null) v = Math.min(v, b.max); // filter refuses min > max
      if (end === "max" && b.min !== null) v = Math.max(v, b.min);
      b[end] = v;
      num.value = String(v);
      if (Number(range.value) !== v) range.value = String(v);
      update();
    };
    range.addEventListener("input", () => set(Number(Number(range.value).toFixed(dec))));
    num.addEventListener("change", () => { const v = Number(num.value); if (num.value !== "" && Number.isFinite(v)) set(v); });
    box.append(el("span", { class: "end", text: s.end }), range, num, el("span", { class: "cfgv", text: `config ${fmt4g(s.value)}` }));
    s.reset = () => { set(s.value); range.value = String(s.value); };
    return box;
  }
  const head = el("tr", {}, el("th", { text: "" }));
  tiers.forEach((t) => head.append(el("th", { text: `${t.name} (source short side ≥ ${t.min_short})` })));
  histT.append(head);
  for (const c of D.hist_cols) {
    const h = D.hist[c];
    const tr = el("tr", {}, el("th", { class: "rowhead", text: c + (D.untrained.includes(c) ? " (UNTRAINED)" : "") }));
    tiers.forEach((t, j) => {
      const td = el("td");
      if (!h) { td.textContent = "no scored clips"; tr.append(td); return; }
      const svg = svgEl("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-col": c, "data-tier": t.name });
      td.append(svg);
      hists.push(() => drawHist(svg, h, t, j));
      D.sliders.filter((s) => s.tier === t.name && s.col === c).forEach((s) => td.append(slider(s)));
      tr.append(td);
    });
    histT.append(tr);
  }

  function clipCard(i, from, to) {
    const m = D.media[i], id = S.ids[i];
    const name = (t) => (t >= 0 ? "kept @" + tiers[t].name : "rejected");
    const card = el("figure", { class: "card" });
    if (m && m.preview) card.append(el("video", { class: "preview", src: m.preview, ...(m.thumb ? { poster: m.thumb } : {}), muted: "", loop: "", playsinline: "", preload: "none" }));
    else if (m && m.thumb) card.append(el("img", { src: m.thumb, alt: "clip " + id }));
    const moved = [...new Set(D.sliders.filter((s) => value(s) !== s.value).map((s) => s.col))];
    const vals = moved.map((c) => `${c} ${fmt4g(col[c][i])}`).join(" · ");
    // the reasons filter would now write that involve a moved score (as in the decisions table)
    const why = decideRow(i, cur).reasons.filter((r) => moved.some((c) => r.startsWith(c + "=")));
    card.append(el("figcaption", {}, el("code", { text: id }), el("div", { text: `${name(from)} → ${name(to)}` }),
      el("div", { class: "scores", text: vals }), el("div", { class: to >= 0 ? "missed" : "reasons", text: why.join(", ") })));
    return card;
  }
  function renderCrossing(E) {
    crossing.replaceChildren();
    const moves = E.changed.filter(([, a, b]) => a !== b), reasonsOnly = E.changed.length - moves.length;
    const note = reasonsOnly ? ` ${reasonsOnly} rejected clip${reasonsOnly === 1 ? "" : "s"} of the sample change reasons only.` : "";
    if (!moves.length) { crossing.append(el("p", { text: "No clip of the sample changes tier at these values." + note })); return; }
    if (note) crossing.append(el("p", { text: note.trim() }));
    const up = moves.filter(([, a, b]) => b >= 0 && (a < 0 || b < a)), down = moves.filter((c) => !up.includes(c));
    for (const [label, list] of [["Now kept, or kept at a higher tier", up], ["Now rejected, or kept at a lower tier", down]]) {
      const withMedia = list.filter(([i]) => D.media[i]), shown = [...withMedia, ...list.filter(([i]) => !D.media[i])].slice(0, 12);
      crossing.append(el("h4", { text: `${label}: ${list.length} clip${list.length === 1 ? "" : "s"} of the sample` + (shown.length < list.length ? ` (${shown.length} shown)` : "") }));
      const grid = el("div", { class: "grid" });
      shown.forEach(([i, a, b]) => grid.append(clipCard(i, a, b)));
      crossing.append(grid);
    }
    wirePreviews(crossing);
  }

  let pending = false;
  function update() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; const E = estimate(); renderTables(E); hists.forEach((f) => f()); renderCrossing(E); });
  }
  copyB.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(cmdPre.textContent));
  resetB.addEventListener("click", () => D.sliders.forEach((s) => s.reset()));
  const E0 = estimate();
  renderTables(E0); hists.forEach((f) => f()); renderCrossing(E0);

  // ------------------------------------------------------------------ previews: play on hover or click
  function wirePreviews(rootEl) {
    rootEl.querySelectorAll("video.preview").forEach((v) => {
      v.muted = true;
      v.addEventListener("mouseenter", () => v.play().catch(() => {}));
      v.addEventListener("mouseleave", () => v.pause());
      v.addEventListener("click", () => (v.paused ? v.play().catch(() => {}) : v.pause()));
    });
  }
  wirePreviews(document);

  // Reports broken posters and thumbnails on the page (and to tests, through data-broken-images).
  window.addEventListener("load", () => {
    const urls = [...document.images].map((i) => i.src).concat([...document.querySelectorAll("video[poster]")].map((v) => v.poster));
    Promise.all(urls.map((u) => new Promise((res) => { const im = new Image(); im.onload = () => res(im.naturalWidth > 0); im.onerror = () => res(false); im.src = u; })))
      .then((ok) => {
        const broken = ok.filter((x) => !x).length;
        document.body.dataset.images = urls.length;
        document.body.dataset.brokenImages = broken;
        document.getElementById("img-check").textContent = broken ? `${broken} of ${urls.length} posters or thumbnails failed to load` : `${urls.length} posters and thumbnails loaded`;
      });
  });

  window.reelsift = { decideRow, decideFast, fmt4g, estimate, commandText, n, N };
})();
