"""MedForge-Mixture from the sites' attachments: `mix --search weights --data attachments:distilled --score prompts`.

The sites of tests/test_fusion_attachments.py (real PEFT LoRAs of a tiny
CLIP built from a config, each committed with its task spec and distilled
set, pushed to a hub). The coordinator mixes sites a and b stagewise, then
lets site c join the mixture (a mixture named as a revision: its members'
data is read too), evaluates the mixture as a note, and verifies it.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("nevergrad")

from tests.conftest import in_process_env  # noqa: E402
from tests.test_fusion_attachments import make_site, sha, site_hub  # noqa: E402

L1 = 0.05
BUDGET = "12"


@pytest.fixture(scope="module")
def mixdata(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixdata")
    cli, clip_path, mod, files, coord = site_hub(root, seed=20)
    base = f"{clip_path}:base"
    search = ["--search", "weights", "--data", "attachments:distilled", "--score", "prompts", "--base", base,
              "--budget", BUDGET]
    first = cli.json("mix", "origin/sites/a", "origin/sites/b", *search, "--stagewise", "--json", cwd=coord)
    joined = cli.json("mix", "main", "origin/sites/c", *search, "--stagewise", "--json", cwd=coord)
    return {"root": root, "cli": cli, "mod": mod, "coord": coord, "files": files, "base": base, "search": search,
            "first": first, "joined": joined}


def _site_of(report):
    return {m["site"]: m["commit"] for m in report["members"]}


def test_the_mixture_records_every_member_sites_attachments_by_digest(mixdata):
    for report, sites in ((mixdata["first"], "ab"), (mixdata["joined"], "abc")):
        s = report["provenance"]["search"]
        assert s["scorer"]["score"] == "prompts" and s["scorer"]["data"] == "attachments:distilled"
        members = _site_of(report)
        assert sorted(members) == list(sites)  # the joined mixture's members include those of the mixture named
        got = sorted((a["site"], a["name"], a["digest"], a["commit"]) for a in s["attachments"])
        want = sorted((x, name, sha(mixdata["files"][x][name]), members[x]) for x in sites
                      for name in ("distilled", "task"))
        assert got == want
    from mfgit.render.text import mix_text

    text = mix_text(mixdata["joined"], "main")
    c = _site_of(mixdata["joined"])["c"]
    assert f"read distilled of {c[:10]} (c): sha256 {sha(mixdata['files']['c']['distilled'])[:16]}" in text


def _by_hand(module, sites):
    """The mixture's loss written out here: CLIP logits per member, Σ w softmax, generalized KL, mean per task."""
    import torch
    from torch.nn import functional as F

    inner = module.peft_model.get_base_model()

    def feat(out):  # transformers 5 wraps the projected features in a model output
        return getattr(out, "pooler_output", out)
    per_task: dict[str, list] = {}
    with torch.no_grad():
        for site in sites:
            ids = site.task["prompt_inputs"]["input_ids"]
            q = 0
            for name, w in zip(module.adapter_names, module.weights):
                module.peft_model.set_adapter(name)
                classes = torch.cat([F.normalize(feat(inner.get_text_features(
                    input_ids=torch.tensor([r]), attention_mask=torch.ones((1, len(r)), dtype=torch.long))), dim=-1)
                    for r in ids])
                img = F.normalize(feat(inner.get_image_features(pixel_values=site.tensors["pixel_values"])), dim=-1)
                q = q + w * torch.softmax(inner.logit_scale.exp() * img @ classes.T, dim=-1)
            y = site.labels
            loss = -q[torch.arange(len(y)), y].clamp(min=1e-6).log() + q.sum(1) - 1
            per_task.setdefault(site.task["task"], []).append(loss)
    return sum(float(torch.cat(v).mean()) for v in per_task.values()) / len(per_task)


