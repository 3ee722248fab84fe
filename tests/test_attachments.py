"""Commit attachments end to end, through the real `mfgit` command, on real
PEFT adapters: named files committed with an adapter, public ones stored and
moved as blobs, private ones kept at their site only (docs/design.md,
"Attachments")."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mfgit.api.repository import Repository
from tests.test_remote_sync import KINDS, in_process_env, make_world

try:
    from tests.seaweed import seaweed  # noqa: F401  (session fixture)
except ImportError:  # pragma: no cover
    from seaweed import seaweed  # noqa: F401


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def adapter_dir(adapter_dir):
    """Adapter directories without the README.md PEFT writes: a directory's model card is an
    attachment of its own (tests/test_hub_card_metadata.py), and these tests list theirs exactly."""

    def make(*args, **kw):
        d = adapter_dir(*args, **kw)
        (d / "README.md").unlink(missing_ok=True)
        return d

    return make


TASK = b'{"task": "chest x-ray", "classes": ["normal", "pneumonia"]}'
SECRET = b"patient-level distilled rows: " + bytes(range(256)) * 8


def test_attachments_round_trip_through_commit_list_extract_and_checkout(cli, repo_dir, adapter_dir, tmp_path):
    adapter = adapter_dir("a")
    task = write(tmp_path / "in" / "task.json", TASK)
    secret = write(tmp_path / "in" / "rows.bin", SECRET)
    made = cli.json("commit", adapter, "-m", "with files", "--json", "--attach", f"task.json={task}",
                    "--attach-private", f"distilled/rows.bin={secret}", cwd=repo_dir)
    assert made["attachments"] == [
        {"name": "distilled/rows.bin", "size": len(SECRET), "digest": sha(SECRET), "private": True},
        {"name": "task.json", "size": len(TASK), "digest": sha(TASK), "private": False,
         "id": hashlib.sha256(b"blob " + TASK).hexdigest()},
    ]
    listed = cli.json("attachments", "--json", cwd=repo_dir)
    assert listed["commit"] == made["id"]
    assert [(a["name"], a["present"]) for a in listed["attachments"]] == [("distilled/rows.bin", True),
                                                                           ("task.json", True)]
    assert cli.ok("attachments", "HEAD", "task.json", cwd=repo_dir).stdout.encode() == TASK
    cli.ok("attachments", "HEAD", "distilled/rows.bin", "-o", tmp_path / "rows.out", cwd=repo_dir)
    assert (tmp_path / "rows.out").read_bytes() == SECRET
    # The private bytes are in this repository only, outside the object store.
    assert (repo_dir / ".mfgit" / "private" / sha(SECRET)).read_bytes() == SECRET
    repo = Repository.open(repo_dir)
    assert repo.read_attachment("HEAD", "task.json") == TASK
    assert all(repo.store.get(o)[1] != SECRET for o in repo.store.iter_ids())

    out = tmp_path / "out"
    cli.ok("checkout", "HEAD", "--to", out, "--with-attachments", cwd=repo_dir)
    assert (out / "attachments" / "task.json").read_bytes() == TASK
    assert (out / "attachments" / "distilled" / "rows.bin").read_bytes() == SECRET
    assert (out / "adapter_model.safetensors").is_file()
    plain = tmp_path / "plain"
    cli.ok("checkout", "HEAD", "--to", plain, cwd=repo_dir)
    assert not (plain / "attachments").exists()

    shown = cli.json("show", "--json", cwd=repo_dir)
    assert shown["commit"]["attachments"] == made["attachments"]
    text = cli.ok("show", cwd=repo_dir).stdout
    assert "Attachments: 2 (1 private)" in text and "task.json" in text and "distilled/rows.bin" in text
    assert "Attachments: 2 (1 private)" in cli.ok("log", cwd=repo_dir).stdout
    assert cli.json("fsck", "--json", cwd=repo_dir)["ok"]
    assert json.loads(cli.ok("verify", "--json", cwd=repo_dir).stdout)["ok"]


# -- helpers ----------------------------------------------------------------------------------------


def replace_head(repo_dir: Path, branch: str = "main", **changes) -> str:
    """Rewrite the tip of `branch` with `changes` (a participant editing a commit), moving the ref."""
    import dataclasses

    repo = Repository.open(repo_dir)
    ref = f"refs/heads/{branch}"
    old = repo.refs.read(ref)
    new = repo.put_commit(dataclasses.replace(repo.read_commit(old), **changes))
    repo.refs.update(ref, new, old, message="test: rewritten")
    return new


# -- folders ----------------------------------------------------------------------------------------


def test_a_folder_attaches_each_of_its_files_as_name_slash_relpath(cli, repo_dir, adapter_dir, tmp_path):
    folder = tmp_path / "eval"
    write(folder / "report.md", "# accuracy 0.91\n")
    write(folder / "per-class" / "normal.csv", "tp,fp\n10,1\n")
    write(folder / "per-class" / "deep" / "pneumonia.csv", "tp,fp\n9,2\n")
    made = cli.json("commit", adapter_dir("a"), "-m", "eval", "--json", "--attach", f"eval={folder}", cwd=repo_dir)
    assert [a["name"] for a in made["attachments"]] == [
        "eval/per-class/deep/pneumonia.csv", "eval/per-class/normal.csv", "eval/report.md"]
    out = tmp_path / "out"
    cli.ok("checkout", "HEAD", "--to", out, "--with-attachments", cwd=repo_dir)
    for f in folder.rglob("*"):
        if f.is_file():
            assert (out / "attachments" / "eval" / f.relative_to(folder)).read_bytes() == f.read_bytes()
    text = cli.ok("attachments", cwd=repo_dir).stdout
    assert "eval/per-class/normal.csv" in text and "public" in text


def test_a_folder_holding_a_symbolic_link_or_no_file_is_refused(cli, repo_dir, adapter_dir, tmp_path):
    adapter = adapter_dir("a")
    linked = tmp_path / "linked"
    write(linked / "ok.txt", "fine")
    (linked / "escape").symlink_to("/etc/passwd")
    line = cli.fails("commit", adapter, "-m", "x", "--attach", f"d={linked}", cwd=repo_dir, code=4)
    assert "symbolic link" in line and "escape" in line
    (tmp_path / "empty").mkdir()
    assert "holds no files" in cli.fails("commit", adapter, "-m", "x", "--attach", f"d={tmp_path / 'empty'}",
                                         cwd=repo_dir, code=4)
    assert Repository.open(repo_dir).head() is None  # nothing was committed


# -- identity: ids, one encoding, signatures --------------------------------------------------------


def test_commits_without_attachments_keep_their_encoding_and_id(cli, repo_dir, adapter_dir):
    from mfgit.objects import Commit, canonical_json, object_id

    cid = cli.json("commit", adapter_dir("a"), "-m", "plain", "--json", cwd=repo_dir)["id"]
    repo = Repository.open(repo_dir)
    commit = repo.read_commit(cid)
    assert commit.attachments == () and "attachments" not in commit.to_dict()
    assert "attachments" not in cli.json("show", "--json", cwd=repo_dir)["commit"]
    # The bytes are exactly the canonical JSON of the fields commits always had.
    fields = {k: v for k, v in commit.to_dict().items()}
    assert object_id("commit", canonical_json(fields)) == cid == Commit.from_dict(fields).id
    assert "Attachments" not in cli.ok("log", cwd=repo_dir).stdout


def test_an_empty_or_unsorted_attachment_list_is_refused_when_read(cli, repo_dir, adapter_dir):
    from mfgit.errors import MalformedObject
    from mfgit.objects import canonical_json, decode_object, object_id

    cid = cli.json("commit", adapter_dir("a"), "-m", "plain", "--json", cwd=repo_dir)["id"]
    base = Repository.open(repo_dir).read_commit(cid).to_dict()
    pub = {"name": "b", "size": 1, "digest": "0" * 64, "private": False, "id": "1" * 64}
    priv = {"name": "a", "size": 1, "digest": "2" * 64, "private": True}
    bad = {
        "empty": [],
        "unsorted": [pub, priv],
        "duplicate": [priv, dict(priv)],
        "case-folded twice": [dict(priv, name="A"), priv],
        "file and folder": [priv, dict(pub, name="a/x")],
        "private with id": [dict(priv, id="1" * 64)],
        "public without id": [{k: v for k, v in pub.items() if k != "id"}],
        "dot-dot": [dict(priv, name="../a")],
        "absolute": [dict(priv, name="/etc/a")],
        "control": [dict(priv, name="a\x1b[2J")],
        "size": [dict(priv, size=-1)],
        "bool size": [dict(priv, size=True)],
        "digest": [dict(priv, digest="XYZ")],
        "unknown field": [dict(priv, note="x")],
    }
    for why, attachments in bad.items():
        data = canonical_json({**base, "attachments": attachments})
        try:
            decode_object(object_id("commit", data), "commit", data)
        except MalformedObject as e:
            assert "attachments" in str(e), (why, str(e))
        else:
            raise AssertionError(f"{why}: accepted")
    good = canonical_json({**base, "attachments": [priv, pub]})
    assert decode_object(object_id("commit", good), "commit", good).attachments == (priv, pub)


def test_the_signature_covers_the_attachments(cli, repo_dir, adapter_dir, tmp_path):
    keys = tmp_path / "keys"
    cli.ok("keygen", keys / "site-a")
    cli.ok("switch", "--orphan", "sites/a", cwd=repo_dir)
    cli.ok("config", "site", "hospital-a", cwd=repo_dir)
    cli.ok("config", "signing.key", keys / "site-a", cwd=repo_dir)
    task = write(tmp_path / "task.json", TASK)
    secret = write(tmp_path / "rows.bin", SECRET)
    cli.ok("commit", adapter_dir("a"), "-m", "signed", "-S", "--attach", f"task.json={task}",
           "--attach-private", f"rows.bin={secret}", cwd=repo_dir)
    (repo_dir / ".mfgit" / "allowed_signers").write_text(f"sites/a {(keys / 'site-a.pub').read_text().strip()}\n")
    assert cli.json("verify", "sites/a", "--signatures", "--json", cwd=repo_dir)["ok"]
    commit = Repository.open(repo_dir).read_commit(Repository.open(repo_dir).resolve("sites/a"))
    assert b'"attachments"' in commit.signing_payload()

    # Another private digest (another data set claimed), the signature kept: it no longer verifies.
    forged = tuple(dict(a, digest=sha(b"other rows")) if a["private"] else a for a in commit.attachments)
    replace_head(repo_dir, "sites/a", attachments=forged)
    res = cli("verify", "sites/a", "--signatures", "--json", cwd=repo_dir)
    assert res.returncode == 9, res.stderr
    assert "does not verify" in json.loads(res.stdout)["failures"][0]["reason"]
    # Dropping the attachments altogether breaks it too.
    replace_head(repo_dir, "sites/a", attachments=())
    assert cli("verify", "sites/a", "--signatures", cwd=repo_dir).returncode == 9


# -- history: nothing to commit, diff ---------------------------------------------------------------


def test_a_change_of_attachments_alone_is_a_commit_and_diff_names_it(cli, repo_dir, adapter_dir, tmp_path):
    adapter = adapter_dir("a")
    v1 = write(tmp_path / "v1" / "task.json", TASK)
    report = write(tmp_path / "report.md", "acc 0.9\n")
    secret = write(tmp_path / "rows.bin", SECRET)
    cli.ok("commit", adapter, "-m", "one", "--attach", f"task.json={v1}", "--attach", f"report.md={report}",
           "--attach-private", f"rows.bin={secret}", cwd=repo_dir)
    # The same adapter and the same attachments: nothing to commit.
    assert "nothing to commit" in cli.fails("commit", adapter, "-m", "again", "--attach", f"task.json={v1}",
                                            "--attach", f"report.md={report}", "--attach-private",
                                            f"rows.bin={secret}", cwd=repo_dir, code=1)
    v2 = write(tmp_path / "v2" / "task.json", TASK + b" ")
    notes = write(tmp_path / "notes.txt", "new")
    cli.ok("commit", adapter, "-m", "two", "--attach", f"task.json={v2}", "--attach", f"notes.txt={notes}",
           "--attach-private", f"rows.bin={secret}", cwd=repo_dir)
    d = cli.json("diff", "HEAD~1", "HEAD", "--json", cwd=repo_dir)
    assert d["identical"]  # the adapters are
    assert [(x["name"], x["status"]) for x in d["attachments"]] == [
        ("notes.txt", "added"), ("report.md", "removed"), ("task.json", "changed")]
    changed = d["attachments"][2]
    assert (changed["digest_a"], changed["digest_b"]) == (sha(TASK), sha(TASK + b" "))
    text = cli.ok("diff", "HEAD~1", "HEAD", cwd=repo_dir).stdout
    assert f"M  attachment task.json  sha256:{sha(TASK)[:12]} -> sha256:{sha(TASK + b' ')[:12]}" in text
    assert "A  attachment notes.txt" in text and "D  attachment report.md" in text
    # A diff of commits without attachments reads as it always did.
    assert "attachments" not in cli.json("diff", "HEAD", "HEAD", "--json", cwd=repo_dir) or \
        cli.json("diff", "HEAD", "HEAD", "--json", cwd=repo_dir)["attachments"] == []


# -- damage: verify and fsck -------------------------------------------------------------------------


def test_verify_finds_a_public_attachment_whose_bytes_are_not_the_recorded_digest(cli, repo_dir, adapter_dir, tmp_path):
    task = write(tmp_path / "task.json", TASK)
    cli.ok("commit", adapter_dir("a"), "-m", "one", "--attach", f"task.json={task}", cwd=repo_dir)
    report = cli.json("verify", "--json", cwd=repo_dir)
    assert report["ok"] and report["integrity"]["attachments"] == 1
    commit = Repository.open(repo_dir).read_commit(Repository.open(repo_dir).head())
    lie = tuple(dict(a, digest=sha(b"what the site claims")) for a in commit.attachments)
    replace_head(repo_dir, attachments=lie)
    res = cli("verify", "--json", cwd=repo_dir)
    assert res.returncode != 0
    (p,) = json.loads(res.stdout)["integrity"]["problems"]
    assert p["what"] == "attachment task.json" and sha(TASK) in p["error"]
    assert "is corrupt" in cli.fails("attachments", "HEAD", "task.json", cwd=repo_dir, code=5)


def test_fsck_checks_a_private_copy_and_gc_keeps_public_blobs(cli, repo_dir, adapter_dir, tmp_path):
    task = write(tmp_path / "task.json", TASK)
    secret = write(tmp_path / "rows.bin", SECRET)
    cli.ok("commit", adapter_dir("a"), "-m", "one", "--attach", f"task.json={task}",
           "--attach-private", f"rows.bin={secret}", cwd=repo_dir)
    cli.ok("gc", "--prune", "now", cwd=repo_dir)
    assert cli.ok("attachments", "HEAD", "task.json", cwd=repo_dir).stdout.encode() == TASK
    report = cli.json("fsck", "--json", cwd=repo_dir)
    assert report["ok"] and report["private_attachments_absent"] == []
    kept = repo_dir / ".mfgit" / "private" / sha(SECRET)
    kept.chmod(0o600)
    kept.write_bytes(SECRET[:-1] + b"!")
    res = cli("fsck", "--json", cwd=repo_dir)
    assert res.returncode != 0
    (bad,) = json.loads(res.stdout)["corrupt_private_attachments"]
    assert bad["name"] == "rows.bin" and bad["digest"] == sha(SECRET)
    assert "corrupt private attachment rows.bin" in cli("fsck", cwd=repo_dir).stdout
    assert "is corrupt" in cli.fails("attachments", "HEAD", "rows.bin", cwd=repo_dir, code=5)
    # The commit records it: committing the right bytes again restores the copy.
    kept.unlink()
    cli.ok("commit", adapter_dir("b"), "-m", "two", "--attach-private", f"rows.bin={secret}", cwd=repo_dir)
    assert cli.json("fsck", "--json", cwd=repo_dir)["ok"]


# -- attacks on names and paths: one line, exit 4, nothing committed ---------------------------------


def test_bad_names_and_paths_are_refused_with_one_line(cli, repo_dir, adapter_dir, tmp_path):
    adapter = adapter_dir("a")
    f = write(tmp_path / "f.txt", "x")
    g = write(tmp_path / "g.txt", "y")
    cases = [
        (["--attach", f"../escape={f}"], "'..'"),
        (["--attach", f"a/../../b={f}"], "'..'"),
        (["--attach", f"/etc/cron.d/x={f}"], "absolute"),
        (["--attach", f"a//b={f}"], "empty"),
        (["--attach", f"a\\b={f}"], "backslash"),
        (["--attach", f"evil\x1b[2J={f}"], "control characters"),
        (["--attach", f"line\nbreak={f}"], "control characters"),
        (["--attach", f"same={f}", "--attach", f"same={g}"], "given twice"),
        (["--attach", f"same={f}", "--attach-private", f"same={g}"], "given twice"),
        (["--attach", f"Task.json={f}", "--attach", f"task.json={g}"], "case-insensitive"),
        (["--attach", f"a={f}", "--attach", f"a/b={g}"], "is a file and the folder of"),
        (["--attach", f"x={tmp_path / 'no-such-file'}"], "no such file"),
        (["--attach", "no-equals-sign"], "NAME=PATH"),
        (["--attach", f"={f}"], "empty name"),
        (["--attach", f"fifo={tmp_path / 'fifo'}"], "not a regular file"),
    ]
    import os

    os.mkfifo(tmp_path / "fifo")
    for args, why in cases:
        line = cli.fails("commit", adapter, "-m", "x", *args, cwd=repo_dir, code=4)
        assert why in line, (args, line)
        assert "\x1b" not in line and "\n" not in line
    assert Repository.open(repo_dir).head() is None
    assert not (repo_dir / ".mfgit" / "private").exists()


def test_checkout_never_follows_a_link_where_attachments_go(cli, repo_dir, adapter_dir, tmp_path):
    cli.ok("commit", adapter_dir("a"), "-m", "one", "--attach", f"eval/report.md={write(tmp_path / 'r', 'ok')}",
           cwd=repo_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "attachments").symlink_to(elsewhere)
    line = cli.fails("checkout", "HEAD", "--to", out, "--force", "--with-attachments", cwd=repo_dir, code=4)
    assert "symbolic link" in line
    assert list(elsewhere.iterdir()) == [] and not (out / "adapter_model.safetensors").exists()
    (out / "attachments").unlink()
    write(out / "attachments" / "eval", "a file where a folder goes")
    assert "a file where a folder" in cli.fails("checkout", "HEAD", "--to", out, "--force", "--with-attachments",
                                                cwd=repo_dir, code=4)


def test_attachment_names_are_escaped_on_the_terminal_and_exact_in_json(cli, repo_dir, adapter_dir, tmp_path):
    name = "report\u202egnp.exe"  # a right-to-left override: shows as "reportexe.png"
    cli.ok("commit", adapter_dir("a"), "-m", "one", "--attach", f"{name}={write(tmp_path / 'r', 'x')}", cwd=repo_dir)
    for args in (("attachments",), ("show",)):
        text = cli.ok(*args, cwd=repo_dir).stdout
        assert "\u202e" not in text and "report\\u202egnp.exe" in text, args
    assert cli.json("attachments", "--json", cwd=repo_dir)["attachments"][0]["name"] == name


def test_python_api_commits_lists_and_reads_attachments(repo_dir, adapter_dir, tmp_path):
    repo = Repository.open(repo_dir)
    folder = tmp_path / "cfg"
    write(folder / "train.yaml", "lr: 0.0002\n")
    info = repo.commit(adapter_dir("a"), "api", attachments={"config": folder},
                       private_attachments={"rows.bin": write(tmp_path / "rows.bin", SECRET)})
    assert [a["name"] for a in info.commit.attachments] == ["config/train.yaml", "rows.bin"]
    listed = repo.attachments("HEAD")
    assert [(a["name"], a["private"], a["present"]) for a in listed] == [("config/train.yaml", False, True),
                                                                         ("rows.bin", True, True)]
    assert repo.read_attachment("HEAD", "rows.bin") == SECRET
    assert repo.read_attachment(info.id, "config/train.yaml") == b"lr: 0.0002\n"


def test_unknown_attachment_is_one_line(cli, repo_dir, adapter_dir, tmp_path):
    cli.ok("commit", adapter_dir("a"), "-m", "one", "--attach", f"task.json={write(tmp_path / 't', TASK)}",
           cwd=repo_dir)
    line = cli.fails("attachments", "HEAD", "nope", cwd=repo_dir, code=4)
    assert "has no attachment 'nope'" in line and "task.json" in line


# -- remotes: public attachments travel, private bytes never do --------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, seaweed, adapter_store):
    root = tmp_path_factory.mktemp("attachments-remote")
    w = make_world(root, seaweed, adapter_store, "attach")
    with in_process_env(w.cli.env):
        yield w


def remote_files(world, remote) -> dict[str, bytes]:
    """Every byte the remote holds: each file of the folder, or each object of the whole S3 bucket."""
    if remote.kind == "folder":
        return {str(p.relative_to(remote.path)): p.read_bytes() for p in remote.path.rglob("*") if p.is_file()}
    client = world.seaweed.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=world.bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=world.bucket, Key=obj["Key"])["Body"].read()
    return out


def payloads(files: dict[str, bytes]) -> list[bytes]:
    """The decoded payload of every object file among `files` (checked against its id)."""
    from mfgit.store.frame import decode_stored

    out = []
    for key, data in files.items():
        parts = key.split("/")
        if len(parts) >= 3 and parts[-3] == "objects" and len(parts[-2] + parts[-1]) == 64:
            out.append(bytes(decode_stored(parts[-2] + parts[-1], data, verify=True)[1]))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_push_and_clone_carry_public_attachments_and_never_a_private_byte(world, kind, tmp_path):
    cli = world.cli
    remote = world.new_remote(kind)
    site = world.fresh("site")
    cli.ok("init", "--site", "hospital-a", site)
    cli.ok("remote", "add", "hub", remote.url, cwd=site)
    # Random bytes do not compress: were they on the remote, they would be there as they are
    # (the public ones, below, are: that is the control).
    public, secret, secret2 = os.urandom(40_000), os.urandom(40_000), os.urandom(30_000)
    task = write(tmp_path / "task.bin", public)
    folder = tmp_path / "eval"
    write(folder / "report.md", "acc 0.93\n")
    write(folder / "curves" / "roc.csv", "0,0\n1,1\n")
    rows = write(tmp_path / "rows.bin", secret)
    cli.ok("commit", world.adapters["one"], "-m", "round 1", "--attach", f"task.bin={task}",
           "--attach", f"eval={folder}", "--attach-private", f"distilled/rows.bin={rows}", cwd=site)
    cli.ok("push", "hub", "main", cwd=site)
    more = write(tmp_path / "more.bin", secret2)
    cli.ok("commit", world.adapters["two"], "-m", "round 2", "--attach", f"task.bin={task}",
           "--attach-private", f"distilled/rows.bin={more}", cwd=site)
    cli.ok("push", "hub", "main", cwd=site)

    held = remote_files(world, remote)
    decoded = payloads(held)
    assert any(public in data for data in held.values()) and public in decoded
    for data in [*held.values(), *decoded]:
        assert secret not in data and secret2 not in data
        assert secret[:64] not in data and secret2[-64:] not in data

    clone = world.fresh("clone")
    cli.ok("clone", "-q", remote.url, clone)
    assert not (clone / ".mfgit" / "private").exists()
    cli.ok("attachments", "HEAD~1", "task.bin", "-o", tmp_path / "got.bin", cwd=clone)
    assert (tmp_path / "got.bin").read_bytes() == public
    assert cli.ok("attachments", "HEAD~1", "eval/curves/roc.csv", cwd=clone).stdout == "0,0\n1,1\n"
    listed = {a["name"]: a for a in cli.json("attachments", "HEAD~1", "--json", cwd=clone)["attachments"]}
    assert listed["distilled/rows.bin"] == {"name": "distilled/rows.bin", "size": len(secret), "digest": sha(secret),
                                            "private": True, "present": False}
    assert listed["task.bin"]["present"] and not listed["task.bin"]["private"]
    line = cli.fails("attachments", "HEAD", "distilled/rows.bin", cwd=clone, code=1)
    assert "is private to its site (hospital-a)" in line
    assert "kept at its site" in cli.ok("attachments", cwd=clone).stdout

    # A clone lacks private bytes by design: fsck lists them and calls nothing damaged.
    report = cli.json("fsck", "--json", cwd=clone)
    assert report["ok"] and report["missing"] == []
    assert sorted(a["digest"] for a in report["private_attachments_absent"]) == sorted([sha(secret), sha(secret2)])
    assert "not damage" in cli.ok("fsck", cwd=clone).stdout
    checked = cli.json("verify", "--json", cwd=clone)
    assert checked["ok"] and checked["integrity"]["private_attachments_elsewhere"] == 2
    out = world.fresh("out")
    res = cli.ok("checkout", "HEAD~1", "--to", out, "--with-attachments", cwd=clone)
    assert (out / "attachments" / "task.bin").read_bytes() == public
    assert (out / "attachments" / "eval" / "report.md").read_text() == "acc 0.93\n"
    assert not (out / "attachments" / "distilled").exists()
    assert "not written: distilled/rows.bin" in res.stderr

    # A site that fetches (rather than clones) gets the same, and gc keeps the blobs.
    other = world.site("b", remote)
    Repository.open(other).fetch("hub")
    cli.ok("gc", "--prune", "now", cwd=other)
    assert Repository.open(other).read_attachment("hub/main", "task.bin") == public
    # The remote itself checks out clean (folder: fsck of the bare repository).
    world.assert_consistent(remote)
    # The site still has everything: its own private copies verify.
    assert cli.json("verify", "--json", cwd=site)["integrity"]["private_attachments_elsewhere"] == 0
