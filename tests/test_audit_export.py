"""`mfgit export REV OUTDIR --card --manifest`: a PEFT directory, a model card,
and an OpenSSF model-signing manifest that the `model-signing` package
(PyPI ``model-signing``, its CLI and its Python API) accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.adapters import delta_weights
from tests.conftest import Cli, build_adapter


@pytest.fixture(scope="module")
def env(tmp_path_factory, adapter_store):
    root = tmp_path_factory.mktemp("audit-export")
    cli = Cli(root / "home", root)
    ec = cli.json("keygen", root / "keys" / "manifest", "--type", "ecdsa-p256", "--json")
    cli.json("keygen", root / "keys" / "commits", "--json")
    repo = root / "repo"
    cli.ok("init", repo)
    cli = cli.at(repo)
    for s, seed in (("a", 70), ("b", 71)):
        cli.ok("switch", "--orphan", f"sites/{s}")
        cli.ok("config", "site", f"hospital-{s}")
        cli.ok("commit", build_adapter(adapter_store, seed=seed), "-m", f"site {s}", "--meta", f"samples={100 * (seed - 69)}")
    cli.ok("config", "site", "coordinator")
    cli.ok("config", "signing.key", root / "keys" / "commits")
    cli.ok("config", "signing.manifestKey", root / "keys" / "manifest")
    cli.ok("switch", "--orphan", "main")
    from mfgit.api.repository import Repository

    with pytest.MonkeyPatch.context() as mp:  # merge in-process (torch is loaded here already)
        for k in [k for k in os.environ if k.startswith("MFGIT_")]:
            mp.delenv(k)
        for k, v in cli.env.items():
            if k.startswith("MFGIT_"):
                mp.setenv(k, v)
        r = Repository.open(repo)
        r.merge(["sites/a", "sites/b"], weights_from="samples", rank="sum", message="composite of a and b",
                sign=r.signer())
    return cli, repo, Path(ec["public_key_pem"])


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end])


def _model_signing_cli() -> list[str] | None:
    exe = Path(sys.executable).with_name("model_signing")
    if exe.exists():
        return [str(exe)]
    try:
        import model_signing  # noqa: F401
    except Exception:  # noqa: BLE001
        return None
    return [sys.executable, "-m", "model_signing"]


def test_export_card_and_manifest_verified_by_model_signing(env, tmp_path):
    cli, repo, pub = env
    out = tmp_path / "export"
    rep = cli.json("export", "main", out, "--card", "--manifest", "--json")
    main = cli.json("show", "main", "--json")
    assert rep["commit"] == main["id"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "model.sig"]
    assert rep["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    # The PEFT directory is the commit's adapter.
    ref = tmp_path / "checkout"
    cli.ok("checkout", "main", "--to", ref)
    got, want = delta_weights(out), delta_weights(ref)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert (out / "adapter_model.safetensors").read_bytes() == (ref / "adapter_model.safetensors").read_bytes()
    # Model card.
    card = (out / "README.md").read_text(encoding="utf-8")
    fm = _front_matter(card)
    assert fm["base_model"] == "tiny-llama-test" and fm["base_model_relation"] == "adapter"
    assert fm["library_name"] == "peft"
    assert main["id"] in card and "hospital-a" in card and "hospital-b" in card
    assert "| 0.333333 |" in card and "| 0.666667 |" in card  # samples 100 / 200
    assert "strategy: linear" in card and "weights_mode: meta:samples" in card
    assert "signed | yes, key SHA256:" in card
    # The manifest: DSSE over an in-toto statement with one SHA-256 per file.
    bundle = json.loads((out / "model.sig").read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    env_ = bundle["dsseEnvelope"]
    import base64
    import hashlib

    stmt = json.loads(base64.b64decode(env_["payload"]))
    assert env_["payloadType"] == "application/vnd.in-toto+json"
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == "https://model_signing/signature/v1.0"
    res = {r["name"]: r["digest"] for r in stmt["predicate"]["resources"]}
    assert res == {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in rep["files"]}
    assert stmt["predicate"]["mfgit"] == {"commit": main["id"], "adapter": main["commit"]["adapter"]}

    ms = _model_signing_cli()
    if ms is None:
        pytest.skip("the model-signing package is not installed (pip install model-signing); "
                    "the manifest format was checked above but not by its verifier")
    verify = ms + ["verify", "key", "--signature", str(out / "model.sig"), "--public_key", str(pub), str(out)]
    r = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Verification succeeded" in r.stdout, r.stdout + r.stderr
    # Its Python API agrees.
    import model_signing

    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).set_hashing_config(
        model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"])).verify(out, out / "model.sig")

    def verifier(key):
        return model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(
            model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"]))

    # One byte changed in an exported file: rejected.
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    w = tampered / "adapter_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        verifier(pub).verify(tampered, tampered / "model.sig")
    # An extra file: rejected.
    extra = tmp_path / "extra"
    shutil.copytree(out, extra)
    (extra / "notes.txt").write_text("added later")
    with pytest.raises(ValueError, match="notes.txt"):
        verifier(pub).verify(extra, extra / "model.sig")
    # Another key: rejected (by the CLI too).
    other = cli.json("keygen", tmp_path / "other", "--type", "ecdsa-p256", "--json")
    with pytest.raises(ValueError):
        verifier(other["public_key_pem"]).verify(out, out / "model.sig")
    r = subprocess.run(ms + ["verify", "key", "--signature", str(out / "model.sig"), "--public_key",
                             other["public_key_pem"], str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0


def test_site_commit_card_and_errors(env, tmp_path):
    cli, repo, _ = env
    out = tmp_path / "site-a"
    cli.ok("export", "sites/a", out, "--card")
    card = (out / "README.md").read_text(encoding="utf-8")
    fm = _front_matter(card)
    assert fm == {**fm, "base_model": "tiny-llama-test", "base_model_relation": "adapter"}
    assert "hospital-a" in card and "samples: 100" in card
    assert not (out / "model.sig").exists()
    # A non-empty target needs --force.
    line = cli.fails("export", "sites/a", out)
    assert "not empty" in line
    cli.ok("export", "sites/b", out, "--card", "--force")
    assert "hospital-b" in (out / "README.md").read_text(encoding="utf-8")
    # model-signing verifies ECDSA keys only: an ed25519 key is refused before anything is written.
    line = cli.fails("export", "main", tmp_path / "nope", "--manifest", "--key", repo.parent / "keys" / "commits",
                     code=4)
    assert "ecdsa-p256" in line and not (tmp_path / "nope").exists()
