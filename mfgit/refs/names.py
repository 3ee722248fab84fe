"""Ref name rules: git's check-ref-format, rule by rule.

Source: git-check-ref-format(1). Names become file paths under refs/, so
these rules are also what keeps a name from escaping that directory.
"""

from __future__ import annotations

from mfgit.errors import InvalidRefName

# Where each kind of ref lives (git's layout); spelled here and nowhere else.
REFS = "refs/"  # every ref but HEAD; a symbolic ref may point only below it
HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"
NOTES_REF = "refs/notes/metrics"
SYMREF = "ref: "  # the value of a symbolic ref (HEAD) starts with this

_FORBIDDEN_CHARS = set(" ~^:?*[\\")


def check_ref_name(name: str, *, allow_onelevel: bool = False) -> str:
    """Validate a full or short ref name; return it unchanged or raise InvalidRefName."""
    def bad(reason: str):
        raise InvalidRefName(name, reason)

    if not name:
        bad("it is empty")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        bad("it is not UTF-8 (a file name with undecodable bytes)")
    if name == "@":
        bad("it is the single character '@' (rule 9)")
    if name.startswith("-"):
        bad("it starts with '-', which would read as an option")
    if name.startswith("/") or name.endswith("/"):
        bad("it starts or ends with '/' (rule 6)")
    if "//" in name:
        bad("it contains '//' (rule 6)")
    if name.endswith("."):
        bad("it ends with '.' (rule 7)")
    if ".." in name:
        bad("it contains '..' (rule 3)")
    if "@{" in name:
        bad("it contains '@{' (rule 8)")
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            bad("it contains a control character (rule 4)")
        if ch in _FORBIDDEN_CHARS:
            bad(f"it contains {ch!r} (rules 4, 5, 10)")
    for comp in name.split("/"):
        if comp.startswith("."):
            bad(f"component {comp!r} starts with '.' (rule 1)")
        if comp.endswith(".lock"):
            bad(f"component {comp!r} ends with '.lock' (rule 1)")
    if not allow_onelevel and "/" not in name:
        bad("a full ref name needs at least one '/' (rule 2)")
    return name


def check_branch_name(name: str) -> str:
    check_ref_name(name, allow_onelevel=True)
    if name == "HEAD":
        raise InvalidRefName(name, "HEAD is reserved")
    return name


def check_remote_name(name: str) -> str:
    check_ref_name(name, allow_onelevel=True)
    if "/" in name:
        raise InvalidRefName(name, "a remote name cannot contain '/'")
    return name
