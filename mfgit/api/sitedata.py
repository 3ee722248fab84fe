"""The built-in data loader of a search: ``--data attachments:NAME``, the sites' own committed data.

For MedForge-Fusion the coordinator scores candidates on what the sites
committed with their adapters, never on records: each site's distilled set
(attachment ``distilled``, a safetensors file of the model's inputs under
their keyword names and ``labels``) and its task spec (attachment ``task``,
JSON with the class prompts). ``attachments:NAME`` reads attachment NAME of
every leaf of the merge — each input being merged, and each leaf already in
the composite being integrated into —, of every member of a mixture
(``mix --search``; the leaves of a member that is a merge), or of the
commit evaluated (``eval``), and, where the commit has one, its ``task``;
it returns one `SiteData` per leaf. Every read is recorded (commit,
name, SHA-256 digest, size) in the merge's or mixture's ``provenance.search.attachments``,
and ``verify --reproduce`` reads them again by that digest.

Everything comes from other institutions, so nothing is trusted: the
safetensors header is validated by mfgit's own parser before a byte is
allocated, the task spec is parsed by the strict JSON reader, and a private
attachment (its bytes never leave its site) stops the merge in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mfgit.errors import AttachmentNotFound, MfgitError, SafetensorsError, ScoreError
from mfgit.formats.jsonvalue import JSONValueError, loads_strict
from mfgit.formats.safetensors import parse_header
from mfgit.repo.attachments import entry_bytes, entry_of

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

PREFIX = "attachments:"
TASK = "task"  # the attachment holding a site's task spec
LABELS = "labels"


class InvalidSiteData(ScoreError):
    """A site's attachment that the built-in loader or scorer cannot use: the distilled set is no valid
    safetensors file, lacks ``labels`` or has rows of other lengths; the task spec is not the JSON the
    prompt scorer reads. Raised here and by mfgit.api.prompts only, so it lives here (a ScoreError: the
    data of a score)."""

    def __init__(self, commit: str, name: str, reason: str):
        MfgitError.__init__(self, f"attachment {name!r} of commit {commit[:12]}: {reason}")
        self.spec = PREFIX + name
        self.commit = commit
        self.name = name
        self.reason = reason


@dataclass
class SiteData:
    """One leaf's data: the model's inputs by keyword name, their labels, and its task spec."""

    commit: str
    site: str | None
    label: str
    tensors: dict[str, Any]  # name → torch.Tensor, ``labels`` among them
    task: dict[str, Any] | None  # the commit's ``task`` attachment, when it has one
    name: str = "distilled"  # the attachment the tensors came from

    @property
    def labels(self):
        return self.tensors[LABELS]

    def inputs(self) -> dict[str, Any]:
        """The model's inputs (every tensor but ``labels``), by keyword name."""
        return {k: v for k, v in self.tensors.items() if k != LABELS}


def attachment_name(spec: Any) -> str | None:
    """NAME for a ``--data attachments:NAME`` spec; None for anything else."""
    if isinstance(spec, str) and spec.startswith(PREFIX):
        name = spec[len(PREFIX):]
        if not name:
            raise ScoreError(spec, "--data attachments:NAME names the attachment to read (e.g. attachments:distilled)")
        return name
    return None


def leaf_commits(leaves: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The leaves of a merge, each once: {"commit", "site", "label"} in the plan's order."""
    seen: set[str] = set()
    out = []
    for lf in leaves:
        if lf["commit"] not in seen:
            seen.add(lf["commit"])
            out.append({"commit": lf["commit"], "site": lf.get("site"), "label": lf.get("label") or lf["commit"][:10]})
    return out


def member_leaves(repo: "BaseRepository", members: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The leaves whose data a composite was or is scored on, each once, from (label, commit) pairs: a merge
    commit's recorded leaves, a mixture's members' leaves, any other commit itself."""
    out: list[dict[str, Any]] = []
    for label, cid in members:
        c = repo.read_commit(cid)
        if c.is_mixture:
            out += member_leaves(repo, [(f"{label} member {m[:10]}", m) for m, _ in c.mixture_members()])
        elif c.is_merge:
            out += [{"commit": lf["commit"], "site": lf.get("site"), "label": lf.get("label") or label}
                    for lf in (c.provenance or {}).get("leaves") or []]
        else:
            out.append({"commit": cid, "site": c.site, "label": label})
    return leaf_commits(out)


def _read(repo: "BaseRepository", cid: str, name: str, *, required: bool) -> tuple[bytes, dict[str, Any]] | None:
    try:
        commit, entry = entry_of(repo, cid, name)
    except AttachmentNotFound:
        if required:
            raise
        return None
    # A private attachment raises AttachmentPrivate here: its bytes are its site's.
    return entry_bytes(repo, cid, commit, entry), entry


def tensors_of(data: bytes, cid: str, name: str) -> dict[str, Any]:
    """The tensors of a distilled set, its header validated first (invariant 5), ``labels`` checked."""
    import torch
    from safetensors.torch import load

    try:
        header = parse_header(data, len(data), f"attachment {name} of {cid[:12]}")
    except SafetensorsError as e:
        raise InvalidSiteData(cid, name, f"not a valid safetensors file ({e.rule}: {e.detail})") from None
    if LABELS not in header.tensors:
        raise InvalidSiteData(cid, name, f"holds no {LABELS!r} tensor (it has {', '.join(sorted(header.tensors)) or 'none'})")
    tensors = load(data)
    labels = tensors[LABELS]
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InvalidSiteData(cid, name, f"{LABELS!r} must be a 1-D integer tensor, got {labels.dtype} of shape "
                              f"{tuple(labels.shape)}")
    n = labels.shape[0]
    for k, v in sorted(tensors.items()):
        if k != LABELS and (v.dim() == 0 or v.shape[0] != n):
            raise InvalidSiteData(cid, name, f"{k!r} has shape {tuple(v.shape)}; every input needs one row per "
                                  f"label ({n})")
    if len(tensors) < 2:
        raise InvalidSiteData(cid, name, f"holds only {LABELS!r}: the model's inputs are missing")
    tensors[LABELS] = labels.long()
    return tensors


def task_of(data: bytes, cid: str) -> dict[str, Any]:
    try:
        spec = loads_strict(data)
    except JSONValueError as e:
        raise InvalidSiteData(cid, TASK, f"the task spec is not JSON: {e}") from None
    if not isinstance(spec, dict):
        raise InvalidSiteData(cid, TASK, "the task spec is not a JSON object")
    return spec


def _record(cid: str, site: str | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"commit": cid, "site": site, "name": entry["name"], "digest": entry["digest"], "size": entry["size"],
            "private": entry["private"]}


def load_site_data(repo: "BaseRepository", leaves: Sequence[Mapping[str, Any]],
                   name: str) -> tuple[list[SiteData], list[dict[str, Any]]]:
    """Attachment `name` (and ``task``, when present) of every leaf: (the datasets, the reads to record)."""
    datasets, reads = [], []
    for lf in leaf_commits(leaves):
        cid = lf["commit"]
        data, entry = _read(repo, cid, name, required=True)
        reads.append(_record(cid, lf["site"], entry))
        tensors = tensors_of(data, cid, name)
        task = None
        if name != TASK:
            got = _read(repo, cid, TASK, required=False)
            if got is not None:
                reads.append(_record(cid, lf["site"], got[1]))
                task = task_of(got[0], cid)
        datasets.append(SiteData(cid, lf["site"], lf["label"], tensors, task, name))
    return datasets, reads
