"""Remote verbs: remote add/remove/list, push, fetch, pull, clone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfgit.errors import ConfigError, InvalidRemoteURL, MfgitError, NonFastForward, RefExists, RemoteNotFound
from mfgit.objects.model import is_object_id
from mfgit.refs import check_remote_name

if TYPE_CHECKING:
    from mfgit.api.repository import Repository
    from mfgit.remote.transport import Transport

S3_OPTION_KEYS = ("endpoint", "region", "profile")


class DivergedBranches(NonFastForward):
    """pull: the current branch and the remote branch both have commits the
    other lacks, so there is no fast-forward; they must be merged."""

    def __init__(self, branch: str, remote_branch: str, ours: str, theirs: str):
        MfgitError.__init__(self, f"cannot fast-forward {branch} to {remote_branch}: both have commits the other "
                                  f"lacks ({ours[:12]}, {theirs[:12]})")
        self.ref, self.local, self.remote = f"refs/heads/{branch}", ours, theirs
        self.branch, self.remote_branch = branch, remote_branch


def remote_add(repo: "Repository", name: str, url: str, **s3: str | None) -> None:
    from mfgit.remote.transport import parse_remote_url

    check_remote_name(name)
    if repo.config.repo.get(f"remote.{name}.url") is not None:
        raise RefExists(f"remote {name}")
    parsed = parse_remote_url(url)
    if parsed.scheme == "file":
        url = str(Path(parsed.path).absolute())
    repo.config.set(f"remote.{name}.url", url)
    for key in S3_OPTION_KEYS:
        if s3.get(key):
            repo.config.set(f"remote.{name}.{key}", str(s3[key]))


def remote_remove(repo: "Repository", name: str) -> None:
    if repo.config.repo.get(f"remote.{name}.url") is None:
        raise RemoteNotFound(name)
    repo.config.repo.remove_section(f'remote "{name}"')
    for ref in repo.refs.names(f"refs/remotes/{name}/"):
        repo.refs.update(ref, None, who=repo._who(), message=f"remote remove {name}")


def remotes(repo: "Repository") -> list[dict[str, Any]]:
    out = []
    for section in repo.config.repo.sections():
        if section.startswith('remote "'):
            name = section[len('remote "'):-1]
            entry = {"name": name, "url": repo.config.repo.get(f"remote.{name}.url")}
            for key in S3_OPTION_KEYS:
                v = repo.config.repo.get(f"remote.{name}.{key}")
                if v:
                    entry[key] = v
            out.append(entry)
    return sorted(out, key=lambda e: e["name"])


def open_remote(repo: "Repository", name_or_url: str) -> tuple[str, "Transport"]:
    """(name used for tracking refs, transport) for a configured remote or a URL."""
    from mfgit.remote.transport import open_transport

    try:
        url = repo.config.get(f"remote.{name_or_url}.url")
    except ConfigError:
        url = None  # not a remote name ("../hub", "s3://b/p"): a URL
    if url is not None:
        opts = {}
        for key, opt in (("endpoint", "endpoint_url"), ("region", "region"), ("profile", "profile")):
            v = repo.config.get(f"remote.{name_or_url}.{key}")
            if v:
                opts[opt] = v
        return name_or_url, open_transport(url, opts or None)
    if "/" in name_or_url or name_or_url.startswith(("s3:", "file:", ".")):
        return "_url", open_transport(name_or_url, None)
    raise RemoteNotFound(name_or_url)


def open_remote_name(repo: "Repository", name_or_url: str) -> str:
    """The name open_remote uses for tracking refs: the remote's, or "_url"."""
    try:
        return name_or_url if repo.config.get(f"remote.{name_or_url}.url") is not None else "_url"
    except ConfigError:
        return "_url"


def push(repo: "Repository", remote: str, refspecs: list[str] | None = None, *, force: bool = False,
         progress=None) -> dict[str, Any]:
    from mfgit.remote.sync import push as _push

    name, transport = open_remote(repo, remote)
    try:
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
            from mfgit.api.audit import check_push  # protected branches: refuse commits failing verify --signatures

            check_push(repo, transport, name, src, dst or None)
            reports.append(_push(repo, transport, name, src, dst or None, force=force_one, progress=progress))
        total = {"objects": sum(r.objects for r in reports), "bytes": sum(r.bytes for r in reports),
                 "skipped": sum(r.skipped for r in reports), "refs": [x for r in reports for x in r.refs],
                 "seconds": round(sum(r.seconds for r in reports), 4),
                 "negotiation_seconds": round(sum(r.negotiation_seconds for r in reports), 4)}
        return total
    finally:
        transport.close()


