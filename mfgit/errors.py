"""Typed errors of mfgit.

Every failure a user can cause is one of these. Each carries the data that
describes it (ids, paths, names) so that callers can act on it; the CLI maps
each type to a one-line message with the fix and an exit code in a single
table (`mfgit.cli.errors`). Nothing here formats for a terminal.
"""

from __future__ import annotations


class MfgitError(Exception):
    """Base of every error mfgit raises on purpose."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message or self.__class__.__name__


# --- repository ------------------------------------------------------------


class NotARepository(MfgitError):
    def __init__(self, path: str):
        super().__init__(f"not an mfgit repository (or any parent): {path}")
        self.path = path


class RepositoryExists(MfgitError):
    def __init__(self, path: str):
        super().__init__(f"an mfgit repository already exists at {path}")
        self.path = path


class UnsupportedRepositoryFormat(MfgitError):
    def __init__(self, path: str, object_format: str, version: str):
        super().__init__(
            f"repository {path} uses object format {object_format!r} version {version!r}, "
            "which this mfgit does not understand"
        )
        self.path = path
        self.object_format = object_format
        self.version = version


class ConfigError(MfgitError):
    def __init__(self, key: str, reason: str):
        super().__init__(f"config {key}: {reason}")
        self.key = key
        self.reason = reason


# --- objects and store -----------------------------------------------------


class ObjectNotFound(MfgitError):
    def __init__(self, oid: str):
        super().__init__(f"object {oid} is missing")
        self.oid = oid


class CorruptObject(MfgitError):
    """Stored bytes do not match their digest (invariant 2)."""

    def __init__(self, oid: str, expected: str, actual: str, algorithm: str = "sha256", detail: str = ""):
        super().__init__(
            f"object {oid} is corrupt: expected {algorithm} {expected}, got {actual}"
            + (f" ({detail})" if detail else "")
        )
        self.oid = oid
        self.expected = expected
        self.actual = actual
        self.algorithm = algorithm
        self.detail = detail


class MalformedObject(MfgitError):
    """An object decodes but is not a valid object of its kind."""

    def __init__(self, oid: str, reason: str):
        super().__init__(f"object {oid} is malformed: {reason}")
        self.oid = oid
        self.reason = reason


class WrongObjectType(MfgitError):
    def __init__(self, oid: str, expected: str, actual: str):
        super().__init__(f"object {oid} is a {actual}, not a {expected}")
        self.oid = oid
        self.expected = expected
        self.actual = actual


# --- refs and revisions ----------------------------------------------------


class InvalidRefName(MfgitError):
    def __init__(self, name: str, reason: str):
        super().__init__(f"{name!r} is not a valid ref name: {reason}")
        self.name = name
        self.reason = reason


class RefNotFound(MfgitError):
    def __init__(self, name: str):
        super().__init__(f"ref {name} does not exist")
        self.name = name


class RefExists(MfgitError):
    def __init__(self, name: str):
        super().__init__(f"ref {name} already exists")
        self.name = name


class RefConflict(MfgitError):
    """Compare-and-swap failed: the ref moved under us (invariant 3)."""

    def __init__(self, name: str, actual: str | None, expected: str | None):
        super().__init__(f"ref {name} is at {actual or '(nothing)'} but expected {expected or '(nothing)'}")
        self.name = name
        self.actual = actual
        self.expected = expected


class LockHeld(MfgitError):
    def __init__(self, path: str):
        super().__init__(f"unable to lock {path}: file exists")
        self.path = path


class UnknownRevision(MfgitError):
    def __init__(self, rev: str, reason: str = ""):
        super().__init__(f"unknown revision {rev!r}" + (f": {reason}" if reason else ""))
        self.rev = rev
        self.reason = reason


class AmbiguousRevision(MfgitError):
    def __init__(self, rev: str, candidates: list[str]):
        super().__init__(f"short id {rev!r} is ambiguous: {', '.join(sorted(candidates)[:5])}")
        self.rev = rev
        self.candidates = candidates


class EmptyBranch(MfgitError):
    def __init__(self, branch: str):
        super().__init__(f"branch {branch} has no commits yet")
        self.branch = branch


class BranchInUse(MfgitError):
    def __init__(self, branch: str):
        super().__init__(f"cannot delete branch {branch}: it is checked out")
        self.branch = branch


class NotFullyMerged(MfgitError):
    def __init__(self, branch: str):
        super().__init__(f"branch {branch} is not fully merged")
        self.branch = branch


# --- adapters and files ----------------------------------------------------


class InvalidAdapter(MfgitError):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class PickleRefused(MfgitError):
    def __init__(self, path: str):
        super().__init__(f"{path} is a pickle checkpoint, which can run code when loaded")
        self.path = path


class SafetensorsError(MfgitError):
    """A safetensors file breaks one rule of the format. `rule` names it."""

    def __init__(self, path: str, rule: str, detail: str):
        super().__init__(f"{path}: invalid safetensors file ({rule}): {detail}")
        self.path = path
        self.rule = rule
        self.detail = detail


class OutputNotEmpty(MfgitError):
    def __init__(self, path: str):
        super().__init__(f"{path} exists and is not empty")
        self.path = path


class UnsafePath(MfgitError):
    def __init__(self, path: str, reason: str):
        super().__init__(f"refusing to write {path!r}: {reason}")
        self.path = path
        self.reason = reason


class OutputInTheWay(MfgitError):
    """checkout --force would replace something that is not a regular file (a directory, a symbolic link)."""

    def __init__(self, path: str, what: str):
        super().__init__(f"refusing to replace {path}: it is {what}; nothing was written")
        self.path = path
        self.what = what


class NothingToCommit(MfgitError):
    def __init__(self, adapter_id: str):
        super().__init__(f"nothing to commit: the adapter is unchanged since HEAD ({adapter_id[:12]})")
        self.adapter_id = adapter_id


# --- merge -----------------------------------------------------------------


class MergeError(MfgitError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class IncompatibleAdapters(MergeError):
    def __init__(self, what: str, left: str, right: str, detail: str):
        super().__init__(f"cannot merge {left} and {right}: {what} differs ({detail})")
        self.what = what
        self.left = left
        self.right = right
        self.detail = detail


class UnsupportedAdapterVariant(MergeError):
    def __init__(self, rev: str, variant: str):
        super().__init__(f"{rev} uses {variant}, which this merge cannot combine correctly")
        self.rev = rev
        self.variant = variant


# --- remotes ---------------------------------------------------------------


class RemoteError(MfgitError):
    def __init__(self, remote: str, reason: str):
        super().__init__(f"remote {remote}: {reason}")
        self.remote = remote
        self.reason = reason


class RemoteUnreachable(RemoteError):
    pass


class RemoteAuthError(RemoteError):
    pass


class RemoteNotFound(MfgitError):
    def __init__(self, name: str):
        super().__init__(f"no such remote: {name}")
        self.name = name


class InvalidRemoteURL(MfgitError):
    def __init__(self, url: str, reason: str):
        super().__init__(f"invalid remote URL {url!r}: {reason}")
        self.url = url
        self.reason = reason


class NonFastForward(MfgitError):
    def __init__(self, ref: str, local: str, remote: str):
        super().__init__(f"rejected {ref}: the remote has commits you do not have ({remote[:12]})")
        self.ref = ref
        self.local = local
        self.remote = remote


class DivergedBranches(NonFastForward):
    """pull: the current branch and the remote branch both have commits the
    other lacks, so there is no fast-forward; they must be merged."""

    def __init__(self, branch: str, remote_branch: str, ours: str, theirs: str):
        MfgitError.__init__(self, f"cannot fast-forward {branch} to {remote_branch}: both have commits the other "
                                  f"lacks ({ours[:12]}, {theirs[:12]})")
        self.ref, self.local, self.remote = f"refs/heads/{branch}", ours, theirs
        self.branch, self.remote_branch = branch, remote_branch


class KeyNotFound(RemoteError):
    """A remote does not have a key that was asked for.

    A `RemoteError` (an mfgit error): code that expects the key may be absent
    catches it; where it escapes, the CLI reports it as a remote error."""

    def __init__(self, key: str, remote: str = ""):
        super().__init__(remote, f"{key} does not exist")
        if not remote:
            self.message = f"{key} does not exist on the remote"
            self.args = (self.message,)
        self.key = key


class InvalidKey(RemoteError):
    """A key that would leave the remote's root or is otherwise not allowed.

    Keys can come from a remote's content (ref names in a listing), so this
    is an mfgit error, not a programming error."""

    def __init__(self, key: str, reason: str, remote: str = ""):
        super().__init__(remote, f"refusing key {key!r}: {reason}")
        if not remote:
            self.message = f"refusing remote key {key!r}: {reason}"
            self.args = (self.message,)
        self.key = key


# --- signatures ------------------------------------------------------------


class SignatureError(MfgitError):
    def __init__(self, oid: str, reason: str):
        super().__init__(f"commit {oid[:12]}: {reason}")
        self.oid = oid
        self.reason = reason


# --- remote transports (added with mfgit.remote.transport) -----------------


class PreconditionFailed(MfgitError):
    """A conditional write (compare-and-swap) on a remote key lost: the key
    was not at the `expected` version (None: the key was expected absent).

    A normal outcome of concurrent pushes, not a fault of the remote; callers
    turn it into RefConflict / NonFastForward."""

    def __init__(self, key: str, expected: str | None, remote: str = ""):
        where = f"remote {remote}: " if remote else ""
        want = f"version {expected}" if expected is not None else "absent"
        super().__init__(f"{where}{key} changed concurrently (expected it {want})")
        self.key = key
        self.expected = expected
        self.remote = remote


# --- signing keys (added with mfgit.audit) ---------------------------------


class DemoError(MfgitError):
    """`mfgit demo` cannot run as asked (a bad option, a work directory in use)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SigningKeyError(MfgitError):
    """A signing key or public key cannot be used (missing, wrong type, unreadable)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"signing key {path}: {reason}")
        self.path = path
        self.reason = reason


# --- coefficient search and site evaluations (added with mfgit.api.search / notes) ---


class ScoreError(MfgitError):
    """The user's score function (or its base model / data loader) cannot be used or failed."""

    def __init__(self, spec: str, reason: str):
        super().__init__(f"score function {spec}: {reason}")
        self.spec = spec
        self.reason = reason


