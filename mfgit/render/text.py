"""Text renderings of the repository verbs' results: log, show, status, fsck, notes, merge searches.

Each function takes the JSON document the verb returns (docs/json.md) and
returns text for a terminal; none reads a repository. Every public renderer
first passes its document through `mfgit.render.escape.terminal_doc`, so no
string a participant wrote reaches the terminal raw (docs/design.md,
invariant 13).
"""

from __future__ import annotations

import json
from typing import Any

from mfgit.render.escape import terminal_doc, terminal_text


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def commit_json(commit: dict[str, Any], decorations: dict[str, list[str]],
                notes: dict[str, list] | None = None) -> dict[str, Any]:
    """A commit document (commit fields and ``id``) with the names pointing at it and its notes."""
    d = dict(commit)
    d["refs"] = decorations.get(d["id"], [])
    if notes and notes.get(d["id"]):
        d["notes"] = notes[d["id"]]
    return d


def _subject(msg: str) -> str:
    return msg.splitlines()[0] if msg else ""


def _commit_block(c: dict[str, Any], decorations, notes: dict[str, list] | None = None) -> str:
    deco = decorations.get(c["id"])
    lines = [f"commit {c['id']}" + (f" ({', '.join(deco)})" if deco else "")]
    if c.get("mixture"):  # --- mixture ---
        lines.append("Mixture: " + " ".join(f"{m['commit'][:10]}×{m['weight']:.4g}" for m in c["mixture"]["members"]))
    elif len(c["parents"]) > 1:
        lines.append("Merge: " + " ".join(p[:10] for p in c["parents"]))
    lines.append(f"Author: {c['author'].get('name')} <{c['author'].get('email')}>")
    if c["site"]:
        lines.append(f"Site:   {c['site']}")
    lines.append(f"Date:   {c['timestamp']}")
    if c.get("signature"):
        lines.append(f"Signed: {c['signature'].get('key_id', c['signature'].get('format', 'yes'))}")
    # --- attachments ---
    if c.get("attachments"):
        private = sum(1 for a in c["attachments"] if a.get("private"))
        lines.append(f"Attachments: {len(c['attachments'])}" + (f" ({private} private)" if private else ""))
    # --- end attachments ---
    for n in (notes or {}).get(c["id"], []):
        lines.append("Note:   " + note_line(n))
    lines.append("")
    lines.extend("    " + ln for ln in (c["message"].splitlines() or [""]))
    lines.append("")
    return "\n".join(lines) + "\n"


def log_text(commits: list[dict[str, Any]], decorations, *, graph: bool = False, oneline: bool = False,
             notes: dict[str, list] | None = None) -> str:
    """`commits`: commit documents (fields and ``id``), newest first."""
    commits, decorations, notes = terminal_doc(commits), terminal_doc(decorations), terminal_doc(notes)
    if not graph:
        if oneline:
            out = []
            for c in commits:
                deco = decorations.get(c["id"])
                out.append(f"{c['id'][:10]}{' (' + ', '.join(deco) + ')' if deco else ''} {_subject(c['message'])}\n")
            return "".join(out)
        return "".join(_commit_block(c, decorations, notes) for c in commits)
    return graph_text(commits, decorations, oneline=oneline)


def graph_text(commits, decorations, *, oneline: bool = True) -> str:
    """A lane graph in git's style: one column per line of descent."""
    commits, decorations = terminal_doc(commits), terminal_doc(decorations)
    columns: list[str] = []
    out: list[str] = []
    for c in commits:
        oid = c["id"]
        if oid not in columns:
            columns.append(oid)
        idx = columns.index(oid)
        merged_lanes = [i for i, c in enumerate(columns) if c == oid and i != idx]
        if merged_lanes:
            # Lanes that were waiting for this commit (it is the parent of
            # several) join it above its row, as in git's graph.
            out.append(" ".join("|" if i not in merged_lanes else "/" for i in range(len(columns))))
            columns = [col for i, col in enumerate(columns) if i not in merged_lanes]
            idx = columns.index(oid)
        row = " ".join("*" if i == idx else "|" for i in range(len(columns)))
        deco = decorations.get(oid)
        text = f"{oid[:10]}{' (' + ', '.join(deco) + ')' if deco else ''} {_subject(c['message'])}"
        if c.get("mixture"):  # --- mixture ---
            text += f" [mixture of {len(c['mixture']['members'])}]"
        if not oneline:
            text += f"  [{c['site'] or c['author'].get('name')}, {c['timestamp'][:19]}]"
        out.append(f"{row}  {text}")
        parents = list(c["parents"])
        if not parents:
            columns.pop(idx)
            continue
        columns[idx] = parents[0]
        new = [p for p in parents[1:] if p not in columns]
        if new:
            columns[idx + 1:idx + 1] = new
            out.append(" ".join("|" if i <= idx or i > idx + len(new) else "\\" for i in range(len(columns))))
    return "\n".join(out) + ("\n" if out else "")


