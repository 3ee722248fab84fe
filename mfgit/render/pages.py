"""The static pages of a repository (``mfgit pages OUT``): an index and one page per commit.

Pure rendering of the documents `mfgit.api.pages` gathers; it reads no
repository. The pages are meant to be opened from disk or served as plain
files (from the hub's own S3 bucket, say), by anyone, so:

* they load nothing: CSS inline, the lineage graph inline SVG
  (`mfgit.render.graph`), links only to other pages of the set, relative;
  a Content-Security-Policy forbids every fetch, and there is no script at
  all — everything is readable without JavaScript (``<details>`` folds the
  long parts);
* everything a participant wrote — messages, names, sites, branch and tag
  names, metadata keys and values, note names and values, attachment names,
  module names — goes through `mfgit.render.escape.html` (one-line fields)
  or `html_text` (messages), which show control and bidi characters as
  visible escapes and then write entities (docs/design.md, invariant 13).
  Commit ids are used in file names only when they are 64 hex digits.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mfgit.render.audit import leaf_weight_text
from mfgit.render.escape import html, html_text, terminal_doc
from mfgit.render.graph import GRAPH_CSS, lineage_svg

_ID = re.compile(r"^[0-9a-f]{64}$")
MIN_GRAPH_SCALE = 0.5  # the lineage graph is scaled to fit its page down to this, then scrolls
OPEN_DIFFS = 3  # comparisons shown unfolded on a commit's page; more (a merge of many inputs) start folded

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f7f8fa;font-size:14px}
header{padding:14px 20px;background:#1d2330;color:#fff}
header h1{font-size:19px;margin:0 0 4px 0}header p{margin:0;font-size:13px;color:#c8cfdc}
header a{color:#c8d8ff}
main{padding:8px 20px 32px 20px;max-width:1300px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 16px;margin:14px 0;overflow-x:auto}
h2{font-size:16px;margin:2px 0 10px 0}h3{font-size:14px;margin:12px 0 6px 0}
table{border-collapse:collapse;margin:4px 0}
td,th{border-bottom:1px solid #eef0f4;padding:4px 10px 4px 0;text-align:left;vertical-align:top}
th{font-weight:600;color:#3b4252}
table.kv th{width:150px}
pre{background:#f3f5f8;padding:8px;border-radius:6px;overflow:auto;max-height:420px;font-size:12px;white-space:pre-wrap;word-break:break-word}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.muted{color:#778}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;white-space:nowrap}
.good,.trusted{background:#dff3df;color:#1f6b2a}
.bad,.untrusted{background:#ffe0e0;color:#9b1c1c}
.unsigned{background:#eceff4;color:#4c566a}
tr.untrusted td{background:#fff6f6}
#notes td:last-child{max-width:460px;overflow-wrap:anywhere}
td.untrusted{background:#fff6f6}
.site{margin:10px 0 16px 0}
.graph-wrap{overflow:auto;border:1px solid #eef0f4;border-radius:6px;padding:6px}
.bars td.bar{width:45%}
.bar div{background:#eef0f4;border-radius:3px;height:12px;min-width:2px}
.bar div span{display:block;height:12px;border-radius:3px;background:#5b7bd5}
.bar div span.added{background:#3c9a4f}.bar div span.removed{background:#c0392b}.bar div span.changed{background:#5b7bd5}
details summary{cursor:pointer;color:#3b4252;font-weight:600}
details.diff{margin:8px 0}details.diff summary{font-weight:normal}

"""


def page_name(cid: str) -> str:
    """The path of a commit's page inside the output directory."""
    if not _ID.match(cid):
        raise ValueError(f"not a commit id: {cid!r}")
    return f"commits/{cid}.html"


def _page(title: str, heading: str, sub: str, body: str, *, home: str | None) -> str:
    nav = f' · <a href="{html(home)}">index</a>' if home else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
        "<meta name=\"referrer\" content=\"no-referrer\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{title}</title><style>{_CSS}{GRAPH_CSS}</style></head><body>"
        f"<header><h1>{heading}</h1><p>{sub}{nav}</p></header>"
        f"<main>{body}</main></body></html>\n"
    )


