"""verify: integrity of everything a commit needs, reproducibility of its merges,
and signatures against the allowed-signers policy.

* **integrity** (always): every commit reachable from REV (through parents and
  through the inputs recorded by merges), its adapter manifest, and every
  tensor and file the manifest names is present, decodes, and hashes to its id
  (full SHA-256, not the store's quick XXH3 check).
* **reproduce**: every merge commit in that history is re-run from its
  recorded recipe and inputs (`Repository.reproduce_merge`), every mixture
  from its recorded inputs and weights (mfgit.repo.mixture.reproduce_mixture:
  the attachments its search read are read again by digest, the members
  flattened again and compared). On the recorded
  device type the result must have the same tensor ids; on another device type
  the merged updates must agree within a tolerance (max |ΔW difference|).
* **signatures**: each commit is attributed to a branch (below) and its
  signature judged by `mfgit.audit.signing.judge`.
* **mixtures** (always, for every mixture in that history): each member is a
  readable commit with an adapter, not itself a mixture, every member has a
  recorded finite weight, and all members adapt one base model. (The members
  are parents, so the integrity check has already read each of them.)

Branch attribution. Signature policy follows the branch a commit belongs
to, however it is named. REV's branches (``rev_branches``) are the branch REV
names — a local branch (``sites/a``, ``refs/heads/sites/a``) or a
remote-tracking one (``origin/sites/a``, ``refs/remotes/origin/sites/a``), both
``sites/a`` —, else every branch, local or remote-tracking (normalised the same
way), that the commit belongs to by the attribution below, else ``sites/<site>``
of the site the commit records (the project's convention: site S commits on
``sites/S``); ``branch=`` (``--branch``) adds one, it never replaces them, so
no way of naming a commit lifts a protection. Each branch owns the first-parent
chain from REV. At a merge commit, the parent that was the branch's tip
(``integration.base``, or the first parent unless it was one of the named
inputs of a one-shot merge) stays on the branch; every other parent starts a
side branch: the revision name the merge recorded for it when that names a
branch (``sites/a``, ``origin/sites/a`` → ``sites/a``, ``m1``; not
``HEAD~1``, an id or other revision expressions), else ``sites/<site>`` of
the commit, else none. A commit reached along several attributions is judged
under each: protected under any, it must pass.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from mfgit.audit.policy import AllowedSigners, judge, load_policy
from mfgit.audit.signing import check_signature
from mfgit.errors import (CorruptAttachment, CorruptObject, DoraNeedsBaseWeights, MalformedObject, MfgitError,
                          ObjectNotFound, SignatureError)
from mfgit.objects.model import Commit, Tag, decode_object, is_object_id, split_tensor_payload
from mfgit.refs import HEADS, REMOTES, SYMREF, TAGS, check_branch_name

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

DEFAULT_TOLERANCE = 1e-4


# -- history -----------------------------------------------------------------------------------


def _merge_named_commits(commit: Commit) -> list[str]:
    prov = commit.provenance or {}
    if prov.get("kind") != "merge":
        return []
    out = [i.get("commit") for i in prov.get("inputs", [])] + [lf.get("commit") for lf in prov.get("leaves", [])]
    return [c for c in out if isinstance(c, str) and is_object_id(c)]


def history(repo: "BaseRepository", tip: str, *, exclude: Iterable[str] = ()) -> list[str]:
    """Commit ids reachable from `tip` (parents and merge inputs), newest first by timestamp."""
    seen: set[str] = set(exclude)
    order: list[tuple[str, str]] = []
    stack = [tip] if tip not in seen else []
    seen.add(tip)
    while stack:
        cid = stack.pop()
        try:
            c = repo.read_commit(cid)
        except MfgitError:
            order.append(("", cid))
            continue
        order.append((c.timestamp, cid))
        for p in list(c.parents) + _merge_named_commits(c):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    order.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [cid for _, cid in order]


# -- integrity ---------------------------------------------------------------------------------


def check_integrity(repo: "BaseRepository", commits: list[str], tag: str | None = None) -> dict[str, Any]:
    problems: list[dict[str, Any]] = []
    counts = {"commits": 0, "adapters": 0, "tensors": 0, "blobs": 0, "tags": 0, "bytes": 0,
              "attachments": 0, "private_attachments_elsewhere": 0}
    checked: set[str] = set()

    def get(oid: str, want: str, commit: str, what: str):
        try:
            kind, payload = repo.store.get(oid, verify=True)
        except ObjectNotFound:
            problems.append({"commit": commit, "object": oid, "what": what, "error": f"{what} {oid} is missing"})
            return None
        except (CorruptObject, MalformedObject) as e:
            problems.append({"commit": commit, "object": oid, "what": what, "error": str(e)})
            return None
        counts["bytes"] += len(payload)
        if kind != want:
            problems.append({"commit": commit, "object": oid, "what": what, "error": f"{oid} is a {kind}, not a {want}"})
            return None
        return payload

    if tag is not None:
        payload = get(tag, "tag", tag, "tag")
        if payload is not None:
            counts["tags"] += 1
    for cid in commits:
        payload = get(cid, "commit", cid, "commit")
        if payload is None:
            continue
        counts["commits"] += 1
        try:
            commit = decode_object(cid, "commit", payload)
        except MalformedObject as e:
            problems.append({"commit": cid, "object": cid, "what": "commit", "error": str(e)})
            continue
        # --- attachments ---
        _check_attachments(repo, cid, commit, get, checked, counts, problems)
        # --- end attachments ---
        if commit.adapter in checked:
            continue
        checked.add(commit.adapter)
        payload = get(commit.adapter, "adapter", cid, "adapter manifest")
        if payload is None:
            continue
        counts["adapters"] += 1
        try:
            adapter = decode_object(commit.adapter, "adapter", payload)
        except MalformedObject as e:
            problems.append({"commit": cid, "object": commit.adapter, "what": "adapter manifest", "error": str(e)})
            continue
        for name, t in sorted(adapter.tensors.items()):
            if t["id"] in checked:
                continue
            checked.add(t["id"])
            tp = get(t["id"], "tensor", cid, f"tensor {name}")
            if tp is None:
                continue
            counts["tensors"] += 1
            try:
                header, _raw = split_tensor_payload(tp)
            except Exception as e:  # noqa: BLE001
                problems.append({"commit": cid, "object": t["id"], "what": f"tensor {name}", "error": f"bad header: {e}"})
                continue
            if header.dtype != t["dtype"] or list(header.shape) != list(t["shape"]):
                problems.append({"commit": cid, "object": t["id"], "what": f"tensor {name}",
                                 "error": f"manifest says {t['dtype']}{t['shape']}, object is {header.dtype}{list(header.shape)}"})
        for fname, bid in sorted(adapter.files.items()):
            if bid in checked:
                continue
            checked.add(bid)
            if get(bid, "blob", cid, f"file {fname}") is not None:
                counts["blobs"] += 1
    return {"ok": not problems, **counts, "problems": problems}


# -- mixtures ----------------------------------------------------------------------------------


def _mixture_commits(repo: "BaseRepository", commits: list[str]):
    for cid in commits:
        try:
            c = repo.read_commit(cid)
        except MfgitError:
            continue  # reported by the integrity check
        if c.is_mixture:
            yield cid, c


def check_mixtures(repo: "BaseRepository", commits: list[str]) -> list[dict[str, Any]]:
    """One entry per mixture commit in `commits`: its members are adapters of one base model, with weights."""
    import math

    out = []
    for cid, c in _mixture_commits(repo, commits):
        members = c.mixture_members()
        problems, bases = [], {}
        for mid, w in members:
            if not math.isfinite(w):
                problems.append(f"member {mid[:10]} has no finite weight")
            try:
                mc = repo.read_commit(mid)
                if mc.is_mixture:
                    problems.append(f"member {mid[:10]} is itself a mixture")
                    continue
                bases[mid] = repo.read_adapter(mc.adapter).base_model
            except MfgitError as e:
                problems.append(f"member {mid[:10]} cannot be read: {e}")
        if len({(b.get("name"), b.get("revision")) for b in bases.values()}) > 1:
            problems.append("members adapt different base models: "
                            + ", ".join(f"{m[:10]} {b.get('name')}" for m, b in bases.items()))
        out.append({"commit": cid, "ok": not problems, "members": len(members),
                    "weight_sum": float(sum(w for _, w in members)),
                    "reason": "; ".join(problems) if problems else
                    f"{len(members)} member(s) present, weights recorded, one base model"})
    return out
def _check_attachments(repo: "BaseRepository", cid: str, commit: Commit, get, checked: set[str],
                       counts: dict[str, int], problems: list[dict[str, Any]]) -> None:
    """Each public attachment's blob is whole (SHA-256 against its id) and its bytes have the
    size and digest the commit records — for one stored as its tensors, each part is whole and
    the parts put together give those bytes back; a private one is checked where its bytes are kept
    (at its site) and counted as elsewhere where they are not (any other repository)."""
    import hashlib

    from mfgit.repo import attachment_tensors
    from mfgit.repo.attachments import private_path, private_state

    for a in commit.attachments:
        what = f"attachment {a['name']}"
        if a["private"]:
            state = private_state(repo, a)
            if state == "absent":
                counts["private_attachments_elsewhere"] += 1
            elif state == "corrupt":
                problems.append({"commit": cid, "object": a["digest"], "what": what,
                                 "error": f"the private copy {private_path(repo, a['digest'])} does not have "
                                          f"sha256 {a['digest']}"})
            else:
                counts["attachments"] += 1
            continue
        if attachment_tensors.is_split(a):
            key = attachment_tensors.record_key(a)
            if key in checked:
                continue
            checked.add(key)
            try:
                data = attachment_tensors.join(a, lambda oid, want: get(oid, want, cid, what), cid)
            except CorruptAttachment as e:
                problems.append({"commit": cid, "object": a["header"], "what": what, "error": str(e)})
                continue
            if data is not None:
                counts["attachments"] += 1
            continue
        if a["id"] in checked:
            continue
        checked.add(a["id"])
        payload = get(a["id"], "blob", cid, what)
        if payload is None:
            continue
        counts["attachments"] += 1
        actual = hashlib.sha256(payload).hexdigest()
        if actual != a["digest"] or len(payload) != a["size"]:
            problems.append({"commit": cid, "object": a["id"], "what": what,
                             "error": f"the commit records sha256 {a['digest']} ({a['size']} bytes), "
                                      f"the blob has {actual} ({len(payload)} bytes)"})


# -- reproduce ---------------------------------------------------------------------------------


def check_reproduce(repo: "BaseRepository", commits: list[str], *, tolerance: float = DEFAULT_TOLERANCE,
                    device: str | None = None, base_weights: Any = None,
                    progress: Callable[[int, int, str], None] | None = None) -> list[dict[str, Any]]:
    out = []
    for i, cid in enumerate(commits, 1):
        if progress is not None:
            progress(i, len(commits), cid[:10])
        try:
            c = repo.read_commit(cid)
        except MfgitError:
            continue  # reported by the integrity check
        if c.is_mixture:
            out.append(_reproduce_mixture(repo, cid))
            continue
        if not c.is_merge:
            continue
        recorded = ((c.provenance or {}).get("device") or {}).get("type")
        dev = device or ("cpu" if recorded == "cpu" else "auto")
        entry: dict[str, Any] = {"commit": cid, "recorded_device": recorded, "tolerance": tolerance,
                                 "strategy": ((c.provenance or {}).get("recipe") or {}).get("strategy")}
        try:
            from mfgit.merge.replay import reproduce  # torch: only when merges are re-run

            r = reproduce(repo, cid, device=dev, base_weights=base_weights)
        except Exception as e:  # noqa: BLE001 - a merge that cannot be re-run is a finding, not a crash
            hint = " (pass --base-weights PATH)" if isinstance(e, DoraNeedsBaseWeights) else ""
            entry.update(ok=False, outcome="not-reproducible", identical=False, max_abs_diff=None, device=None,
                         reason=f"cannot re-run the merge: {e}{hint}")
            out.append(entry)
            continue
        same_type = (r.get("device") or "").split(":")[0] == (recorded or "").split(":")[0]
        diff = float(r.get("max_abs_diff") or 0.0)
        entry.update(identical=bool(r["identical"]), max_abs_diff=diff, device=r.get("device"), same_device_type=same_type)
        where = "" if same_type else " on another device type"
        if r["identical"]:
            entry.update(ok=True, outcome="bit-identical", reason="bit-identical tensors")
        elif diff <= tolerance:
            # Another BLAS, another CPU: the same recipe on the same inputs, summed in another order.
            entry.update(ok=True, outcome="within-tolerance",
                         reason=f"differs only by floating-point order{where} (max |ΔW difference| {diff:.3e}, "
                                f"within tolerance {tolerance:g})")
        else:
            entry.update(ok=False, outcome="mismatch",
                         reason=f"does not match{where}: max |ΔW difference| {diff:.3e} > tolerance {tolerance:g} "
                                f"(the recipe, the inputs or the adapter are not what the commit records)")
        out.append(entry)
    return out


def _reproduce_mixture(repo: "BaseRepository", cid: str) -> dict[str, Any]:
    """A mixture re-run from its recorded inputs and weights, its search's attachments read again by digest."""
    from mfgit.repo.mixture import reproduce_mixture

    entry: dict[str, Any] = {"commit": cid, "kind": "mixture", "max_abs_diff": None}
    try:
        r = reproduce_mixture(repo, cid)
    except MfgitError as e:  # a private or changed attachment, a missing input: a finding, not a crash
        entry.update(ok=False, outcome="not-reproducible", identical=False, reason=f"cannot re-run the mixture: {e}")
        return entry
    entry.update(identical=r["identical"], max_abs_diff=r["max_abs_diff"], ok=r["identical"],
                 outcome="bit-identical" if r["identical"] else "mismatch", reason=r["reason"])
    return entry