def fetch(repo: "Repository", remote: str, *, branches: list[str] | None = None, progress=None) -> dict[str, Any]:
    from mfgit.remote.sync import fetch as _fetch

    name, transport = open_remote(repo, remote)
    try:
        return _fetch(repo, transport, name, refs=branches, progress=progress).to_dict()
    finally:
        transport.close()


def fsck_repair(repo: "Repository", remote: str, *, read_data: bool = False) -> dict[str, Any]:
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
    from mfgit.api.maintenance import fsck
    from mfgit.remote.sync import repair_objects

    _, transport = open_remote(repo, remote)  # a mistyped remote is refused even when nothing is damaged
    repaired: list[str] = []
    unavailable: set[str] = set()
    try:
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
            repo.reachable([v for v in repo.ref_tips().values() if is_object_id(v)], missing=missing)
            todo = [oid for oid in sorted(missing) if oid not in tried]
    finally:
        transport.close()
    if repaired:  # check the result again; with nothing repaired the first report stands
        report = fsck(repo, read_data=read_data)
    report["repair"] = {"remote": remote, "repaired": sorted(repaired), "unavailable": sorted(unavailable)}
    return report


def pull(repo: "Repository", remote: str, branch: str | None = None, *, progress=None) -> dict[str, Any]:
    """Fetch, then fast-forward the current branch to REMOTE/BRANCH."""
    current = repo.head_branch()
    if current is None:
        raise MfgitError("HEAD is detached; switch to a branch before pulling")
    branch = branch or current
    report = fetch(repo, remote, branches=[branch], progress=progress)
    name = open_remote_name(repo, remote)
    tracking = f"refs/remotes/{name}/{branch}"
    theirs = repo.refs.read(tracking)
    if theirs is None:
        raise RemoteNotFound(f"{remote}/{branch}")
    ours = repo.head()
    ref = f"refs/heads/{current}"
    if ours == theirs:
        report["merge"] = "already up to date"
    elif ours is None or repo.is_ancestor(ours, theirs):
        repo.refs.update(ref, theirs, ours, who=repo._who(), message=f"pull {remote} {branch}: fast-forward")
        report["merge"] = "fast-forward"
    elif repo.is_ancestor(theirs, ours):
        report["merge"] = "already ahead"
    else:
        raise DivergedBranches(current, f"{remote}/{branch}", ours, theirs)
    report["head"] = repo.head()
    return report


def clone(url: str, directory: str | os.PathLike, *, s3: dict[str, str] | None = None, progress=None,
          bare: bool = False) -> tuple["Repository", dict[str, Any]]:
    from mfgit.api.repository import Repository
    from mfgit.remote.sync import remote_head

    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        from mfgit.errors import OutputNotEmpty

        raise OutputNotEmpty(str(target))
    repo = Repository.init(target, bare=bare)
    try:
        remote_add(repo, "origin", url, **(s3 or {}))
        report = fetch(repo, "origin", progress=progress)
        _, transport = open_remote(repo, "origin")
        try:
            head = remote_head(transport)
        finally:
            transport.close()
        branch = None
        if head and head.startswith("refs/heads/") and repo.refs.read(f"refs/remotes/origin/{head[11:]}"):
            branch = head[11:]
        else:
            names = [r["name"][len("origin/"):] for r in repo.branches(remote=True)]
            branch = "main" if "main" in names else (names[0] if names else None)
        if branch:
            oid = repo.refs.read(f"refs/remotes/origin/{branch}")
            repo.refs.update(f"refs/heads/{branch}", oid, None, who=repo._who(), message=f"clone: from {url}")
            repo.refs.set_symbolic("HEAD", f"refs/heads/{branch}", who=repo._who(), message="clone")
        report["branch"] = branch
        return repo, report
    except BaseException:
        # A failed clone leaves nothing behind that looks like a repository.
        import shutil

        shutil.rmtree(target if not bare else target, ignore_errors=True)
        raise
