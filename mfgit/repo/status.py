"""status: the current branch, HEAD's adapter, and the adapter directories committed from here."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfgit.errors import MfgitError
from mfgit.formats import peft as peftfmt
from mfgit.formats.hubcard import CARD_NAME, split_card
from mfgit.repo.history import adapter_summary
from mfgit.repo.statcache import StatCache, quick_digest

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def status(repo: "BaseRepository") -> dict[str, Any]:
    head = repo.head()
    branch = repo.head_branch()
    out: dict[str, Any] = {
        "branch": branch,
        "detached": branch is None,
        "head": head,
        "bare": repo.is_bare,
        "site": repo.site(),
        "adapter": None,
        "sources": [],
    }
    head_adapter = head_card = None
    if head:
        c = repo.read_commit(head)
        head_adapter = c.adapter
        head_card = next((a["digest"] for a in c.attachments if a["name"] == CARD_NAME and not a["private"]), None)
        out["adapter"] = adapter_summary(c.adapter, repo.read_adapter(c.adapter))
        out["subject"] = c.message.splitlines()[0] if c.message else ""
    if repo.gitdir:
        cache = StatCache(repo.gitdir / "statcache.json")
        for path, entry in sorted(cache.sources().items()):
            out["sources"].append({"path": path, "adapter": entry["adapter"],
                                   "state": _source_state(cache, Path(path), entry["adapter"], head_adapter,
                                                          head_card)})
    return out


def _source_state(cache: StatCache, p: Path, cached: str, head_adapter: str | None, head_card: str | None) -> str:
    if not p.is_dir():
        return "missing"
    try:
        adir, card = split_card(peftfmt.inspect_adapter_dir(p, allow_pickle=True))  # as the commit saw it
        files = [p / peftfmt.CONFIG_NAME, adir.weights, *adir.extra_files]
        same = cache.lookup(p, files, lambda: quick_digest(files[0], adir.weights)) == cached
        # The card is the commit's attachment, not part of the adapter the cache knows: compared on its own.
        card_digest = hashlib.sha256(card.read_bytes()).hexdigest() if card is not None else None
    except (MfgitError, OSError):
        return "modified"  # no longer a readable adapter directory: not what was committed
    if not same:
        return "modified"
    if cached != head_adapter:
        return "committed elsewhere"
    return "unchanged" if card_digest == head_card else "modified"
