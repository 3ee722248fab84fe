"""Names → commit ids: lock files, compare-and-swap, reflog, name rules."""

from mfgit.refs.names import check_ref_name, check_branch_name, check_remote_name
from mfgit.refs.refstore import ANY, DiskRefs, MemoryRefs, RefStore, ReflogEntry

__all__ = [
    "ANY",
    "DiskRefs",
    "MemoryRefs",
    "RefStore",
    "ReflogEntry",
    "check_ref_name",
    "check_branch_name",
    "check_remote_name",
]
