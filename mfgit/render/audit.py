"""Text and Graphviz renderings of the audit reports: diff, blame, lineage, verify.

Each function takes the JSON document the audit verb returns (docs/audit.md)
and returns text; none reads a repository. Every public renderer first passes
its document through `mfgit.render.escape.terminal_doc` (docs/design.md,
invariant 13): module names, messages, authors and sites are participants'
text, and DOT output is read on terminals too.
"""

from __future__ import annotations

from typing import Any

from mfgit.formats.peft import PEFT_PREFIX
from mfgit.render.escape import terminal, terminal_doc

# Kept energy below this: the output rank was truncated (the merge is not exact).
KEPT_ENERGY_EXACT = 1.0 - 1e-9


# -- diff ---------------------------------------------------------------------------------------


def _g(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _short(name: str) -> str:
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def summary_line(d: dict[str, Any]) -> str:
    s = terminal_doc(d["summary"])
    line = (f"{s['modules']} module(s): {s['changed']} changed, {s['added']} added, {s['removed']} removed, "
            f"{s['unchanged']} unchanged")
    if s["rel_diff"] is not None:
        line += f"; ‖ΔW_B − ΔW_A‖/‖ΔW_A‖ = {_g(s['rel_diff'])}"
    if s["cosine"] is not None:
        line += f", cosine {_g(s['cosine'])}"
    return line


def diff_text(d: dict[str, Any], *, stat: bool = False) -> str:
    if d.get("kind") == "mixture":  # --- mixture ---
        return mixture_diff_text(d)
    # Config values are shown as Python literals of the exact data (repr
    # escapes what is not printable); everything else is escaped text.
    config = [(terminal(k), terminal(repr(v["a"])), terminal(repr(v["b"]))) for k, v in d["config"].items()]
    d = terminal_doc(d)
    lines = [f"diff {d['a']['commit'][:10]} ({d['a']['rev']}) -> {d['b']['commit'][:10]} ({d['b']['rev']})"]
    if d["identical"]:
        lines.append("the adapters are identical")
    for k, a, b in config:
        lines.append(f"config {k}: {a} -> {b}")
    marks = {"changed": "M", "added": "A", "removed": "D", "unchanged": " "}
    for m in d["modules"]:
        if m["status"] == "unchanged":
            continue
        name = _short(m["name"])
        if m["status"] == "changed":
            if stat:
                mag = m.get("magnitude")
                lines.append(f"M  {name}  rel {_g(m['rel_diff'])}" + (f"  magnitude rel {_g(mag['rel_diff'])}" if mag else ""))
                continue
            sub = m.get("subspace") or {}
            ranks = f"r {m['rank_a']}" if m["rank_a"] == m["rank_b"] else f"r {m['rank_a']}->{m['rank_b']}"
            mag = m.get("magnitude")
            lines.append(f"M  {name}  {ranks}  |ΔW_A| {_g(m['norm_a'])}  |ΔW_B| {_g(m['norm_b'])}  "
                         f"rel {_g(m['rel_diff'])}  cos {_g(m['cosine'])}  subspace cos² {_g(sub.get('mean_cos2'))}"
                         + (f"  magnitude rel {_g(mag['rel_diff'])}" if mag else ""))
        else:
            r = m["rank_b"] if m["status"] == "added" else m["rank_a"]
            n = m["norm_b"] if m["status"] == "added" else m["norm_a"]
            lines.append(f"{marks[m['status']]}  {name}  r {r}  |ΔW| {_g(n)}")
    # --- attachments ---
    for x in d.get("attachments", []):
        da, db = (x["digest_a"] or "")[:12], (x["digest_b"] or "")[:12]
        change = {"added": f"sha256:{db}", "removed": f"sha256:{da}"}.get(x["status"], f"sha256:{da} -> sha256:{db}")
        priv = {x["private_a"], x["private_b"]} - {None}
        lines.append(f"{marks[x['status']]}  attachment {x['name']}  {change}"
                     + ("  (private)" if priv == {True} else "  (public -> private)" if x["private_b"] else
                        "  (private -> public)" if x["private_a"] else ""))
        lines += _attachment_tensor_lines(x, marks, stat=stat)
    # --- end attachments ---
    lines.append(summary_line(d))
    return "\n".join(lines) + "\n"


def _attachment_tensor_lines(x: dict[str, Any], marks: dict[str, str], *, stat: bool) -> list[str]:
    """Under a changed safetensors attachment: the counts, then (not with --stat) one line per tensor that differs."""
    t = x.get("tensors")
    if t is None:
        return []
    counts = [f"{len(t[k])} {k}" for k in ("changed", "added", "removed") if t[k]] + [f"{t['unchanged']} unchanged"]
    lines = ["     tensors: " + ", ".join(counts) + ("; header changed" if x.get("header_changed") else "")]
    if not stat:
        lines += [f"     {marks[k]}  {n}" for k in ("changed", "added", "removed") for n in t[k]]
    return lines


# -- blame --------------------------------------------------------------------------------------


def blame_text(d: dict[str, Any]) -> str:
    d = terminal_doc(d)
    lines = []
    for r in d["modules"]:
        name = _short(r["module"])
        who = r["author"].get("name", "") if isinstance(r["author"], dict) else ""
        lines.append(f"{r['commit'][:10]} {(r['site'] or '-'):<14} {r['timestamp'][:19]} {who:<16} {name}  ({r['subject']})")
    return "\n".join(lines) + ("\n" if lines else "")


# -- lineage ------------------------------------------------------------------------------------


def _fmt_w(w) -> str:
    return "-" if w is None else f"{w:.6g}"


def leaf_weight_text(lf: dict[str, Any]) -> str:
    """A lineage leaf's effective weight as the lineage page and the model card show it."""
    if not lf["linear"]:
        return "not linear"
    return f"{lf['effective_weight']:.6g}" + ("" if lf["exact"] else " (rank-truncated)")


def _node_title(n: dict[str, Any]) -> str:
    if n["kind"] == "merge":
        r = n.get("recipe") or {}
        bits = [f"merge {r.get('strategy')}"]
        if n.get("lambda") not in (None, 1.0):
            bits.append(f"λ={n['lambda']:g}")
        ke = (n.get("kept_energy") or {}).get("min")
        if ke is not None and ke < KEPT_ENERGY_EXACT:
            bits.append(f"kept energy {ke:.4f}")
        return " ".join(bits)
    if n["kind"] == "mixture":  # --- mixture ---
        return f"mixture {n.get('combine')} (output space)"
    return f"site {n['site']}" if n["site"] else "commit"


def lineage_text(d: dict[str, Any]) -> str:
    d = terminal_doc(d)
    nodes = {n["id"]: n for n in d["nodes"]}
    lines = [f"lineage of {d['root'][:10]} ({d['rev']})"]
    shown: set[str] = set()

    def walk(cid: str, prefix: str, last: bool, weight, depth: int) -> None:
        n = nodes.get(cid)
        branch = "" if depth == 0 else ("└── " if last else "├── ")
        w = "" if depth == 0 else f"w={_fmt_w(weight)}  "
        if n is None:
            lines.append(f"{prefix}{branch}{w}{cid[:10]} (missing)")
            return
        who = n["author"].get("name", "") if isinstance(n["author"], dict) else ""
        again = " (shown above)" if cid in shown and n["kind"] in ("merge", "mixture") else ""
        lines.append(f"{prefix}{branch}{w}{cid[:10]} {_node_title(n)}  {who}  {n['timestamp']}  {n['subject']}{again}")
        if n["kind"] not in ("merge", "mixture") or again:
            return
        shown.add(cid)
        child_prefix = prefix + ("" if depth == 0 else ("    " if last else "│   "))
        inputs = n["inputs"]
        for i, inp in enumerate(inputs):
            walk(inp["commit"], child_prefix, i == len(inputs) - 1, inp["weight"], depth + 1)

    walk(d["root"], "", True, None, 0)
    lines.append("")
    lines.append(f"leaves (effective weight in {d['root'][:10]}):")
    for lf in d["leaves"]:
        if lf["linear"]:
            w = _fmt_w(lf["effective_weight"]) + ("" if lf["exact"] else " (rank-truncated)")
            w += " (output space)" if lf.get("space") == "output" else ""
        else:
            w = "not linear (via " + ", ".join(v[:10] for v in lf["nonlinear_via"]) + ")"
        lines.append(f"  {(lf['site'] or '-'):<20} {lf['commit'][:10]}  {w}")
    return "\n".join(lines) + "\n"


def mixture_diff_text(d: dict[str, Any]) -> str:
    """Two mixtures' members: A added, D removed, W reweighted."""
    d = terminal_doc(d)
    lines = [f"diff {d['a']['commit'][:10]} ({d['a']['rev']}) -> {d['b']['commit'][:10]} ({d['b']['rev']}): mixtures"]
    if d["identical"]:
        lines.append("the mixtures are identical")
    marks = {"added": "A", "removed": "D", "reweighted": "W", "unchanged": " "}
    for m in d["members"]:
        lines.append(f"{marks[m['status']]} {m['commit'][:10]}  {(m['site'] or '-'):<16} "
                     f"{_fmt_w(m['weight_a'])} -> {_fmt_w(m['weight_b'])}")
    c = d["counts"]
    lines.append(f"{c['added']} added, {c['removed']} removed, {c['reweighted']} reweighted, {c['unchanged']} unchanged")
    return "\n".join(lines) + "\n"


def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def lineage_dot(d: dict[str, Any]) -> str:
    d = terminal_doc(d)
    leaf_w = {lf["commit"]: lf for lf in d["leaves"]}
    out = ["digraph lineage {", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9];']
    for n in d["nodes"]:
        if n["kind"] in ("merge", "mixture"):
            label = f"{_node_title(n)}\n{n['id'][:10]}\n{n['subject']}"
            attrs = f"shape=box, style=\"rounded,filled\", fillcolor={_dot_str('#dbe8ff' if n['linear'] else '#ffe1c7')}"
        else:
            lf = leaf_w.get(n["id"])
            eff = ("effective " + _fmt_w(lf["effective_weight"]) if lf and lf["linear"] else "not linear") if lf else ""
            label = f"{_node_title(n)}\n{n['id'][:10]}\n{n['subject']}\n{eff}"
            attrs = f"shape=ellipse, style=filled, fillcolor={_dot_str('#e3f6e3')}"
        out.append(f"  {_dot_str(n['id'])} [label={_dot_str(label)}, {attrs}];")
    for e in d["edges"]:
        out.append(f"  {_dot_str(e['from'])} -> {_dot_str(e['to'])} [label={_dot_str(_fmt_w(e['weight']))}];")
    out.append("}")
    return "\n".join(out) + "\n"


# -- verify -------------------------------------------------------------------------------------


def verify_text(r: dict[str, Any]) -> str:
    r = terminal_doc(r)
    lines = [f"verify {r['commit'][:10]} ({r['rev']}{', branch ' + r['branch'] if r['branch'] else ''}): "
             f"{r['commits']} commit(s)"]
    i = r["integrity"]
    lines.append(f"integrity: {'ok' if i['ok'] else 'FAILED'} — {i['commits']} commits, {i['adapters']} adapters, "
                 f"{i['tensors']} tensors, {i['blobs']} files checked (SHA-256)")
    # --- attachments ---
    if i.get("attachments") or i.get("private_attachments_elsewhere"):
        lines.append(f"attachments: {i['attachments']} checked against their digests"
                     + (f", {i['private_attachments_elsewhere']} private to another site (not here to check)"
                        if i.get("private_attachments_elsewhere") else ""))
    # --- end attachments ---
    for p in i["problems"]:
        lines.append(f"  FAIL {p['commit'][:10]}  {p['what']}: {p['error']}")
    for m in r.get("mixtures") or []:  # --- mixture ---
        lines.append(f"mixture: {'ok  ' if m['ok'] else 'FAIL'} {m['commit'][:10]}  {m['reason']}")
    if r.get("reproduce") is not None:
        rep = r["reproduce"]
        mixed = sum(1 for m in rep["merges"] if m.get("kind") == "mixture")
        lines.append(f"reproduce: {'ok' if rep['ok'] else 'FAILED'} — {len(rep['merges']) - mixed} merge(s)"
                     + (f", {mixed} mixture(s)" if mixed else ""))
        for m in rep["merges"]:
            if m.get("kind") == "mixture":
                lines.append(f"  {'ok  ' if m['ok'] else 'FAIL'} {m['commit'][:10]}  mixture: {m['reason']}")
                continue
            dev = f"{m.get('device')} vs recorded {m.get('recorded_device')}"
            lines.append(f"  {'ok  ' if m['ok'] else 'FAIL'} {m['commit'][:10]}  {m['strategy']}  {dev}: {m['reason']}")
    if r.get("signatures") is not None:
        s = r["signatures"]
        lines.append(f"signatures: {'ok' if s['ok'] else 'FAILED'} — policy {s['policy'] or '(no allowed signers)'}")
        for e in s["commits"]:
            lines.append(f"  {'ok  ' if e['ok'] else 'FAIL'} {e['commit'][:10]}  {e['branch'] or '-'}  "
                         f"{e['key_id'] or ''}{'  ' if e['key_id'] else ''}{e['reason']}")
        for t in s["tags"]:
            lines.append(f"  {'ok  ' if t['ok'] else 'FAIL'} tag {t.get('name', t['tag'][:10])}  {t['reason']}")
    n = len(r["failures"])
    lines.append("verify: ok" if r["ok"] else f"verify: FAILED ({n} problem{'s' if n != 1 else ''})")
    return "\n".join(lines) + "\n"
