"""Site evaluations as signed notes, their transfer, and choosing among candidate composites.

Three hospitals (the real breast-cancer sites of tests/tinysites.py) and a coordinator
share a bare hub. The coordinator publishes candidate composites; each site
scores them on its own held-out data and pushes only the numbers; the
coordinator chooses by the sites' notes — only those signed by a key its
allowed-signers file lists for the site the note claims. No site data ever
reaches another repository or the score function of another site.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("nevergrad")

from tests.conftest import Cli, isolated_env  # noqa: E402
from tests.test_search import SITES, demo_sites  # noqa: E402


def site_score(model, data):
    import numpy as np
    import torch
    from torch.nn import functional as F

    x, y = data
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    acc = float((logits.argmax(-1).numpy() == y).mean())
    return {"score": float(F.cross_entropy(logits, torch.from_numpy(y))), "acc": acc, "n": float(np.size(y))}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """hub + three signed site repositories (each with its own data) + a coordinator."""
    from mfgit.audit.keys import keygen
    from mfgit.api.repository import Repository

    shared = demo_sites(tmp_path_factory)
    root = tmp_path_factory.mktemp("notes")
    hub = root / "hub.mfgit"
    Repository.init(hub, bare=True)
    sites = {}
    for i, name in enumerate(SITES):
        repo = Repository.init(root / name, site=name)
        repo.config.set("user.name", f"{name} team")
        repo.config.set("user.email", f"ml@{name}.example")
        keygen(root / "keys" / name, comment=name)
        repo.config.set("signing.key", str(root / "keys" / name))
        repo.remote_add("origin", str(hub))
        repo.switch(f"sites/{name}", orphan=True)
        repo.commit(shared["root"] / "adapters" / name, f"{name} LoRA", meta={"samples": 10 + i})
        repo.push("origin", [f"sites/{name}"])
        split = shared["data"].sites[i]
        sites[name] = {"repo": repo, "data": (split.x_test, split.y_test)}
    coord = Repository.init(root / "coordinator")
    coord.config.set("user.name", "Coordinator")
    coord.config.set("user.email", "coord@example.org")
    coord.remote_add("origin", str(hub))
    coord.fetch("origin")
    # Only notes signed by a key allowed for the site they claim count: the coordinator lists each site's key.
    (coord.gitdir / "allowed_signers").write_text(
        "".join(f"sites/{name} {(root / 'keys' / f'{name}.pub').read_text().strip()}\n" for name in SITES))
    return {"root": root, "hub": hub, "sites": sites, "coord": coord, "shared": shared}


def _base(net):
    from tests.tinysites import load_base

    return lambda: load_base(net["shared"]["base"])


def test_candidates_evaluated_at_the_sites_then_selected(net):
    from peft import PeftModel

    from mfgit.api.repository import Repository
    from mfgit.errors import MergeError

    coord = net["coord"]
    revs = [f"origin/sites/{s}" for s in SITES]
    rep = coord.merge(revs, strategy="linear", candidates=4, seed=7)
    rid = rep.round
    assert [c["branch"] for c in rep.candidates] == [f"candidates/{rid}/{k}" for k in range(4)]
    assert rep.candidates[0]["weights"] == pytest.approx([1 / 3] * 3)  # candidate 0: the default weights
    assert coord.head() is None  # main did not move
    again = coord.merge(revs, strategy="linear", candidates=4, seed=7)  # same seed: the same round, idempotent
    assert again.round == rid and [c["commit"] for c in again.candidates] == [c["commit"] for c in rep.candidates]
    coord.push("origin", [c["branch"] for c in rep.candidates])

    # each site scores every candidate on its own data; only numbers leave
    received = {}
    for name, site in net["sites"].items():
        repo = site["repo"]
        repo.fetch("origin")
        calls = []

        def recording(model, data, _calls=calls):
            _calls.append((model, data))
            return site_score(model, data)

        notes = repo.evaluate([f"origin/candidates/{rid}/{k}" for k in range(4)], score=recording,
                              name=f"{name}-val", base=_base(net), data=site["data"])
        assert len(calls) == 4
        assert all(isinstance(m, PeftModel) and d is site["data"] for m, d in calls)
        for n in notes:
            assert n["ok"] and n["signature"]["status"] == "good" and n["measured_by"]["site"] == name
            text = json.dumps(n)
            assert len(text) < 4000 and "x_test" not in text  # numbers and provenance, not data
        received[name] = {n["commit"]: n["values"]["score"] for n in notes}
        report = repo.push_notes("origin")
        assert report["status"] in ("new", "updated")
    from mfgit.repo import notes as notes_api

    hub = Repository.open(net["hub"])
    assert notes_api.count(notes_api.read_index(hub)) == 12  # every site's notes, unioned
    assert hub.fsck()["ok"]

    got = coord.fetch_notes("origin")
    assert got["new_notes"] == 12
    rep_sel = coord.merge([], from_candidates=rid, select_by=[f"{s}-val" for s in SITES])
    sel = rep_sel.provenance["selection"]
    by_commit = {c["commit"]: k for k, c in enumerate(rep.candidates)}
    worst = {k: max(received[s][c["commit"]] for s in SITES) for k, c in enumerate(rep.candidates)}
    best = min(worst, key=lambda k: (worst[k], k))
    assert sel["chosen"]["index"] == best and sel["rule"] == "worst"
    assert sel["chosen"]["aggregate"] == pytest.approx(worst[best])
    assert rep_sel.adapter == rep.candidates[best]["adapter"]  # exactly what the sites evaluated
    assert coord.read_commit(rep_sel.commit).provenance["kind"] == "merge"
    assert [i["weight"] for i in rep_sel.provenance["inputs"]] == rep.candidates[best]["weights"]
    for row in sel["candidates"]:
        assert by_commit[row["commit"]] == row["index"]
        assert all(v["signature"] == "good" for v in row["scores"].values())
    # the branch has moved since the round: selecting again on it is refused
    with pytest.raises(MergeError, match="moved since round"):
        coord.merge([], from_candidates=rid, select_by=[f"{s}-val" for s in SITES])

    # the mean rule, on a branch where the round was built (unborn)
    coord.switch("by-mean", orphan=True)
    rep_mean = coord.merge([], from_candidates=rid, select_by=",".join(f"{s}-val" for s in SITES), select_rule="mean")
    mean = {k: sum(received[s][c["commit"]] for s in SITES) / 3 for k, c in enumerate(rep.candidates)}
    assert rep_mean.provenance["selection"]["chosen"]["index"] == min(mean, key=lambda k: (mean[k], k))

    # a tampered note (a better score under the old signature) is flagged and not used
    from mfgit.objects.canonical import canonical_json

    worst_k = max(worst, key=lambda k: (worst[k], -k))
    victim_commit = rep.candidates[worst_k]["commit"]
    victim = coord.notes_for(victim_commit)[0]
    raw = json.loads(coord.read_object(victim["id"]).data)
    raw["values"]["score"] = -100.0
    forged = coord.store.put("blob", canonical_json(raw))
    index = notes_api.read_index(coord)
    index[victim_commit] = sorted([forged, *[i for i in index[victim_commit] if i != victim["id"]]])
    old = coord.refs.read(notes_api.NOTES_REF)
    coord.refs.update(notes_api.NOTES_REF, notes_api.write_snapshot(coord, index), old)
    shown = coord.notes_show(victim_commit)
    assert not shown["ok"]
    bad = [n for n in shown["notes"] if n["id"] == forged][0]
    assert bad["signature"]["status"] == "bad" and "bad signature" in bad["problem"]
    coord.switch("after-forgery", orphan=True)
    rep_f = coord.merge([], from_candidates=rid, select_by=[f"{s}-val" for s in SITES])
    assert rep_f.provenance["selection"]["chosen"]["index"] == best
    row = [r for r in rep_f.provenance["selection"]["candidates"] if r["commit"] == victim_commit][0]
    assert row["aggregate"] is None and any(r["note"] == forged for r in row["rejected"])


def test_notes_on_the_command_line_and_across_remotes(net, tmp_path):
    """eval / notes show / log / push --notes / fetch --notes through the real command; fsck and gc keep notes."""
    from mfgit.repo import notes as notes_api
    from mfgit.api.repository import Repository
    from mfgit.objects.canonical import canonical_json

    root = net["root"]
    env = isolated_env(tmp_path / "home")
    cli = Cli(tmp_path / "home", root, env)
    shared = net["shared"]["root"]
    site_a = root / SITES[0]
    # a site evaluates its own commit from the command line; the score module from the current
    # directory, a git work tree whose revision the note records
    import git

    code = tmp_path / "evalcode"
    code.mkdir()
    for name in ("scoremod.py", "tinysites.py"):  # the score module and the model and data it imports
        (code / name).write_text((shared / name).read_text(encoding="utf-8"), encoding="utf-8")
    gitrepo = git.Repo.init(code)
    gitrepo.index.add(["scoremod.py", "tinysites.py"])
    sha = gitrepo.index.commit("score code", author=git.Actor("a", "a@x"), committer=git.Actor("a", "a@x")).hexsha
    gitrepo.close()
    res = cli.ok("-C", site_a, "eval", "HEAD", "--score", "scoremod:score", "--name", "public-val", cwd=code)
    assert "public-val: score=" in res.stdout and "signed SHA256:" in res.stdout
    note = cli.json("-C", site_a, "notes", "show", "--json")["notes"][0]
    assert note["code"]["commit"] == sha and note["code"]["dirty"] is False
    assert note["scorer"] == {"score": "scoremod:score", "base": "scoremod:base_model", "data": "scoremod:load_data"}
    out = cli.ok("-C", site_a, "notes", "show").stdout
    assert "name       public-val" in out and "signature  good" in out and "notes: ok" in out
    assert "Note:   public-val: score=" in cli.ok("-C", site_a, "log", "-n", "1").stdout
    shown = cli.json("-C", site_a, "show", "--json")
    assert shown["notes"][0]["name"] == "public-val" and shown["notes"][0]["ok"]
    sent = cli.json("-C", site_a, "push", "origin", "--notes", "--json")
    assert sent["notes"]["status"] in ("new", "updated") and "refs" not in sent  # only the notes were pushed

    # a second site adds notes without having seen the first site's: the hub keeps both (union)
    b = net["sites"][SITES[1]]["repo"]
    before = notes_api.count(notes_api.read_index(Repository.open(net["hub"])))
    b.evaluate(["HEAD"], score=lambda m: 0.5, name="const", base=_base(net))
    b.push_notes("origin")
    hub = Repository.open(net["hub"])
    assert notes_api.count(notes_api.read_index(hub)) == before + 1
    fetched = cli.json("-C", site_a, "fetch", "origin", "--notes", "--json")
    assert fetched["notes"]["new_notes"] >= 1
    a = Repository.open(site_a)
    assert notes_api.read_index(a) == notes_api.read_index(hub)
    assert cli.json("-C", site_a, "fsck", "--json")["ok"] and hub.fsck()["ok"]
    # The site's repository object wrote in this process, so it holds the
    # store's writer lock, which a gc waits for (docs/design.md, "gc and fsck").
    net["sites"][SITES[0]]["repo"].store.close()
    cli.ok("-C", site_a, "gc", "--prune", "now")
    assert a.notes_show("HEAD")["ok"] and a.notes_show("HEAD")["notes"]

    # a note edited after signing: notes show flags it and exits 9 (signature)
    note = a.notes_for(a.head())[0]
    raw = json.loads(a.read_object(note["id"]).data)
    raw["values"]["score"] = 0.0
    forged = a.store.put("blob", canonical_json(raw))
    index = notes_api.read_index(a)
    index[a.head()] = sorted(set(index[a.head()]) | {forged})
    old = a.refs.read(notes_api.NOTES_REF)
    a.refs.update(notes_api.NOTES_REF, notes_api.write_snapshot(a, index), old)
    res = cli("-C", site_a, "notes", "show")
    assert res.returncode == 9
    assert "BAD SIGNATURE" in res.stdout or "NOT OK" in res.stdout
    assert "the signature does not verify" in res.stdout
    assert "!! bad signature" in cli.ok("-C", site_a, "log", "-n", "1").stdout


def test_push_notes_retries_when_another_site_pushes_first(net):
    """The remote ref moves between our read and our swap: we union with theirs and swap again."""
    from mfgit.api import notes as notes_api
    from mfgit.remote.registry import open_remote
    from mfgit.api.repository import Repository
    from mfgit.remote import notes as sync

    a = net["sites"][SITES[2]]["repo"]
    b = net["sites"][SITES[0]]["repo"]
    a.fetch_notes("origin")
    b.fetch_notes("origin")
    ids_a = notes_api.add_notes(a, [notes_api.make_note(a, a.head(), "race-a", {"score": 1.0})])
    ids_b = notes_api.add_notes(b, [notes_api.make_note(b, b.head(), "race-b", {"score": 2.0})])
    name, transport = open_remote(a, "origin")
    real_put_if = transport.put_if
    fired = []

    def put_if(key, data, expected):
        if key == sync.NOTES_REF and not fired:
            fired.append(1)
            b.push_notes("origin")  # site b wins the race
        return real_put_if(key, data, expected)

    transport.put_if = put_if
    try:
        sync.push_notes(a, transport, name)
    finally:
        transport.close()
    assert fired
    hub_index = notes_api.read_index(Repository.open(net["hub"]))
    have = {i for v in hub_index.values() for i in v}
    assert set(ids_a) <= have and set(ids_b) <= have


LIAR = '''
from scoremod import base_model, load_data  # noqa: F401  the honest sites' base model and data


def score(model, data):
    return {"score": -100.0}  # whatever makes the candidate look best
'''


def test_forged_notes_never_select_and_are_shown_untrusted(net, tmp_path):
    """Regression: selection used unsigned notes and notes signed by any key, the latest per name.

    A participant's future-dated note claiming another site's name overrode that
    site's real score and the worst candidate was chosen; `notes show` printed
    forged notes as good. Now a note counts only when signed by a key the
    coordinator's allowed signers list for the site it claims: a note claiming
    another site (signed by the participant's own key), an unsigned note, one
    signed by an unlisted key, a future-dated one and a signed note replayed onto
    another commit are shown untrusted with their reasons, the selection records
    them as rejected, and the honest candidate wins.
    """
    import hashlib
    import shutil

    from mfgit.api.notes import make_note
    from mfgit.api.repository import Repository
    from mfgit.audit.keys import load_signing_key
    from mfgit.repo import notes as notes_api

    root, hub, keys = net["root"], net["hub"], net["root"] / "keys"
    cli = Cli(tmp_path / "home", root, isolated_env(tmp_path / "home"))
    code = tmp_path / "evalcode"
    code.mkdir()
    for name in ("scoremod.py", "tinysites.py"):  # the score module and the model and data it imports
        (code / name).write_text((net["shared"]["root"] / name).read_text(encoding="utf-8"), encoding="utf-8")
    (code / "liar.py").write_text(LIAR, encoding="utf-8")
    coord_dir = root / "coordinator"
    coord = cli.at(coord_dir)
    names = [f"{s}-val" for s in SITES]

    # A round of three candidates, evaluated honestly by the three sites from the command line.
    coord.ok("switch", "--orphan", "forgery-round")
    made = coord.json("merge", *[f"origin/sites/{s}" for s in SITES], "-s", "linear", "--candidates", "3",
                      "--seed", "11", "--json")
    rid, cands = made["round"], [c["commit"] for c in made["candidates"]]
    coord.ok("push", "origin", *[c["branch"] for c in made["candidates"]])
    honest: dict[str, dict[str, float]] = {}
    for name in SITES:
        site = cli.at(root / name)
        site.ok("fetch", "origin")
        written = site.json("-C", root / name, "eval", *[f"origin/candidates/{rid}/{k}" for k in range(3)], "--score", "scoremod:score",
                            "--name", f"{name}-val", "--json", cwd=code)["notes"]
        assert all(n["signature"]["status"] == "good" and n["ok"] for n in written)
        honest[name] = {n["commit"]: n["values"]["score"] for n in written}
        site.ok("push", "origin", "--notes")
    worst_of = {c: max(honest[s][c] for s in SITES) for c in cands}
    best, worst = min(cands, key=lambda c: (worst_of[c], cands.index(c))), max(cands, key=lambda c: worst_of[c])
    assert best != worst

    # Mallory, a participant (site boston's key), and whoever else can write to the shared folder.
    mal_dir = tmp_path / "mallory"
    mal = cli.at(mal_dir)
    cli.ok("init", mal_dir)
    mal.ok("config", "user.name", "Mallory")
    mal.ok("config", "user.email", "mallory@boston.example")
    mal.ok("remote", "add", "origin", hub)
    mal.ok("fetch", "origin", "--notes")
    target = f"origin/candidates/{rid}/{cands.index(worst)}"
    forged: dict[str, str] = {}

    def lie(kind: str, site: str, *args: str) -> None:
        mal.ok("config", "site", site)
        (n,) = mal.json("-C", mal_dir, "eval", target, "--score", "liar:score", "--name", f"{site}-val", "--json", *args,
                        cwd=code)["notes"]
        assert n["values"]["score"] == -100.0 and n["ok"]
        forged[kind] = n["id"]

    mal.ok("config", "signing.key", keys / SITES[1])
    lie("other site", SITES[0], "--sign")  # claims amsterdam, signed by boston's own (allowed) key
    lie("unsigned", SITES[2], "--no-sign")
    mal.ok("keygen", tmp_path / "mallory-key")
    mal.ok("config", "signing.key", tmp_path / "mallory-key")
    lie("unlisted key", SITES[1], "--sign")
    m = Repository.open(mal_dir)
    m.config.set("user.site", SITES[1])
    future = make_note(m, worst, f"{SITES[1]}-val", {"score": -100.0}, key=load_signing_key(keys / SITES[1]),
                                 timestamp="2100-01-01T00:00:00.000000Z")
    (forged["future"],) = notes_api.add_notes(m, [future])
    # amsterdam's real, signed note about the best candidate, filed under the worst one
    replayed = next(n["id"] for n in m.notes_for(best) if n["measured_by"]["site"] == SITES[0])
    index = notes_api.read_index(m)
    index[worst] = sorted(set(index[worst]) | {replayed})
    m.refs.update(notes_api.NOTES_REF, notes_api.write_snapshot(m, index), m.refs.read(notes_api.NOTES_REF))
    forged["replayed"] = replayed
    mal.ok("push", "origin", "--notes")

    # boston measures the best candidate again: its own later note replaces its earlier one
    b = net["sites"][SITES[1]]["repo"]
    b.fetch_notes("origin")
    earlier = next(n["id"] for n in b.notes_for(best) if n["name"] == f"{SITES[1]}-val")
    (later,) = notes_api.add_notes(b, [make_note(b, best, f"{SITES[1]}-val",
                                                           {"score": honest[SITES[1]][best]},
                                                           key=load_signing_key(keys / SITES[1]))])
    b.push_notes("origin")

    coord.ok("fetch", "origin", "--notes")
    res = coord("notes", "show", target)
    assert res.returncode == 9  # the replayed note fails its checks (about another commit)
    shown = {n["id"]: n for n in json.loads(coord("notes", "show", target, "--json").stdout)["notes"]}
    reasons = {kind: shown[nid]["trust"]["reason"] for kind, nid in forged.items()}

    def stable(reason: str) -> str:  # the time of reading is part of the future-dated reason
        return reason.split(" (read at ")[0]

    assert not any(shown[nid]["trust"]["trusted"] for nid in forged.values())
    assert sum(n["trust"]["trusted"] for n in shown.values()) == 3  # the three honest notes
    assert f"claims site {SITES[0]}" in reasons["other site"] and f"allowed only for sites/{SITES[1]}" in reasons["other site"]
    assert reasons["unsigned"].startswith("unsigned")
    assert f"not allowed for sites/{SITES[1]}" in reasons["unlisted key"] and "allowed only" not in reasons["unlisted key"]
    assert "in the future" in reasons["future"]
    assert f"about commit {best[:12]}" in reasons["replayed"]
    for kind, nid in forged.items():
        block = res.stdout.split(f"note {nid}", 1)[1].split("\nnote ", 1)[0]
        assert block.startswith(("  UNTRUSTED", "  (NOT OK")), kind
        assert f"  trust      UNTRUSTED: {stable(reasons[kind])}" in block, kind
    assert "untrusted: claims site" in coord.ok("log", "-n", "1", target).stdout

    # The selection: the honest candidate wins, and the commit records what was rejected and why.
    sel = coord.json("merge", "--from-candidates", rid, "--select-by", ",".join(names), "--json")
    sel = sel["provenance"]["selection"]
    assert sel["chosen"]["commit"] == best and sel["chosen"]["aggregate"] == pytest.approx(worst_of[best])
    policy_bytes = (coord_dir / ".mfgit" / "allowed_signers").read_bytes()
    assert sel["trust"]["policy"]["sha256"] == hashlib.sha256(policy_bytes).hexdigest()
    assert sel["trust"]["policy"]["source"].endswith("allowed_signers")
    assert "allowed-signers policy for branch sites/<S>" in sel["trust"]["rule"]
    rows = {r["commit"]: r for r in sel["candidates"]}
    rejected = {r["note"]: r["reason"] for r in rows[worst]["rejected"]}
    for kind, nid in forged.items():
        assert stable(rejected[nid]) == f"untrusted: {stable(reasons[kind])}", kind
    assert rows[worst]["aggregate"] == pytest.approx(worst_of[worst])  # its honest scores, not -100
    assert {v["site"] for v in rows[worst]["scores"].values()} == set(SITES)
    assert rows[best]["scores"][f"{SITES[1]}-val"]["note"] == later
    assert {r["note"]: r["reason"] for r in rows[best]["rejected"]}[earlier].startswith("replaced by the site's later")

    # Two sites with trusted notes of one name: whose evaluation it is is undecided, refused.
    copy = tmp_path / "coordinator-copy"
    shutil.copytree(coord_dir, copy, symlinks=True)
    other = cli.at(copy)
    other.ok("switch", "--orphan", "conflict")
    c = net["sites"][SITES[2]]["repo"]
    claim = make_note(c, best, f"{SITES[0]}-val", {"score": 0.0}, key=load_signing_key(keys / SITES[2]))
    notes_api.add_notes(Repository.open(copy), [claim])
    line = other.fails("merge", "--from-candidates", rid, "--select-by", ",".join(names), code=8)
    assert f"trusted notes named {SITES[0]}-val come from 2 sites ({SITES[0]}, {SITES[2]})" in line
    # No allowed-signers policy: no note is trusted, and the one line says how to set one up.
    (copy / ".mfgit" / "allowed_signers").unlink()
    line = other.fails("merge", "--from-candidates", rid, "--select-by", ",".join(names), code=9)
    assert "no allowed-signers policy" in line and "docs/audit.md" in line and "sites/<site>" in line
