"""`mfgit verify`, signing and protected branches, attacked byte by byte.

A template repository: sites a and b commit signed adapters on sites/a and
sites/b (site a with a key from `mfgit keygen`, site b with a key from
OpenSSH's ssh-keygen when it is installed), the coordinator signs the merge on
main and a tag, and `.mfgit/allowed_signers` maps each branch to its key.
Each test tampers with a private copy: one byte of a stored commit, adapter
manifest or tensor; a re-encoded commit with an edited recipe, message or
signature; an allowed-signers entry; and pushes to a protected branch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Cli, build_adapter, in_process_env

DAMAGED, SIGNATURE, MERGE, BAD_INPUT = 5, 9, 8, 4


@pytest.fixture(scope="module")
def template(tmp_path_factory, adapter_store):
    root = tmp_path_factory.mktemp("audit-verify")
    cli = Cli(root / "home", root)
    keys = root / "keys"
    info_a = cli.json("keygen", keys / "site-a", "--json", "--comment", "alice@hospital-a")
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bob@hospital-b",
                        "-f", str(keys / "site-b")], check=True, capture_output=True)
    else:
        cli.ok("keygen", keys / "site-b")
    cli.json("keygen", keys / "coordinator", "--json")
    repo = root / "repo"
    from mfgit.api.repository import Repository

    # The history is made in one process (what `commit --sign`, `merge -S` and `tag -s` call); the tests
    # drive the CLI on it.
    with in_process_env(cli.env):
        r = Repository.init(repo)
        for s, seed in (("a", 60), ("b", 61)):
            r.switch(f"sites/{s}", orphan=True)
            r.config.set("site", f"hospital-{s}")
            r.config.set("signing.key", str(keys / f"site-{s}"))
            r.commit(build_adapter(adapter_store, seed=seed), f"site {s}", sign=r.signer())
        r.config.set("site", "coordinator")
        r.config.set("signing.key", str(keys / "coordinator"))
        r.switch("main", orphan=True)
        r.merge(["sites/a", "sites/b"], weights=[0.5, 0.5], rank="sum", message="composite", sign=r.signer())
        r.tag("v1", "main", message="release 1", sign=r.signer())
    lines = [f"main {(keys / 'coordinator.pub').read_text().strip()}",
             f"sites/a {(keys / 'site-a.pub').read_text().strip()}",
             f"sites/b,sites/b-* {(keys / 'site-b.pub').read_text().strip()}"]
    (repo / ".mfgit" / "allowed_signers").write_text("# branch key comment\n" + "\n".join(lines) + "\n")
    assert info_a["key_id"].startswith("SHA256:")
    return root, repo, keys


@pytest.fixture
def work(tmp_path, template, monkeypatch):
    """(cli, repository, keys) on a private copy; in-process calls see the cli's environment."""
    root, repo, keys = template
    dst = tmp_path / "repo"
    shutil.copytree(repo, dst, symlinks=True)
    cli = Cli(root / "home", dst)
    for k in [k for k in os.environ if k.startswith("MFGIT_")]:
        monkeypatch.delenv(k)
    for k, v in cli.env.items():
        if k.startswith("MFGIT_"):
            monkeypatch.setenv(k, v)
    return cli, dst, keys


@pytest.fixture
def fresh(adapter_store, tmp_path):
    """fresh(seed): a new copy of a real adapter directory."""

    def make(seed: int) -> Path:
        dst = tmp_path / f"adapter-{seed}"
        if not dst.exists():
            shutil.copytree(build_adapter(adapter_store, seed=seed), dst)
        return dst

    return make


def _open(repo: Path, cli: Cli | None = None):
    from mfgit.api.repository import Repository

    return Repository.open(repo)


def _object_file(repo: Path, oid: str) -> Path:
    return repo / ".mfgit" / "objects" / oid[:2] / oid[2:]


def _flip_last_byte(path: Path) -> None:
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _replace_commit(repo_obj, ref: str, cid: str, **changes) -> str:
    """Re-encode commit `cid` with `changes` and point `ref` at the new object."""
    c = repo_obj.read_commit(cid)
    new = dataclasses.replace(c, **changes)
    nid = repo_obj.put_commit(new)
    repo_obj.refs.update(ref, nid, cid, who="attacker", message="tamper")
    return nid


