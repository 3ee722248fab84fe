"""What a remote holds, and how to read its metadata.

A remote has the layout of a bare repository: ``config``, ``HEAD``,
``objects/ab/cdef…`` (object files exactly as stored locally) and
``refs/heads/…``, ``refs/tags/…`` holding commit ids. So ``mfgit init --bare
PATH`` makes a remote, and a remote folder can be opened as a repository.
Every object and ref name read from a remote is data: ids are checked, a
branch must name a commit, nothing is executed.

Only ``init --bare`` or an explicit ``push --create`` makes a remote
(`ensure_remote`): a push to a folder or prefix without a remote's
``config`` is refused, so a typo or the home directory never silently
becomes one, and ``--create`` writes into an empty place only.
"""

from __future__ import annotations

import configparser
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from mfgit.errors import KeyNotFound, NotARemote, PreconditionFailed, RemoteError, UnsupportedRepositoryFormat
from mfgit.objects.model import is_object_id
from mfgit.refs import HEADS, SYMREF
from mfgit.remote.transport import Transport
from mfgit.repo.config import FORMAT_VERSION, OBJECT_FORMAT, READABLE_VERSIONS

CHECK_WORKERS = max(2, min(8, os.cpu_count() or 2))  # threads checking and storing received objects
REMOTE_CONFIG = (
    "[core]\n"
    f"objectformat = {OBJECT_FORMAT}\n"
    f"formatversion = {FORMAT_VERSION}\n"
    "bare = true\n"
)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def object_key(oid: str) -> str:
    return f"objects/{oid[:2]}/{oid[2:]}"


@dataclass
class TransferReport:
    objects: int = 0
    bytes: int = 0
    skipped: int = 0
    refs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    negotiation_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "bytes": self.bytes, "skipped": self.skipped, "refs": self.refs,
                "seconds": round(self.seconds, 4), "negotiation_seconds": round(self.negotiation_seconds, 4)}


def check_remote_format(transport: Transport, *, create: bool) -> bool:
    """Refuse a remote whose format we do not know; create it if asked. True if it exists."""
    try:
        data = transport.get("config")
    except KeyNotFound:
        if not create:
            return False
        try:
            transport.put_if("config", REMOTE_CONFIG.encode(), None)
            transport.put_if("HEAD", f"{SYMREF}{HEADS}main\n".encode(), None)
        except PreconditionFailed:
            pass  # someone else created it at the same time
        return True
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        cp.read_string(data.decode("utf-8"))
        fmt, ver = cp.get("core", "objectformat"), cp.get("core", "formatversion")
    except (configparser.Error, UnicodeDecodeError):
        raise RemoteError(transport.url, "its config is unreadable; is this an mfgit remote?") from None
    if fmt != OBJECT_FORMAT or ver not in READABLE_VERSIONS:
        raise UnsupportedRepositoryFormat(transport.url, fmt, ver)
    return True


def upgrade_remote_format(transport: Transport) -> None:
    """Before the first object file of this version is written to a remote of an older format version, say so
    in its config (compare-and-swap), so that an mfgit that cannot read those files refuses the remote."""
    current = transport.get_versioned("config")
    if current is None:
        return
    text = current[0].decode("utf-8", "replace")
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.read_string(text)
    if cp.get("core", "formatversion", fallback=FORMAT_VERSION) == FORMAT_VERSION:
        return
    upgraded = re.sub(r"(?m)^(\s*formatversion\s*=\s*).*$", rf"\g<1>{FORMAT_VERSION}", text)
    try:
        transport.put_if("config", upgraded.encode(), current[1])
    except PreconditionFailed:
        pass  # another writer changed it meanwhile: it is checked again on the next push


def ensure_remote(transport: Transport, *, create: bool = False, writing: bool = False) -> bool:
    """Refuse a place that is not an mfgit remote; with `create`, make an empty one a remote.

    Returns True when the remote was created now (it holds nothing yet).
    A place that holds anything but a remote is never written to, `create`
    or not: it may be someone's files. `writing`: objects will be sent, so a
    remote of an older format version is upgraded first."""
    if check_remote_format(transport, create=False):
        if writing:
            upgrade_remote_format(transport)
        return False
    if not create:
        raise NotARemote(transport.url, empty=transport.is_empty(), place=transport.place)
    if not transport.is_empty():
        raise NotARemote(transport.url, empty=False, place=transport.place)
    check_remote_format(transport, create=True)
    return True


def remote_refs(transport: Transport) -> dict[str, str]:
    """refs/heads/* and refs/tags/* of the remote → commit (or tag) ids."""
    out: dict[str, str] = {}
    keys = [k for k in transport.list("refs/") if not k.endswith(".lock") and "/.tmp-" not in k]
    values: dict[str, bytes] = {}

    def one(key: str) -> tuple[str, bytes | None]:
        # Each on its own: a ref deleted between list and get is simply gone.
        try:
            return key, transport.get(key)
        except KeyNotFound:
            return key, None

    if len(keys) > 1:
        with ThreadPoolExecutor(max_workers=min(16, len(keys))) as pool:
            got = list(pool.map(one, keys))
    else:
        got = [one(k) for k in keys]
    values = {k: v for k, v in got if v is not None}
    for key in keys:
        value = values.get(key, b"").decode("utf-8", "replace").strip()
        if is_object_id(value):
            out[key] = value
    return out


def remote_head(transport: Transport) -> str | None:
    try:
        value = transport.get("HEAD").decode("utf-8").strip()
    except KeyNotFound:
        return None
    if value.startswith("ref: "):
        return value[5:]
    return None
