"""Replaying a merge: re-run a merge commit from its recorded recipe and inputs, and compare.

What `verify --reproduce` calls. On the recorded device type an honest merge
gives the same tensor ids; elsewhere the merged updates are compared
(max |ΔW difference|), since factorisations may differ in basis across
devices.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mfgit.errors import MergeError
from mfgit.merge.baseweights import BaseWeights, open_base_weights
from mfgit.merge.engine import MergeInput, Recipe, merge_adapters
from mfgit.merge.layers import merge_layer_weights
from mfgit.merge.lowrank import RankPolicy
from mfgit.repo.attachments import read_recorded
from mfgit.repo.tensors import tensor_id_of

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def reproduce(repo: "BaseRepository", cid: str, *, device: str | None = None,
              base_weights: "str | os.PathLike | BaseWeights | None" = None) -> dict[str, Any]:
    """Re-run a merge commit from its recorded recipe and inputs.

    `base_weights` (a path or opened `BaseWeights`) is needed when the merge
    had DoRA inputs: they must be the weights whose SHA-256 the commit
    records (BaseWeightsMismatch otherwise); without them the engine
    refuses the DoRA inputs (DoraNeedsBaseWeights).

    Returns {"commit", "recorded", "reproduced", "identical", "max_abs_diff"}.
    """
    import torch

    commit = repo.read_commit(cid)
    prov = commit.provenance
    if prov.get("kind") != "merge":
        raise MergeError(f"{cid[:10]} is not a merge commit")
    r = prov["recipe"]
    if device is None:
        # Re-run on the recorded device type when this machine has it; a merge
        # recorded on CUDA is re-run on the CPU elsewhere (and then compared
        # within a tolerance, see mfgit verify --reproduce).
        recorded = prov.get("device", {}).get("type", "cpu")
        device = recorded if recorded != "cuda" or torch.cuda.is_available() else "cpu"
    rec = Recipe(r["strategy"], r.get("params", {}), int(r.get("seed", 0)), RankPolicy.from_dict(r.get("rank", {})),
                 device, r.get("dtype")).resolved()
    base = None
    recorded_base = ((prov.get("dora") or {}).get("base_weights") or {}).get("sha256")
    if base_weights is not None and recorded_base is not None:
        base = base_weights if isinstance(base_weights, BaseWeights) else open_base_weights(base_weights)
        base.check_digest(recorded_base)
    inputs = [MergeInput(i["label"], i["commit"], repo.read_adapter(repo.read_commit(i["commit"]).adapter),
                         float(i["weight"]), base)
              for i in prov["inputs"]]
    search = prov.get("search") or {}
    for a in search.get("attachments") or []:
        # The search scored on these bytes; re-running it needs them, as they were (by digest). A private
        # one stops here: its bytes are its site's (AttachmentPrivate names it).
        read_recorded(repo, a["commit"], a["name"], a["digest"])
    if search.get("mode") == "layer-weights":  # one weight per input and layer (merge --search layer-weights)
        out = merge_layer_weights(inputs, rec, search["chosen"]["matrix"], search["layout"]["groups"],
                                  lambda oid, dev: repo.load_tensor(oid, device=dev))
    else:
        out = merge_adapters(inputs, rec, lambda oid, dev: repo.load_tensor(oid, device=dev))
    recorded = repo.read_adapter(commit.adapter)
    identical = True
    max_diff = 0.0
    for name, t in out.tensors.items():
        rec_t = recorded.tensors.get(name)
        if rec_t is None or rec_t["id"] != tensor_id_of(t):
            identical = False
    # Compare the updates themselves (factorisations may differ in basis across devices).
    for module, m in recorded.modules.items():
        B0 = repo.load_tensor(recorded.tensors[m["lora_B"]]["id"]).double()
        A0 = repo.load_tensor(recorded.tensors[m["lora_A"]]["id"]).double()
        B1 = out.tensors[m["lora_B"]].double() if m["lora_B"] in out.tensors else torch.zeros_like(B0)
        A1 = out.tensors[m["lora_A"]].double() if m["lora_A"] in out.tensors else torch.zeros_like(A0)
        d = (B0 @ A0 - B1 @ A1).abs().max().item() if B0.numel() and A0.numel() else 0.0
        max_diff = max(max_diff, d)
    return {"commit": cid, "device": out.device, "recorded_device": prov.get("device", {}).get("type"),
            "identical": identical and set(out.tensors) == set(recorded.tensors), "max_abs_diff": max_diff}