def show_text(data: dict[str, Any], decorations) -> str:
    # The provenance is shown as JSON of the exact data, then escaped line by
    # line: JSON has no raw newline inside a string, and ensure_ascii=False
    # keeps names readable while bidi and format characters are escaped.
    prov_json = terminal_text(json.dumps(data["commit"]["provenance"], indent=2, sort_keys=True, ensure_ascii=False))
    data, decorations = terminal_doc(data), terminal_doc(decorations)
    text = _commit_block({**data["commit"], "id": data["id"]}, decorations, {data["id"]: data.get("notes") or []})
    a = data["adapter"]
    base = a["base_model"] or {}
    based_on = f"  base model   {base.get('name')}" + (f" @ {base.get('revision')}" if base.get("revision") else "")
    if data.get("mixture"):  # --- mixture: its adapter is empty; the members and weights are the model ---
        mx = data["mixture"]
        text += (f"Adapter {a['id']} (empty: a mixture merges no weights)\n{based_on}\n"
                 f"Mixture ({mx['combine']}: sum of w * softmax over {len(mx['members'])} member(s), "
                 f"weights sum to {mx['weight_sum']:.6g})\n")
        text += mixture_members_text(mx["members"])
    else:
        text += (
            f"Adapter {a['id']}\n{based_on}\n"
            f"  modules      {a['modules']} ({a['tensors']} tensors, {human_bytes(a['bytes'])}, {', '.join(a['dtypes'])})\n"
            f"  rank         {', '.join(str(r) for r in a['ranks'])}  alpha {a['lora_alpha']}"
            + ("  rsLoRA" if a["use_rslora"] else "")
            + "\n"
        )
    # --- attachments ---
    if data["commit"].get("attachments"):
        text += "Attachments\n" + "".join("  " + ln for ln in _attachment_lines(data["commit"]["attachments"]))
    # --- end attachments ---
    text += "Provenance\n" + "\n".join("  " + ln for ln in prov_json.splitlines()) + "\n"
    return text


# --- attachments ---


def _attachment_lines(items: list[dict[str, Any]]) -> list[str]:
    width = max((len(a["name"]) for a in items), default=0)
    out = []
    for a in items:
        where = "private" if a.get("private") else "public"
        if isinstance(a.get("tensors"), dict):
            where += f", {len(a['tensors'])} tensors"
        if "present" in a and not a["present"]:
            where += ", not here" if not a.get("private") else ", kept at its site"
        out.append(f"{a['name']:<{width}}  {human_bytes(a['size']):>10}  sha256:{a['digest'][:16]}  {where}\n")
    return out


def attachments_text(items: list[dict[str, Any]]) -> str:
    """`mfgit attachments`: one line per attachment (name, size, digest, public or private, here or not)."""
    items = terminal_doc(items)
    if not items:
        return "(no attachments)\n"
    return "".join(_attachment_lines(items))


# --- end attachments ---


def status_text(data: dict[str, Any]) -> str:
    data = terminal_doc(data)
    lines = []
    if data["detached"]:
        lines.append(f"HEAD detached at {str(data['head'])[:10]}")
    else:
        lines.append(f"On branch {data['branch']}")
    if data.get("site"):
        lines.append(f"Site: {data['site']}")
    if data["head"] is None:
        lines.append("No commits yet")
    else:
        a = data["adapter"]
        lines.append(f"HEAD {data['head'][:10]} {data.get('subject', '')}")
        lines.append(f"  adapter {a['id'][:10]}: {a['modules']} modules, {human_bytes(a['bytes'])}, base {a['base_model'].get('name')}")
    if data["sources"]:
        lines.append("Adapter directories committed from this repository:")
        for s in data["sources"]:
            lines.append(f"  {s['state']:<20} {s['path']}")
    return "\n".join(lines) + "\n"


