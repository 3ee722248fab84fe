"""Site evaluations as notes: score commits on this site's data, attach the numbers, show them.

A site evaluates a commit on its own private data (``mfgit eval REV --score
MOD:FUNC --name NAME``); only the numbers leave the site, as a *note* (format
in mfgit.repo.notes and docs/search-and-eval.md, "Notes"). The signature
(mfgit.audit.signing, the same keys as commits) covers the canonical JSON of
the note without its ``signature`` field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from mfgit.audit.notes import NoteTrust, notes_for, read_note
from mfgit.errors import ScoreError
from mfgit.objects.canonical import canonical_json
from mfgit.objects.timestamp import utc_now
from mfgit.refs import NOTES_REF
from mfgit.repo.provenance import code_revision, library_versions
from mfgit.repo.checkout import load_adapter
from mfgit.repo.notes import NOTE_FORMAT, add_notes, count, read_index

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def show(repo: "BaseRepository", rev: str = "HEAD") -> dict[str, Any]:
    """The notes on REV, checked and judged. ``ok``: every note passes its checks (a note can be ok
    and still untrusted, e.g. unsigned: ``trusted`` / ``untrusted`` count them)."""
    cid = repo.resolve(rev)
    notes = notes_for(repo, cid)
    trusted = sum(1 for n in notes if n["trust"]["trusted"])
    return {"commit": cid, "notes": notes, "ok": all(n["ok"] for n in notes), "trusted": trusted,
            "untrusted": len(notes) - trusted}


def listing(repo: "BaseRepository") -> dict[str, Any]:
    """Every annotated commit with its note names (no signature checks: see show for those)."""
    snap = repo.refs.read(NOTES_REF)
    index = read_index(repo, snap) if snap else {}
    return {"ref": NOTES_REF, "snapshot": snap, "notes": count(index),
            "commits": [{"commit": cid, "notes": ids} for cid, ids in index.items()]}


def _signing_key(repo: "BaseRepository", sign: Any):
    """None (unsigned) or a SigningKey: sign=None signs when config signing.key is set."""
    from mfgit.audit.keys import SigningKey, load_signing_key
    from mfgit.audit.signing import signing_key_path

    if sign is False:
        return None
    if isinstance(sign, SigningKey):
        return sign
    if sign is None and not repo.config.get("signing.key"):
        return None
    if isinstance(sign, (str, bytes)) or hasattr(sign, "__fspath__"):
        return load_signing_key(sign)
    return load_signing_key(signing_key_path(repo))


def make_note(repo: "BaseRepository", commit_id: str, name: str, values: dict[str, float], *,
              scorer: dict[str, Any] | None = None, code: dict[str, Any] | None = None,
              message: str | None = None, key=None, timestamp: str | None = None) -> dict[str, Any]:
    clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
    ident = repo.identity()
    note: dict[str, Any] = {
        "format": NOTE_FORMAT,
        "kind": "metrics",
        "commit": commit_id,
        "adapter": repo.read_commit(commit_id).adapter,
        "name": name,
        "values": clean,
        "measured_by": {"name": ident["name"], "email": ident["email"], "site": repo.site()},
        "code": code,
        "scorer": {k: v for k, v in (scorer or {}).items() if k != "code"},
        "timestamp": timestamp or utc_now(),
        "tool": library_versions(),
    }
    if message:
        note["message"] = message
    if key is not None:
        note["signature"] = key.signature_for(canonical_json(note))
    return note


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(ord(c) < 0x20 for c in name) \
            or "," in name:
        raise ScoreError("-", f"--name {name!r}: give a short name for the data evaluated on, e.g. breakhis-val "
                              "(no commas)")
    return name.strip()


def evaluate(repo: "BaseRepository", revs: Iterable[str], *, score: Any, name: str, base: Any = None, data: Any = None,
             code: Any = None, message: str | None = None, sign: Any = None) -> list[dict[str, Any]]:
    """Score each revision with the user's function at this site and attach the values as notes.

    The score function gets the commit's adapter loaded as a PeftModel onto
    the base model — for a mixture commit, the mixture module
    (``load_mixture``: its forward gives Σⱼ wⱼ·softmaxⱼ) — and the data
    object the data loader returns (this site's own data) — nothing else;
    only the returned numbers are recorded. ``data="attachments:NAME"``
    scores each revision on its own leaves' committed data instead (the
    commit itself, a merge's leaves, a mixture's members), read and recorded
    by digest in the note's scorer. See mfgit.api.usercode.resolve_scorer for
    how score, base and data are found; ``score="prompts"`` is the built-in
    prompt classifier (of a mixture: mfgit.api.mixscore). Returns the notes
    written, as read back (see read_note).
    """
    from mfgit.api.mixture import load_mixture
    from mfgit.api.sitedata import PREFIX, attachment_name, load_site_data, member_leaves
    from mfgit.api.usercode import resolve_scorer

    name = check_name(name)
    revs = list(revs)
    if not revs:
        raise ScoreError("-", "name at least one revision to evaluate")
    commits = [repo.resolve(r) for r in revs]
    key = _signing_key(repo, sign)
    repo.identity()  # who measured: fail before any work
    attachment = attachment_name(data)
    code_given = code_revision(Path(code), required=True) if code else None
    scorers: dict[Any, Any] = {}
    base_model = None

    def scorer_for(cid: str, mixture: bool):
        """One scorer per kind of commit (a mixture's built-in score differs) and, for attachments, per commit."""
        nonlocal base_model
        if attachment is None:
            k: Any = mixture
            if k not in scorers:
                scorers[k] = resolve_scorer(score, base, data, output_space=mixture)
        else:
            k = (mixture, cid)
            sites, reads = load_site_data(repo, member_leaves(repo, [(cid[:10], cid)]), attachment)
            scorers[k] = resolve_scorer(score, base, sites, output_space=mixture)
            scorers[k].record.update(data=PREFIX + attachment, attachments=reads)
        s = scorers[k]
        if base_model is None:
            base_model = s.base_model()
        s.use_base(base_model)  # one base model for every revision: each is unloaded from it after scoring
        return s

    notes = []
    for cid in commits:
        mixture = repo.read_commit(cid).is_mixture
        scorer = scorer_for(cid, mixture)
        model = load_mixture(repo, base_model, cid) if mixture else load_adapter(repo, base_model, cid)
        try:
            model.eval()
            values = scorer(model)
        finally:
            model.unload()  # back to the plain base model for the next revision
        code_info = code_given or scorer.record.get("code")
        notes.append(make_note(repo, cid, name, values, scorer=scorer.record, code=code_info, message=message, key=key))
    ids = add_notes(repo, notes)
    trust = NoteTrust.of(repo)
    return [read_note(repo, i, n["commit"], adapter=n["adapter"], trust=trust) for n, i in zip(notes, ids)]