# --- trusted notes at selection (added with mfgit.audit.notes trust) ---------


class NoNotesPolicy(MfgitError):
    """Selection by notes without an allowed-signers policy: no key may speak for a site, so no note counts."""

    def __init__(self, path: str):
        super().__init__(f"no note can be trusted to choose a candidate: this repository has no allowed-signers "
                         f"policy ({path})")
        self.path = path


class ConflictingEvaluations(MfgitError):
    """Trusted notes of one evaluation name come from more than one site: whose score it is is not decided."""

    def __init__(self, name: str, sites: list[str], notes: list[str]):
        super().__init__(f"trusted notes named {name} come from {len(sites)} sites ({', '.join(sites)}); "
                         f"a name must be one site's evaluation")
        self.name = name
        self.sites = sites
        self.notes = notes


# --- objects checked before they are written (added with mfgit.objects.schema) ---


class InvalidObject(MfgitError):
    """An object about to be written breaks the object schema (mfgit.objects.schema):
    written, it could never be read back. `kind` is the object's kind, `reason` the rule."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"cannot write this {kind}: {reason}")
        self.kind = kind
        self.reason = reason


# --- remotes: creation, endpoints, time limits ---------------------------------------------


class NotARemote(MfgitError):
    """A push, fetch or clone names a folder or S3 prefix that holds no mfgit remote.

    `empty` tells whether it holds nothing at all (then ``push --create`` may
    make it a remote); a place that holds anything else is never made one."""

    def __init__(self, remote: str, *, empty: bool, place: str = "folder"):
        super().__init__(f"remote {remote}: is not an mfgit remote (" +
                         (f"the {place} is empty)" if empty else f"the {place} has no mfgit config but is not empty)"))
        self.remote = remote
        self.empty = empty
        self.place = place  # "folder" or "S3 prefix"


class InvalidEndpoint(MfgitError):
    """An S3 endpoint URL that cannot be used, or that holds credentials (it is shown redacted)."""

    def __init__(self, endpoint: str, reason: str):
        super().__init__(f"invalid S3 endpoint {endpoint!r}: {reason}")
        self.endpoint = endpoint
        self.reason = reason


# --- damaged refs, reflogs and config files (added with mfgit.refs hardening) ---


class BadRef(MfgitError):
    """A ref (or HEAD) that does not hold a usable value.

    Its file is not UTF-8 text, is empty, is not a regular file, holds
    neither an object id nor ``ref: refs/…``, is part of a loop of symbolic
    refs, or names an object that is missing or is not a commit. `path` is
    the file ("" for refs kept in memory)."""

    def __init__(self, name: str, reason: str, path: str = ""):
        where = f" ({path})" if path and path != name else ""
        super().__init__(f"ref {name}{where} is damaged: {reason}")
        self.name = name
        self.reason = reason
        self.path = path


class BadReflog(MfgitError):
    """A complete line of a reflog file that is not a reflog entry (bad bytes, bad JSON, bad fields)."""

    def __init__(self, name: str, path: str, line: int, reason: str):
        super().__init__(f"reflog of {name} ({path}) is damaged at line {line}: {reason}")
        self.name = name
        self.path = path
        self.line = line
        self.reason = reason


class DamagedReflogEntry(MfgitError):
    """A reflog entry names, or leads to, an object that is missing or unreadable,
    and no ref reaches that object: what it names is unknown, so gc keeps everything."""

    def __init__(self, name: str, entry: str, oid: str, damaged: list[str]):
        super().__init__(f"reflog entry {entry} ({oid[:12]}) reaches {len(damaged)} missing or unreadable "
                         f"object(s), first {damaged[0]}")
        self.name = name
        self.entry = entry
        self.oid = oid
        self.damaged = damaged


class BadConfigFile(MfgitError):
    """A config file that cannot be read as text (bad bytes) or parsed as INI."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"config file {path} cannot be read: {reason}")
        self.path = path
        self.reason = reason