def fsck_text(report: dict[str, Any]) -> str:
    report = terminal_doc(report)
    lines = []
    for c in report["corrupt"]:
        lines.append(f"corrupt object {c['id']}: expected {c['algorithm']} {c['expected']}, got {c['actual']}")
    for m in report["missing"]:
        lines.append(f"missing object {m['id']}")
    for r in report["bad_refs"]:
        lines.append(f"bad ref {r['ref']}: {r['error']}" + (f" ({r['fix']})" if r.get("fix") else ""))
    for b in report.get("bad_reflog_lines", []):
        where = f" line {b['line']}" if b["line"] else ""
        lines.append(f"bad reflog {b['ref']}{where}: {b['error']} (drop it with: {b['fix']})")
    for e in report.get("reflog_damage", []):
        if e["reaches"] == [e["id"]]:
            what = f"names missing or unreadable object {e['id']}"
        else:
            more = f" and {len(e['reaches']) - 1} more" if len(e["reaches"]) > 1 else ""
            what = f"({e['id'][:12]}) reaches missing or unreadable object {e['reaches'][0]}{more}"
        lines.append(f"reflog entry {e['entry']} {what} (drop it with: {e['fix']})")
    for d in report["dangling"]:
        lines.append(f"dangling {d['kind']} {d['id']}")
    for t in report["temporary_files"]:
        lines.append(f"leftover temporary file {t} (from an interrupted write; mfgit gc removes it)")
    for lk in report["stale_locks"]:
        lines.append(f"lock file {lk} (remove it if no mfgit process is running)")
    # --- attachments ---
    for a in report.get("corrupt_private_attachments", []):
        lines.append(f"corrupt private attachment {a['name']} of {a['commit'][:10]}: {a['path']} "
                     f"has sha256 {a['actual']}, not {a['digest']}")
    for a in report.get("corrupt_attachments", []):
        lines.append(a["error"])
    absent = report.get("private_attachments_absent", [])
    if absent:
        lines.append(f"{len(absent)} private attachment(s) not here (kept at the site that committed them; "
                     "not damage): " + ", ".join(f"{a['name']} of {a['commit'][:10]}" for a in absent[:5])
                     + (", …" if len(absent) > 5 else ""))
    # --- end attachments ---
    repair = report.get("repair")
    if repair is not None:
        for oid in repair["repaired"]:
            lines.append(f"repaired object {oid} from {repair['remote']}")
        for oid in repair["unavailable"]:
            lines.append(f"object {oid} is not available intact on {repair['remote']}; "
                         "repair from a remote that has it")
    verdict = "ok" if report["ok"] else "DAMAGED"
    lines.append(f"checked {report['objects_checked']} objects{' (full SHA-256)' if report['read_data'] else ''}: {verdict}")
    return "\n".join(lines) + "\n"


def reflog_text(data: dict[str, Any]) -> str:
    """`mfgit reflog`: one line per entry, newest first, as git prints it."""
    lines = []
    for e in data["entries"]:
        new = (e["new"] or "0" * 10)[:10]
        lines.append(f"{new} {e['entry']}: {e['message']}  ({e['who']}, {e['time']})")
    for b in data["damaged_lines"]:
        where = f"line {b['line']}" if b["line"] else "the file"
        lines.append(f"damaged {where}: {b['error']} (drop it with: mfgit reflog expire --malformed {data['ref']})")
    if not lines:
        lines.append(f"(no reflog entries for {data['ref']})")
    return "\n".join(lines) + "\n"


def reflog_expire_text(data: dict[str, Any]) -> str:
    lines = [f"{d['ref']}: dropped {d['dropped']}, kept {d['kept']}" for d in data["refs"] if d["dropped"]]
    lines.append(f"Dropped {data['dropped']} reflog line(s).")
    return "\n".join(lines) + "\n"


def _values_text(values: dict[str, Any]) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

    keys = sorted(values, key=lambda k: (k != "score", k))
    return " ".join(f"{k}={f(values[k])}" for k in keys)


