"""Reading notes as evidence: each note decoded, its signature checked, its problems named, its trust judged.

Notes are stored by mfgit.repo.notes; this module says what each one is
worth. A note is ``ok`` when it is a well-formed note about the commit (and
the adapter) it is attached to and its signature, if any, verifies. Being ok
is not enough to count: anyone who can write to a shared remote can add a
note, and a note says which site measured it (``measured_by.site``) in its
own words. A note is *trusted* (``trust``) only when it is ok, signed, by a
key the repository's allowed-signers policy (mfgit.audit.policy) allows for
branch ``sites/<S>`` of the site S it claims, and not dated in the future —
so a participant can speak only for its own site, and cannot outrank a
site's later note by a date it chose. Without a policy no note is trusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from mfgit.audit.policy import AllowedSigners, load_policy, policy_path
from mfgit.audit.signing import SignatureCheck, check_signature
from mfgit.errors import MalformedObject, MfgitError, ObjectNotFound, SigningKeyError
from mfgit.objects.canonical import canonical_json
from mfgit.objects.model import decode_note
from mfgit.objects.timestamp import utc_now
from mfgit.refs import NOTES_REF, check_branch_name
from mfgit.repo.notes import NOTE_FORMAT, read_index

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

# How far a note's date may run ahead of the reader's clock (clocks of different sites differ a little).
FUTURE_SKEW_SECONDS = 300
TRUST_RULE = (f"a note counts only when it is well formed and about this commit and its adapter, its signature is "
              f"good, its key is allowed in the allowed-signers policy for branch sites/<S> of the site S it claims "
              f"(measured_by.site), and it is dated no later than the time of reading + {FUTURE_SKEW_SECONDS} s")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@dataclass(frozen=True)
class _SignedNote:
    """Adapter for mfgit.audit.signing.check_signature (it wants .signature and .signing_payload())."""

    body: dict[str, Any]
    signature: Any

    def signing_payload(self) -> bytes:
        return canonical_json(self.body)


def _check(note: dict[str, Any]) -> SignatureCheck:
    body = {k: v for k, v in note.items() if k != "signature"}
    return check_signature(_SignedNote(body, note.get("signature")))


def check_note(note: dict[str, Any]) -> dict[str, Any]:
    """The signature status of a note dict: {"status": good|bad|unsigned, "reason", "key_id"}."""
    chk = _check(note)
    return {"status": chk.status, "reason": chk.reason, "key_id": chk.key_id}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not _TIMESTAMP.match(value):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


@dataclass(frozen=True)
class NoteTrust:
    """What notes are judged against: the allowed-signers policy (or why there is none) and the time of reading."""

    policy: AllowedSigners | None
    unavailable: str | None
    now: str

    @classmethod
    def of(cls, repo: "BaseRepository", *, strict: bool = False) -> "NoteTrust":
        """The repository's policy now. An unreadable policy raises when `strict`, else no note is trusted."""
        try:
            policy = load_policy(repo)
        except SigningKeyError as e:
            if strict:
                raise
            return cls(None, f"the allowed-signers policy cannot be read: {e}", utc_now())
        missing = None if policy is not None else f"no allowed-signers policy ({policy_path(repo)}), so no key " \
                                                   f"may speak for a site"
        return cls(policy, missing, utc_now())

    def judge(self, note: dict[str, Any], check: SignatureCheck, problem: str | None) -> dict[str, Any]:
        """{"trusted": bool, "reason": str} of one note, its signature check and its problem (None when ok)."""
        if problem is not None:
            return _verdict(False, f"the note fails its checks: {problem}")
        if check.status != "good" or check.key is None:
            return _verdict(False, "unsigned: a note counts only when signed by a key allowed for its site")
        site = (note.get("measured_by") or {}).get("site") if isinstance(note.get("measured_by"), dict) else None
        if not isinstance(site, str) or not site:
            return _verdict(False, "the note names no site (measured_by.site)")
        branch = f"sites/{site}"
        try:
            check_branch_name(branch)
        except MfgitError:
            return _verdict(False, f"{site!r} is not a site name")
        if self.policy is None:
            return _verdict(False, self.unavailable or "no allowed-signers policy")
        if not self.policy.allowed(branch, check.key):
            who = self.policy.signer_of(check.key)
            extra = f"; that key is allowed only for {','.join(who.patterns)}" if who else ""
            return _verdict(False, f"claims site {site} but is signed by {check.key_id}, which is not allowed for "
                                   f"{branch} in {self.policy.source}{extra}")
        when, now = _parse_time(note.get("timestamp")), _parse_time(self.now)
        if when is None:
            return _verdict(False, f"its timestamp {note.get('timestamp')!r} is not a UTC time as mfgit writes it")
        if now is not None and when > now + timedelta(seconds=FUTURE_SKEW_SECONDS):
            return _verdict(False, f"dated {note.get('timestamp')}, in the future (read at {self.now}, "
                                   f"{FUTURE_SKEW_SECONDS} s of clock skew allowed)")
        return _verdict(True, f"signed by {check.key_id}, allowed for {branch} in {self.policy.source}")


