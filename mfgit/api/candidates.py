"""Candidate rounds: composites published for the sites to evaluate, then chosen by their notes.

``merge --candidates N``: N composites from a seeded design around the
merge's default weights, each committed on ``candidates/<round>/<k>``. Sites
evaluate them on their own data (``mfgit eval``) and push only the numbers
(notes); ``merge --from-candidates ROUND --select-by NAME,...`` then commits
the candidate with the best worst-site (or mean) score by the notes that
count — signed by a key the allowed-signers policy allows for the site they
claim —, recording the table it chose from and every note it rejected.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from mfgit.api.search import check_bounds
from mfgit.audit.notes import FUTURE_SKEW_SECONDS, TRUST_RULE, NoteTrust, notes_for
from mfgit.audit.policy import policy_path
from mfgit.errors import ConflictingEvaluations, MergeError, MfgitError, NoNotesPolicy, RefExists
from mfgit.merge.engine import merge_adapters
from mfgit.objects.canonical import canonical_json
from mfgit.refs import HEADS, REMOTES
from mfgit.repo.importer import store_adapter
from mfgit.repo.notes import read_index

if TYPE_CHECKING:
    from mfgit.merge.engine import MergeInput, MergeOutput, Recipe
    from mfgit.merge.plan import MergePlan
    from mfgit.repo.base import BaseRepository, Signer

SELECT_RULES = ("worst", "mean")
SELECTION_RULE = ("per --select-by name, only trusted notes count, all from one site (two sites: refused); a "
                  "site's own later note replaces its earlier one; notes of other sites never compete on time")
CANDIDATE_SIGMA = 0.5  # the spread of the candidate design (log-normal jitter of the default weights)
CANDIDATES_PREFIX = "candidates/"


def candidate_design(start: Sequence[float], count: int, seed: int, bounds: tuple[float, float]) -> list[list[float]]:
    """`count` weight vectors: the merge's default weights, then seeded jitters of them.

    Candidate k ≥ 1 multiplies each default weight by exp(σ·z), z ~ N(0, 1)
    from numpy's PCG64 generator seeded with `seed` (σ = 0.5), rescales the
    vector to the default's sum and clips it to `bounds`. The same seed gives
    the same design.
    """
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(int(seed) % (2 ** 63)))
    base = np.asarray([float(w) for w in start], dtype=np.float64)
    out = [[min(max(float(w), bounds[0]), bounds[1]) for w in base]]
    total = float(base.sum())
    for _ in range(count - 1):
        z = rng.standard_normal(len(base))
        w = base * np.exp(CANDIDATE_SIGMA * z)
        s = float(w.sum())
        if s != 0.0 and total != 0.0:
            w = w * (total / s)
        out.append([min(max(float(v), bounds[0]), bounds[1]) for v in w])
    return out


def round_id(tip: str | None, inputs: Sequence["MergeInput"], rec: "Recipe", count: int, seed: int,
             bounds: tuple[float, float]) -> str:
    """The name of a candidate round: a digest of everything that defines it."""
    body = {"tip": tip, "inputs": [[i.id, float(i.weight)] for i in inputs], "recipe": rec.to_dict(),
            "count": count, "seed": int(seed), "bounds": list(bounds), "sigma": CANDIDATE_SIGMA}
    return hashlib.sha256(b"mfgit-candidates\0" + canonical_json(body)).hexdigest()[:12]


@dataclass
class CandidatesReport:
    """What ``merge --candidates N`` made: one commit per candidate, on its own branch."""

    round: str
    candidates: list[dict[str, Any]]
    provenance: dict[str, Any]
    commit: str | None = None
    adapter: str | None = None
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "candidates": self.candidates, "provenance": self.provenance}


@dataclass(frozen=True)
class CandidatesRequest:
    """``merge --candidates N [--bounds LO,HI]``."""

    count: Any
    bounds: Any = None


@dataclass(frozen=True)
class SelectionRequest:
    """``merge --from-candidates ROUND --select-by NAME,... [--select-rule worst|mean]``."""

    round: str
    select_by: Any = None
    rule: str | None = None


def publish_candidates(repo: "BaseRepository", plan: "MergePlan", request: CandidatesRequest, *,
                       provenance: dict[str, Any], first_output: "MergeOutput", message: str | None,
                       sign: "Signer | None" = None) -> CandidatesReport:
    """Commit `request.count` candidate composites on ``candidates/<round>/<k>``; the current branch does not move.

    `provenance` and `first_output` are the merge with its default weights,
    which is candidate 0; the others differ only in their weights.
    """
    count = request.count
    if not plan.linear:
        raise MergeError("--candidates needs a linear-family strategy (linear, task_arithmetic)")
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise MergeError(f"--candidates must be a whole number >= 2, got {count!r}")
    lo_hi = check_bounds(request.bounds)
    rec, seed, tip = plan.recipe, plan.recipe.seed, plan.tip
    start = [float(i.weight) for i in plan.inputs]
    design = candidate_design(start, count, seed, lo_hi)
    rid = round_id(tip, plan.inputs, rec, count, seed, lo_hi)
    load = lambda oid, dev: repo.load_tensor(oid, device=dev)  # noqa: E731
    made = []
    for k, ws in enumerate(design):
        cand_plan = plan.with_weights(repo, ws)
        out = first_output if k == 0 and ws == start else merge_adapters(cand_plan.inputs, rec, load)
        adapter_id = store_adapter(repo, out.config, out.tensors, metadata={"format": "pt"},
                                   base_model=plan.inputs[0].adapter.base_model)
        prov = copy.deepcopy(provenance)
        lam = float(rec.params.get("lambda", 1.0))
        prov["recipe"]["weights_mode"] = "explicit"
        prov["inputs"] = [{"commit": i.id, "label": i.label, "weight": float(i.weight)} for i in cand_plan.inputs]
        prov["leaves"] = [{"commit": lf["commit"], "site": lf.get("site"), "key": lf["key"], "label": lf.get("label"),
                           "weight": lf["weight"], "effective_weight": lam * lf["weight"]} for lf in cand_plan.leaves]
        prov["modules"] = out.modules
        energies = [m["kept_energy"] for m in out.modules.values()]
        prov["kept_energy"] = {"min": min(energies) if energies else 1.0,
                               "mean": sum(energies) / len(energies) if energies else 1.0}
        prov["candidate"] = {"round": rid, "index": k, "of": count, "weights": list(ws), "base": tip,
                             "design": {"kind": "default weights, then log-normal jitter rescaled to their sum",
                                        "sigma": CANDIDATE_SIGMA, "rng": "numpy PCG64", "seed": int(seed),
                                        "bounds": list(lo_hi), "start": start}}
        branch = f"{CANDIDATES_PREFIX}{rid}/{k}"
        ref = HEADS + branch
        existing = repo.refs.read(ref)
        if existing is not None:
            if repo.read_commit(existing).adapter != adapter_id:
                raise RefExists(f"{branch} (a different candidate is there)")
            cid = existing
        else:
            subject = message or f"Candidate {k} of {count} (round {rid})"
            cid = repo.write_commit(adapter_id, plan.parents, subject, prov, ref, None, sign=sign).id
        made.append({"index": k, "branch": branch, "commit": cid, "adapter": adapter_id, "weights": list(ws)})
    return CandidatesReport(rid, made, {"kind": "candidates", "round": rid, "count": count, "base": tip,
                                        "inputs": [{"commit": i.id, "label": i.label} for i in plan.inputs]})


def find_candidates(repo: "BaseRepository", rid: str) -> dict[int, str]:
    """index → commit of round `rid`: local branches candidates/<rid>/<k>, else remote-tracking ones."""
    found: dict[int, str] = {}
    prefixes = [f"{HEADS}{CANDIDATES_PREFIX}{rid}/"]
    prefixes += [p for p in sorted({"/".join(n.split("/")[:3]) + "/" for n in repo.refs.names(REMOTES)})]
    for prefix in prefixes:
        full = prefix if prefix.startswith(HEADS) else f"{prefix}{CANDIDATES_PREFIX}{rid}/"
        for ref, cid in sorted(repo.refs.items(full).items()):
            try:
                cand = (repo.read_commit(cid).provenance or {}).get("candidate") or {}
            except MfgitError:  # a damaged ref is not a candidate
                continue
            if cand.get("round") == rid and isinstance(cand.get("index"), int):
                found.setdefault(cand["index"], cid)
        if found:
            break
    return found


def _site(note: dict[str, Any]) -> str:
    return str((note.get("measured_by") or {}).get("site"))


def _name_sites(notes: dict[int, list[dict[str, Any]]], names: list[str]) -> None:
    """Refuse a name whose trusted notes come from more than one site: whose evaluation it is is undecided."""
    for name in names:
        by_site: dict[str, list[str]] = {}
        for k in sorted(notes):
            for n in notes[k]:
                if n.get("name") == name and n["trust"]["trusted"]:
                    by_site.setdefault(_site(n), []).append(n["id"])
        if len(by_site) > 1:
            raise ConflictingEvaluations(name, sorted(by_site), sorted(i for ids in by_site.values() for i in ids))


def _pick_note(notes: list[dict[str, Any]], name: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The note called `name` that counts (the trusted site's latest) and the rejected ones, with why."""
    trusted, rejected = [], []
    for n in notes:
        if n.get("name") != name:
            continue
        if not n["trust"]["trusted"]:
            rejected.append({"note": n["id"], "name": name, "site": (n.get("measured_by") or {}).get("site"),
                             "reason": f"untrusted: {n['trust']['reason']}"})
        else:
            trusted.append(n)
    # One site (checked by _name_sites), so its own dates order its own notes.
    trusted.sort(key=lambda n: (n.get("timestamp") or "", n["id"]))
    for n in trusted[:-1]:
        rejected.append({"note": n["id"], "name": name, "site": _site(n),
                         "reason": f"replaced by the site's later note {trusted[-1]['id'][:12]}"})
    if not trusted:
        return None, rejected
    last = trusted[-1]
    score = (last.get("values") or {}).get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        rejected.append({"note": last["id"], "name": name, "site": _site(last), "reason": "no finite score"})
        return None, rejected
    return last, rejected