def note_line(n: dict[str, Any], *, with_commit: bool = False) -> str:
    """One line for a note: name, values, who (site), when, signature status, and whether it counts."""
    n = terminal_doc(n)  # a note's name, values, site and problem are participants' text
    who = n.get("measured_by") or {}
    sig = n.get("signature") or {}
    status = {"good": f"signed {sig.get('key_id')}", "unsigned": "unsigned"}.get(sig.get("status"), "BAD SIGNATURE")
    trust = n.get("trust") or {"trusted": False, "reason": "not judged"}
    head = f"{str(n.get('commit'))[:10]} " if with_commit else ""
    line = (f"{head}{n.get('name')}: {_values_text(n.get('values') or {})}  [{who.get('site') or who.get('name')}, "
            f"{str(n.get('timestamp'))[:19]}, {status}, {'trusted' if trust['trusted'] else 'UNTRUSTED'}]")
    if n.get("ok") is False:
        line += f"  !! {n.get('problem')}"
    elif not trust["trusted"]:
        line += f"  untrusted: {trust.get('reason')}"
    return line


def notes_text(data: dict[str, Any]) -> str:
    data = terminal_doc(data)
    lines = [f"commit {data['commit']}"]
    if not data["notes"]:
        lines.append("  (no notes)")
    for n in data["notes"]:
        who = n.get("measured_by") or {}
        sig = n.get("signature") or {}
        code = n.get("code") or {}
        trust = n.get("trust") or {"trusted": False, "reason": "not judged"}
        lines.append(f"note {n['id']}{'' if n.get('ok') else '  (NOT OK: ' + str(n.get('problem')) + ')'}"
                     f"{'' if trust['trusted'] else '  UNTRUSTED'}")
        lines.append(f"  name       {n.get('name')}")
        lines.append(f"  values     {_values_text(n.get('values') or {})}")
        lines.append(f"  measured   {who.get('name')} <{who.get('email')}>" + (f", site {who['site']}" if who.get("site") else ""))
        lines.append(f"  when       {n.get('timestamp')}")
        scorer = n.get("scorer") or {}
        lines.append(f"  scorer     {scorer.get('score')}" + (f", data {scorer['data']}" if scorer.get("data") else ""))
        if code:
            lines.append(f"  code       {code.get('commit')}" + (" (dirty)" if code.get("dirty") else "")
                         + (f" {code.get('remote_url')}" if code.get("remote_url") else ""))
        lines.append(f"  adapter    {n.get('adapter')}")
        lines.append(f"  signature  {sig.get('status')}" + (f" {sig.get('key_id')}" if sig.get("key_id") else "")
                     + (f": {sig.get('reason')}" if sig.get("status") == "bad" else ""))
        lines.append(f"  trust      {'trusted' if trust['trusted'] else 'UNTRUSTED'}: {trust.get('reason')}")
    counts = ""
    if data["notes"]:
        trusted = sum(1 for n in data["notes"] if (n.get("trust") or {}).get("trusted"))
        counts = f" ({trusted} trusted, {len(data['notes']) - trusted} untrusted)"
    lines.append("notes: " + ("ok" if data["ok"] else "SOME NOTES FAILED THEIR CHECKS") + counts)
    return "\n".join(lines) + "\n"


def notes_transfer_text(verb: str, r: dict[str, Any]) -> str:
    r = terminal_doc(r)
    if verb == "push":
        return (f"  {r['ref']}: {(r.get('old') or '(new)')[:10]} -> {(r.get('new') or '(none)')[:10]} ({r['status']}); "
                f"{r['notes']} note(s) on the remote, sent {r['objects']} object(s)")
    return (f"  {r['ref']}: {r['new_notes']} new note(s), {r['notes']} in all; received {r['objects']} object(s)")