# -- signatures --------------------------------------------------------------------------------


def _label_branch(repo: "BaseRepository", parent: str, label: str | None) -> str | None:
    """The branch a merge's recorded revision name designates, if it is one."""
    if not label:
        return None
    name = label
    if name.startswith(HEADS):
        name = name[len(HEADS):]
    elif name.startswith(REMOTES):
        name = name[len(REMOTES):].split("/", 1)[-1]
    else:
        for r in repo.config.subsections("remote"):
            if name.startswith(r + "/"):
                name = name[len(r) + 1:]
                break
    if any(ch in name for ch in "~^:@") or name == "HEAD" or name.startswith("refs/"):
        return None
    if len(name) >= 4 and all(ch in "0123456789abcdef" for ch in name) and parent.startswith(name):
        return None
    try:
        check_branch_name(name)
    except MfgitError:
        return None
    return name


def _side_branch(repo: "BaseRepository", parent: str, label: str | None) -> str | None:
    named = _label_branch(repo, parent, label)
    if named is not None:
        return named
    try:
        c = repo.read_commit(parent)
    except MfgitError:
        return None
    return f"sites/{c.site}" if c.site else None


def attribute(repo: "BaseRepository", tip: str, branches: Sequence[str | None], *,
              exclude: set[str] | None = None) -> list[tuple[str, str | None]]:
    """(commit, branch) pairs: every commit reachable from `tip` with the branch it belongs to,
    `tip` itself on each of `branches`."""
    exclude = exclude or set()
    out: list[tuple[str, str | None]] = []
    seen: set[tuple[str, str | None]] = set()
    stack: list[tuple[str, str | None]] = [(tip, b) for b in (list(branches) or [None])]
    while stack:
        cid, b = stack.pop()
        if (cid, b) in seen or cid in exclude:
            continue
        seen.add((cid, b))
        out.append((cid, b))
        try:
            c = repo.read_commit(cid)
        except MfgitError:
            continue
        prov = c.provenance or {}
        if c.is_mixture:  # --- mixture: each member on its own branch; the previous tip stays on this one ---
            members = {m for m, _ in c.mixture_members()}
            for p in c.parents:
                stack.append((p, _side_branch(repo, p, None)) if p in members else (p, b))
        elif prov.get("kind") == "merge":
            integ = prov.get("integration") or {}
            base = integ.get("base")
            named = set(integ.get("added") or []) if integ.get("mode") == "one-shot" else set()
            labels: dict[str, str] = {}
            for item in list(prov.get("leaves", [])) + list(prov.get("inputs", [])):
                if isinstance(item, dict) and item.get("commit") and item.get("label"):
                    labels.setdefault(item["commit"], item["label"])
            for i, p in enumerate(c.parents):
                if p == base or (i == 0 and base is None and p not in named):
                    stack.append((p, b))
                else:
                    stack.append((p, _side_branch(repo, p, labels.get(p))))
        else:
            for i, p in enumerate(c.parents):
                stack.append((p, b) if i == 0 else (p, _side_branch(repo, p, None)))
    return out