def test_signed_history_verifies_with_reproduce_and_tag(work):
    cli, repo, keys = work
    r = cli.json("verify", "main", "--signatures", "--reproduce", "--json")
    assert r["ok"] and r["integrity"]["ok"] and r["branch"] == "main"
    assert r["integrity"]["commits"] == 3 and r["integrity"]["tensors"] >= 16
    entries = {(e["commit"], e["branch"]): e for e in r["signatures"]["commits"]}
    assert {b for _, b in entries} == {"main", "sites/a", "sites/b"}
    assert all(e["status"] == "good" and e["ok"] for e in entries.values())
    assert r["signatures"]["protected"] is True
    (m,) = r["reproduce"]["merges"]
    assert m["ok"] and m["identical"] and m["device"] == "cpu"
    # The commit signature has the documented shape and the key's ssh fingerprint.
    show = cli.json("show", "main", "--json")["commit"]
    sig = show["signature"]
    assert set(sig) == {"format", "public_key", "key_id", "sig"} and sig["format"] == "ed25519"
    if shutil.which("ssh-keygen"):
        fp = subprocess.run(["ssh-keygen", "-lf", str(keys / "coordinator.pub")], capture_output=True, text=True).stdout
        assert sig["key_id"] in fp
    # The signed tag is checked too.
    t = cli.json("verify", "v1", "--signatures", "--json")
    assert t["ok"] and t["signatures"]["tags"][0]["status"] == "good" and t["signatures"]["tags"][0]["name"] == "v1"
    text = cli.ok("verify", "main", "--signatures").stdout
    assert text.rstrip().endswith("verify: ok") and "good signature" in text


@pytest.mark.parametrize("what", ["commit", "adapter manifest", "tensor", "signature object"])
def test_one_byte_changed_in_a_stored_object_fails(work, what):
    cli, repo, _ = work
    show = cli.json("show", "sites/a", "--json")
    cid, aid = show["id"], show["commit"]["adapter"]
    if what == "commit":
        target = cid
    elif what == "adapter manifest":
        target = aid
    elif what == "tensor":
        target = next(iter(_open(repo, cli).read_adapter(aid).tensors.values()))["id"]
    else:  # the annotated, signed tag object
        target = (repo / ".mfgit" / "refs" / "tags" / "v1").read_text().strip()
    _flip_last_byte(_object_file(repo, target))
    if what == "signature object":
        # The tag cannot even be peeled to its commit: one line naming the object.
        line = cli.fails("verify", "v1", "--signatures", code=DAMAGED)
        assert target in line
        return
    rev = "main"
    res = cli("verify", rev, "--json")
    assert res.returncode == DAMAGED, res.stderr
    r = json.loads(res.stdout)
    assert not r["ok"] and not r["integrity"]["ok"]
    (p,) = r["integrity"]["problems"]
    assert p["object"] == target and target in p["error"] and p["commit"] == cid
    text = cli("verify", rev).stdout
    assert "FAIL" in text and "verify: FAILED" in text


def test_edited_recipe_is_caught_by_reproduce(work):
    cli, repo, _ = work
    r = _open(repo, cli)
    cid = r.resolve("main")
    c = r.read_commit(cid)
    prov = json.loads(json.dumps(c.provenance))
    prov["inputs"][0]["weight"] = 0.6  # the recorded recipe no longer produced this adapter
    prov["recipe"]["params"]["lambda"] = 1.0
    nid = _replace_commit(r, "refs/heads/main", cid, provenance=prov, signature=None)
    res = cli("verify", "main", "--reproduce", "--json")
    assert res.returncode == MERGE, res.stderr
    rep = json.loads(res.stdout)
    assert rep["integrity"]["ok"]
    (m,) = rep["reproduce"]["merges"]
    assert m["commit"] == nid and not m["ok"] and not m["identical"] and m["max_abs_diff"] > 1e-4
    assert m["outcome"] == "mismatch" and "does not match" in m["reason"]
    assert rep["failures"] == [{"check": "reproduce", "commit": nid, "reason": m["reason"]}]


