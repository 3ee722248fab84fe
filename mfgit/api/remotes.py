"""Remote verbs: remote add/remove/list, push, fetch, pull, clone, notes transfer, repair from a remote."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mfgit.audit.verify import check_push as check_push_policy
from mfgit.errors import DivergedBranches, InvalidRemoteURL, KeyNotFound, MfgitError, OutputNotEmpty, RefExists
from mfgit.errors import RemoteNotFound
from mfgit.refs import HEADS, REMOTES, check_remote_name
from mfgit.remote.fetch import fetch as fetch_objects
from mfgit.remote.fetch import repair_objects
from mfgit.remote.notes import fetch_notes as fetch_notes_from
from mfgit.remote.notes import push_notes as push_notes_to
from mfgit.remote.protocol import remote_head
from mfgit.remote.push import push as push_ref
from mfgit.remote.registry import S3_CONFIG_KEYS, TIME_LIMIT_KEYS, open_remote, seconds, tracking_name
from mfgit.remote.transport import Transport
from mfgit.remote.url import check_endpoint_url, parse_remote_url, redact_url
from mfgit.repo.base import BaseRepository
from mfgit.repo.branches import branches
from mfgit.repo.fsck import fsck
from mfgit.repo.history import is_ancestor
from mfgit.repo.reachability import reachable, tip_ids



def absolute_url(url: str, base: str | os.PathLike) -> str:
    """`url` checked (http://, ssh://, user@host:, bad buckets... are refused); a path made absolute from `base`."""
    parsed = parse_remote_url(url, base=str(Path(base).absolute()))
    return str(parsed.path) if parsed.scheme == "file" else url


def check_remote_setting(key: str, value: str | None) -> None:
    """Refuse a remote setting that must never be stored: a URL or endpoint with credentials, a bad time limit.

    ``remote.NAME.url`` and ``remote.NAME.endpoint`` are stored in config and
    printed by ``remote -v``; their checks redact what they show."""
    parts = key.split(".")
    if value is None or len(parts) < 3 or parts[0].lower() != "remote":
        return
    last = parts[-1].lower()
    if last == "url":
        parse_remote_url(value)
    elif last == "endpoint":
        check_endpoint_url(value)
    elif last in (k.lower() for k in TIME_LIMIT_KEYS):
        seconds(key, value)


def remote_add(repo: BaseRepository, name: str, url: str, **s3: str | None) -> None:
    """Add remote `name` at `url`; `s3` options: endpoint, region, profile, timeout, connectTimeout.

    Everything is checked before anything is stored."""
    check_remote_name(name)
    if repo.config.repo.get(f"remote.{name}.url") is not None:
        raise RefExists(f"remote {name}")
    parsed = parse_remote_url(url)
    if parsed.scheme == "file":
        url = str(Path(parsed.path).absolute())
    settings = {key: str(s3[key]) for key in S3_CONFIG_KEYS if s3.get(key)}
    for key, value in settings.items():
        check_remote_setting(f"remote.{name}.{key}", value)
    repo.config.set(f"remote.{name}.url", url)
    for key, value in settings.items():
        repo.config.set(f"remote.{name}.{key}", value)


def remote_remove(repo: BaseRepository, name: str) -> None:
    if repo.config.repo.get(f"remote.{name}.url") is None:
        raise RemoteNotFound(name)
    repo.config.repo.remove_section(f'remote "{name}"')
    for ref in repo.refs.names(f"{REMOTES}{name}/"):
        repo.refs.update(ref, None, who=repo.who(), message=f"remote remove {name}")


def _shown(key: str, value: str) -> str:
    """A stored setting as it may be shown: redacted if it breaks the rules (a config edited by hand)."""
    try:
        check_remote_setting(key, value)
    except MfgitError:
        return redact_url(value)
    return value


def remotes(repo: BaseRepository) -> list[dict[str, Any]]:
    out = []
    for name in repo.config.subsections("remote"):
        url = repo.config.repo.get(f"remote.{name}.url")
        entry = {"name": name, "url": _shown(f"remote.{name}.url", url) if url else url}
        for key in S3_CONFIG_KEYS:
            v = repo.config.repo.get(f"remote.{name}.{key}")
            if v:
                entry[key] = _shown(f"remote.{name}.{key}", v)
        out.append(entry)
    return out


def _check_push(repo: BaseRepository, transport: Transport, remote_name: str, src: str, dst: str | None) -> None:
    """Refuse a push whose new commits would fail `verify --signatures` on the remote (see check_push)."""
    local = repo.resolve(src)
    published = None
    if dst is None:
        dst = src[len(HEADS):] if src.startswith(HEADS) else src
        published = src  # the destination is named after the source: the source's branch is published too
    dst_ref = dst if dst.startswith("refs/") else HEADS + dst
    try:
        current = transport.get_versioned(dst_ref)
    except KeyNotFound:
        current = None
    remote_value = current[0].decode("utf-8", "replace").strip() if current is not None else None
    try:
        policy_text = transport.get("allowed_signers").decode("utf-8")
    except KeyNotFound:
        policy_text = None
    check_push_policy(repo, local, dst_ref, remote_value=remote_value, remote_policy_text=policy_text,
                      remote_name=remote_name, src_rev=published or (None if dst_ref.startswith(HEADS) else src))


def push(repo: BaseRepository, remote: str, refspecs: list[str] | None = None, *, force: bool = False,
         progress=None, create: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """Upload missing objects, then move the remote branches by compare-and-swap.

    A place that is not an mfgit remote is refused; `create` makes an empty
    one a remote (``push --create``). `timeout`: seconds one operation on an
    S3 remote may take (default remote.NAME.timeout)."""
    with open_remote(repo, remote, timeout=timeout) as (name, transport):
        specs = refspecs or [repo.head_branch() or "HEAD"]
        reports = []
        for spec in specs:
            force_one = force or spec.startswith("+")
            spec = spec.lstrip("+")
            src, _, dst = spec.partition(":")
            if src == "HEAD" and not dst:
                branch = repo.head_branch()
                if branch is None:
                    raise InvalidRemoteURL(spec, "HEAD is detached; name the destination: push REMOTE HEAD:BRANCH")
                dst = branch
            _check_push(repo, transport, name, src, dst or None)
            reports.append(push_ref(repo, transport, name, src, dst or None, force=force_one, progress=progress,
                                    create=create))
        return {"objects": sum(r.objects for r in reports), "bytes": sum(r.bytes for r in reports),
                "skipped": sum(r.skipped for r in reports), "refs": [x for r in reports for x in r.refs],
                "seconds": round(sum(r.seconds for r in reports), 4),
                "negotiation_seconds": round(sum(r.negotiation_seconds for r in reports), 4)}


def fetch(repo: BaseRepository, remote: str, *, branches: list[str] | None = None, progress=None,
          timeout: float | None = None) -> dict[str, Any]:
    """Download what the remote has and we lack; update refs/remotes/<remote>/*."""
    with open_remote(repo, remote, timeout=timeout) as (name, transport):
        return fetch_objects(repo, transport, name, refs=branches, progress=progress).to_dict()


def push_notes(repo: BaseRepository, remote: str, *, create: bool = False,
               timeout: float | None = None) -> dict[str, Any]:
    """Union our notes with the remote's and move its refs/notes/metrics by compare-and-swap."""
    with open_remote(repo, remote, timeout=timeout) as (name, transport):
        return push_notes_to(repo, transport, name, create=create)


def fetch_notes(repo: BaseRepository, remote: str, *, timeout: float | None = None) -> dict[str, Any]:
    """Download the remote's notes and union them into ours."""
    with open_remote(repo, remote, timeout=timeout) as (name, transport):
        return fetch_notes_from(repo, transport, name)


def fsck_repair(repo: BaseRepository, remote: str, *, read_data: bool = False) -> dict[str, Any]:
    """fsck, then fetch sound copies of every missing or corrupt object from `remote`.

    fetch never does this on its own: it asks only for commits it lacks,
    and skips objects already present, damaged or not. Here each object
    fsck names is downloaded, checked in full and stored (a damaged copy is
    replaced); repaired adapters and commits can reveal objects missing
    below them, so the walk is repeated until nothing new is missing. The
    report describes the repository after the repair (fsck runs again when
    anything was repaired), with a ``repair`` entry:
    the remote, the ids repaired and those the remote could not supply.
    """
    repaired: list[str] = []
    unavailable: set[str] = set()
    with open_remote(repo, remote) as (_, transport):  # a mistyped remote is refused even when nothing is damaged
        report = fsck(repo, read_data=read_data)
        todo = [c["id"] for c in report["corrupt"]] + [m["id"] for m in report["missing"]]
        tried: set[str] = set()
        while todo:
            tried.update(todo)
            got, lacking = repair_objects(repo, transport, todo)
            repaired.extend(got)
            unavailable.update(lacking)
            if not got:
                break
            missing: dict[str, str] = {}
            reachable(repo, tip_ids(repo), missing=missing)
            todo = [oid for oid in sorted(missing) if oid not in tried]
    if repaired:  # check the result again; with nothing repaired the first report stands
        report = fsck(repo, read_data=read_data)
    report["repair"] = {"remote": remote, "repaired": sorted(repaired), "unavailable": sorted(unavailable)}
    return report


def pull(repo: BaseRepository, remote: str, branch: str | None = None, *, progress=None,
         timeout: float | None = None) -> dict[str, Any]:
    """Fetch, then fast-forward the current branch to REMOTE/BRANCH."""
    current = repo.head_branch()
    if current is None:
        raise MfgitError("HEAD is detached; switch to a branch before pulling")
    branch = branch or current
    report = fetch(repo, remote, branches=[branch], progress=progress, timeout=timeout)
    theirs = repo.refs.read(f"{REMOTES}{tracking_name(repo, remote)}/{branch}")
    if theirs is None:
        raise RemoteNotFound(f"{remote}/{branch}")
    ours = repo.head()
    if ours == theirs:
        report["merge"] = "already up to date"
    elif ours is None or is_ancestor(repo, ours, theirs):
        repo.refs.update(HEADS + current, theirs, ours, who=repo.who(), message=f"pull {remote} {branch}: fast-forward")
        report["merge"] = "fast-forward"
    elif is_ancestor(repo, theirs, ours):
        report["merge"] = "already ahead"
    else:
        raise DivergedBranches(current, f"{remote}/{branch}", ours, theirs)
    report["head"] = repo.head()
    return report


def clone(url: str, directory: str | os.PathLike, *, s3: dict[str, str] | None = None, progress=None,
          bare: bool = False, timeout: float | None = None) -> tuple[BaseRepository, dict[str, Any]]:
    """A new repository at `directory` with the remote's branches as origin/*, and the fetch report."""
    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise OutputNotEmpty(str(target))
    parse_remote_url(url)  # a URL with credentials is refused before anything is made
    for key, value in (s3 or {}).items():
        check_remote_setting(f"remote.origin.{key}", value)
    repo = BaseRepository.init(target, bare=bare)
    try:
        remote_add(repo, "origin", url, **(s3 or {}))
        report = fetch(repo, "origin", progress=progress, timeout=timeout)
        with open_remote(repo, "origin", timeout=timeout) as (_, transport):
            head = remote_head(transport)
        if head and head.startswith(HEADS) and repo.refs.read(f"{REMOTES}origin/{head[len(HEADS):]}"):
            branch = head[len(HEADS):]
        else:
            names = [r["name"][len("origin/"):] for r in branches(repo, remote=True)]
            branch = "main" if "main" in names else (names[0] if names else None)
        if branch:
            oid = repo.refs.read(f"{REMOTES}origin/{branch}")
            repo.refs.update(HEADS + branch, oid, None, who=repo.who(), message=f"clone: from {url}")
            repo.refs.set_symbolic("HEAD", HEADS + branch, who=repo.who(), message="clone")
        report["branch"] = branch
        return repo, report
    except BaseException:
        # A failed clone leaves nothing behind that looks like a repository.
        shutil.rmtree(target, ignore_errors=True)
        raise
