"""What is recorded about where an adapter came from."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

from mfgit.errors import InvalidAdapter

# Up to the LAST "@" before the path: a password may itself contain "@".
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/]*@")


def strip_credentials(url: str) -> str:
    """https://user:token@host/x → https://host/x (tokens never enter commits)."""
    return _USERINFO.sub(r"\1", url)


def code_revision(path: str | Path, *, required: bool = False) -> dict[str, Any] | None:
    """The git revision of the work tree holding `path`, read through GitPython.

    Returns None when `path` is not inside a git work tree (unless
    `required`, as for an explicit --code PATH).
    """
    start = Path(path).absolute()
    if not required and not any((d / ".git").exists() for d in [start, *start.parents]):
        return None  # not in a work tree: skip importing GitPython (it costs ~50 ms)
    import git  # GitPython
    try:
        repo = git.Repo(str(path), search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        if required:
            raise InvalidAdapter(str(path), "--code names no git work tree") from None
        return None
    try:
        try:
            sha = repo.head.commit.hexsha
        except ValueError:
            sha = None  # a repository without commits yet
        try:
            branch = None if repo.head.is_detached else repo.active_branch.name
        except TypeError:
            branch = None
        remote = None
        for r in repo.remotes:
            urls = list(r.urls)
            if urls:
                remote = strip_credentials(urls[0])
                break
        dirty = repo.is_dirty(untracked_files=True)
        return {"commit": sha, "branch": branch, "remote_url": remote, "dirty": dirty}
    finally:
        repo.close()


def parse_meta(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``key=value`` pairs; values that read as JSON numbers/booleans become them."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InvalidAdapter(item, "metadata is given as key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k:
            raise InvalidAdapter(item, "metadata key is empty")
        out[k] = _typed(v)
    return out


def _typed(v: str) -> Any:
    if re.fullmatch(r"-?\d{1,18}", v):  # an integer that fits a signed 64-bit value; longer ones stay text
        return int(v)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", v):
        f = float(v)
        if f == f and f not in (float("inf"), float("-inf")):
            return f
    if v in ("true", "false"):
        return v == "true"
    return v


def _installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Versions of installed distributions, read from their ``.dist-info`` folder names.

    The folder name is ``{normalised name}-{version}.dist-info`` (the
    wheel spec), so a directory listing of each sys.path entry answers
    without importing importlib.metadata and its e-mail parser, which
    would cost more than the rest of a re-commit. Anything not found
    this way (an egg, a renamed folder) falls back to importlib.metadata.
    """
    import sys

    want = {n.replace("-", "_").lower(): n for n in names}
    found: dict[str, str] = {}
    for entry in sys.path:
        if len(found) == len(want):
            break
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in listing:
            if not item.endswith(".dist-info"):
                continue
            dist, _, version = item[: -len(".dist-info")].partition("-")
            key = dist.replace("-", "_").replace(".", "_").lower()
            if key in want and want[key] not in found and version:
                found[want[key]] = version
    missing = [n for n in names if n not in found]
    if missing:
        from importlib import metadata

        for name in missing:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
    return found


def library_versions() -> dict[str, str]:
    from mfgit.version import __version__

    out = {"mfgit": __version__, "python": platform.python_version()}
    versions = _installed_versions(("torch", "peft", "safetensors"))
    for name in ("torch", "peft", "safetensors"):
        if name in versions:
            out[name] = versions[name]
    return out