# --- writers and gc (added with the store's writer lock) -------------------


class RepositoryBusy(MfgitError):
    """The store's writer lock could not be taken in time: gc waits for writers, writers for gc.

    `holders` are the ids of the processes holding the lock, where the
    system says (Linux /proc/locks); empty when it does not.
    """

    def __init__(self, path: str, waiting_for: str, seconds: float, holders: tuple[int, ...] = ()):
        who = f" (process {', '.join(map(str, holders))})" if holders else ""
        super().__init__(f"{waiting_for}{who}; waited {seconds:g} s for {path}")
        self.path = path
        self.waiting_for = waiting_for
        self.seconds = seconds
        self.holders = holders


# --- Hugging Face Hub ids --------------------------------------------------------------------


class InvalidHubId(MfgitError):
    """A name given as a Hugging Face Hub model id that is not one (a path, a URL, bad characters)."""

    def __init__(self, name: str):
        super().__init__(f"{name!r} is not a Hub model id")
        self.name = name


# --- raw LoRA state dicts --------------------------------------------------------------------


class LoraConfigNeeded(MfgitError):
    """A raw LoRA state dict (a .pt or .safetensors file) given without the config it does not record."""

    def __init__(self, path: str):
        super().__init__(f"{path} is a raw LoRA state dict without adapter_config.json")
        self.path = path


