"use strict";
window.addEventListener("error", function (ev) {
  document.body.setAttribute("data-status", "error");
  var box = document.getElementById("error");
  if (box) box.textContent = "Script error: " + ev.message;
});
(function () {
  var D = JSON.parse(document.getElementById("flow-data").textContent);
  var NS = "http://www.w3.org/2000/svg", K = D.classes.length, E = D.epochs.length;
  var PAL = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
             "#ff9da7", "#9c755f", "#bab0ac"];
  var CORRECT = [["kept right", "#59a14f"], ["learned", "#4e79a7"], ["forgotten", "#e15759"],
                 ["kept wrong", "#aaa39e"]];
  var T = D.table, PAGE = 50;
  var S = {colorBy: D.color_by, hideStays: false, changed: false, miscl: false,
           trueSel: null, pick: null, sortKey: "changes", desc: true, page: 0};
  function classColor(k) { return k < PAL.length ? PAL[k] : "hsl(" + ((k * 137.508) % 360).toFixed(0) + ",55%,55%)"; }
  function groupColor(g) { return S.colorBy === "true" ? classColor(g) : CORRECT[g][1]; }
  function groupName(g) { return S.colorBy === "true" ? "true " + D.classes[g] : CORRECT[g][0]; }
  function h(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var a in attrs || {}) e.setAttribute(a, attrs[a]);
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function s(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    for (var a in attrs || {}) e.setAttribute(a, attrs[a]);
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function safeHref(u) {  // relative, http(s) or file links only: never javascript: or data:
    var m = /^([a-z][a-z0-9+.-]*):/i.exec(String(u));
    return !m || /^(https?|file)$/i.test(m[1]) ? String(u) : "#";
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function flagOk(f) { return (!S.changed || (f & 1)) && (!S.miscl || (f & 2)); }
  function trueOk(y) { return !S.trueSel || S.trueSel.has(y); }
  var tip = document.getElementById("tip");
  function showTip(ev, text) {
    tip.textContent = text; tip.style.display = "block";
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8) + "px";
    tip.style.top = (ev.clientY + 14) + "px";
  }
  function hideTip() { tip.style.display = "none"; }
  function hover(node, text) {
    node.appendChild(s("title", {}, text));
    node.addEventListener("mousemove", function (ev) { showTip(ev, text); });
    node.addEventListener("mouseleave", hideTip);
  }

  // -- aggregation of the finest counts under the controls ------------------------------------
  function aggregate() {
    var nv = [], nby = [], e, c;
    for (e = 0; e < E; e++) { nv.push(new Array(K).fill(0)); nby.push({}); }
    D.nodes.forEach(function (r) {  // [e, cls, y, flags, n]
      if (!trueOk(r[2]) || !flagOk(r[3])) return;
      nv[r[0]][r[1]] += r[4];
      var m = nby[r[0]][r[1]] || (nby[r[0]][r[1]] = {});
      m[r[2]] = (m[r[2]] || 0) + r[4];
    });
    var map = new Map(), pair = new Map();
    D.links.forEach(function (r) {  // [step, a, b, y, correct group, flags, n]
      if (!trueOk(r[3]) || !flagOk(r[5])) return;
      var g = S.colorBy === "true" ? r[3] : r[4];
      var key = r[0] + "," + r[1] + "," + r[2] + "," + g, pk = r[0] + "," + r[1] + "," + r[2];
      var l = map.get(key);
      if (!l) { l = {s: r[0], a: r[1], b: r[2], g: g, n: 0}; map.set(key, l); }
      l.n += r[6];
      pair.set(pk, (pair.get(pk) || 0) + r[6]);
    });
    return {nv: nv, nby: nby, links: Array.from(map.values()), pair: pair};
  }

  // -- the Sankey -------------------------------------------------------------------------------
  function drawSankey(A) {
    var box = clear(document.getElementById("sankey"));
    var active = [], c, e;
    for (c = 0; c < K; c++) for (e = 0; e < E; e++) if (A.nv[e][c] > 0) { active.push(c); break; }
    var W = Math.max(760, Math.min(2400, box.clientWidth || 1200, 180 + E * 110));
    var H = Math.max(320, Math.min(860, 60 + active.length * 54));
    var mL = 120, mR = 120, mT = 26, mB = 8, nw = 12, pad = 6;
    var tot = 1;
    for (e = 0; e < E; e++) tot = Math.max(tot, A.nv[e].reduce(function (p, q) { return p + q; }, 0));
    var ky = (H - mT - mB - pad * Math.max(0, active.length - 1)) / tot;
    function x(e) { return E === 1 ? mL : mL + e * (W - mL - mR - nw) / (E - 1); }
    var svg = s("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, id: "flow-svg"});
    var ny = [], src = [], dst = [];
    for (e = 0; e < E; e++) {
      ny.push({}); var y = mT;
      active.forEach(function (c) { ny[e][c] = y; y += A.nv[e][c] * ky + pad; });
      src.push(Object.assign({}, ny[e])); dst.push(Object.assign({}, ny[e]));
    }
    var L = A.links.slice().sort(function (p, q) { return p.s - q.s || p.a - q.a || p.b - q.b || p.g - q.g; });
    L.forEach(function (l) { l.y0 = src[l.s][l.a]; src[l.s][l.a] += l.n * ky; });
    L.slice().sort(function (p, q) { return p.s - q.s || p.b - q.b || p.a - q.a || p.g - q.g; })
      .forEach(function (l) { l.y1 = dst[l.s + 1][l.b]; dst[l.s + 1][l.b] += l.n * ky; });
    var gl = s("g", {}), drawn = 0, total = 0, groups = new Set();
    L.forEach(function (l) {
      if (S.hideStays && l.a === l.b) return;
      var x0 = x(l.s) + nw, x1 = x(l.s + 1), xm = (x0 + x1) / 2, hh = Math.max(l.n * ky, 0.8);
      var d = "M" + x0 + "," + l.y0 + "C" + xm + "," + l.y0 + " " + xm + "," + l.y1 + " " + x1 + "," + l.y1 +
              "L" + x1 + "," + (l.y1 + hh) + "C" + xm + "," + (l.y1 + hh) + " " + xm + "," + (l.y0 + hh) +
              " " + x0 + "," + (l.y0 + hh) + "Z";
      var picked = S.pick && S.pick.kind === "link" && S.pick.s === l.s && S.pick.a === l.a &&
                   S.pick.b === l.b && (S.pick.g === null || S.pick.g === l.g);
      var p = s("path", {d: d, fill: groupColor(l.g), "class": picked ? "band picked" : "band"});
      hover(p, "epoch " + D.epochs[l.s] + " \u2192 " + D.epochs[l.s + 1] + ": " + D.classes[l.a] +
            " \u2192 " + D.classes[l.b] + "\n" + l.n + " instances (" + groupName(l.g) + ")\n" +
            A.pair.get(l.s + "," + l.a + "," + l.b) + " on this link in all colours");
      p.addEventListener("click", function () {
        select({kind: "link", s: l.s, a: l.a, b: l.b, g: l.g, n: l.n});
      });
      gl.appendChild(p); drawn++; total += l.n; groups.add(l.g);
    });
    svg.appendChild(gl);
    for (e = 0; e < E; e++) {
      if (E <= 24 || e % Math.ceil(E / 24) === 0 || e === E - 1)
        svg.appendChild(s("text", {x: x(e) + nw / 2, y: 14, "class": "hdr"}, "epoch " + D.epochs[e]));
      active.forEach(function (c) {
        var n = A.nv[e][c]; if (!n) return;
        var on = S.pick && S.pick.kind === "node" && S.pick.e === e && S.pick.c === c;
        var r = s("rect", {x: x(e), y: ny[e][c], width: nw, height: Math.max(n * ky, 0.8),
                           fill: classColor(c), "class": on ? "node picked" : "node"});
        var by = A.nby[e][c] || {}, parts = Object.keys(by).sort(function (p, q) { return by[q] - by[p]; });
        hover(r, "epoch " + D.epochs[e] + ", predicted " + D.classes[c] + ": " + n + "\n" +
          parts.slice(0, 6).map(function (y) { return "  true " + D.classes[y] + ": " + by[y]; }).join("\n"));
        (function (e, c) { r.addEventListener("click", function () {
          select({kind: "node", e: e, c: c, n: n}); }); })(e, c);
        svg.appendChild(r);
        if ((e === 0 || e === E - 1) && n * ky >= 7) {
          var left = e === 0;
          svg.appendChild(s("text", {x: left ? x(e) - 5 : x(e) + nw + 5, y: ny[e][c] + n * ky / 2 + 4,
            "text-anchor": left ? "end" : "start", "class": "lbl"}, D.classes[c] + " " + n));
        }
      });
    }
    svg.setAttribute("data-links", String(drawn)); svg.setAttribute("data-total", String(total));
    if (S.pick) svg.setAttribute("class", "picking");
    box.appendChild(svg);
    var leg = clear(document.getElementById("legend"));
    Array.from(groups).sort(function (p, q) { return p - q; }).forEach(function (g) {
      var sp = h("span"), sw = h("i"); sw.style.background = groupColor(g);
      sp.appendChild(sw); sp.appendChild(document.createTextNode(groupName(g))); leg.appendChild(sp);
    });
  }

  // -- where one true class goes; the most confused pairs --------------------------------------
  function drawDistribution(A) {
    var sel = document.getElementById("dist-class"), y = Number(sel.value), box = clear(document.getElementById("dist"));
    var rows = [], cols = new Set(), e;
    for (e = 0; e < E; e++) rows.push(new Array(K).fill(0));
    D.nodes.forEach(function (r) {
      if (r[2] !== y || !flagOk(r[3])) return; rows[r[0]][r[1]] += r[4]; cols.add(r[1]);
    });
    var cl = Array.from(cols).sort(function (p, q) { return p - q; });
    var t = h("table"), tr = h("tr"); tr.appendChild(h("th", {"class": "t"}, "epoch"));
    cl.forEach(function (c) { tr.appendChild(h("th", {}, D.classes[c])); }); t.appendChild(tr);
    rows.forEach(function (r, e) {
      var sum = r.reduce(function (p, q) { return p + q; }, 0), row = h("tr");
      row.appendChild(h("td", {"class": "t"}, D.epochs[e]));
      cl.forEach(function (c) {
        var td = h("td", {}, r[c]), f = sum ? r[c] / sum : 0;
        td.style.background = "rgba(" + (c === y ? "89,161,79," : "225,87,89,") + (0.08 + 0.6 * f).toFixed(2) + ")";
        row.appendChild(td);
      });
      t.appendChild(row);
    });
    box.appendChild(t);
    var cnt = new Map(), tot = new Map(), last = E - 1;
    D.nodes.forEach(function (r) {
      if (r[0] !== last || !trueOk(r[2]) || !flagOk(r[3])) return;
      tot.set(r[2], (tot.get(r[2]) || 0) + r[4]);
      if (r[1] !== r[2]) { var k = r[2] * K + r[1]; cnt.set(k, (cnt.get(k) || 0) + r[4]); }
    });
    var top = Array.from(cnt.entries()).sort(function (p, q) { return q[1] - p[1] || p[0] - q[0]; }).slice(0, 10);
    var ct = clear(document.getElementById("confused")), t2 = h("table"), hr = h("tr");
    ["true", "predicted", "count", "share"].forEach(function (c, i) { hr.appendChild(h("th", {"class": i < 2 ? "t" : ""}, c)); });
    t2.appendChild(hr);
    top.forEach(function (kv) {
      var yy = Math.floor(kv[0] / K), p = kv[0] % K, r = h("tr");
      r.appendChild(h("td", {"class": "t"}, D.classes[yy])); r.appendChild(h("td", {"class": "t"}, D.classes[p]));
      r.appendChild(h("td", {}, kv[1])); r.appendChild(h("td", {}, (100 * kv[1] / tot.get(yy)).toFixed(1) + "%"));
      t2.appendChild(r);
    });
    ct.appendChild(top.length ? t2 : h("p", {"class": "note"}, "no confusion at the last epoch"));
  }

  // -- the instance table ----------------------------------------------------------------------
  function finalOf(tr) { for (var i = tr.length - 1; i >= 0; i--) if (tr[i] >= 0) return tr[i]; return -1; }
  function correctGroup(i, st) {
    var y = T.y[i], a = T.traj[i][st] === y ? 2 : 0, b = T.traj[i][st + 1] === y ? 1 : 0;
    return [3, 1, 2, 0][a + b];
  }
  function rowOk(i) {
    var tr = T.traj[i], y = T.y[i], p = S.pick;
    if (!trueOk(y) || (S.changed && !T.changes[i]) || (S.miscl && finalOf(tr) === y)) return false;
    if (!p) return true;
    if (p.kind === "node") return tr[p.e] === p.c;
    return tr[p.s] === p.a && tr[p.s + 1] === p.b && (p.g === null ||
      (S.colorBy === "true" ? y === p.g : correctGroup(i, p.s) === p.g));
  }
  function sparkline(tr, y) {
    var w = Math.min(240, Math.max(60, E * 8)), hh = 22, n = tr.length;
    function px(i) { return n === 1 ? w / 2 : 3 + i * (w - 6) / (n - 1); }
    function py(c) { return 3 + (K === 1 ? 0 : c / (K - 1)) * (hh - 6); }
    var svg = s("svg", {width: w, height: hh, "class": "spark"}), pts = [];
    svg.appendChild(s("line", {x1: 0, x2: w, y1: py(y), y2: py(y), stroke: "#59a14f", "stroke-dasharray": "2,2", "stroke-width": 0.8}));
    tr.forEach(function (c, i) { if (c >= 0) pts.push(px(i) + "," + py(c)); });
    svg.appendChild(s("polyline", {points: pts.join(" "), fill: "none", stroke: "#666", "stroke-width": 1}));
    if (n <= 40) tr.forEach(function (c, i) {
      if (c >= 0) svg.appendChild(s("circle", {cx: px(i), cy: py(c), r: 2, fill: c === y ? "#59a14f" : "#e15759"}));
    });
    svg.appendChild(s("title", {}, tr.map(function (c) { return c >= 0 ? D.classes[c] : "-"; }).join(" \u2192 ")));
    return svg;
  }
  var COLS = [["id", "instance", function (i) { return T.id[i]; }],
              ["y", "true", function (i) { return D.classes[T.y[i]]; }],
              ["changes", "changes", function (i) { return T.changes[i]; }],
              ["forgotten", "forgotten", function (i) { return T.forgotten[i]; }],
              ["first", "first right", function (i) { return T.first[i]; }],
              ["last", "last right", function (i) { return T.last[i]; }],
              ["final", "final", function (i) { var f = finalOf(T.traj[i]); return f >= 0 ? D.classes[f] : "-"; }],
              ["conf", "confidence", function (i) { return T.conf[i]; }],
              ["traj", "trajectory", null], ["links", "image / explanations", null]];
  function sortValue(key, i) {
    if (key === "final") return finalOf(T.traj[i]);
    var v = T[key][i]; return v === null || v === undefined ? null : v;
  }
  function drawTable() {
    var idx = [], i;
    for (i = 0; i < T.id.length; i++) if (rowOk(i)) idx.push(i);
    var key = S.sortKey, dir = S.desc ? -1 : 1;
    idx.sort(function (p, q) {
      var a = sortValue(key, p), b = sortValue(key, q);
      if (a === null && b === null) return T.id[p] - T.id[q];
      if (a === null) return 1; if (b === null) return -1;
      return (a < b ? -dir : a > b ? dir : 0) || T.id[p] - T.id[q];
    });
    var sel = clear(document.getElementById("selection")), p = S.pick;
    if (p) {
      sel.appendChild(document.createTextNode(p.kind === "link"
        ? "Link epoch " + D.epochs[p.s] + " \u2192 " + D.epochs[p.s + 1] + ": " + D.classes[p.a] + " \u2192 " +
          D.classes[p.b] + " (" + (p.g === null ? "all colours" : groupName(p.g)) + "), " + p.n +
          " instances, " + idx.length + " in the table below"
        : "Node epoch " + D.epochs[p.e] + ", predicted " + D.classes[p.c] + ": " + p.n + " instances, " +
          idx.length + " in the table below"));
      var b = h("button", {}, "clear selection");
      b.addEventListener("click", function () { select(null); });
      sel.appendChild(b);
    }
    var pages = Math.max(1, Math.ceil(idx.length / PAGE)); S.page = Math.min(S.page, pages - 1);
    var t = clear(document.getElementById("instances")), hr = h("tr");
    COLS.forEach(function (c) {
      var th = h("th", {"class": c[0] === "y" || c[0] === "final" || !c[2] ? "t" : ""},
                 c[1] + (S.sortKey === c[0] ? (S.desc ? " \u25bc" : " \u25b2") : ""));
      if (c[2]) th.addEventListener("click", function () {
        if (S.sortKey === c[0]) S.desc = !S.desc; else { S.sortKey = c[0]; S.desc = c[0] !== "id" && c[0] !== "first"; }
        drawTable();
      });
      hr.appendChild(th);
    });
    t.appendChild(hr);
    idx.slice(S.page * PAGE, S.page * PAGE + PAGE).forEach(function (i) {
      var tr = h("tr", {"class": finalOf(T.traj[i]) === T.y[i] ? "right" : "wrong"});
      COLS.forEach(function (c) {
        var td;
        if (c[0] === "traj") { td = h("td", {"class": "t"}); td.appendChild(sparkline(T.traj[i], T.y[i])); }
        else if (c[0] === "links") {
          td = h("td", {"class": "t"});
          if (T.thumb[i]) {
            var a = h("a", {href: safeHref(T.thumb[i])});
            a.appendChild(h("img", {src: safeHref(T.thumb[i]), width: 28, height: 28, alt: "instance " + T.id[i]}));
            td.appendChild(a);
          }
          (T.expl[i] || []).forEach(function (x) {
            td.appendChild(document.createTextNode(" ")); td.appendChild(h("a", {href: safeHref(x[1])}, x[0]));
          });
        } else {
          var v = c[2](i); td = h("td", {"class": c[0] === "y" ? "t" : c[0] === "final" ? "t fin" : ""},
                                   v === null ? "never" : c[0] === "conf" ? Number(v).toFixed(3) : v);
        }
        tr.appendChild(td);
      });
      t.appendChild(tr);
    });
    var pg = clear(document.getElementById("pager"));
    pg.appendChild(document.createTextNode("rows " + (idx.length ? S.page * PAGE + 1 : 0) + "\u2013" +
      Math.min(idx.length, S.page * PAGE + PAGE) + " of " + idx.length));
    [["\u2190 previous", -1], ["next \u2192", 1]].forEach(function (bt) {
      var b = h("button", {}, bt[0]); b.disabled = S.page + bt[1] < 0 || S.page + bt[1] >= pages;
      b.addEventListener("click", function () { S.page += bt[1]; drawTable(); }); pg.appendChild(b);
    });
  }

  // -- controls --------------------------------------------------------------------------------
  function controls() {
    var present = new Set(); D.nodes.forEach(function (r) { present.add(r[2]); });
    var ys = Array.from(present).sort(function (p, q) { return p - q; });
    var cb = clear(document.getElementById("classes")), dist = document.getElementById("dist-class");
    ys.forEach(function (y) {
      var l = h("label"), i = h("input", {type: "checkbox"}); i.checked = true; i.value = String(y);
      i.addEventListener("change", function () {
        var on = Array.from(cb.querySelectorAll("input")).filter(function (x) { return x.checked; })
                      .map(function (x) { return Number(x.value); });
        S.trueSel = on.length === ys.length ? null : new Set(on); S.pick = null; redraw();
      });
      l.appendChild(i); l.appendChild(document.createTextNode(" " + D.classes[y])); cb.appendChild(l);
      dist.appendChild(h("option", {value: String(y)}, D.classes[y]));
    });
    dist.addEventListener("change", redraw);
    var color = document.getElementById("color-by"); color.value = S.colorBy;
    color.addEventListener("change", function () { S.colorBy = color.value; S.pick = null; redraw(); });
    [["hide-stays", "hideStays"], ["changed-only", "changed"], ["miscl-only", "miscl"]].forEach(function (c) {
      var i = document.getElementById(c[0]);
      i.addEventListener("change", function () { S[c[1]] = i.checked; S.pick = null; S.page = 0; redraw(); });
    });
  }
  function redraw() { var A = aggregate(); drawSankey(A); drawDistribution(A); drawTable(); writeHash(); }
  function hashOf(p) {
    if (!p) return "";
    return p.kind === "link" ? "#link=" + D.epochs[p.s] + "," + p.a + "," + p.b + (p.g === null ? "" : "," + p.g)
                             : "#node=" + D.epochs[p.e] + "," + p.c;
  }
  function writeHash() {  // the URL keeps the selection (no new history entry per click)
    var want = hashOf(S.pick);
    if ((window.location.hash || "") === want) return;
    try { history.replaceState(null, "", want || window.location.pathname + window.location.search); }
    catch (err) { /* a page that may not change its address keeps working without it */ }
  }
  function showList() {
    var box = document.getElementById("selection");
    if (S.pick && box.scrollIntoView) box.scrollIntoView({block: "start"});
  }
  function select(p) { S.pick = p; S.page = 0; redraw(); showList(); }
  function fromHash() {  // #link=EPOCH,A,B[,G] or #node=EPOCH,C: open with that selection
    var m = /^#(link|node)=([0-9,]+)$/.exec(window.location.hash || ""), A = aggregate(), n = 0;
    if (!m) return;
    var v = m[2].split(",").map(Number), e = D.epochs.indexOf(v[0]);
    if (e < 0) return;
    if (m[1] === "node" && v.length === 2) { S.pick = {kind: "node", e: e, c: v[1], n: A.nv[e][v[1]] || 0}; return; }
    if (m[1] !== "link" || v.length < 3 || e + 1 >= E) return;
    var g = v.length > 3 ? v[3] : null;
    A.links.forEach(function (l) { if (l.s === e && l.a === v[1] && l.b === v[2] && (g === null || l.g === g)) n += l.n; });
    S.pick = {kind: "link", s: e, a: v[1], b: v[2], g: g, n: n};
  }
  controls();
  fromHash();
  redraw();
  showList();
  window.addEventListener("hashchange", function () { S.pick = null; fromHash(); S.page = 0; redraw(); showList(); });
  window.addEventListener("resize", function () { drawSankey(aggregate()); });
  if (document.body.getAttribute("data-status") !== "error") document.body.setAttribute("data-status", "ok");
})();
