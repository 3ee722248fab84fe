"""A merge is bit-identical whatever the thread count on one device type.

Regression: `merge -s svd --rank 8 --weights .5,.3,.7` then
`OMP_NUM_THREADS=1 mfgit verify HEAD --reproduce` failed an honest merge
(max |ΔW| difference 7e-7), as did ties, della, dare_ties and tsv:
torch.linalg.qr gives other bits on 1 and 2 threads from 24 columns up.
"""

from __future__ import annotations

import pytest

STRATEGIES = ["svd", "ties", "della", "dare_ties", "tsv", "iso_c", "linear"]


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory, adapter_store):
    from mfgit.api.repository import Repository
    from tests.conftest import build_adapter

    root = tmp_path_factory.mktemp("merge-threads")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFGIT_AUTHOR_NAME", "Test Author")
        mp.setenv("MFGIT_AUTHOR_EMAIL", "author@example.org")
        repo = Repository.init(root / "repo")
        for i in range(3):
            repo.switch(f"sites/s{i}", orphan=True)
            repo.commit(build_adapter(adapter_store, "minilm", seed=40 + i, r=16, lora_alpha=16), f"site {i}")
    return root / "repo"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_merge_reproduces_bit_for_bit_on_one_and_three_threads(cli, three_sites, strategy):
    cli.ok("switch", "--orphan", f"merged/{strategy}", cwd=three_sites)
    cli.with_env(OMP_NUM_THREADS="2").ok("merge", "sites/s0", "sites/s1", "sites/s2", "-s", strategy, "--rank", "8",
                                         "--weights", ".5,.3,.7", cwd=three_sites)
    for threads in ("1", "3"):
        rep = cli.with_env(OMP_NUM_THREADS=threads).json("verify", "HEAD", "--reproduce", "--json", cwd=three_sites)
        (m,) = rep["reproduce"]["merges"]
        assert m["outcome"] == "bit-identical", (threads, m)
