"""Names → commit ids: lock files, compare-and-swap, reflog, name rules."""

from mfgit.refs.names import (
    HEADS,
    NOTES_REF,
    REFS,
    REMOTES,
    SYMREF,
    TAGS,
    check_branch_name,
    check_ref_name,
    check_remote_name,
)
from mfgit.refs.disk import DiskRefs
from mfgit.refs.refstore import ANY, MemoryRefs, RefStore, ReflogBadLine, ReflogEntry, ReflogItem

__all__ = [
    "ANY",
    "HEADS",
    "NOTES_REF",
    "REFS",
    "REMOTES",
    "SYMREF",
    "TAGS",
    "DiskRefs",
    "MemoryRefs",
    "RefStore",
    "ReflogBadLine",
    "ReflogEntry",
    "ReflogItem",
    "check_ref_name",
    "check_branch_name",
    "check_remote_name",
]
