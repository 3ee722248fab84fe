"""History: walking commits newest first, ranges, ancestry, and what `show` reports."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Iterator

from mfgit.formats.dtypes import DTYPE_SIZES, element_count
from mfgit.objects.model import Adapter

from mfgit.repo.base import CommitInfo

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def _neg_time(ts: str) -> str:
    # ISO timestamps sort as strings; invert for a max-heap on time.
    return "".join(chr(0x10FFFF - ord(c)) for c in ts)


def walk(repo: "BaseRepository", starts: list[str], *, exclude: list[str] | None = None,
         first_parent: bool = False) -> Iterator[CommitInfo]:
    """Commits reachable from `starts` and not from `exclude`, newest first."""
    hidden: set[str] = set()
    if exclude:
        stack = list(exclude)
        while stack:
            oid = stack.pop()
            if oid in hidden:
                continue
            hidden.add(oid)
            stack.extend(repo.read_commit(oid).parents)
    seen: set[str] = set()
    heap: list[tuple[str, int, str]] = []
    counter = 0
    for s in starts:
        if s not in seen and s not in hidden:
            seen.add(s)
            c = repo.read_commit(s)
            heap.append((_neg_time(c.timestamp), counter, s))
            counter += 1
    heapq.heapify(heap)
    while heap:
        _, _, oid = heapq.heappop(heap)
        c = repo.read_commit(oid)
        yield CommitInfo(oid, c)
        parents = c.parents[:1] if first_parent else c.parents
        for p in parents:
            if p not in seen and p not in hidden:
                seen.add(p)
                pc = repo.read_commit(p)
                counter += 1
                heapq.heappush(heap, (_neg_time(pc.timestamp), counter, p))


def log(repo: "BaseRepository", rev: str = "HEAD", *, n: int | None = None,
        first_parent: bool = False) -> list[CommitInfo]:
    """History from `rev` (or ``A..B``: reachable from B but not A), newest first."""
    if ".." in rev and "..." not in rev:
        a, b = rev.split("..", 1)
        starts, exclude = [repo.resolve(b or "HEAD")], [repo.resolve(a or "HEAD")]
    else:
        starts, exclude = [repo.resolve(rev)], None
    out = []
    for info in walk(repo, starts, exclude=exclude, first_parent=first_parent):
        out.append(info)
        if n is not None and len(out) >= n:
            break
    return out


def is_ancestor(repo: "BaseRepository", ancestor: str, descendant: str) -> bool:
    stack, seen = [descendant], set()
    while stack:
        oid = stack.pop()
        if oid == ancestor:
            return True
        if oid in seen:
            continue
        seen.add(oid)
        stack.extend(repo.read_commit(oid).parents)
    return False


def adapter_summary(aid: str, adapter: Adapter) -> dict[str, Any]:
    dtypes = sorted({t["dtype"] for t in adapter.tensors.values()})
    ranks = sorted({m["r"] for m in adapter.modules.values()})
    nbytes = sum(DTYPE_SIZES.get(t["dtype"], 0) * element_count(t["shape"]) for t in adapter.tensors.values())
    cfg = adapter.config
    return {
        "id": aid,
        "base_model": adapter.base_model,
        "modules": len(adapter.modules),
        "tensors": len(adapter.tensors),
        "bytes": nbytes,
        "dtypes": dtypes,
        "ranks": ranks,
        "lora_alpha": cfg.get("lora_alpha"),
        "r": cfg.get("r"),
        "use_rslora": bool(cfg.get("use_rslora")),
        "target_modules": cfg.get("target_modules"),
    }


def show(repo: "BaseRepository", rev: str = "HEAD") -> dict[str, Any]:
    cid = repo.resolve(rev)
    commit = repo.read_commit(cid)
    adapter = repo.read_adapter(commit.adapter)
    out = {"id": cid, "commit": commit.to_dict(), "adapter": adapter_summary(commit.adapter, adapter)}
    if commit.is_mixture:  # --- mixture: its members, for show (mfgit.repo.mixture) ---
        from mfgit.repo.mixture import mixture_summary

        out["mixture"] = mixture_summary(repo, commit)
    return out