def test_the_builtin_mixture_loss_is_the_generalized_kl_of_the_weighted_softmaxes(mixdata):
    from mfgit.api.mixscore import MixturePromptScore
    from mfgit.api.prompts import PromptScore
    from mfgit.api.repository import Repository
    from mfgit.api.sitedata import load_site_data, member_leaves

    repo = Repository.open(mixdata["coord"])
    joined = mixdata["joined"]
    sites, _ = load_site_data(repo, member_leaves(repo, [("main", joined["commit"])]), "distilled")
    module = repo.load_mixture(mixdata["mod"].base(), joined["commit"])
    weights = [m["weight"] for m in joined["members"]]
    assert module.weights == weights and not math.isclose(sum(weights), 1.0)  # unnormalised, as searched
    got = MixturePromptScore(PromptScore())(module, sites)
    assert got["score"] == pytest.approx(_by_hand(module, sites), abs=1e-5)
    assert got["score"] == pytest.approx(joined["provenance"]["search"]["chosen"]["score"], abs=1e-5)
    assert {"breast/generalized_kl", "lung/generalized_kl"} <= set(got)
    # Scaling every weight changes the loss: it is not blind to the weights' scale.
    module.set_weights([2 * w for w in weights])
    scaled = MixturePromptScore(PromptScore())(module, sites)["score"]
    assert scaled == pytest.approx(_by_hand(module, sites), abs=1e-5) and abs(scaled - got["score"]) > 1e-3
    module.unload()


def test_the_generalized_kl_is_the_cross_entropy_when_the_weights_sum_to_one():
    import torch
    from torch.nn import functional as F

    from mfgit.api.mixscore import generalized_kl

    gen = torch.Generator().manual_seed(0)
    p1, p2 = (torch.softmax(torch.randn((9, 3), generator=gen), -1) for _ in range(2))
    y = torch.randint(0, 3, (9,), generator=gen)
    q = 0.3 * p1 + 0.7 * p2
    assert torch.allclose(generalized_kl(q, y), F.nll_loss(q.log(), y, reduction="none"), atol=1e-6)
    assert float(generalized_kl(2 * q, y).mean()) != pytest.approx(float(generalized_kl(q, y).mean()))


def test_the_searched_weights_score_lower_than_the_start(mixdata):
    for report in (mixdata["first"], mixdata["joined"]):
        for stage in report["provenance"]["search"]["stages"]:
            start = stage["evaluations"][0]
            assert start["source"] == "start" and start["weights"] == [0.5, 0.5]
            assert stage["chosen"]["objective"] < start["objective"]
    # A joint search from the uniform mixture: its objective is score + l1 * mean|w|.
    cli, coord = mixdata["cli"], mixdata["coord"]
    cli.ok("switch", "--orphan", "joint", cwd=coord)
    joint = cli.json("mix", "origin/sites/a", "origin/sites/b", "origin/sites/c", *mixdata["search"], "--budget", "40", "--json",
                     cwd=coord)["provenance"]["search"]
    cli.ok("switch", "main", cwd=coord)
    start = joint["stages"][0]["evaluations"][0]
    assert start["weights"] == pytest.approx([1 / 3] * 3) and joint["start"]["score"] == pytest.approx(start["score"])
    assert start["objective"] == pytest.approx(start["score"] + L1 / 3)
    assert joint["chosen"]["score"] + L1 * sum(map(abs, joint["chosen"]["weights"])) / 3 < start["objective"]


def test_verify_reproduce_reruns_the_mixture_and_rereads_its_attachments(mixdata):
    report = mixdata["cli"].json("verify", "main", "--reproduce", "--json", cwd=mixdata["coord"])
    assert report["ok"], report["failures"]
    mixtures = [m for m in report["reproduce"]["merges"] if m.get("kind") == "mixture"]
    assert sorted(m["commit"] for m in mixtures) == sorted([mixdata["first"]["commit"], mixdata["joined"]["commit"]])
    assert all(m["ok"] and m["identical"] for m in mixtures)
    text = mixdata["cli"].ok("verify", "main", "--reproduce", cwd=mixdata["coord"]).stdout
    assert "reproduce: ok — 0 merge(s), 2 mixture(s)" in text