def test_changed_field_of_signed_commit_fails_signature(work):
    cli, repo, _ = work
    r = _open(repo, cli)
    cid = r.resolve("sites/a")
    nid = _replace_commit(r, "refs/heads/sites/a", cid, message="site a (now with a different story)")
    res = cli("verify", "sites/a", "--signatures", "--json")
    assert res.returncode == SIGNATURE
    rep = json.loads(res.stdout)
    assert rep["integrity"]["ok"]
    (f,) = rep["failures"]
    assert f["commit"] == nid and f["check"] == "signature" and "does not verify" in f["reason"]


def test_changed_byte_of_signature_fails(work):
    cli, repo, _ = work
    r = _open(repo, cli)
    cid = r.resolve("main")
    c = r.read_commit(cid)
    import base64

    raw = bytearray(base64.b64decode(c.signature["sig"]))
    raw[10] ^= 0x01
    nid = _replace_commit(r, "refs/heads/main", cid, signature={**c.signature, "sig": base64.b64encode(bytes(raw)).decode()})
    res = cli("verify", "main", "--signatures", "--json")
    assert res.returncode == SIGNATURE
    rep = json.loads(res.stdout)
    bad = [e for e in rep["signatures"]["commits"] if not e["ok"]]
    assert [(e["commit"], e["branch"], e["status"]) for e in bad] == [(nid, "main", "bad")]


def test_swapped_adapter_fails_signature(work):
    """The signature covers the adapter id: pointing a signed commit at another adapter breaks it."""
    cli, repo, _ = work
    r = _open(repo, cli)
    cid = r.resolve("sites/a")
    other = r.read_commit(r.resolve("sites/b")).adapter
    _replace_commit(r, "refs/heads/sites/a", cid, adapter=other)
    assert cli("verify", "sites/a", "--signatures").returncode == SIGNATURE


def test_unsigned_commit_on_protected_branch(work, fresh):
    cli, repo, _ = work
    src = fresh(62)
    cli.ok("switch", "sites/a")
    cli.ok("config", "site", "hospital-a")
    cli.ok("commit", src, "-m", "forgot to sign")
    res = cli("verify", "sites/a", "--signatures", "--json")
    assert res.returncode == SIGNATURE
    rep = json.loads(res.stdout)
    (f,) = rep["failures"]
    assert f["branch"] == "sites/a" and "unsigned commit on protected branch sites/a" in f["reason"]
    assert f["commit"] == cli.json("show", "sites/a", "--json")["id"]
    # --branch adds a branch to judge on; it never lifts the protection of the branch REV names.
    res = cli("verify", "sites/a", "--signatures", "--branch", "scratch", "--json")
    assert res.returncode == SIGNATURE
    rep = json.loads(res.stdout)
    assert rep["branches"] == ["sites/a", "scratch"]
    assert [(f["commit"], f["branch"]) for f in rep["failures"]] == [(f["commit"], "sites/a")]


def test_key_not_allowed_for_the_branch(work, fresh):
    cli, repo, keys = work
    cli.ok("switch", "sites/b")
    cli.ok("config", "site", "hospital-b")
    cli.ok("config", "signing.key", keys / "site-a")  # site a's key on site b's branch
    cli.ok("commit", fresh(63), "-m", "b, signed by a", "-S")
    res = cli("verify", "sites/b", "--signatures", "--json")
    assert res.returncode == SIGNATURE
    (f,) = json.loads(res.stdout)["failures"]
    assert "not allowed for branch sites/b" in f["reason"] and "allowed only for sites/a" in f["reason"]
    # The coordinator's merge of it is judged on sites/b too: main fails as well.
    cli.ok("switch", "main")
    cli.ok("config", "site", "coordinator")
    cli.ok("config", "signing.key", keys / "coordinator")
    r = _open(repo, cli)
    r.merge(["sites/b"], weights=[0.5], sign=r.signer())
    res = cli("verify", "main", "--signatures", "--json")
    assert res.returncode == SIGNATURE
    rep = json.loads(res.stdout)
    assert [(f["branch"], f["check"]) for f in rep["failures"]] == [("sites/b", "signature")]


