"""diff: what changed between the adapters of two commits, module by module.

A module is *unchanged* when its lora_A and lora_B tensor ids and its scaling
are the same on both sides, *changed* otherwise, *added* / *removed* when only
one side adapts it. For a changed module, with ΔW = s·B·A (the scaling PEFT
applies folded in, `mfgit.formats.peft.module_scaling`):

* ``norm_a``, ``norm_b``: ‖ΔW_A‖_F, ‖ΔW_B‖_F
* ``norm_diff``: ‖ΔW_B − ΔW_A‖_F and ``rel_diff`` = norm_diff / norm_a
* ``cosine``: ⟨ΔW_A, ΔW_B⟩ / (‖ΔW_A‖ ‖ΔW_B‖)
* ``subspace``: the cosines of the principal angles between the column spaces
  of B_A and B_B (singular values of Q_Aᵀ Q_B for orthonormal bases Q), and
  their mean square ``mean_cos2`` (1: same subspace, 0: orthogonal).

A module whose factors have other shapes on the two sides (another input
or output size, or linear on one side and embedding on the other) is
*changed* with ``shapes`` {a, b}: its two updates live in different spaces,
so it has no difference norm, cosine or subspace overlap, and the totals
count it as removed and added. Saved tensors that belong to no module are
listed under ``tensors`` when they differ (added, removed, changed).

Attachments that differ are listed under ``attachments`` (by digest and
privacy); one stored as its tensors on both sides (a safetensors file,
`mfgit.repo.attachment_tensors`) also lists the tensors added, removed or
changed, found by comparing tensor ids, without reading a tensor.

A DoRA module's magnitude vector m (``<module>.lora_magnitude_vector``) is
part of the module: a module whose m changed is *changed*, with
``magnitude`` {``norm_a``, ``norm_b``, ``norm_diff``, ``rel_diff``} (‖m_A‖,
‖m_B‖, ‖m_B − m_A‖, its ratio to ‖m_A‖; a side without m has null norms).
The ΔW figures stay those of s·B·A: DoRA's effective update needs the base
weights, which a diff does not have (docs/merging.md, "DoRA").

Everything is exact and computed from the factors, never from a dense ΔW:
‖BA‖_F = ‖R_B R_Aᵀ‖_F with B = Q_B R_B and Aᵀ = Q_A R_A (QR), applied to
B = [B_A, −B_B], A = [A_A; A_B] for the difference, and
⟨B₁A₁, B₂A₂⟩ = tr((B₁ᵀB₂)(A₂A₁ᵀ)); O((m+n)r²) per module. Computation is in
float64 on the CPU with numpy, modules in sorted order, numbers written with 8
significant digits, so the output of the same two commits is byte-identical
on every run.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mfgit.errors import IsAMixture, MalformedObject
from mfgit.formats.dtypes import DTYPES
from mfgit.formats.peft import magnitude_name, module_scaling
from mfgit.objects.model import Commit
from mfgit.repo.attachment_tensors import is_split

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

SIG_DIGITS = 8


def num(x: float | None, digits: int = SIG_DIGITS) -> float | None:
    """A float rounded to `digits` significant digits (None stays None; -0.0 becomes 0.0)."""
    if x is None:
        return None
    if not math.isfinite(x):
        return None
    v = float(f"{x:.{digits}g}")
    return 0.0 if v == 0 else v


def load_array(repo: "BaseRepository", tid: str, entry: dict[str, Any] | None = None) -> np.ndarray:
    """A stored tensor as a float64 numpy array (F64, F32, F16, BF16).

    With `entry` (the manifest's {id, dtype, shape}), the object must be what
    the manifest says it is, as checkout and verify require too."""
    header, raw = repo.read_tensor(tid)
    if entry is not None and (header.dtype != entry["dtype"] or list(header.shape) != list(entry["shape"])):
        raise MalformedObject(tid, f"manifest says {entry['dtype']}{entry['shape']}, "
                                   f"object is {header.dtype}{list(header.shape)}")
    if header.dtype == "BF16":
        u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        arr = u.view(np.float32)
    elif header.dtype in ("F16", "F32", "F64"):
        arr = np.frombuffer(raw, dtype=DTYPES[header.dtype].numpy)
    else:
        raise MalformedObject(tid, f"a LoRA factor of dtype {header.dtype} cannot be compared")
    return arr.astype(np.float64).reshape(header.shape)


def _frob_of_product(B: np.ndarray, A: np.ndarray) -> float:
    """‖B A‖_F without forming B A: QR of B and Aᵀ, then the small core."""
    if B.size == 0 or A.size == 0:
        return 0.0
    rb = np.linalg.qr(B, mode="r")
    ra = np.linalg.qr(A.T, mode="r")
    return float(np.linalg.norm(rb @ ra.T))


def _inner(B1: np.ndarray, A1: np.ndarray, B2: np.ndarray, A2: np.ndarray) -> float:
    """⟨B₁A₁, B₂A₂⟩_F = tr((B₁ᵀB₂)(A₂A₁ᵀ))."""
    return float(np.sum((B1.T @ B2) * (A1 @ A2.T)))


def _basis(B: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the column space of B (numerical rank)."""
    if B.size == 0:
        return B[:, :0]
    u, s, _ = np.linalg.svd(B, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return u[:, :0]
    k = int(np.sum(s > s[0] * max(B.shape) * np.finfo(np.float64).eps))
    return u[:, :k]


def subspace_overlap(B1: np.ndarray, B2: np.ndarray) -> dict[str, Any]:
    q1, q2 = _basis(B1), _basis(B2)
    if q1.shape[1] == 0 or q2.shape[1] == 0:
        return {"cosines": [], "mean_cos2": None}
    c = np.clip(np.linalg.svd(q1.T @ q2, compute_uv=False), 0.0, 1.0)
    return {"cosines": [num(x) for x in c], "mean_cos2": num(float(np.mean(c * c)))}


class _Side:
    def __init__(self, repo: "BaseRepository", cid: str):
        self.repo = repo
        self.commit_id = cid
        self.commit = repo.read_commit(cid)
        self.adapter_id = self.commit.adapter
        self.adapter = repo.read_adapter(self.adapter_id)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def key(self, module: str) -> tuple[str, str, float, str | None]:
        m = self.adapter.modules[module]
        return (self.adapter.tensors[m["lora_A"]]["id"], self.adapter.tensors[m["lora_B"]]["id"], self.scaling(module),
                self.magnitude_id(module))

    def magnitude_id(self, module: str) -> str | None:
        """The id of the module's DoRA magnitude vector, None when it has none."""
        t = self.adapter.tensors.get(magnitude_name(module))
        return t["id"] if t is not None else None

    def magnitude(self, module: str) -> np.ndarray | None:
        t = self.adapter.tensors.get(magnitude_name(module))
        return load_array(self.repo, t["id"], t).reshape(-1) if t is not None else None

    def rank(self, module: str) -> int:
        return int(self.adapter.modules[module]["r"])

    def scaling(self, module: str) -> float:
        return module_scaling(self.adapter.config, module, self.rank(module))[2]

    def shape(self, module: str) -> tuple[str, int, int]:
        """(kind, out, in) of the module's update ΔW = B·A; the schema makes A and B 2-D."""
        m = self.adapter.modules[module]
        return (m["kind"], self.adapter.tensors[m["lora_B"]]["shape"][0], self.adapter.tensors[m["lora_A"]]["shape"][1])

    def factors(self, module: str) -> tuple[np.ndarray, np.ndarray]:
        """(s·B, A) as 2-D float64 arrays (out × r, r × in)."""
        if module not in self._cache:
            m = self.adapter.modules[module]
            ta, tb = self.adapter.tensors[m["lora_A"]], self.adapter.tensors[m["lora_B"]]
            A, B = load_array(self.repo, ta["id"], ta), load_array(self.repo, tb["id"], tb)
            self._cache[module] = (B * self.scaling(module), A)
        return self._cache[module]

    def loose_tensors(self) -> dict[str, str]:
        """Saved tensors that belong to no module: name → id."""
        in_modules = {n for mod, m in self.adapter.modules.items()
                      for n in (m["lora_A"], m["lora_B"], magnitude_name(mod))}
        return {n: t["id"] for n, t in self.adapter.tensors.items() if n not in in_modules}


def _loose_tensor_changes(a: _Side, b: _Side) -> list[dict[str, Any]]:
    ta, tb = a.loose_tensors(), b.loose_tensors()
    out = []
    for name in sorted(set(ta) | set(tb)):
        if ta.get(name) == tb.get(name):
            continue
        status = "added" if name not in ta else "removed" if name not in tb else "changed"
        out.append({"name": name, "status": status, "id_a": ta.get(name), "id_b": tb.get(name)})
    return out


def _magnitude_change(ma: np.ndarray | None, mb: np.ndarray | None) -> dict[str, Any]:
    """How a DoRA magnitude vector changed (a side without one: null norms)."""
    na = float(np.linalg.norm(ma)) if ma is not None else None
    nb = float(np.linalg.norm(mb)) if mb is not None else None
    nd = float(np.linalg.norm(mb - ma)) if ma is not None and mb is not None and ma.shape == mb.shape else None
    return {"norm_a": num(na), "norm_b": num(nb), "norm_diff": num(nd),
            "rel_diff": num(nd / na) if nd is not None and na else None}


# --- attachments ---


def attachment_changes(a: Commit, b: Commit) -> list[dict[str, Any]]:
    """Attachments added, removed or changed (another digest, or public ↔ private), by name; a changed
    one stored as its tensors on both sides also says which tensors differ."""
    ea, eb = {x["name"]: x for x in a.attachments}, {x["name"]: x for x in b.attachments}
    out = []
    for name in sorted(set(ea) | set(eb)):
        xa, xb = ea.get(name), eb.get(name)
        if xa is not None and xb is not None and (xa["digest"], xa["private"]) == (xb["digest"], xb["private"]):
            continue
        status = "added" if xa is None else "removed" if xb is None else "changed"
        out.append({"name": name, "status": status,
                    "digest_a": xa and xa["digest"], "digest_b": xb and xb["digest"],
                    "size_a": xa and xa["size"], "size_b": xb and xb["size"],
                    "private_a": xa and xa["private"], "private_b": xb and xb["private"]})
        if xa is not None and xb is not None and is_split(xa) and is_split(xb):
            out[-1].update(attachment_tensor_changes(xa, xb))
    return out


def attachment_tensor_changes(xa: dict[str, Any], xb: dict[str, Any]) -> dict[str, Any]:
    """Which tensors of two safetensors attachments differ, by the ids of their tensor objects.

    Equal ids are equal bytes, dtype and shape (ids hash them), so no tensor
    is read; a change of the header alone (its metadata, the order of the
    tensors) shows as ``header_changed`` with no tensor listed."""
    ta, tb = xa["tensors"], xb["tensors"]
    names = sorted(set(ta) | set(tb))
    return {
        "tensors": {
            "added": [n for n in names if n not in ta],
            "removed": [n for n in names if n not in tb],
            "changed": [n for n in names if n in ta and n in tb and ta[n] != tb[n]],
            "unchanged": sum(1 for n in names if ta.get(n) == tb.get(n)),
        },
        "header_changed": xa["header"] != xb["header"],
    }


# --- end attachments ---


def diff(repo: "BaseRepository", rev_a: str, rev_b: str, *, stat: bool = False) -> dict[str, Any]:
    ida, idb = repo.resolve(rev_a), repo.resolve(rev_b)
    mixtures = [repo.read_commit(ida).is_mixture, repo.read_commit(idb).is_mixture]
    if any(mixtures):  # --- mixture: members and weights, not modules ---
        if not all(mixtures):
            raise IsAMixture(rev_a if mixtures[0] else rev_b, "diff compares an adapter only with an adapter, "
                             "a mixture only with a mixture; diff one of its members instead")
        return mixture_diff(repo, rev_a, ida, rev_b, idb)
    a = _Side(repo, ida)
    b = _Side(repo, idb)
    names = sorted(set(a.adapter.modules) | set(b.adapter.modules))
    modules = []
    counts = {"added": 0, "removed": 0, "changed": 0, "unchanged": 0}
    tot_a2 = tot_b2 = tot_d2 = tot_in = 0.0
    for name in names:
        in_a, in_b = name in a.adapter.modules, name in b.adapter.modules
        entry: dict[str, Any] = {"name": name}
        comparable = True
        if in_a and in_b:
            status = "unchanged" if a.key(name) == b.key(name) else "changed"
            comparable = a.shape(name) == b.shape(name)
        else:
            status = "added" if in_b else "removed"
        counts[status] += 1
        entry["status"] = status
        entry["rank_a"] = a.rank(name) if in_a else None
        entry["rank_b"] = b.rank(name) if in_b else None
        entry["scaling_a"] = num(a.scaling(name)) if in_a else None
        entry["scaling_b"] = num(b.scaling(name)) if in_b else None
        na = nb = 0.0
        if in_a:
            Ba, Aa = a.factors(name)
            na = _frob_of_product(Ba, Aa)
        if in_b:
            Bb, Ab = b.factors(name)
            nb = _frob_of_product(Bb, Ab)
        entry["norm_a"] = num(na) if in_a else None
        entry["norm_b"] = num(nb) if in_b else None
        if status == "unchanged":
            nd, inner = 0.0, na * na
        elif status == "changed" and not comparable:
            entry["shapes"] = {"a": list(a.shape(name)[1:]), "b": list(b.shape(name)[1:])}
            if a.shape(name)[0] != b.shape(name)[0]:
                entry["kinds"] = {"a": a.shape(name)[0], "b": b.shape(name)[0]}
            nd, inner = math.sqrt(na * na + nb * nb), 0.0
        elif status == "changed":
            nd = _frob_of_product(np.concatenate([Ba, -Bb], axis=1), np.concatenate([Aa, Ab], axis=0))
            inner = _inner(Ba, Aa, Bb, Ab)
        else:
            nd, inner = (nb if in_b else na), 0.0
        tot_a2 += na * na
        tot_b2 += nb * nb
        tot_d2 += nd * nd
        tot_in += inner
        if status == "changed" and not comparable:
            entry.update(norm_diff=None, rel_diff=None, cosine=None)
            if not stat:
                entry["subspace"] = {"cosines": [], "mean_cos2": None}
        elif status == "changed":
            entry["norm_diff"] = num(nd)
            entry["rel_diff"] = num(nd / na) if na > 0 else None
            entry["cosine"] = num(inner / (na * nb)) if na > 0 and nb > 0 else None
            if not stat:
                entry["subspace"] = subspace_overlap(Ba, Bb)
        elif status in ("added", "removed"):
            entry["norm_diff"] = num(nd)
        if status == "changed" and a.magnitude_id(name) != b.magnitude_id(name):
            entry["magnitude"] = _magnitude_change(a.magnitude(name), b.magnitude(name))
        modules.append(entry)
    ta, tb = math.sqrt(tot_a2), math.sqrt(tot_b2)
    summary = {
        "modules": len(names),
        **counts,
        "norm_a": num(ta),
        "norm_b": num(tb),
        "norm_diff": num(math.sqrt(tot_d2)),
        "rel_diff": num(math.sqrt(tot_d2) / ta) if ta > 0 else None,
        "cosine": num(tot_in / (ta * tb)) if ta > 0 and tb > 0 else None,
    }
    cfg_a, cfg_b = a.adapter.config, b.adapter.config
    config = {k: {"a": cfg_a.get(k), "b": cfg_b.get(k)} for k in sorted(set(cfg_a) | set(cfg_b))
              if cfg_a.get(k) != cfg_b.get(k)}
    if stat:
        modules = [m for m in modules if m["status"] != "unchanged"]
    out = {
        "a": {"rev": rev_a, "commit": a.commit_id, "adapter": a.adapter_id},
        "b": {"rev": rev_b, "commit": b.commit_id, "adapter": b.adapter_id},
        "identical": a.adapter_id == b.adapter_id,
        "base_model": {"a": a.adapter.base_model, "b": b.adapter.base_model},
        "config": config,
        "summary": summary,
        "modules": modules,
        "tensors": _loose_tensor_changes(a, b),
    }
    # --- attachments: only when a side has some, so other diffs read as before ---
    if a.commit.attachments or b.commit.attachments:
        out["attachments"] = attachment_changes(a.commit, b.commit)
    # --- end attachments ---
    return out


# --- mixture: what changed between two mixtures ---


def mixture_diff(repo: "BaseRepository", rev_a: str, id_a: str, rev_b: str, id_b: str) -> dict[str, Any]:
    """Members of two mixtures: ``added``, ``removed``, ``reweighted`` (weight_a → weight_b) or ``unchanged``."""
    wa = dict(repo.read_commit(id_a).mixture_members())
    wb = dict(repo.read_commit(id_b).mixture_members())
    members, counts = [], {"added": 0, "removed": 0, "reweighted": 0, "unchanged": 0}
    for cid in list(wa) + [c for c in wb if c not in wa]:
        a, b = wa.get(cid), wb.get(cid)
        status = "added" if a is None else "removed" if b is None else "unchanged" if a == b else "reweighted"
        counts[status] += 1
        site = repo.read_commit(cid).site if repo.store.has(cid) else None
        members.append({"commit": cid, "site": site, "status": status, "weight_a": a, "weight_b": b})
    return {"kind": "mixture", "a": {"rev": rev_a, "commit": id_a}, "b": {"rev": rev_b, "commit": id_b},
            "identical": counts["unchanged"] == len(members), "counts": counts, "members": members}