def test_verify_reproduce_fails_a_mixture_whose_members_are_not_its_recorded_inputs(mixdata):
    """A mixture written with members that its recorded inputs and weights do not give."""
    from mfgit.api.repository import Repository
    from mfgit.audit.verify import verify

    repo = Repository.open(mixdata["coord"])
    c = repo.read_commit(mixdata["first"]["commit"])
    mixture = {"combine": c.mixture["combine"],
               "members": [{**m, "weight": m["weight"] + 0.25} for m in c.mixture["members"]]}
    tip = repo.resolve("main")
    with in_process_env(mixdata["cli"].env):
        info = repo.write_commit(c.adapter, [tip] + [m["commit"] for m in mixture["members"]], "edited",
                                 c.provenance, "refs/heads/edited", None, mixture=mixture)
    report = verify(repo, info.id, reproduce=True)
    (bad,) = [m for m in report["reproduce"]["merges"] if not m["ok"]]
    assert bad["commit"] == info.id and "other member weights" in bad["reason"]
    assert bad["max_abs_diff"] == pytest.approx(0.25)


def test_eval_scores_a_mixture_commit_and_an_adapter_commit_on_their_attachments(mixdata):
    cli, coord = mixdata["cli"], mixdata["coord"]
    args = ["--score", "prompts", "--data", "attachments:distilled", "--base", mixdata["base"], "--json"]
    notes = cli.json("eval", "main", "origin/sites/a", "--name", "distilled", *args, cwd=coord)["notes"]
    mix_note, site_note = notes
    assert mix_note["commit"] == mixdata["joined"]["commit"]
    assert mix_note["values"]["score"] == pytest.approx(mixdata["joined"]["provenance"]["search"]["chosen"]["score"],
                                                        abs=1e-5)
    assert mix_note["scorer"]["data"] == "attachments:distilled"
    assert sorted(a["site"] for a in mix_note["scorer"]["attachments"]) == ["a", "a", "b", "b", "c", "c"]

    from mfgit.api.prompts import PromptScore
    from mfgit.api.repository import Repository
    from mfgit.api.sitedata import load_site_data

    repo = Repository.open(coord)
    a = repo.resolve("origin/sites/a")
    sites, _ = load_site_data(repo, [{"commit": a, "site": "a"}], "distilled")
    model = repo.load_adapter(mixdata["mod"].base(), a).eval()
    assert site_note["values"]["score"] == pytest.approx(PromptScore()(model, sites)["score"], abs=1e-5)


def test_misuse_of_the_builtins_is_refused_in_one_line(mixdata):
    cli, coord, root, mod = mixdata["cli"], mixdata["coord"], mixdata["root"], mixdata["mod"]
    base = ["--base", mixdata["base"], "--budget", "2"]
    line = cli.fails("mix", "origin/sites/a", "origin/sites/b", "--search", "weights", "--score", "prompts", *base,
                     cwd=coord)
    assert "--score prompts scores the sites' own data: use it with --data attachments:NAME" in line, line
    line = cli.fails("eval", "main", "--score", "prompts", "--name", "x", "--base", mixdata["base"], cwd=coord)
    assert "use it with --data attachments:NAME" in line, line

    # A site that committed no distilled set, and one that committed no task spec.
    files = make_site(root, mod, "a", seed=77)
    home = root / "repo-d"
    cli.ok("init", home, "--site", "d", "-b", "sites/d")
    cli.ok("commit", files["adapter"], "-m", "no distilled set", "--attach", f"task={files['task']}", cwd=home)
    cli.ok("switch", "--orphan", "sites/e", cwd=home)
    cli.ok("commit", files["adapter"], "-m", "no task spec", "--attach", f"distilled={files['distilled']}", cwd=home)
    cli.ok("remote", "add", "origin", mixdata["root"] / "hub.mfgit", cwd=home)
    cli.ok("push", "origin", "sites/d", "sites/e", "-q", cwd=home)
    cli.ok("fetch", "origin", "-q", cwd=coord)
    search = ["--search", "weights", "--data", "attachments:distilled", "--score", "prompts", *base]
    line = cli.fails("mix", "origin/sites/a", "origin/sites/d", *search, cwd=coord)
    assert "has no attachment 'distilled'" in line, line
    line = cli.fails("mix", "main", "origin/sites/e", *search, cwd=coord)
    assert "attachment 'task' of commit" in line and "is missing" in line, line
