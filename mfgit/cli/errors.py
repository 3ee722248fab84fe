"""The one table that maps errors to a message line and an exit code.

Every error a user can cause prints one line on stderr —
``mfgit: <what is wrong> (<what to do>)`` — and exits with the code below.
Tracebacks are shown only with MFGIT_DEBUG=1.
"""

from __future__ import annotations

import shlex
from typing import Callable

from mfgit import errors as E
from mfgit.api.sitedata import InvalidSiteData
from mfgit.audit.export_private import PrivateBytesInExport
from mfgit.render.escape import terminal
from mfgit.repo.fsck import bad_ref_fix, reflog_fix

# exit codes (documented in docs/cli.md)
OK = 0
REJECTED = 1  # the operation was refused as a normal outcome (nothing to commit, non-fast-forward)
USAGE = 2
NOT_A_REPO = 3
BAD_INPUT = 4
DAMAGED = 5
REMOTE = 6
CONFLICT = 7
MERGE = 8
SIGNATURE = 9
OS_ERROR = 74
INTERNAL = 70


Fix = Callable[[E.MfgitError], str]


def _fix(text: str) -> Fix:
    return lambda e: text


# (exception type, exit code, fix). The most specific type comes first.
TABLE: list[tuple[type, int, Fix]] = [
    (E.NotARepository, NOT_A_REPO, _fix("create one with: mfgit init, or pass -C PATH")),
    (E.RepositoryExists, BAD_INPUT, _fix("use it as it is, or choose another directory")),
    (E.UnsupportedRepositoryFormat, NOT_A_REPO, _fix("upgrade mfgit to a version that knows this format")),
    (E.ConfigError, BAD_INPUT, _fix("see: mfgit config --list")),
    (E.CorruptObject, DAMAGED, lambda e: (
        "the remote's copy is damaged and was not stored; push it again from a site that has a sound copy"
        if "received from" in (e.detail or "") else
        "the stored copy is damaged; replace it with a remote's copy: mfgit fsck --read-data --repair-from REMOTE")),
    (E.MalformedObject, DAMAGED, _fix("replace it with a remote's copy: mfgit fsck --read-data --repair-from REMOTE")),
    (E.ObjectNotFound, DAMAGED, _fix("the repository is incomplete; fetch the object: mfgit fsck --repair-from REMOTE")),
    (E.WrongObjectType, BAD_INPUT, _fix("name a commit, branch or tag")),
    (E.InvalidRefName, BAD_INPUT, _fix("names follow git's check-ref-format rules, e.g. sites/hospital-a")),
    (E.RefNotFound, BAD_INPUT, _fix("list them with: mfgit branch -a")),
    (E.RefExists, BAD_INPUT, _fix("choose another name, or use -f to move it")),
    (E.RefConflict, CONFLICT, _fix("another process updated it; look with mfgit log and try again")),
    (E.LockHeld, CONFLICT, _fix("another mfgit process is running; if none is, remove the .lock file")),
    (E.AmbiguousRevision, BAD_INPUT, _fix("give more digits of the id")),
    (E.EmptyBranch, BAD_INPUT, _fix("commit an adapter first: mfgit commit PATH -m MESSAGE")),
    (E.UnknownRevision, BAD_INPUT, _fix("see mfgit log and mfgit branch -a for names that exist")),
    (E.BranchInUse, BAD_INPUT, _fix("switch to another branch first: mfgit switch OTHER")),
    (E.NotFullyMerged, REJECTED, _fix("merge it first, or delete it anyway with: mfgit branch -D NAME")),
    (E.PickleRefused, BAD_INPUT, _fix(
        "convert it to safetensors (load it with torch.load(weights_only=True) and save with "
        "safetensors.torch.save_file), or pass --allow-pickle to load it with weights_only=True")),
    (E.SafetensorsError, BAD_INPUT, _fix("the file is damaged or not a safetensors file; re-save the adapter with save_pretrained")),
    (E.InvalidAdapter, BAD_INPUT, _fix("give a PEFT LoRA adapter directory as written by save_pretrained")),
    (E.OutputNotEmpty, BAD_INPUT, _fix("choose an empty directory, or pass --force to overwrite")),
    (E.OutputInTheWay, BAD_INPUT, _fix("remove it, or check out into another directory")),
    (E.UnsafePath, BAD_INPUT, _fix("the adapter names a file outside the output directory; it was not written")),
    (E.NothingToCommit, REJECTED, _fix("the adapter is already committed; pass --allow-empty to record it again")),
    (E.IncompatibleAdapters, MERGE, _fix("merge only adapters of the same base model and shapes")),
    (E.UnsupportedAdapterVariant, MERGE, _fix("merge it with a strategy that supports it, or convert it to plain LoRA")),
    (E.MergeError, MERGE, _fix("see docs/merging.md for the parameters of each strategy")),
    (E.RemoteNotFound, BAD_INPUT, _fix("add it with: mfgit remote add NAME URL")),
    (E.InvalidRemoteURL, BAD_INPUT, lambda e: "" if "s3://" in e.reason else "use a path, file:///path or s3://bucket/prefix"),
    (E.RemoteAuthError, REMOTE, _fix("check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile)")),
    (E.RemoteUnreachable, REMOTE, _fix("check the URL and the endpoint, and that you are online")),
    (E.RemoteError, REMOTE, _fix("check the remote's URL with: mfgit remote -v")),
    (E.PreconditionFailed, CONFLICT, _fix("someone else updated it at the same time; fetch and try again")),
    (E.DivergedBranches, REJECTED, lambda e: f"merge them: mfgit merge {e.remote_branch}, then push"),
    (E.NonFastForward, REJECTED, _fix("fetch first, merge the remote branch, then push again; or push --force to overwrite")),
    (E.SignatureError, SIGNATURE, _fix("see docs/audit.md on signing keys and allowed signers")),
    (E.SigningKeyError, BAD_INPUT, _fix("make a key with: mfgit keygen PATH, then: mfgit config signing.key PATH")),
    (E.DemoError, USAGE, _fix("")),
    (E.ScoreError, BAD_INPUT, _fix("see docs/search-and-eval.md for what a score function receives and returns")),
    (E.NoNotesPolicy, SIGNATURE, _fix("list each site's public key for branch sites/<site> in that file, one line "
                                      "'sites/<site> ssh-ed25519 AAAA... comment' (see docs/audit.md), or name one "
                                      "with: mfgit config signing.allowedSigners PATH")),
    (E.ConflictingEvaluations, MERGE, _fix("select by names that one site each evaluates (mfgit eval --name "
                                           "SITE-val); see docs/search-and-eval.md")),
    (E.InvalidObject, BAD_INPUT, _fix("the value comes from the input, the identity (user.name, user.email, user.site) "
                                      "or the API call; correct it and try again")),
    (E.NotARemote, REMOTE, lambda e: (
        "name an mfgit remote; a new one is made by mfgit init --bare PATH (or push --create into an empty folder "
        "or S3 prefix)" if not e.empty else
        f"create it with: mfgit init --bare {shlex.quote(e.remote)}, or push --create to make the empty folder one"
        if e.place == "folder" else "make the empty prefix a remote with: mfgit push --create REMOTE ...")),
    (E.InvalidEndpoint, BAD_INPUT, _fix("give it as http://host:port or https://host; credentials go in "
                                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile, never in a URL")),
    (E.BadRef, DAMAGED, lambda e: f"{bad_ref_fix(e.name)}; mfgit fsck lists every bad ref"),
    (E.BadReflog, DAMAGED, lambda e: f"drop the damaged lines: {reflog_fix(e.name, 'malformed')}"),
    (E.DamagedReflogEntry, DAMAGED, lambda e: (
        f"drop such entries: {reflog_fix(e.name, 'missing')}, or fetch the objects: mfgit fsck --repair-from REMOTE")),
    (E.BadConfigFile, BAD_INPUT, _fix(
        "it must be UTF-8 INI text as git writes it ([section] and key = value lines); correct or restore it")),
    (E.RepositoryBusy, CONFLICT, _fix("try again when it is done")),
]


def lookup(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for a raised error.

    The line is escaped for the terminal (docs/design.md, invariant 13): an
    error may quote a name or message a participant wrote."""
    code, line = _lookup(exc)
    return code, terminal(line.replace("\n", " "))


def _lookup(exc: BaseException) -> tuple[int, str]:
    for typ, code, fix in TABLE:
        if isinstance(exc, typ):
            msg = str(exc).replace("\n", " ")
            hint = fix(exc)
            return code, f"mfgit: {msg} ({hint})" if hint else f"mfgit: {msg}"
    if isinstance(exc, E.MfgitError):
        return INTERNAL, f"mfgit: {str(exc)}"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return OS_ERROR, f"mfgit: {exc.strerror or exc}:{where} (check the path, permissions and free disk space)"
    return INTERNAL, f"mfgit: internal error: {type(exc).__name__}: {exc} (rerun with MFGIT_DEBUG=1 for details)"


# --- Hugging Face Hub ids --------------------------------------------------------------------
TABLE += [
    (E.InvalidHubId, USAGE, _fix("give owner/name as on huggingface.co, e.g. --base-model-id meta-llama/Llama-3.2-1B")),
]


# --- raw LoRA state dicts --------------------------------------------------------------------
TABLE += [
    (E.LoraConfigNeeded, USAGE, _fix(
        "state its config: --lora r=R,alpha=A[,dropout=D] --base NAME, or --lora-config FILE")),
    (E.BadLoraConfig, USAGE, _fix(
        "write it as --lora r=16,alpha=16,dropout=0.1, or a --lora-config JSON/YAML file with those keys "
        "and optional targets and base_model")),
    (E.InvalidRawLora, BAD_INPUT, _fix(
        "give the LoRA entries of the model's state dict (names such as ...q_proj.lora_A.default.weight), "
        "saved with torch.save or safetensors")),
    (E.LoraRankMismatch, BAD_INPUT, lambda e: f"pass --lora r={e.found}, the rank the file was trained with"),
]


# --- commit attachments ----------------------------------------------------------------------
TABLE += [
    (E.InvalidAttachment, BAD_INPUT, _fix("attach a file or a folder of files as NAME=PATH, NAME a relative path "
                                          "without '..', empty segments, backslashes or control characters")),
    (E.AttachmentNotFound, BAD_INPUT, _fix("list them with: mfgit attachments REV")),
    (E.AttachmentPrivate, REJECTED, _fix("ask that site for it; only its digest and size are shared")),
    (E.CorruptAttachment, DAMAGED, _fix("the bytes kept for it were damaged; restore them from the site that "
                                        "committed it, or repair the object: mfgit fsck --repair-from REMOTE")),
    (PrivateBytesInExport, BAD_INPUT, _fix("nothing was written; export into a new or empty directory, "
                                           "not a checkout --with-attachments")),
]


# --- pages for a browser ---------------------------------------------------------------------
TABLE += [
    (E.PagesTargetInUse, BAD_INPUT, _fix("give a new or empty directory, or one mfgit pages wrote before")),
]


# --- mixtures (MedForge-Mixture) -------------------------------------------------------------
TABLE += [  # the most specific first: IsAMixture and MixtureBaseMismatch are MixtureErrors
    (E.IsAMixture, BAD_INPUT, _fix("use its members (mfgit show REV lists them), or load it with "
                                   "Repository.load_mixture; see docs/merging.md, MedForge-Mixture")),
    (E.MixtureBaseMismatch, MERGE, _fix("mix only adapters of one base model")),
    (E.MixtureError, MERGE, _fix("see docs/merging.md, MedForge-Mixture")),
]


# --- DoRA merges and base weights ------------------------------------------------------------
# Before MergeError, which they subclass: the first matching type wins.
TABLE[:0] = [
    (E.DoraNeedsBaseWeights, MERGE, _fix("pass --base-weights PATH: the base model's .safetensors file or directory")),
    (E.BaseWeightsMismatch, MERGE, _fix("pass the base weights the merge was made with (--base-weights PATH)")),
    (E.BaseWeightsError, BAD_INPUT, _fix("give the base model's own .safetensors file, or the directory holding it")),
]


# --- the built-in site data and prompt scorer ------------------------------------------------
# Before ScoreError, which it subclasses: the first matching type wins.
TABLE[:0] = [
    (InvalidSiteData, BAD_INPUT, _fix("see docs/search-and-eval.md (\"Built-in data and score\") for what the "
                                      "distilled set and the task spec hold")),
]