def _verdict(trusted: bool, reason: str) -> dict[str, Any]:
    return {"trusted": trusted, "reason": reason}


def _unreadable(nid: str, problem: str, why: str) -> dict[str, Any]:
    return {"id": nid, "ok": False, "problem": problem,
            "signature": {"status": "unsigned", "reason": why, "key_id": None},
            "trust": _verdict(False, f"the note fails its checks: {problem}")}


def read_note(repo: "BaseRepository", nid: str, commit_id: str | None = None, *, adapter: str | None = None,
              trust: NoteTrust | None = None) -> dict[str, Any]:
    """A note by id, decoded and checked: its fields plus ``id``, ``signature``
    (the check), ``ok``, when not ok ``problem``, and ``trust`` (NoteTrust.judge).

    `commit_id` and `adapter` are the commit the note is filed under and that
    commit's adapter: a note about another one (a signed note copied onto
    another commit) is not ok.
    """
    problem = None
    try:
        kind, payload = repo.store.get(nid)
    except ObjectNotFound:
        return _unreadable(nid, "the note object is missing", "missing")
    if kind != "blob":
        return _unreadable(nid, f"a {kind}, not a note blob", "not a note")
    try:
        note = decode_note(nid, payload)  # the one schema: fields, types, one encoding
    except MalformedObject as e:
        return _unreadable(nid, f"not a well-formed note ({e.reason})", "unreadable")
    chk = _check(note)
    out = {k: v for k, v in note.items() if k != "signature"}
    out["id"] = nid
    out["signature"] = {"status": chk.status, "reason": chk.reason, "key_id": chk.key_id}
    if note.get("format") != NOTE_FORMAT:
        problem = f"unknown note format {note.get('format')!r}"
    elif chk.status == "bad":
        problem = f"bad signature: {chk.reason}"
    elif commit_id is not None and note.get("commit") != commit_id:
        problem = f"the note is about commit {str(note.get('commit'))[:12]}, not {commit_id[:12]}"
    elif adapter is not None and note.get("adapter") != adapter:
        problem = f"the note is about adapter {str(note.get('adapter'))[:12]}, not the commit's {adapter[:12]}"
    elif not isinstance(note.get("values"), dict):
        problem = "the note has no values"
    out["ok"] = problem is None
    if problem:
        out["problem"] = problem
    out["trust"] = (trust or NoteTrust.of(repo)).judge(note, chk, problem)
    return out


def notes_for(repo: "BaseRepository", commit_id: str, index: dict[str, list[str]] | None = None, *,
              trust: NoteTrust | None = None) -> list[dict[str, Any]]:
    """Every note attached to `commit_id`, checked and judged (see read_note), oldest first."""
    idx = read_index(repo) if index is None else index
    trust = trust or NoteTrust.of(repo)
    try:
        adapter = repo.read_commit(commit_id).adapter
    except MfgitError:
        adapter = None
    notes = [read_note(repo, nid, commit_id, adapter=adapter, trust=trust) for nid in idx.get(commit_id, [])]
    notes.sort(key=lambda n: (str(n.get("timestamp") or ""), n["id"]))
    return notes


def notes_by_commit(repo: "BaseRepository", commit_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """commit id → its checked notes, for the commits listed (empty when the repository has no notes)."""
    if repo.refs.read(NOTES_REF) is None:
        return {}
    index = read_index(repo)
    trust = NoteTrust.of(repo)
    return {cid: notes_for(repo, cid, index, trust=trust) for cid in commit_ids if cid in index}