def check_signatures(repo: "BaseRepository", tip: str, branches: Sequence[str | None],
                     policies: list[AllowedSigners], *, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """Every commit reachable from `tip` judged for each branch it belongs to (`tip` on `branches`)."""
    out = []
    cache: dict[str, Any] = {}
    for cid, b in attribute(repo, tip, branches, exclude=exclude):
        entry: dict[str, Any] = {"commit": cid, "branch": b}
        if cid not in cache:
            try:
                cache[cid] = repo.read_commit(cid)
            except MfgitError as e:
                cache[cid] = e
        c = cache[cid]
        if isinstance(c, Exception):
            entry.update(ok=False, status="unreadable", key_id=None, reason=f"cannot read the commit: {c}")
            out.append(entry)
            continue
        if c.id != cid:  # pragma: no cover - the store checks this
            entry.update(ok=False, status="bad", key_id=None, reason="the commit does not hash to its id")
            out.append(entry)
            continue
        chk = check_signature(c)
        ok, reason = judge(chk, b, policies)
        entry.update(ok=ok, status=chk.status, key_id=chk.key_id, reason=reason)
        out.append(entry)
    out.sort(key=lambda e: (_ts(cache.get(e["commit"])), e["commit"], e["branch"] or ""), reverse=True)
    return out


def _ts(c) -> str:
    return c.timestamp if isinstance(c, Commit) else ""


def check_tag_signature(repo: "BaseRepository", tag_id: str, policies: list[AllowedSigners]) -> dict[str, Any]:
    try:
        t = repo.read_object(tag_id)
    except MfgitError as e:
        return {"tag": tag_id, "ok": False, "status": "unreadable", "key_id": None, "reason": str(e)}
    if not isinstance(t, Tag):
        return {"tag": tag_id, "ok": False, "status": "bad", "key_id": None, "reason": "not a tag object"}
    chk = check_signature(t)
    if chk.status == "bad":
        ok, reason = False, chk.reason
    elif chk.status == "unsigned":
        ok, reason = True, "not signed"
    else:
        known = [p for p in policies if p.signer_of(chk.key)]
        ok = not policies or bool(known)
        reason = "good signature" if ok else f"signed by {chk.key_id}, which is in no allowed-signers entry"
    return {"tag": tag_id, "name": t.name, "ok": ok, "status": chk.status, "key_id": chk.key_id, "reason": reason}


# -- the verb ----------------------------------------------------------------------------------


def ref_branch(ref: str) -> str | None:
    """The branch a full ref is: ``refs/heads/X`` and ``refs/remotes/R/X`` are both X."""
    if ref.startswith(HEADS):
        return ref[len(HEADS):] or None
    if ref.startswith(REMOTES):
        rest = ref[len(REMOTES):].split("/", 1)
        return rest[1] if len(rest) == 2 and rest[1] and rest[1] != "HEAD" else None
    return None


def named_branch(repo: "BaseRepository", rev: str) -> str | None:
    """The branch REV names, if it names one, looked up in the order revisions resolve.

    ``HEAD`` is the checked-out branch; ``sites/a`` and ``refs/heads/sites/a`` are
    ``sites/a``, and so are ``origin/sites/a`` and ``refs/remotes/origin/sites/a``
    (the same branch, as last fetched). Ids, tags and expressions (``X~1``) name
    no branch: their commit's branches are found by ``containing_branches``.
    """
    if rev in ("HEAD", "@"):
        return repo.head_branch()
    if any(ch in rev for ch in "~^:") or (is_object_id(rev) and repo.store.has(rev)):
        return None
    for ref in ([rev] if rev.startswith("refs/") else [HEADS + rev, TAGS + rev, REMOTES + rev]):
        try:
            value = repo.refs.read(ref)
        except MfgitError:
            continue
        if value is None:
            continue
        if value.startswith(SYMREF):  # refs/remotes/origin/HEAD -> the branch it points at
            ref = value[len(SYMREF):]
        return ref_branch(ref)
    return None


def containing_branches(repo: "BaseRepository", commit_id: str) -> list[str]:
    """Every branch, local or remote-tracking (normalised by ``ref_branch``), that `commit_id`
    belongs to: the branches the attribution walk from each branch's tip assigns it to."""
    found: set[str] = set()
    walked: set[tuple[str, str]] = set()
    for prefix in (HEADS, REMOTES):
        for ref, tip in sorted(repo.refs.items(prefix).items()):
            name = ref_branch(ref)
            if name is None or not is_object_id(tip) or (tip, name) in walked:
                continue
            walked.add((tip, name))
            found.update(b for c, b in attribute(repo, tip, [name]) if c == commit_id and b)
    return sorted(found)


def rev_branches(repo: "BaseRepository", rev: str, tip: str, branch: str | None = None) -> list[str | None]:
    """The branches REV's commit is judged on (module docstring, "Branch attribution")."""
    named = named_branch(repo, rev)
    out: list[str | None] = [named] if named else containing_branches(repo, tip)
    if not out:
        out = [_side_branch(repo, tip, None)]  # on no branch: sites/<site> of the commit, if it records one
    out = [b for b in out if b]
    if branch and branch not in out:
        out.append(branch)
    return out or [None]


def _annotated_tag(repo: "BaseRepository", rev: str) -> str | None:
    for ref in ([rev] if rev.startswith("refs/") else [TAGS + rev]):
        try:
            value = repo.refs.read(ref)
        except MfgitError:
            continue
        if value and is_object_id(value):
            try:
                kind, _ = repo.store.get(value)
            except MfgitError:
                return value
            if kind == "tag":
                return value
    return None


def _open_base(path: str | os.PathLike | None) -> Any:
    """Opened once for every merge re-run (its digest is computed once); torch only when given."""
    if path is None:
        return None
    from mfgit.merge.baseweights import open_base_weights

    return open_base_weights(path)


def verify(repo: "BaseRepository", rev: str = "HEAD", *, reproduce: bool = False, signatures: bool = False,
           branch: str | None = None, tolerance: float = DEFAULT_TOLERANCE, device: str | None = None,
           base_weights: str | os.PathLike | None = None,
           progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Integrity of REV's history; with `reproduce`, every merge re-run (DoRA merges need
    `base_weights`, the base model's weights they were made with); with `signatures`, the policy."""
    tag = _annotated_tag(repo, rev)
    tip = repo.resolve(rev)
    branches = rev_branches(repo, rev, tip, branch)
    commits = history(repo, tip)
    report: dict[str, Any] = {"rev": rev, "commit": tip, "branch": branches[0],
                              "branches": [b for b in branches if b], "commits": len(commits)}
    failures: list[dict[str, Any]] = []
    integrity = check_integrity(repo, commits, tag)
    report["integrity"] = integrity
    for p in integrity["problems"]:
        failures.append({"check": "integrity", "commit": p["commit"], "reason": p["error"]})
    mixtures = check_mixtures(repo, commits)  # --- mixture ---
    report["mixtures"] = mixtures
    failures += [{"check": "mixture", "commit": m["commit"], "reason": m["reason"]} for m in mixtures if not m["ok"]]
    report["reproduce"] = None
    if reproduce:
        rep = check_reproduce(repo, commits, tolerance=tolerance, device=device, progress=progress,
                              base_weights=_open_base(base_weights))
        report["reproduce"] = {"ok": all(r["ok"] for r in rep), "merges": rep, "tolerance": tolerance}
        failures += [{"check": "reproduce", "commit": r["commit"], "reason": r["reason"]} for r in rep if not r["ok"]]
    report["signatures"] = None
    if signatures:
        policy = load_policy(repo)
        policies = [policy] if policy is not None else []
        entries = check_signatures(repo, tip, branches, policies)
        tags = [check_tag_signature(repo, tag, policies)] if tag else []
        report["signatures"] = {
            "ok": all(e["ok"] for e in entries) and all(t["ok"] for t in tags),
            "policy": policy.source if policy is not None else None,
            "protected": bool(policy and any(policy.protected(b) for b in branches)),
            "commits": entries,
            "tags": tags,
        }
        failures += [{"check": "signature", "commit": e["commit"], "branch": e["branch"], "reason": e["reason"]}
                     for e in entries if not e["ok"]]
        failures += [{"check": "signature", "commit": t["tag"], "reason": t["reason"]} for t in tags if not t["ok"]]
    report["failures"] = failures
    report["ok"] = not failures
    return report


# -- push --------------------------------------------------------------------------------------


def check_push(repo: "BaseRepository", local: str, dst_ref: str, *, remote_value: str | None,
               remote_policy_text: str | None, remote_name: str, src_rev: str | None = None) -> None:
    """Refuse (SignatureError) a push whose new commits would fail verify --signatures on the remote.

    Policies: the repository's own allowed signers and, when the remote keeps
    one (an ``allowed_signers`` file at its top), the remote's. The pushed tip
    is judged on the branch `dst_ref` is (``ref_branch``) and, when `src_rev`
    is given (the destination was named after the source, or is no branch),
    on the branches of that revision (``rev_branches``: pushing
    ``origin/sites/a`` or an id of it publishes ``sites/a``). When any of
    those is protected, its history is judged with the same attribution as
    verify (side branches on their own branches). Commits already in the
    remote ref's history are not judged again.
    """
    policies = []
    local_policy = load_policy(repo)
    if local_policy is not None:
        policies.append(local_policy)
    if remote_policy_text is not None:
        policies.append(AllowedSigners.parse(remote_policy_text, f"{remote_name}:allowed_signers"))
    if not policies:
        return
    dst_branch = ref_branch(dst_ref)
    branches: list[str | None] = [dst_branch] if dst_branch else []
    if src_rev is not None:
        branches += [b for b in rev_branches(repo, src_rev, local) if b not in branches]
    if not any(p.protected(b) for p in policies for b in branches):
        return
    exclude: set[str] = set()
    if remote_value and is_object_id(remote_value) and repo.store.has(remote_value):
        exclude = set(history(repo, remote_value))
    protected = dst_branch is not None and any(p.protected(dst_branch) for p in policies)
    what = f"protected branch {dst_branch}" if protected else f"branch {dst_branch}" if dst_branch else dst_ref
    for e in check_signatures(repo, local, branches, policies, exclude=exclude):
        if not e["ok"]:
            raise SignatureError(e["commit"], f"refusing to push to {what}: {e['reason']}")