def select_candidate(repo: "BaseRepository", request: SelectionRequest, *, message: str | None = None,
                     sign: "Signer | None" = None) -> tuple[str, str, dict[str, Any]]:
    """Commit the candidate of round `rid` whose site scores are best under `rule`.

    Scores are the ``score`` values (lower is better) of the notes named in
    `select_by` attached to each candidate commit. Only trusted notes count
    (mfgit.audit.notes: signed by a key allowed for the site they claim, about
    that commit, not dated in the future); each name must come from one site,
    whose latest note counts (``SELECTION_RULE``). ``worst``: the candidate
    with the lowest worst-site score; ``mean``: the lowest mean. Only
    candidates with a counted note for every name compete. The provenance
    records the rule, the policy (source and SHA-256), every note used and
    every note of those names rejected, with why. The commit's
    adapter is the chosen candidate's own (what the sites evaluated), on the
    current branch, which must still be where the candidates were built.
    Returns (commit, adapter, provenance).
    """
    rid, select_by = request.round, request.select_by
    rule = request.rule or "worst"
    if rule not in SELECT_RULES:
        raise MergeError(f"--select-rule must be one of {', '.join(SELECT_RULES)}, got {rule!r}")
    names = [s.strip() for s in (select_by.split(",") if isinstance(select_by, str) else (select_by or []))]
    names = [s for s in names if s]
    if not names:
        raise MergeError("--from-candidates needs --select-by NAME[,NAME...]: the evaluation names the sites used "
                         "(mfgit eval --name NAME)")
    t0 = time.perf_counter()
    found = find_candidates(repo, rid)
    if not found:
        raise MergeError(f"no candidates of round {rid}: look for branches candidates/{rid}/* (mfgit branch -a); "
                         f"fetch them first if they were published elsewhere")
    trust = NoteTrust.of(repo, strict=True)
    if trust.policy is None:
        raise NoNotesPolicy(str(policy_path(repo)))
    branch_ref, tip = repo.commit_target()
    index = read_index(repo)
    notes_of = {k: notes_for(repo, found[k], index, trust=trust) for k in sorted(found)}
    _name_sites(notes_of, names)
    table = []
    for k in sorted(found):
        cid = found[k]
        row: dict[str, Any] = {"index": k, "commit": cid, "scores": {}, "rejected": []}
        for name in names:
            note, rejected = _pick_note(notes_of[k], name)
            row["rejected"].extend(rejected)
            if note is not None:
                row["scores"][name] = {"score": note["values"]["score"], "note": note["id"], "site": _site(note),
                                       "signature": note["signature"]["status"],
                                       "key_id": note["signature"].get("key_id"), "trust": note["trust"]["reason"]}
        missing = [n for n in names if n not in row["scores"]]
        if missing:
            row["aggregate"] = None
            row["missing"] = missing
        else:
            vals = [row["scores"][n]["score"] for n in names]
            row["aggregate"] = max(vals) if rule == "worst" else sum(vals) / len(vals)
        table.append(row)
    complete = [r for r in table if r["aggregate"] is not None]
    if not complete:
        need = "; ".join(f"candidate {r['index']} lacks {', '.join(r['missing'])}" for r in table[:4])
        raise MergeError(f"no candidate of round {rid} has a trusted note for every name in --select-by ({need}); "
                         f"fetch the sites' notes first (mfgit fetch REMOTE --notes) and see why notes are "
                         f"untrusted: mfgit notes show REV")
    winner = min(complete, key=lambda r: (r["aggregate"], r["index"]))
    chosen = repo.read_commit(winner["commit"])
    prov = dict(chosen.provenance)
    cand = prov.pop("candidate")
    if cand.get("base") != tip:
        def at(c):
            return c[:10] if c else "an unborn branch"

        raise MergeError(f"the current branch moved since round {rid} was published (candidates were built on "
                         f"{at(cand.get('base'))}, the branch is at {at(tip)}); select on a branch at "
                         f"{at(cand.get('base'))}, or publish new candidates (merge --candidates) from here")
    prov["selection"] = {
        "round": rid, "rule": rule, "select_by": names, "objective": "score (lower is better)",
        "chosen": {"index": winner["index"], "commit": winner["commit"], "aggregate": winner["aggregate"],
                   "weights": cand.get("weights")},
        "trust": {"rule": f"{TRUST_RULE}; {SELECTION_RULE}", "time": trust.now,
                  "future_skew_seconds": FUTURE_SKEW_SECONDS,
                  "policy": {"source": trust.policy.source, "sha256": trust.policy.sha256}},
        "candidates": table, "design": cand.get("design"), "of": cand.get("of"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if message is None:
        labels = ", ".join(i.get("label", i["commit"][:10]) for i in prov.get("inputs", []))
        message = (f"Merge {labels} ({prov['recipe']['strategy']}): candidate {winner['index']} of round {rid}, "
                   f"best {rule} score of {', '.join(names)}")
    info = repo.write_commit(chosen.adapter, list(chosen.parents), message, prov, branch_ref, tip, sign=sign)
    return info.id, chosen.adapter, prov