def _signature_lines(text: str, policy: str) -> list[str]:
    """The per-commit lines of verify's signatures section, with the policy's path taken out."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("signatures: "))
    body = [ln.replace(policy, "<policy>") for ln in lines[start + 1:] if ln.startswith("  ")]
    assert lines[-1].startswith("verify: ")
    return body


def test_remote_tracking_ref_and_commit_ids_of_a_protected_branch_get_its_policy(work, fresh, tmp_path):
    """Regression: `verify --signatures` on `origin/sites/a` or a commit id applied no branch policy.

    An unsigned commit, one signed by a key outside the allowed signers and one
    signed by a key allowed only for sites/b, on protected sites/a, all passed
    ("verify: ok", exit 0) when named as `origin/sites/a` or by id; with the local
    name they exit 9. Every way of naming them now gives what the local name gives,
    and none of them can be pushed to the protected branch.
    """
    cli, repo, keys = work
    cli.ok("keygen", tmp_path / "mallory", "--comment", "mallory@elsewhere")
    cli.ok("switch", "sites/a")
    cli.ok("config", "site", "hospital-a")
    cli.ok("commit", fresh(70), "-m", "unsigned")
    cli.ok("config", "signing.key", tmp_path / "mallory")
    cli.ok("commit", fresh(71), "-m", "signed by a key outside the policy", "-S")
    cli.ok("config", "signing.key", keys / "site-b")
    cli.ok("commit", fresh(72), "-m", "signed by site b's key", "-S")
    policy = repo / ".mfgit" / "allowed_signers"
    source = json.loads(cli("verify", "sites/a", "--signatures", "--json").stdout)["signatures"]["policy"]

    def judged(c: Cli, rev: str) -> list[str]:
        res = c("verify", rev, "--signatures")
        assert res.returncode == SIGNATURE, f"verify {rev}: exit {res.returncode}\n{res.stdout}{res.stderr}"
        return _signature_lines(res.stdout, source)

    expected = judged(cli, "sites/a")
    fails = [ln for ln in expected if ln.startswith("  FAIL")]
    assert len(fails) == 3, expected
    assert "unsigned commit on protected branch sites/a" in fails[2]
    assert "not allowed for branch sites/a" in fails[1] and "allowed only" not in fails[1]
    assert "not allowed for branch sites/a" in fails[0] and "allowed only for sites/b,sites/b-*" in fails[0]
    expected_1 = judged(cli, "sites/a~1")

    # A participant without the policy publishes them on the shared folder.
    hub = tmp_path / "hub.mfgit"
    cli.ok("init", "--bare", hub)
    cli.ok("remote", "add", "origin", hub)
    assert "refusing to push to protected branch sites/a" in cli.fails("push", "origin", "sites/a", code=SIGNATURE)
    aside = tmp_path / "policy-aside"
    shutil.move(policy, aside)
    cli.ok("push", "origin", "sites/a")
    shutil.move(aside, policy)
    cli.ok("fetch", "origin")
    tip = cli.json("show", "sites/a", "--json")["id"]
    for rev in ("origin/sites/a", "refs/remotes/origin/sites/a", tip, tip[:10]):
        assert judged(cli, rev) == expected, rev

    # An auditor who only fetched: no local branch at all, only remote-tracking ones.
    auditor = tmp_path / "auditor"
    cli.ok("init", auditor)
    aud = cli.at(auditor)
    aud.ok("remote", "add", "origin", hub)
    aud.ok("fetch", "origin")
    aud.ok("config", "signing.allowedSigners", policy)
    for rev in ("origin/sites/a", "refs/remotes/origin/sites/a", tip, tip[:10]):
        assert judged(aud, rev) == expected, rev
    assert judged(aud, "origin/sites/a~1") == expected_1
    assert judged(aud, tip + "~1") == expected_1
    rep = json.loads(aud("verify", tip, "--signatures", "--json").stdout)
    assert rep["branch"] == "sites/a" and rep["branches"] == ["sites/a"] and rep["signatures"]["protected"]

    # Pushing them to the protected branch of another remote is refused, however they are named.
    hub2 = tmp_path / "hub2.mfgit"
    aud.ok("init", "--bare", hub2)
    aud.ok("remote", "add", "second", hub2)
    for spec in ("origin/sites/a:sites/a", f"{tip}:sites/a", "refs/remotes/origin/sites/a:refs/heads/sites/a",
                 f"{tip[:10]}:refs/heads/sites/a", "origin/sites/a"):
        line = aud.fails("push", "second", spec, code=SIGNATURE)
        assert "refusing to push to" in line and "sites/a" in line, (spec, line)
    assert not [p for p in (hub2 / "refs").rglob("*") if p.is_file()]
    # Named for another, unprotected branch on purpose, they may go there (as from the local name).
    aud.ok("push", "second", "origin/sites/a:scratch")


def test_commit_on_no_branch_is_judged_on_its_sites_branch(work, fresh):
    """A commit no branch contains is judged on sites/<site> of the site it records."""
    cli, repo, _ = work
    cli.ok("config", "site", "a")
    cli.ok("switch", "-c", "loose", "sites/a")
    cli.ok("commit", fresh(73), "-m", "unsigned, then left on no branch")
    cid = cli.json("show", "--json")["id"]
    cli.ok("switch", "sites/a")
    cli.ok("branch", "-D", "loose")
    res = cli("verify", cid, "--signatures", "--json")
    assert res.returncode == SIGNATURE
    rep = json.loads(res.stdout)
    assert rep["branches"] == ["sites/a"]
    assert [(f["commit"], f["branch"]) for f in rep["failures"]] == [(cid, "sites/a")]


def test_changed_allowed_signers_entry(work):
    cli, repo, keys = work
    policy = repo / ".mfgit" / "allowed_signers"
    lines = policy.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("main "))
    kind, blob = lines[i].split()[1:3]
    # Change one base64 character of the key (keeping it decodable).
    pos = len(blob) - 10
    blob = blob[:pos] + ("A" if blob[pos] != "A" else "B") + blob[pos + 1:]
    lines[i] = f"main {kind} {blob}"
    policy.write_text("\n".join(lines) + "\n")
    res = cli("verify", "main", "--signatures", "--json")
    assert res.returncode in (SIGNATURE, BAD_INPUT), res.stderr
    if res.returncode == SIGNATURE:
        (f,) = json.loads(res.stdout)["failures"]
        assert f["branch"] == "main" and "not allowed for branch main" in f["reason"]
    else:
        assert "allowed_signers" in res.stderr
    # A policy named in config must exist: a missing file never turns protection off silently.
    cli.ok("config", "signing.allowedSigners", repo / "nowhere")
    line = cli.fails("verify", "main", "--signatures", code=BAD_INPUT)
    assert "does not exist" in line


def test_push_to_protected_branch_refuses_failing_commits(work, fresh, tmp_path):
    cli, repo, keys = work
    remote = tmp_path / "hub.mfgit"
    cli.ok("init", "--bare", remote)
    cli.ok("remote", "add", "origin", remote)
    # Signed history: accepted.
    cli.ok("push", "origin", "main")
    cli.ok("push", "origin", "sites/a")
    before = (remote / "refs" / "heads" / "sites" / "a").read_text()
    # An unsigned commit on a protected branch: refused, the remote ref does not move.
    cli.ok("switch", "sites/a")
    cli.ok("config", "signing.key", keys / "site-a")
    cli.ok("commit", fresh(64), "-m", "unsigned")
    line = cli.fails("push", "origin", "sites/a", code=SIGNATURE)
    assert "refusing to push to protected branch sites/a" in line and "unsigned" in line
    assert (remote / "refs" / "heads" / "sites" / "a").read_text() == before
    # Pushing it to an unprotected branch is fine.
    cli.ok("push", "origin", "sites/a:scratch")
    # The remote's own allowed_signers protects it even when the pusher has none.
    shutil.copy(repo / ".mfgit" / "allowed_signers", remote / "allowed_signers")
    (repo / ".mfgit" / "allowed_signers").unlink()
    line = cli.fails("push", "origin", "sites/a", code=SIGNATURE)
    assert "origin:allowed_signers" in line
    # Signed again on top: still refused, the unsigned commit is in between.
    cli.ok("commit", fresh(65), "-m", "signed", "-S")
    cli.fails("push", "origin", "sites/a", code=SIGNATURE)


def test_keys_files_and_errors(work, fresh, tmp_path):
    cli, repo, keys = work
    priv = keys / "site-a"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert (keys / "site-a.pub").read_text().startswith("ssh-ed25519 ")
    assert "OPENSSH PRIVATE KEY" in priv.read_text()
    assert cli.fails("keygen", priv, code=BAD_INPUT).endswith("then: mfgit config signing.key PATH)")
    # A key readable by others is refused, like ssh does.
    loose = tmp_path / "loose"
    shutil.copy(priv, loose)
    os.chmod(loose, 0o644)
    cli.ok("config", "signing.key", loose)
    line = cli.fails("commit", fresh(66), "-m", "x", "-S", code=BAD_INPUT)
    assert "chmod 600" in line
    cli.ok("config", "--unset", "signing.key")
    line = cli.fails("tag", "-s", "v2", code=BAD_INPUT)
    assert "signing.key is not set" in line
    ec = cli.json("keygen", tmp_path / "ec", "--type", "ecdsa-p256", "--json")
    assert Path(ec["public_key_pem"]).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    # An ECDSA P-256 key signs commits too.
    cli.ok("config", "signing.key", tmp_path / "ec")
    cli.ok("switch", "-c", "scratch", "sites/a")
    cli.ok("commit", fresh(66), "-m", "ecdsa", "-S")
    assert cli.json("show", "--json")["commit"]["signature"]["format"] == "ecdsa-p256"
    rep = cli.json("verify", "--signatures", "--json")
    assert rep["ok"] and rep["signatures"]["commits"][0]["status"] == "good"


def test_reproduce_across_device_types_uses_the_tolerance(work):
    """A merge recorded on another device type is accepted within the tolerance, not bit for bit."""
    cli, repo, _ = work
    r = _open(repo, cli)
    cid = r.resolve("main")
    c = r.read_commit(cid)
    prov = json.loads(json.dumps(c.provenance))
    prov["inputs"][0]["weight"] *= 1 + 1e-6  # a rounding-sized difference in the result
    prov["device"] = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    nid = _replace_commit(r, "refs/heads/main", cid, provenance=prov, signature=None)
    rep = cli.json("verify", "main", "--reproduce", "--device", "cpu", "--json")
    (m,) = rep["reproduce"]["merges"]
    assert rep["ok"] and m["ok"] and not m["identical"] and m["same_device_type"] is False
    assert 0 < m["max_abs_diff"] < 1e-6 and "within tolerance" in m["reason"]
    strict = r.verify("main", reproduce=True, device="cpu", tolerance=1e-12)
    assert not strict["ok"] and "tolerance 1e-12" in strict["failures"][0]["reason"]
    # Recorded on the CPU, the same difference is told apart from bit-identity too (another BLAS or
    # CPU sums in another order), and beyond the tolerance it is a mismatch.
    prov["device"] = {"type": "cpu", "name": "cpu"}
    _replace_commit(r, "refs/heads/main", nid, provenance=prov)
    (same,) = r.verify("main", reproduce=True, device="cpu")["reproduce"]["merges"]
    assert same["ok"] and same["outcome"] == "within-tolerance" and same["same_device_type"]
    assert same["reason"].startswith("differs only by floating-point order (max |ΔW difference| ")
    strict = r.verify("main", reproduce=True, device="cpu", tolerance=1e-12)
    assert not strict["ok"] and strict["reproduce"]["merges"][0]["outcome"] == "mismatch"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="OpenSSH's ssh-keygen is not installed")
def test_passphrase_protected_ssh_key(work, fresh, tmp_path):
    cli, repo, _ = work
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "correct horse", "-f", str(key)], check=True)
    cli.ok("config", "signing.key", key)
    cli.ok("switch", "-c", "scratch", "sites/a")
    line = cli.fails("commit", fresh(67), "-m", "x", "-S", code=BAD_INPUT)
    assert "is encrypted; set MFGIT_SIGNING_PASSPHRASE" in line
    assert "wrong passphrase" in cli.with_env(MFGIT_SIGNING_PASSPHRASE="wrong").fails("commit", fresh(67), "-m", "x", "-S")
    cli.with_env(MFGIT_SIGNING_PASSPHRASE="correct horse").ok("commit", fresh(67), "-m", "signed with my ssh key", "-S")
    sig = cli.json("show", "--json")["commit"]["signature"]
    fp = subprocess.run(["ssh-keygen", "-lf", str(key) + ".pub"], capture_output=True, text=True).stdout
    assert sig["key_id"] in fp and sig["format"] == "ed25519"
    assert cli.json("verify", "--signatures", "--json")["ok"]
