"""One self-contained HTML page drawing a lineage (``mfgit lineage REV --html out.html``).

Everything is inline — CSS, the SVG of the graph (laid out in Python, `mfgit.render.graph`),
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
from mfgit.render.escape import html, terminal_doc
from mfgit.render.graph import GRAPH_CSS, lineage_svg

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
    svg, _, _ = lineage_svg(d)
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
        f"<title>{html(title)}</title><style>{_CSS}{GRAPH_CSS}</style></head><body>"
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
