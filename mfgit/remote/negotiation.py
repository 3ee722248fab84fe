"""Negotiation: which objects a push must send, walking only what is new to the remote.

The walk stops at commits the remote is known to have (the current values
of its refs, each at a complete commit: objects before refs), so its cost
follows the size of the change, not the length of the history.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from mfgit.errors import ObjectNotFound
from mfgit.remote.protocol import object_key
from mfgit.remote.transport import Transport

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def _commit_objects(repo: "BaseRepository", cid: str) -> tuple[list[str], list[str]]:
    """(parents, objects of this commit: the commit, its adapter, tensors and blobs, public attachments)."""
    commit = repo.read_commit(cid)
    adapter = repo.read_adapter(commit.adapter)
    return list(commit.parents), [cid, commit.adapter, *adapter.referenced_ids(), *commit.attachment_ids()]


@dataclass
class PushPlan:
    """What a push may have to send, in dependency classes."""

    leaves: list[str]  # tensors and blobs (the adapters' files and the commits' public attachments)
    adapters: list[str]
    commits: dict[str, list[str]]  # new commit -> its parents
    known_remote: set[str]  # objects of boundary commits: on the remote already

    @property
    def order(self) -> list[str]:
        return [*self.leaves, *self.adapters, *topo_order(self.commits)]


def topo_order(parents: dict[str, list[str]]) -> list[str]:
    """The commits of `parents` (commit -> parent ids), every parent that is
    itself a key before its children. Iterative: histories are deep."""
    return [c for wave in commit_waves(parents) for c in wave]


def commit_waves(parents: dict[str, list[str]]) -> list[list[str]]:
    """Group commits so that each comes in a later wave than its parents
    among them (wave 0: no parent among them)."""
    level: dict[str, int] = {}
    for start in parents:
        if start in level:
            continue
        stack = [start]
        while stack:
            c = stack[-1]
            if c in level:
                stack.pop()
                continue
            todo = [p for p in parents[c] if p in parents and p not in level]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            level[c] = 1 + max((level[p] for p in parents[c] if p in parents), default=-1)
    waves: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for c in parents:  # keeps the callers' order within a wave
        waves[level[c]].append(c)
    return waves


def plan_push(repo: "BaseRepository", tips: Iterable[str], remote_has: set[str]) -> PushPlan:
    """The objects of the commits reachable from `tips` but not from `remote_has`.

    The walk stops at commits the remote is known to have; the adapters of
    those boundary commits tell which tensors need no existence check.
    """
    known_remote: set[str] = set()
    seen: set[str] = set()
    stack = list(tips)
    new_commits: dict[str, list[str]] = {}
    adapters: list[str] = []
    leaves: list[str] = []
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        if cid in remote_has:
            try:
                _, objs = _commit_objects(repo, cid)
                known_remote.update(objs)
            except ObjectNotFound:
                pass
            continue
        commit = repo.read_commit(cid)
        adapter = repo.read_adapter(commit.adapter)
        new_commits[cid] = list(commit.parents)
        adapters.append(commit.adapter)
        leaves.extend(adapter.referenced_ids())
        # --- attachments: public ones travel as blobs; private ones are no object and never do ---
        leaves.extend(commit.attachment_ids())
        # --- end attachments ---
        stack.extend(commit.parents)

    def fresh(ids: list[str]) -> list[str]:
        return [o for o in dict.fromkeys(ids) if o not in known_remote]

    return PushPlan(fresh(leaves), fresh(adapters),
                    {c: p for c, p in new_commits.items() if c not in known_remote}, known_remote)


def missing_on_remote(transport: Transport, candidates: list[str]) -> list[str]:
    if not candidates:
        return []
    if len(candidates) == 1:
        return [] if transport.exists(object_key(candidates[0])) else list(candidates)
    with ThreadPoolExecutor(max_workers=min(16, len(candidates))) as pool:
        present = list(pool.map(lambda o: transport.exists(object_key(o)), candidates))
    return [o for o, p in zip(candidates, present) if not p]