def _num(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return html(x)
    return html(f"{x:.6g}")


def _person(p: Any) -> str:
    if not isinstance(p, dict):
        return html(p or "")
    return html(f"{p.get('name', '')} <{p.get('email', '')}>")


def _json_block(value: Any) -> str:
    return f"<pre>{html_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))}</pre>"


def _kv(rows: list[tuple[str, str]]) -> str:
    return "<table class=\"kv\">" + "".join(f"<tr><th>{html(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


class _Links:
    """Links between the pages, relative to the page being written (`prefix`: "commits/" from the index, "" beside)."""

    def __init__(self, doc: dict[str, Any], prefix: str):
        self.commits = doc["commits"]
        self.prefix = prefix

    def href(self, cid: Any) -> str | None:
        if isinstance(cid, str) and cid in self.commits and _ID.match(cid):
            return f"{self.prefix}{cid}.html"
        return None

    def commit(self, cid: Any, text: str | None = None) -> str:
        label = html(text if text is not None else str(cid or "")[:10])
        ref = self.href(cid)
        if ref is None:
            return f'<span class="mono muted" title="not in this repository">{label}</span>'
        return f'<a class="mono" href="{html(ref)}">{label}</a>'


def _status_badge(v: dict[str, Any]) -> str:
    cls = "bad" if not v.get("ok") else ("good" if v.get("status") == "good" else "unsigned")
    text = {"good": "good signature", "bad": "bad signature", "unsigned": "unsigned"}.get(v.get("status"), v.get("status"))
    if not v.get("ok"):
        text = f"{text} — refused"
    return f'<span class="badge {cls}">{html(text)}</span>'


def _values(note: dict[str, Any]) -> dict[str, Any]:
    """A note's values (a note that fails its checks may have none, or not a mapping)."""
    v = note.get("values")
    return {str(k): x for k, x in v.items()} if isinstance(v, dict) else {}


def _trust_badge(note: dict[str, Any]) -> str:
    t = note.get("trust") or {}
    cls = "trusted" if t.get("trusted") else "untrusted"
    return f'<span class="badge {cls}" title="{html(t.get("reason", ""))}">{cls}</span>'


# -- the index ----------------------------------------------------------------------------------


def _branch_rows(branches: list[dict[str, Any]], doc: dict[str, Any], links: _Links) -> str:
    rows = []
    for b in branches:
        s = doc["commits"].get(b["commit"]) or {}
        sig = ""
        if "signed" in s:
            sig = ('<span class="badge good">signed</span>' if s["signed"] else
                   '<span class="badge unsigned">unsigned</span>')
            if not s.get("signatures_ok", True):
                sig += ' <span class="badge bad">refused by policy</span>'
        rows.append(f'<tr class="branch"><td class="mono">{html(b["name"])}</td><td>{links.commit(b["commit"])}</td>'
                    f'<td>{html(s.get("subject", ""))}</td><td>{html(s.get("timestamp", ""))}</td><td>{sig}</td></tr>')
    return ("<table><tr><th>branch</th><th>tip</th><th>message</th><th>time</th><th>signature</th></tr>"
            + "".join(rows) + "</table>")


def _history(branch: dict[str, Any], doc: dict[str, Any], links: _Links) -> str:
    items = []
    for cid in branch.get("history", []):
        s = doc["commits"][cid]
        items.append(f"<li>{links.commit(cid)} {html(s['subject'])} "
                     f"<span class=\"muted\">— {_person(s['author'])}, {html(s['timestamp'])}</span></li>")
    count = f"{len(items)} commit" + ("" if len(items) == 1 else "s")
    return (f"<details><summary>history of {html(branch['name'])} ({count})</summary>"
            f"<ol class=\"history\">{''.join(items)}</ol></details>")


def _notes_table(doc: dict[str, Any], links: _Links) -> str:
    """A row per composite (and per other commit the sites evaluated), a column per evaluation and metric."""
    notes: dict[str, list[dict[str, Any]]] = doc["notes"]
    rows = [cid for cid, s in doc["commits"].items() if s["kind"] == "merge" or notes.get(cid)]
    columns = sorted({(str(n.get("name", "?")), str(k)) for ns in notes.values() for n in ns
                      for k in (_values(n) or {"?": None})})
    if not rows or not columns:
        return '<p class="muted">No evaluation notes yet (sites add them with mfgit eval, then push --notes).</p>'
    head = "".join(f"<th>{html(name)}<br><span class=\"muted\">{html(metric)}</span></th>" for name, metric in columns)
    body = []
    for cid in rows:
        s = doc["commits"][cid]
        cells = []
        for name, metric in columns:
            found = [n for n in notes.get(cid, []) if str(n.get("name", "?")) == name
                     and metric in (_values(n) or {"?": None})]
            bits = []
            for n in found:
                value = _values(n).get(metric)
                site = (n.get("measured_by") or {}).get("site") if isinstance(n.get("measured_by"), dict) else None
                trusted = (n.get("trust") or {}).get("trusted")
                mark = "" if trusted else f" {_trust_badge(n)}"
                bits.append(f'<span class="note {"trusted" if trusted else "untrusted"}" '
                            f'title="{html((n.get("trust") or {}).get("reason", ""))}">{_num(value)}'
                            f' <span class="muted">({html(site or "?")})</span>{mark}</span>')
            untrusted = any(not (n.get("trust") or {}).get("trusted") for n in found)
            cells.append(f'<td class="{"untrusted" if untrusted else ""}">{"<br>".join(bits) or "–"}</td>')
        label = f"{s['strategy']} merge" if s["kind"] == "merge" else (s.get("site") or "commit")
        body.append(f"<tr><td>{links.commit(cid)}</td><td>{html(label)}</td><td>{html(s['subject'])}</td>"
                    + "".join(cells) + "</tr>")
    return ('<table class="notes"><tr><th>commit</th><th>what</th><th>message</th>' + head + "</tr>"
            + "".join(body) + "</table>"
            '<p class="muted">Values marked <span class="badge untrusted">untrusted</span> are not signed by a key '
            "the allowed-signers policy allows for the site they claim; they are shown, never counted "
            "(hover for the reason).</p>")


def index_page(doc: dict[str, Any]) -> str:
    links = _Links(doc, "commits/")
    sites: dict[str, list[dict[str, Any]]] = {}
    others = []
    for b in doc["branches"]:
        if b["branch"].startswith("sites/") and len(b["branch"]) > len("sites/"):
            sites.setdefault(b["branch"][len("sites/"):], []).append(b)
        else:
            others.append(b)
    site_html = []
    for k, (site, branches) in enumerate(sorted(sites.items())):
        site_html.append(f'<div class="site" id="site-{k}"><h3>site {html(site)}</h3>'
                         + _branch_rows(branches, doc, links) + "".join(_history(b, doc, links) for b in branches)
                         + "</div>")
    body = ['<section id="sites"><h2>Sites</h2>'
            + ("".join(site_html) or '<p class="muted">No site branches (sites/NAME) yet.</p>') + "</section>"]
    body.append('<section id="branches"><h2>Composites and other branches</h2>'
                + (_branch_rows(others, doc, links) + "".join(_history(b, doc, links) for b in others)
                   if others else '<p class="muted">None.</p>') + "</section>")
    body.append('<section id="evaluations"><h2>Evaluation notes per composite</h2>' + _notes_table(doc, links)
                + "</section>")
    if doc["tags"]:
        rows = "".join(f'<tr><td class="mono">{html(t["name"])}</td><td>{links.commit(t["commit"])}</td></tr>'
                       for t in doc["tags"])
        body.append(f'<section id="tags"><h2>Tags</h2><table><tr><th>tag</th><th>commit</th></tr>{rows}</table>'
                    "</section>")
    commits = "".join(
        f'<tr><td>{links.commit(cid)}</td><td>{html(s["kind"])}</td><td>{html(s.get("site") or "–")}</td>'
        f'<td>{html(s["timestamp"])}</td><td>{html(s["subject"])}</td></tr>' for cid, s in doc["commits"].items())
    body.append(f'<section id="commits"><details><summary>All {len(doc["commits"])} commits</summary>'
                "<table><tr><th>commit</th><th>kind</th><th>site</th><th>time</th><th>message</th></tr>"
                f"{commits}</table></details></section>")
    pol = doc["policy"]
    policy = (f"allowed signers: {html(pol['source'])}" if pol.get("source") else
              f"allowed-signers policy unreadable: {html(pol['error'])}" if pol.get("error") else
              "no allowed-signers policy: no branch is protected and no note is trusted")
    sub = (f"{len(sites)} sites · {len(doc['branches'])} branches · {len(doc['commits'])} commits · "
           f"{policy} · written {html(doc['generated'])} by mfgit {html(doc['version'])}")
    return _page(f"mfgit: {html(doc['repository'])}", f"Repository {html(doc['repository'])}", sub, "".join(body),
                 home=None)


# -- a commit -----------------------------------------------------------------------------------


def _signature_section(entry: dict[str, Any]) -> str:
    sig = entry["commit"].get("signature")
    rows = "".join(f"<tr><td class=\"mono\">{html(v.get('branch') or '(no branch)')}</td><td>{_status_badge(v)}</td>"
                   f"<td class=\"mono\">{html(v.get('key_id') or '–')}</td><td>{html(v.get('reason', ''))}</td></tr>"
                   for v in entry["signatures"])
    fmt = f" ({html(sig.get('format'))})" if isinstance(sig, dict) else ""
    return (f'<section id="signature"><h2>Signature{fmt}</h2>'
            "<table><tr><th>judged as branch</th><th>status</th><th>key</th><th>why</th></tr>"
            f"{rows}</table></section>")


def _provenance_section(entry: dict[str, Any], links: _Links) -> str:
    prov = entry["commit"].get("provenance") or {}
    out = ['<section id="provenance"><h2>Provenance</h2>']
    if prov.get("kind") != "merge":
        rows = [("kind", html(prov.get("kind") or "–"))]
        if prov.get("source") is not None:
            rows.append(("source", html(json.dumps(prov.get("source"), sort_keys=True, ensure_ascii=False))))
        code = prov.get("code")
        if isinstance(code, dict):
            rows += [(f"code {k}", html(v)) for k, v in sorted(code.items())]
        out.append(_kv(rows))
        meta = prov.get("meta")
        out.append("<h3>Metadata</h3>")
        if isinstance(meta, dict) and meta:
            out.append('<table class="kv meta">' + "".join(
                f"<tr><th>{html(k)}</th><td>{html(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}"
                "</td></tr>" for k, v in sorted(meta.items())) + "</table>")
        else:
            out.append('<p class="muted">none</p>')
    out.append(f"<details><summary>the whole provenance record</summary>{_json_block(prov)}</details></section>")
    return "".join(out)


def _merge_section(entry: dict[str, Any], links: _Links) -> str:
    prov = entry["commit"].get("provenance") or {}
    recipe = prov.get("recipe") or {}
    rows = [(k, html(v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)))
            for k, v in sorted(recipe.items())]
    integ = prov.get("integration") or {}
    rows.append(("integration", html(integ.get("mode") or "–")))
    rows.append(("linear", "yes" if prov.get("linear") else "no (element-wise strategy)"))
    ke = prov.get("kept_energy") or {}
    if isinstance(ke, dict) and ke.get("min") is not None:
        rows.append(("kept energy", f"min {_num(ke.get('min'))}, mean {_num(ke.get('mean'))}"))
    dev = prov.get("device") or {}
    if isinstance(dev, dict) and dev:
        names = [str(dev[k]) for k in ("type", "name") if dev.get(k)]
        rows.append(("device", html(" · ".join(dict.fromkeys(names)))))
    inputs = "".join(f"<tr><td>{links.commit(i.get('commit'))}</td><td>{html(i.get('label') or '–')}</td>"
                     f"<td>{_num(i.get('weight'))}</td></tr>" for i in prov.get("inputs", []) if isinstance(i, dict))
    lin = entry.get("lineage") or {"leaves": []}
    leaves = "".join(
        f"<tr class=\"leaf\"><td>{html(lf.get('site') or '–')}</td><td>{links.commit(lf['commit'])}</td>"
        f"<td>{html(lf.get('label') or '–')}</td><td class=\"weight\">{html(leaf_weight_text(lf))}</td>"
        f"<td>{lf.get('paths')}</td></tr>" for lf in lin["leaves"])
    out = []
    svg, width, _ = lineage_svg(terminal_doc(lin), links.href) if lin.get("nodes") else ("", 0, 0)
    if svg:
        # Scaled to fit, but never below half size: a merge of many inputs scrolls instead of shrinking to dots.
        out.append('<section id="lineage"><h2>Lineage</h2><p class="muted">Each box links to its commit; edges carry '
                   f'the weights each merge gave its inputs.</p><div class="graph-wrap">'
                   f'<div style="min-width:{width * MIN_GRAPH_SCALE:.0f}px">{svg}</div></div></section>')
    out += ['<section id="merge"><h2>Merge recipe</h2>', _kv(rows),
           "<h3>Inputs</h3><table><tr><th>input</th><th>as named</th><th>weight</th></tr>", inputs, "</table>",
           '<h3>Effective weight of each site commit in this composite</h3><table class="leaves">'
           "<tr><th>site</th><th>commit</th><th>as named</th><th>effective weight</th><th>paths</th></tr>",
           leaves, "</table></section>"]
    return "".join(out)


def _notes_section(entry: dict[str, Any]) -> str:
    if not entry["notes"]:
        return '<section id="notes"><h2>Evaluation notes</h2><p class="muted">none</p></section>'
    rows = []
    for n in entry["notes"]:
        trusted = (n.get("trust") or {}).get("trusted")
        mb = n.get("measured_by") if isinstance(n.get("measured_by"), dict) else {}
        values = ", ".join(f"{html(k)} = {_num(v)}" for k, v in sorted(_values(n).items()))
        sig = n.get("signature") or {}
        rows.append(
            f'<tr class="note {"trusted" if trusted else "untrusted"}"><td>{html(n.get("name", "?"))}</td>'
            f'<td>{html(mb.get("site") or "?")}</td><td>{values or "–"}</td>'
            f'<td>{_person(mb) if mb else "–"}</td><td>{html(n.get("timestamp", ""))}</td>'
            f'<td>{html(sig.get("status", "?"))}</td>'
            f'<td>{_trust_badge(n)} {html((n.get("trust") or {}).get("reason", ""))}</td></tr>')
    return ('<section id="notes"><h2>Evaluation notes</h2><table><tr><th>evaluation</th><th>site (as claimed)</th>'
            "<th>values</th><th>measured by</th><th>time</th><th>signature</th><th>trust</th></tr>"
            + "".join(rows) + "</table></section>")


def _attachments_section(entry: dict[str, Any]) -> str:
    att = entry.get("attachments")
    if not att:
        return ""
    items = sorted(att.items()) if isinstance(att, dict) else [(a.get("name", "?") if isinstance(a, dict) else a, a)
                                                             for a in att]
    rows = []
    for name, value in items:
        if isinstance(value, dict):
            detail = ", ".join(_attachment_field(k, v) for k, v in sorted(value.items()) if k != "name")
        else:
            detail = html(value)
        rows.append(f'<tr><td class="mono">{html(name)}</td><td>{detail}</td></tr>')
    return ('<section id="attachments"><h2>Attachments</h2><table><tr><th>name</th><th>record</th></tr>'
            + "".join(rows) + "</table></section>")


def _attachment_field(key: str, value: Any) -> str:
    # A safetensors attachment's map of tensor name → id runs to one id per tensor: the count says enough
    # here (the ids are in the commit's JSON and in `mfgit attachments --json`).
    if key == "tensors" and isinstance(value, dict):
        return f"{len(value)} tensor{'' if len(value) == 1 else 's'}"
    return f"{html(key)}: {html(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))}"


def _bars(d: dict[str, Any]) -> str:
    mods = d["modules"]
    if not mods:
        return '<p class="muted">no module differs</p>'
    top = max([m.get("rel_diff") or 0.0 for m in mods] + [1e-12])
    rows = []
    for m in mods:
        status = m["status"]
        if status in ("added", "removed"):
            width, value = 100.0, status
        elif m.get("rel_diff") is None:
            width, value = 100.0, "changed (not comparable)"
        else:
            width, value = 100.0 * m["rel_diff"] / top, f"{m['rel_diff']:.4g}"
        cos = f"cos {m['cosine']:.4g}" if m.get("cosine") is not None else ""
        rows.append(f'<tr class="module {html(status)}"><td class="mono">{html(m["name"])}</td>'
                    f'<td class="bar"><div><span class="{html(status)}" style="width:{width:.1f}%"></span></div></td>'
                    f"<td>{html(value)}</td><td class=\"muted\">{html(cos)}</td></tr>")
    return ('<table class="bars"><tr><th>module</th><th>relative change ‖ΔW − ΔW′‖ / ‖ΔW′‖</th><th></th><th></th>'
            "</tr>" + "".join(rows) + "</table>")


def _mixture_section(entry: dict[str, Any], links: _Links) -> str:
    """A mixture's members and weights (docs/merging.md, MedForge-Mixture): it has no modules to compare."""
    mx = entry["mixture"]
    rows = "".join(f"<tr><td>{links.commit(m['commit'])}</td><td>{html(m.get('site') or '–')}</td>"
                   f"<td class=\"weight\">{_num(m['weight'])}</td><td>{html(m.get('subject') or '')}</td></tr>"
                   for m in mx["members"])
    return ('<section id="mixture"><h2>Mixture</h2><p class="muted">An output-space composite: the sum of '
            f'weight × softmax over its {len(mx["members"])} members; no weights are merged.</p>'
            "<table><tr><th>member</th><th>site</th><th>weight</th><th>message</th></tr>" + rows + "</table></section>")


def _diff_section(entry: dict[str, Any], links: _Links) -> str:
    if not entry["diffs"]:
        return ('<section id="diff"><h2>Changes</h2><p class="muted">No parent or input to compare with: '
                "the first commit of its branch.</p></section>")
    out = ['<section id="diff"><h2>Changes, module by module</h2>']
    # A few comparisons are shown open; a merge of many inputs folds them (each summary stays visible).
    for x in entry["diffs"]:
        head = f"against {html(x['label'])} {links.commit(x['against'])}"
        if "error" in x:
            out.append(f'<h3>{head}</h3><p class="bad">cannot compare: {html(x["error"])}</p>')
            continue
        s = x["diff"]["summary"]
        summary = (f'{head} <span class="muted">— {s["modules"]} modules: {s["changed"]} changed, {s["added"]} added, '
                   f'{s["removed"]} removed, {s["unchanged"]} unchanged; relative change {_num(s.get("rel_diff"))}, '
                   f'cosine {_num(s.get("cosine"))}</span>')
        opened = " open" if len(entry["diffs"]) <= OPEN_DIFFS else ""
        out.append(f'<details class="diff"{opened}><summary>{summary}</summary>{_bars(x["diff"])}</details>')
    out.append("</section>")
    return "".join(out)


def commit_page(entry: dict[str, Any], doc: dict[str, Any]) -> str:
    links = _Links(doc, "")
    c, cid = entry["commit"], entry["id"]
    subject = c["message"].splitlines()[0] if c["message"] else ""
    parents = " ".join(links.commit(p) for p in c["parents"]) or "none"
    names = ", ".join(html(n) for n in doc["tips"].get(cid, [])) or "–"
    adapter = entry["adapter"]
    adapter_text = (f'<span class="mono">{html(adapter["id"])}</span>' +
                    (f' — {adapter["modules"]} modules, rank {html(", ".join(map(str, adapter["ranks"])))}, '
                     f'{html(", ".join(adapter["dtypes"]))}, '
                     f'base model {html((adapter.get("base_model") or {}).get("name") or "–")}'
                     if "error" not in adapter else f' <span class="bad">{html(adapter["error"])}</span>'))
    merged = "<br>".join(f'{links.commit(m["merge"])} with weight {_num(m["weight"])} '
                         f'<span class="muted">{html((doc["commits"].get(m["merge"]) or {}).get("subject", ""))}</span>'
                         for m in entry.get("merged_into", [])) or "–"
    rows = [("commit", f'<span class="mono">{html(cid)}</span>'), ("author", _person(c["author"])),
            ("site", html(c["site"] or "–")), ("time", html(c["timestamp"])), ("parents", parents),
            ("branch and tag tips", names), ("adapter", adapter_text), ("merged into", merged)]
    body = [f'<section id="summary"><h2>{"Merge" if entry["kind"] == "merge" else "Commit"} {html(cid[:10])}</h2>',
            _kv(rows), f'<h3>Message</h3><pre class="message">{html_text(c["message"])}</pre></section>']
    if entry["kind"] == "merge":
        body.append(_merge_section(entry, links))
    body += [_notes_section(entry), _signature_section(entry), _attachments_section(entry),
             _provenance_section(entry, links),
             _mixture_section(entry, links) if entry.get("mixture") else _diff_section(entry, links)]
    kind = "merge" if entry["kind"] == "merge" else "commit"
    return _page(f"{kind} {html(cid[:10])}: {html(subject)}", f"{kind.capitalize()} {html(cid[:10])} "
                 f"<span class=\"muted\">{html(subject)}</span>",
                 f"{html(c['site'] or 'no site')} · {_person(c['author'])} · {html(c['timestamp'])}",
                 "".join(body), home="../index.html")
