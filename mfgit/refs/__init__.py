"""Names → commit ids: lock files, compare-and-swap, reflog, name rules."""

from mfgit.refs.names import (
    HEADS,
    NOTES_REF,
    REMOTES,
    SYMREF,
    TAGS,
    check_branch_name,
    check_ref_name,
    check_remote_name,
)
from mfgit.refs.refstore import ANY, DiskRefs, MemoryRefs, RefStore, ReflogEntry

__all__ = [
    "ANY",
    "HEADS",
    "NOTES_REF",
    "REMOTES",
    "SYMREF",
    "TAGS",
    "DiskRefs",
    "MemoryRefs",
    "RefStore",
    "ReflogEntry",
    "check_ref_name",
    "check_branch_name",
    "check_remote_name",
]
