"""A public attachment that is a safetensors file is stored as its header and
one tensor object per tensor, like an adapter's tensors: the file reads back
byte for byte, a change of one tensor stores that tensor only, parts that do
not give back the recorded bytes are damage, and remotes and gc carry every
part (docs/design.md, "Attachments")."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from mfgit.api.repository import Repository
from mfgit.formats import safetensors as st
from tests.test_attachments import remote_files, replace_head, world, write  # noqa: F401  (world: fixture)
from tests.test_remote_sync import KINDS

try:
    from tests.seaweed import seaweed  # noqa: F401  (session fixture)
except ImportError:  # pragma: no cover
    from seaweed import seaweed  # noqa: F401


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors(n: int = 20, elements: int = 4096, seed: int = 0) -> dict[str, bytes]:
    """`n` float32 tensors of random bytes (they do not compress: stored sizes are honest)."""
    import random

    rng = random.Random(seed)
    return {f"x{i:02d}": rng.randbytes(elements * 4) for i in range(n)}


def safetensors_bytes(parts: dict[str, bytes], metadata: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    st.write(buf, [(k, "F32", (len(v) // 4,), v) for k, v in parts.items()], metadata)
    return buf.getvalue()


def stored_bytes(repo_dir: Path) -> int:
    return sum(p.stat().st_size for p in (repo_dir / ".mfgit" / "objects").rglob("*") if p.is_file())


@pytest.fixture
def adapter_dir(adapter_dir):
    """One adapter directory per name, without the README.md PEFT writes (a card would be an attachment too);
    committing it again with another attachment is a commit of the attachment alone."""
    made: dict[str, Path] = {}

    def make(name: str = "adapter") -> Path:
        if name not in made:
            made[name] = adapter_dir(name)
            (made[name] / "README.md").unlink(missing_ok=True)
        return made[name]

    return make


def commit_distilled(cli, repo_dir, adapter, path: Path, message: str = "round") -> dict:
    return cli.json("commit", adapter, "-m", message, "--json", "--allow-empty", "--attach", f"distilled={path}",
                    cwd=repo_dir)


def test_a_safetensors_attachment_reads_back_byte_for_byte_everywhere(cli, repo_dir, adapter_dir, tmp_path):
    data = safetensors_bytes(tensors(), {"source": "site a"})
    made = commit_distilled(cli, repo_dir, adapter_dir("a"), write(tmp_path / "d.safetensors", data))
    (entry,) = made["attachments"]
    assert set(entry) == {"name", "size", "digest", "private", "header", "tensors"}
    assert (entry["size"], entry["digest"], entry["private"]) == (len(data), sha(data), False)
    assert sorted(entry["tensors"]) == sorted(tensors())
    repo = Repository.open(repo_dir)
    assert repo.store.get(entry["header"])[0] == "blob"
    assert {repo.store.get(t)[0] for t in entry["tensors"].values()} == {"tensor"}

    assert repo.read_attachment("HEAD", "distilled") == data
    cli.ok("attachments", "HEAD", "distilled", "-o", tmp_path / "out.bin", cwd=repo_dir)
    assert (tmp_path / "out.bin").read_bytes() == data
    listed = cli.json("attachments", "--json", cwd=repo_dir)["attachments"]
    assert listed[0]["present"] is True
    assert "20 tensors" in cli.ok("attachments", cwd=repo_dir).stdout
    out = tmp_path / "co"
    cli.ok("checkout", "HEAD", "--to", out, "--with-attachments", cwd=repo_dir)
    assert (out / "attachments" / "distilled").read_bytes() == data
    report = cli.json("verify", "--json", cwd=repo_dir)
    assert report["ok"] and report["integrity"]["attachments"] == 1
    assert cli.json("fsck", "--json", "--read-data", cwd=repo_dir)["ok"]


def test_the_site_data_loader_reads_a_tensor_attachment(cli, repo_dir, adapter_dir, tmp_path):
    import struct

    from mfgit.api.sitedata import load_site_data

    rows = struct.pack("<8f", *range(8))
    labels = struct.pack("<4q", 0, 1, 1, 0)
    buf = io.BytesIO()
    st.write(buf, [("input_ids", "F32", (4, 2), rows), ("labels", "I64", (4,), labels)])
    data = buf.getvalue()
    made = commit_distilled(cli, repo_dir, adapter_dir("a"), write(tmp_path / "d.safetensors", data))
    assert "tensors" in made["attachments"][0]
    repo = Repository.open(repo_dir)
    (ds,), (read,) = load_site_data(repo, [{"commit": repo.head(), "site": None}], "distilled")
    assert ds.tensors["labels"].tolist() == [0, 1, 1, 0]
    assert ds.tensors["input_ids"].flatten().tolist() == list(map(float, range(8)))
    assert read["digest"] == sha(data)


def test_changing_one_tensor_stores_only_that_tensor(cli, repo_dir, adapter_dir, tmp_path):
    parts = tensors(20, 4096)  # 20 × 16 KiB
    first = safetensors_bytes(parts)
    path = write(tmp_path / "d.safetensors", first)
    one = commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    before = stored_bytes(repo_dir)
    changed = dict(parts, x07=os.urandom(len(parts["x07"])))
    second = safetensors_bytes(changed)
    write(path, second)
    two = commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    grown = stored_bytes(repo_dir) - before
    # One 16 KiB tensor, a header blob (the same: same names and shapes) and a commit.
    assert grown < len(second) / 8, (grown, len(second))
    a, b = one["attachments"][0]["tensors"], two["attachments"][0]["tensors"]
    assert [n for n in a if a[n] != b[n]] == ["x07"]
    assert one["attachments"][0]["header"] == two["attachments"][0]["header"]
    repo = Repository.open(repo_dir)
    assert repo.read_attachment("HEAD~1", "distilled") == first
    assert repo.read_attachment("HEAD", "distilled") == second
    diff = cli.json("diff", "HEAD~1", "HEAD", "--json", cwd=repo_dir)
    assert [(c["name"], c["status"]) for c in diff["attachments"]] == [("distilled", "changed")]


@pytest.mark.parametrize("what", ["not-safetensors", "truncated", "bad-header", "no-tensors", "card"])
def test_other_files_and_malformed_safetensors_stay_one_blob(cli, repo_dir, adapter_dir, tmp_path, what):
    good = safetensors_bytes(tensors(2, 64))
    data, name = {
        "not-safetensors": (b"rows,labels\n1,0\n" * 100, "distilled"),
        "truncated": (good[:-5], "distilled"),
        "bad-header": (good[:8] + b"[" + good[9:], "distilled"),
        "no-tensors": (safetensors_bytes({}, {"k": "v"}), "distilled"),
        "card": (good, "README.md"),
    }[what]
    path = write(tmp_path / "f", data)
    made = cli.json("commit", adapter_dir("a"), "-m", "one", "--json", "--attach", f"{name}={path}", cwd=repo_dir)
    (entry,) = [a for a in made["attachments"] if a["name"] == name]
    assert entry["id"] == hashlib.sha256(b"blob " + data).hexdigest()
    assert "tensors" not in entry and "header" not in entry
    assert Repository.open(repo_dir).read_attachment("HEAD", name) == data


def _crafted(cli, repo_dir, adapter_dir, tmp_path, how: str) -> None:
    parts = tensors(4, 256)
    data = safetensors_bytes(parts, {"v": "1"})
    path = write(tmp_path / "d.safetensors", data)
    if how == "other-header":
        # Another file's header (same names and shapes, other metadata), stored by its own commit.
        write(path, safetensors_bytes(parts, {"v": "2"}))
        other = commit_distilled(cli, repo_dir, adapter_dir("a"), path, "other")["attachments"][0]
        write(path, data)
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    repo = Repository.open(repo_dir)
    (entry,) = repo.read_commit(repo.head()).attachments
    if how == "swapped":
        t = dict(entry["tensors"])
        t["x00"], t["x01"] = t["x01"], t["x00"]
        lie = dict(entry, tensors=t)
    else:
        lie = dict(entry, header=other["header"])
    replace_head(repo_dir, attachments=(lie,))


@pytest.mark.parametrize("how", ["swapped", "other-header"])
def test_parts_that_do_not_give_back_the_recorded_bytes_are_damage(cli, repo_dir, adapter_dir, tmp_path, how):
    _crafted(cli, repo_dir, adapter_dir, tmp_path, how)
    res = cli("verify", "--json", cwd=repo_dir)
    assert res.returncode != 0
    (p,) = json.loads(res.stdout)["integrity"]["problems"]
    assert p["what"] == "attachment distilled" and "is corrupt" in p["error"]

    res = cli("fsck", "--json", cwd=repo_dir)
    assert res.returncode != 0
    report = json.loads(res.stdout)
    assert not report["ok"] and report["missing"] == [] and report["corrupt"] == []
    (bad,) = report["corrupt_attachments"]
    assert bad["name"] == "distilled"
    text = cli("fsck", cwd=repo_dir)
    assert text.returncode != 0 and "Traceback" not in text.stdout + text.stderr
    assert sum("attachment 'distilled'" in line and "is corrupt" in line for line in text.stdout.splitlines()) == 1

    line = cli.fails("attachments", "HEAD", "distilled", cwd=repo_dir, code=5)
    assert "is corrupt" in line and "\n" not in line.strip()
    res = cli("checkout", "HEAD", "--to", tmp_path / "co", "--with-attachments", cwd=repo_dir)
    assert res.returncode == 5 and "Traceback" not in res.stderr


def test_a_missing_part_is_a_missing_object(cli, repo_dir, adapter_dir, tmp_path):
    data = safetensors_bytes(tensors(3, 64))
    made = commit_distilled(cli, repo_dir, adapter_dir("a"), write(tmp_path / "d.safetensors", data))
    tid = made["attachments"][0]["tensors"]["x01"]
    Repository.open(repo_dir).store.delete(tid)
    report = json.loads(cli("fsck", "--json", cwd=repo_dir).stdout)
    assert {"id": tid} in report["missing"] and not report["ok"]
    assert cli.json("attachments", "--json", cwd=repo_dir)["attachments"][0]["present"] is False
    res = cli("attachments", "HEAD", "distilled", cwd=repo_dir)
    assert res.returncode != 0 and "Traceback" not in res.stderr and tid in res.stderr


def test_gc_keeps_every_part(cli, repo_dir, adapter_dir, tmp_path):
    parts = tensors(5, 64)
    path = write(tmp_path / "d.safetensors", safetensors_bytes(parts))
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    second = safetensors_bytes(dict(parts, x02=os.urandom(256)))
    write(path, second)
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    cli.ok("gc", "--prune", "now", cwd=repo_dir)
    repo = Repository.open(repo_dir)
    assert repo.read_attachment("HEAD", "distilled") == second
    assert repo.read_attachment("HEAD~1", "distilled") == safetensors_bytes(parts)
    assert cli.json("fsck", "--json", "--read-data", cwd=repo_dir)["ok"]


def test_the_schema_takes_one_of_id_or_header_and_tensors(cli, repo_dir, adapter_dir, tmp_path):
    from mfgit.objects.schema import SchemaError, attachments

    oid = "a" * 64
    base = {"name": "d", "size": 1, "digest": oid, "private": False}
    attachments([dict(base, id=oid)])
    attachments([dict(base, header=oid, tensors={"x": oid})])
    for bad in (dict(base, id=oid, header=oid, tensors={"x": oid}), dict(base, header=oid),
                dict(base, header=oid, tensors={}), dict(base, header=oid, tensors={"x": "nope"}),
                dict(base, tensors={"x": oid}), dict(base, private=True, header=oid, tensors={"x": oid})):
        with pytest.raises(SchemaError):
            attachments([bad])


@pytest.mark.parametrize("kind", KINDS)
def test_push_fetch_and_clone_carry_every_part(world, kind, tmp_path):  # noqa: F811
    cli = world.cli
    remote = world.new_remote(kind)
    site = world.fresh("site")
    cli.ok("init", "--site", "hospital-a", site)
    cli.ok("remote", "add", "hub", remote.url, cwd=site)
    parts = tensors(6, 1024)
    first = safetensors_bytes(parts)
    path = write(tmp_path / "d.safetensors", first)
    cli.ok("commit", world.adapters["one"], "-m", "round 1", "--attach", f"distilled={path}", cwd=site)
    cli.ok("push", "hub", "main", cwd=site)
    second = safetensors_bytes(dict(parts, x03=os.urandom(4096)))
    write(path, second)
    cli.ok("commit", world.adapters["two"], "-m", "round 2", "--attach", f"distilled={path}", cwd=site)
    cli.ok("push", "hub", "main", cwd=site)
    assert any(parts["x00"] in data for data in remote_files(world, remote).values())

    clone = world.fresh("clone")
    cli.ok("clone", "-q", remote.url, clone)
    got = Repository.open(clone)
    assert got.read_attachment("HEAD", "distilled") == second
    assert got.read_attachment("HEAD~1", "distilled") == first
    assert cli.json("fsck", "--json", "--read-data", cwd=clone)["ok"]
    assert cli.json("verify", "--json", cwd=clone)["ok"]

    other = world.site("b", remote)
    Repository.open(other).fetch("hub")
    cli.ok("gc", "--prune", "now", cwd=other)
    assert Repository.open(other).read_attachment("hub/main", "distilled") == second
    assert Repository.open(other).read_attachment("hub/main~1", "distilled") == first
    world.assert_consistent(remote)


def test_commit_entries_keep_one_encoding(cli, repo_dir, adapter_dir, tmp_path):
    """The commit re-encodes to its own bytes with a split entry (the schema takes exactly what it writes)."""
    data = safetensors_bytes(tensors(2, 8))
    commit_distilled(cli, repo_dir, adapter_dir("a"), write(tmp_path / "d.safetensors", data))
    repo = Repository.open(repo_dir)
    c = repo.read_commit(repo.head())
    assert repo.put_commit(dataclasses.replace(c)) == repo.head()


def test_a_part_of_another_kind_is_damage_in_one_line(cli, repo_dir, adapter_dir, tmp_path):
    commit_distilled(cli, repo_dir, adapter_dir("a"), write(tmp_path / "d.safetensors", safetensors_bytes(tensors(3, 64))))
    repo = Repository.open(repo_dir)
    (entry,) = repo.read_commit(repo.head()).attachments
    replace_head(repo_dir, attachments=(dict(entry, tensors=dict(entry["tensors"], x01=entry["header"])),))
    line = cli.fails("attachments", "HEAD", "distilled", cwd=repo_dir, code=5)
    assert "is corrupt" in line and "is a blob, not a tensor" in line
    (p,) = json.loads(cli("verify", "--json", cwd=repo_dir).stdout)["integrity"]["problems"]
    assert p["what"] == "attachment distilled" and "not a tensor" in p["error"]
    (bad,) = json.loads(cli("fsck", "--json", cwd=repo_dir).stdout)["corrupt_attachments"]
    assert "not a tensor" in bad["error"]


def test_identical_tensors_of_one_file_are_one_object(cli, repo_dir, adapter_dir, tmp_path):
    same = os.urandom(4096)
    data = safetensors_bytes({"a": same, "b": same, "c": os.urandom(4096)})
    made = commit_distilled(cli, repo_dir, adapter_dir("a"), write(tmp_path / "d.safetensors", data))
    t = made["attachments"][0]["tensors"]
    assert t["a"] == t["b"] != t["c"]
    assert Repository.open(repo_dir).read_attachment("HEAD", "distilled") == data
    assert cli.json("fsck", "--json", "--read-data", cwd=repo_dir)["ok"]


# -- diff and pages: which tensors changed, not the whole map --------------------------------------


def test_diff_names_the_tensors_a_safetensors_attachment_added_removed_or_changed(cli, repo_dir, adapter_dir,
                                                                                  tmp_path):
    parts = tensors(6, 64)
    path = write(tmp_path / "d.safetensors", safetensors_bytes(parts))
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    second = {k: v for k, v in parts.items() if k != "x02"}
    second.update(x04=os.urandom(len(parts["x04"])), x09=os.urandom(256))
    write(path, safetensors_bytes(second))
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)

    (change,) = cli.json("diff", "HEAD~1", "HEAD", "--json", cwd=repo_dir)["attachments"]
    assert change["status"] == "changed"
    assert change["tensors"] == {"added": ["x09"], "removed": ["x02"], "changed": ["x04"], "unchanged": 4}
    assert change["header_changed"] is True  # other names and shapes
    text = cli.ok("diff", "HEAD~1", "HEAD", cwd=repo_dir).stdout
    assert "tensors: 1 changed, 1 added, 1 removed, 4 unchanged; header changed" in text
    assert "     M  x04\n" in text and "     A  x09\n" in text and "     D  x02\n" in text
    stat = cli.ok("diff", "HEAD~1", "HEAD", "--stat", cwd=repo_dir).stdout
    assert "tensors: 1 changed, 1 added, 1 removed, 4 unchanged" in stat and "x04" not in stat


def test_diff_of_a_safetensors_attachment_whose_metadata_alone_changed_lists_no_tensor(cli, repo_dir, adapter_dir,
                                                                                       tmp_path):
    parts = tensors(3, 64)
    path = write(tmp_path / "d.safetensors", safetensors_bytes(parts, {"round": "1"}))
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    write(path, safetensors_bytes(parts, {"round": "2"}))
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    (change,) = cli.json("diff", "HEAD~1", "HEAD", "--json", cwd=repo_dir)["attachments"]
    assert change["tensors"] == {"added": [], "removed": [], "changed": [], "unchanged": 3}
    assert change["header_changed"] is True
    assert "tensors: 3 unchanged; header changed" in cli.ok("diff", "HEAD~1", "HEAD", cwd=repo_dir).stdout


def test_diff_of_a_plain_blob_attachment_says_no_tensors(cli, repo_dir, adapter_dir, tmp_path):
    path = write(tmp_path / "rows.csv", b"rows,labels\n1,0\n")
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    write(path, b"rows,labels\n1,1\n")
    commit_distilled(cli, repo_dir, adapter_dir("a"), path)
    (change,) = cli.json("diff", "HEAD~1", "HEAD", "--json", cwd=repo_dir)["attachments"]
    assert change["status"] == "changed" and "tensors" not in change and "header_changed" not in change
    assert "tensors:" not in cli.ok("diff", "HEAD~1", "HEAD", cwd=repo_dir).stdout


def test_the_commit_page_counts_a_safetensors_attachments_tensors_instead_of_listing_them(cli, repo_dir, adapter_dir,
                                                                                           tmp_path):
    data = safetensors_bytes(tensors(40, 16))
    made = commit_distilled(cli, repo_dir, adapter_dir("a"), write(tmp_path / "d.safetensors", data))
    (entry,) = made["attachments"]
    cli.ok("pages", tmp_path / "pages", cwd=repo_dir)
    page = (tmp_path / "pages" / "commits" / f"{made['id']}.html").read_text(encoding="utf-8")
    section = page[page.index('id="attachments"'):page.index("</section>", page.index('id="attachments"'))]
    assert "distilled" in section and "40 tensors" in section
    assert sha(data) in section and str(len(data)) in section
    assert not any(tid in page for tid in entry["tensors"].values())
    assert "x00" not in section