def search_text(prov: dict[str, Any]) -> str:
    prov = terminal_doc(prov)
    lines = []
    s = prov.get("search")
    if s:
        opt = s["optimiser"]
        lines.append(f"search: {s['mode']} with {opt['name']} {opt['version']} ({opt.get('selected')}), "
                     f"budget {s['budget']}, bounds {s['bounds']}, seed {s['seed']}, l1 {s['l1']}: "
                     f"{s['scored']} candidate(s) scored")
        lines.append(f"  start score {s['start']['score']}, chosen score {s['chosen']['score']} "
                     f"(evaluation {s['chosen']['index']})")
        for a in s.get("attachments") or []:  # what the built-in loader read (merge --data attachments:NAME)
            lines.append(f"  read {a['name']} of {a['commit'][:10]} ({a.get('site') or '-'}): sha256 {a['digest'][:16]}…")
        for i, label in enumerate(s["layout"]["inputs"]):
            w = prov["inputs"][i]["weight"]
            lines.append(f"  {label}: weight {w:.6g}" + (" (mean over layers)" if s["mode"] == "layer-weights" else ""))
    sel = prov.get("selection")
    if sel:
        lines.append(f"selection: round {sel['round']}, rule {sel['rule']} of {', '.join(sel['select_by'])}: "
                     f"candidate {sel['chosen']['index']} (score {sel['chosen']['aggregate']:.6g})")
        for row in sel["candidates"]:
            cells = ", ".join(f"{k}={v['score']:.6g}" for k, v in row["scores"].items())
            agg = "incomplete" if row["aggregate"] is None else f"{sel['rule']} {row['aggregate']:.6g}"
            lines.append(f"  {'*' if row['index'] == sel['chosen']['index'] else ' '} candidate {row['index']}: "
                         f"{cells or '-'}  ({agg})")
    return "\n".join(lines) + ("\n" if lines else "")


def candidates_text(d: dict[str, Any]) -> str:
    d = terminal_doc(d)
    lines = [f"round {d['round']}: {len(d['candidates'])} candidate composite(s)"]
    for c in d["candidates"]:
        ws = ", ".join(f"{w:.4g}" for w in c["weights"])
        lines.append(f"  {c['branch']:<28} {c['commit'][:10]}  weights [{ws}]")
    branches = " ".join(c["branch"] for c in d["candidates"])
    lines.append(f"publish them: mfgit push REMOTE {branches}")
    lines.append("at each site: mfgit fetch REMOTE && mfgit eval REMOTE/<branch>... --score MOD:FUNC --name NAME "
                 "&& mfgit push REMOTE --notes")
    lines.append(f"then here:    mfgit fetch REMOTE --notes && mfgit merge --from-candidates {d['round']} "
                 "--select-by NAME1,NAME2")
    return "\n".join(lines) + "\n"


# --- mixture: an output-space composite (mfgit.api.mixture) ---


def mixture_members_text(members: list[dict[str, Any]]) -> str:
    """One line per member: weight, short id, site, subject."""
    lines = []
    for i, m in enumerate(members):
        who = m.get("site") or "-"
        extra = f"  {m['subject']}" if m.get("subject") else ""
        missing = "  (missing)" if m.get("missing") else ""
        lines.append(f"  {i:>2}  weight {m['weight']:<10.6g} {m['commit'][:10]}  {who}{extra}{missing}")
    return "\n".join(lines) + ("\n" if lines else "")


def _score(value: Any) -> str:
    return "failed" if value is None else f"{value:.6g}"  # a non-finite score is recorded as null


def mix_text(report: dict[str, Any], branch: str) -> str:
    report = terminal_doc(report)
    prov = report["provenance"]
    text = (f"[{branch} {report['commit'][:10]}] mixture of {len(report['members'])} member(s), "
            f"sum of w * softmax (weights {prov['weights']})\n")
    text += mixture_members_text(report["members"])
    s = prov.get("search")
    if s:
        opt = s["optimiser"]
        text += (f"search: {'stagewise ' if s['stagewise'] else ''}weights with {opt['name']} {opt['version']}, "
                 f"budget {s['budget']}{' per stage' if s['stagewise'] else ''}, bounds {s['bounds']}, "
                 f"seed {s['seed']}, l1 {s['l1']} (mean |w|)\n"
                 f"  start score {_score(s['start']['score'])}, chosen score {_score(s['chosen']['score'])}\n")
        for a in s.get("attachments") or []:  # what the built-in loader read (mix --data attachments:NAME)
            text += f"  read {a['name']} of {a['commit'][:10]} ({a.get('site') or '-'}): sha256 {a['digest'][:16]}…\n"
    return text
