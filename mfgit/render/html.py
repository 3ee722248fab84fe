"""One self-contained HTML page drawing a lineage (``mfgit lineage REV --html out.html``).

Everything is inline — CSS, the SVG of the graph (laid out here, in Python),
the lineage as JSON, and a little JavaScript that shows a commit's provenance
in a side panel when its node is clicked. No network access: no CDN, no web
fonts, and a Content-Security-Policy that forbids loading anything. Text
from commits (messages, names) is escaped in the SVG and inserted with
``textContent`` by the script, never as HTML; control, bidi and other
invisible characters in it are shown as visible escapes, in the drawing and
in the panel alike (`mfgit.render.escape`, docs/design.md invariant 13).
"""

from __future__ import annotations

import json
from typing import Any

from mfgit.render.audit import leaf_weight_text
from mfgit.render.escape import html, terminal, terminal_doc

NODE_W = 210
NODE_H = 66
GAP_X = 34
GAP_Y = 96
MARGIN = 24


def _layout(d: dict[str, Any]) -> dict[str, tuple[float, float]]:
    ids = [n["id"] for n in d["nodes"]]
    children: dict[str, list[str]] = {i: [] for i in ids}
    parents: dict[str, list[str]] = {i: [] for i in ids}
    for e in d["edges"]:
        if e["from"] in children and e["to"] in children and e["to"] not in children[e["from"]]:
            children[e["from"]].append(e["to"])
            parents[e["to"]].append(e["from"])
    # Layer = longest distance from the root, so every edge points down.
    depth: dict[str, int] = {d["root"]: 0}
    order = []
    seen: set[str] = set()

    def topo(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        for c in children[n]:
            topo(c)
        order.append(n)

    for i in ids:
        topo(i)
    for n in reversed(order):
        for c in children[n]:
            depth[c] = max(depth.get(c, 0), depth.get(n, 0) + 1)
    layers: dict[int, list[str]] = {}
    for i in ids:
        layers.setdefault(depth.get(i, 0), []).append(i)
    pos_index: dict[str, float] = {}
    for lvl in sorted(layers):
        nodes = layers[lvl]
        if lvl > 0:
            def bary(n: str) -> float:
                ps = [pos_index[p] for p in parents[n] if p in pos_index]
                return sum(ps) / len(ps) if ps else 0.0
            nodes.sort(key=lambda n: (bary(n), ids.index(n)))
        for k, n in enumerate(nodes):
            pos_index[n] = k - (len(nodes) - 1) / 2
    widest = max(len(v) for v in layers.values()) if layers else 1
    width = widest * (NODE_W + GAP_X)
    pos = {}
    for lvl, nodes in layers.items():
        for n in nodes:
            x = MARGIN + width / 2 + pos_index[n] * (NODE_W + GAP_X) - NODE_W / 2
            y = MARGIN + lvl * (NODE_H + GAP_Y)
            pos[n] = (round(x, 1), round(y, 1))
    return pos


def _clip(s: str, n: int) -> str:
    """`s` escaped for HTML, clipped to `n` characters as shown (escapes count as what they print)."""
    s = terminal(s or "")
    return html(s if len(s) <= n else s[: n - 1] + "…")


def _svg(d: dict[str, Any]) -> tuple[str, int, int]:
    pos = _layout(d)
    leaf = {lf["commit"]: lf for lf in d["leaves"]}
    if pos:
        w = int(max(x for x, _ in pos.values()) + NODE_W + MARGIN)
        h = int(max(y for _, y in pos.values()) + NODE_H + MARGIN)
    else:
        w, h = 200, 100
    parts = []
    for e in d["edges"]:
        if e["from"] not in pos or e["to"] not in pos:
            continue
        x1, y1 = pos[e["from"]]
        x2, y2 = pos[e["to"]]
        ax, ay = x1 + NODE_W / 2, y1 + NODE_H
        bx, by = x2 + NODE_W / 2, y2
        my = (ay + by) / 2
        w_txt = "-" if e["weight"] is None else f"{e['weight']:.4g}"
        parts.append(
            f'<g class="edge" data-from="{html(e["from"])}" data-to="{html(e["to"])}">'
            f'<path d="M{ax:.1f},{ay:.1f} C{ax:.1f},{my:.1f} {bx:.1f},{my:.1f} {bx:.1f},{by - 6:.1f}" '
            f'marker-end="url(#arrow)"/>'
            f'<text class="w" x="{(ax + bx) / 2:.1f}" y="{my:.1f}">w={html(w_txt)}</text></g>')
    for n in d["nodes"]:
        x, y = pos[n["id"]]
        if n["kind"] == "merge":
            r = n.get("recipe") or {}
            cls = "merge linear" if n.get("linear") else "merge nonlinear"
            line1 = f"merge · {r.get('strategy')}" + (f" · λ={n['lambda']:g}" if n.get("lambda") not in (None, 1.0) else "")
            line3 = f"{len(n.get('inputs') or [])} inputs · {n.get('integration') or ''}"
        elif n["kind"] == "mixture":  # --- mixture ---
            cls = "merge nonlinear"
            line1 = f"mixture · {n.get('combine')} · outputs"
            line3 = f"{len(n.get('inputs') or [])} members"
        else:
            lf = leaf.get(n["id"])
            cls = "leaf"
            line1 = f"site {n['site']}" if n["site"] else "commit"
            if lf is None:
                line3 = ""
            elif lf["linear"]:
                line3 = f"effective weight {lf['effective_weight']:.4g}"
            else:
                line3 = "not linear"
        if n["id"] == d["root"]:
            cls += " root"
        parts.append(
            f'<g class="node {cls}" data-id="{html(n["id"])}" tabindex="0" role="button" '
            f'transform="translate({x},{y})">'
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="8"/>'
            f'<text x="10" y="18" class="t1">{_clip(line1, 30)}</text>'
            f'<text x="10" y="35" class="t2">{html(n["id"][:10])} · {_clip(n["subject"], 18)}</text>'
            f'<text x="10" y="53" class="t3">{_clip(line3, 32)}</text></g>')
    svg = (f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>'
           + "".join(parts) + "</svg>")
    return svg, w, h


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f7f8fa}
header{padding:14px 20px;background:#1d2330;color:#fff}
header h1{font-size:18px;margin:0 0 4px 0}header p{margin:0;font-size:13px;color:#c8cfdc}
main{display:flex;gap:16px;padding:16px;align-items:flex-start}
#graph-wrap{flex:1 1 auto;overflow:auto;background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:8px}
#panel{flex:0 0 380px;background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:14px;font-size:13px;min-height:120px}
#panel.empty{color:#778}
#panel h2{font-size:15px;margin:0 0 8px 0}
#panel table{border-collapse:collapse;width:100%;margin:6px 0}
#panel td,#panel th{border-bottom:1px solid #eef0f4;padding:3px 4px;text-align:left;vertical-align:top}
#panel pre{background:#f3f5f8;padding:8px;border-radius:6px;overflow:auto;max-height:260px;font-size:12px}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
g.node{cursor:pointer}g.node:focus{outline:none}
#graph{max-width:100%;height:auto;display:block;margin:0 auto}
g.node rect{stroke:#5b6478;stroke-width:1.2}
g.node.leaf rect{fill:#e3f6e3}
g.node.merge.linear rect{fill:#dbe8ff}
g.node.merge.nonlinear rect{fill:#ffe1c7}
g.node.root rect{stroke-width:2.6}
g.node.selected rect{stroke:#d6336c;stroke-width:3}
g.node text{font-size:12px;fill:#1d2330}
g.node text.t1{font-weight:600}
g.node text.t2,g.node text.t3{font-size:11px;fill:#3b4252}
g.edge path{fill:none;stroke:#8a93a6;stroke-width:1.4}
g.edge text.w{font-size:11px;fill:#4c566a;text-anchor:middle;paint-order:stroke;stroke:#fff;stroke-width:3px}
#leaves{margin:0 16px 24px 16px;background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px}
#leaves table{border-collapse:collapse;font-size:13px}
#leaves td,#leaves th{padding:4px 10px;border-bottom:1px solid #eef0f4;text-align:left}
"""

_JS = r"""
(function(){
  var data = JSON.parse(document.getElementById('lineage-data').textContent);
  var byId = {};
  data.nodes.forEach(function(n){ byId[n.id] = n; });
  var leafById = {};
  data.leaves.forEach(function(l){ leafById[l.commit] = l; });
  var panel = document.getElementById('panel');
  function el(tag, text, cls){ var e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
  function row(t, k, v, mono){ var tr = el('tr'); tr.appendChild(el('th', k)); tr.appendChild(el('td', v, mono ? 'mono' : '')); t.appendChild(tr); }
  function fmt(w){ return (w === null || w === undefined) ? 'not linear' : Number(w).toPrecision(6).replace(/\.?0+$/, ''); }
  function show(id){
    var n = byId[id]; if (!n) return;
    document.querySelectorAll('g.node.selected').forEach(function(g){ g.classList.remove('selected'); });
    var g = document.querySelector('g.node[data-id="' + CSS.escape(id) + '"]'); if (g) g.classList.add('selected');
    panel.className = 'shown'; panel.textContent = '';
    panel.setAttribute('data-commit', id);
    panel.appendChild(el('h2', (n.kind === 'merge' ? 'Merge ' : 'Site commit ') + id.slice(0, 10)));
    var t = el('table'); panel.appendChild(t);
    row(t, 'commit', id, true);
    row(t, 'site', n.site || '-');
    row(t, 'author', (n.author && n.author.name ? n.author.name : '') + (n.author && n.author.email ? ' <' + n.author.email + '>' : ''));
    row(t, 'time', n.timestamp);
    row(t, 'adapter', n.adapter, true);
    row(t, 'signed', n.signed ? 'yes' : 'no');
    panel.appendChild(el('h3', 'Message'));
    panel.appendChild(el('pre', n.message));
    if (n.kind === 'merge') {
      panel.appendChild(el('h3', 'Recipe'));
      panel.appendChild(el('pre', JSON.stringify(n.recipe, null, 2), 'recipe'));
      var ke = n.kept_energy || {};
      var t2 = el('table'); panel.appendChild(t2);
      row(t2, 'linear', n.linear ? 'yes (λ=' + n.lambda + ')' : 'no — element-wise strategy');
      row(t2, 'integration', n.integration || '-');
      row(t2, 'kept energy', ke.min === undefined ? '-' : 'min ' + Number(ke.min).toFixed(4) + ', mean ' + Number(ke.mean).toFixed(4));
      row(t2, 'device', n.device ? (n.device.type + (n.device.name ? ' (' + n.device.name + ')' : '')) : '-');
      panel.appendChild(el('h3', 'Inputs'));
      var ti = el('table'); panel.appendChild(ti);
      var h = el('tr'); ['input', 'label', 'weight'].forEach(function(x){ h.appendChild(el('th', x)); }); ti.appendChild(h);
      (n.inputs || []).forEach(function(i){ var tr = el('tr'); tr.appendChild(el('td', i.commit.slice(0, 10), 'mono')); tr.appendChild(el('td', i.label)); tr.appendChild(el('td', fmt(i.weight))); ti.appendChild(tr); });
      panel.appendChild(el('h3', 'Effective weight of each leaf here'));
      var tl = el('table'); panel.appendChild(tl);
      Object.keys(n.leaf_weights || {}).forEach(function(k){ var l = byId[k] || {}; var tr = el('tr'); tr.appendChild(el('td', l.site || k.slice(0, 10))); tr.appendChild(el('td', k.slice(0, 10), 'mono')); tr.appendChild(el('td', fmt(n.leaf_weights[k]))); tl.appendChild(tr); });
    } else {
      var lf = leafById[id];
      var t3 = el('table'); panel.appendChild(t3);
      row(t3, 'effective weight', lf ? (lf.linear ? fmt(lf.effective_weight) + (lf.exact ? '' : ' (rank-truncated)') : 'not linear') : '-');
      row(t3, 'paths to the composite', lf ? lf.paths : '-');
      if (n.meta && Object.keys(n.meta).length) { panel.appendChild(el('h3', 'Metadata')); panel.appendChild(el('pre', JSON.stringify(n.meta, null, 2))); }
      if (n.code) { panel.appendChild(el('h3', 'Training code')); panel.appendChild(el('pre', JSON.stringify(n.code, null, 2))); }
    }
  }
  document.querySelectorAll('g.node').forEach(function(g){
    g.addEventListener('click', function(){ show(g.getAttribute('data-id')); });
    g.addEventListener('keydown', function(ev){ if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); show(g.getAttribute('data-id')); } });
  });
  document.querySelectorAll('#leaves [data-id]').forEach(function(a){ a.addEventListener('click', function(ev){ ev.preventDefault(); show(a.getAttribute('data-id')); }); });
})();
"""


def _json_for_script(value: Any) -> str:
    # "<" escaped so that no "</script>" (or "<!--") can close the element early.
    return json.dumps(value, sort_keys=True, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")


def lineage_html(d: dict[str, Any]) -> str:
    # The page shows text, so it carries the document escaped for display
    # (`mfgit lineage --json` gives the exact data).
    d = terminal_doc(d)
    svg, _, _ = _svg(d)
    root = next((n for n in d["nodes"] if n["id"] == d["root"]), None)
    title = f"Lineage of {d['root'][:10]}"
    sub = html(root["subject"]) if root else ""
    rows = []
    for lf in d["leaves"]:
        w = leaf_weight_text(lf)
        author = lf["author"].get("name", "") if isinstance(lf["author"], dict) else ""
        rows.append(f'<tr><td>{html(lf["site"] or "-")}</td>'
                    f'<td class="mono"><a href="#" data-id="{html(lf["commit"])}">{html(lf["commit"][:10])}</a></td>'
                    f'<td>{html(author)}</td><td>{html(lf["timestamp"])}</td>'
                    f'<td class="weight">{html(w)}</td><td>{html(lf["subject"])}</td></tr>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html(title)} <span class=\"mono\">({html(d['rev'])})</span></h1>"
        f"<p>{sub} — {len(d['nodes'])} commits, {len(d['leaves'])} leaves. "
        "Click a node to see its provenance.</p></header>"
        f"<main><div id=\"graph-wrap\">{svg}</div>"
        "<aside id=\"panel\" class=\"empty\">Click a node of the graph to see its provenance: "
        "author, time, message, recipe, inputs and effective weights.</aside></main>"
        "<section id=\"leaves\"><h2>Leaves and their effective weight in the composite</h2><table>"
        "<tr><th>site</th><th>commit</th><th>author</th><th>time</th><th>effective weight</th><th>message</th></tr>"
        + "".join(rows) + "</table></section>"
        f"<script type=\"application/json\" id=\"lineage-data\">{_json_for_script(d)}</script>"
        f"<script>{_JS}</script></body></html>\n"
    )