class BadLoraConfig(MfgitError):
    """The LoRA config given for a raw state dict (``--lora``, ``--lora-config``, the API's lora=) is not usable."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class InvalidRawLora(MfgitError):
    """A raw LoRA state dict whose names or shapes cannot be a PEFT adapter."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class LoraRankMismatch(MfgitError):
    """A raw state dict's factors have another rank than the r given for them."""

    def __init__(self, path: str, module: str, given: int, found: int):
        super().__init__(f"{path}: r is {given} but module {module} has rank {found}")
        self.path = path
        self.module = module
        self.given = given
        self.found = found


# --- commit attachments ----------------------------------------------------------------------


class InvalidAttachment(MfgitError):
    """An attachment that cannot be committed: a bad name, a name given twice, a PATH that is
    missing, empty, not a regular file or a folder holding a symbolic link."""

    def __init__(self, name: str, reason: str, path: str | None = None):
        super().__init__(f"attachment {name!r}" + (f" ({path})" if path else "") + f": {reason}")
        self.name = name
        self.reason = reason
        self.path = path


class AttachmentNotFound(MfgitError):
    """A commit has no attachment of that name."""

    def __init__(self, commit: str, name: str, names: tuple[str, ...] = ()):
        have = f"; it has {len(names)}: {', '.join(repr(n) for n in names[:5])}{', …' if len(names) > 5 else ''}" \
            if names else "; it has none"
        super().__init__(f"commit {commit[:12]} has no attachment {name!r}{have}")
        self.commit = commit
        self.name = name
        self.names = names


class AttachmentPrivate(MfgitError):
    """A private attachment whose bytes are not in this repository: they stay at the site that committed it."""

    def __init__(self, commit: str, name: str, site: str | None):
        super().__init__(f"attachment {name!r} of commit {commit[:12]} is private to its site"
                         f"{f' ({site})' if site else ''}; its bytes never leave that site's repository")
        self.commit = commit
        self.name = name
        self.site = site


class CorruptAttachment(MfgitError):
    """The bytes kept for an attachment do not match the size and SHA-256 digest its commit records."""

    def __init__(self, commit: str, name: str, expected: str, actual: str, where: str):
        super().__init__(f"attachment {name!r} of commit {commit[:12]} is corrupt: expected sha256 {expected}, "
                         f"got {actual} ({where})")
        self.commit = commit
        self.name = name
        self.expected = expected
        self.actual = actual
        self.where = where


# --- pages for a browser ---------------------------------------------------------------------


class PagesTargetInUse(MfgitError):
    """`mfgit pages OUT` refused OUT: it holds something the pages did not write (or cannot hold them)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot write the pages to {path}: {reason}")
        self.path = path
        self.reason = reason


# --- mixtures (MedForge-Mixture) -------------------------------------------------------------


class MixtureError(MfgitError):
    """A mixture (an output-space composite) cannot be made or loaded as asked."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class MixtureBaseMismatch(MixtureError):
    """Members of one mixture adapt different base models: their outputs cannot be mixed."""

    def __init__(self, rev: str, base: dict, other_rev: str, other_base: dict):
        def name(b: dict) -> str:
            return f"{b.get('name')}" + (f"@{b.get('revision')}" if b.get("revision") else "")
        super().__init__(f"cannot mix {rev} (base model {name(base)}) with {other_rev} "
                         f"(base model {name(other_base)})")
        self.rev = rev
        self.base = base
        self.other_rev = other_rev
        self.other_base = other_base


class IsAMixture(MixtureError):
    """A verb that needs one adapter was given a mixture, which has none (its members are separate)."""

    def __init__(self, rev: str, verb: str):
        super().__init__(f"{rev} is a mixture (an output-space composite of member adapters, no merged "
                         f"adapter): {verb}")
        self.rev = rev
        self.verb = verb


# --- DoRA merges and base weights ------------------------------------------------------------


class DoraNeedsBaseWeights(MergeError):
    """A DoRA input merged without the base model's weights, on which its update depends."""

    def __init__(self, rev: str):
        super().__init__(f"{rev} is a DoRA adapter: its update depends on the base model's weights, "
                         f"which this merge was not given")
        self.rev = rev


class BaseWeightsError(MfgitError):
    """The base weights given with --base-weights cannot serve the merge (not safetensors, a module missing, a shape)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"base weights {path}: {reason}")
        self.path = path
        self.reason = reason


class BaseWeightsMismatch(MergeError):
    """Base weights whose digest is not the one a merge commit recorded."""

    def __init__(self, path: str, expected: str, actual: str):
        super().__init__(f"base weights {path} have SHA-256 {actual[:16]}…, but the merge used {expected[:16]}…")
        self.path = path
        self.expected = expected
        self.actual = actual
