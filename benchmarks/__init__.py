"""mfgit benchmarks: ``python -m benchmarks SECTION [--quick]``.

Each section is a module in this package with a function

    run(ctx: benchmarks.common.Context) -> dict

that measures, prints its tables to stdout and returns a JSON-serialisable
dict (see ``benchmarks/README.md`` for the shape). To add a section, write
the module and add one line to ``SECTIONS`` below; ``all`` runs every
registered section in order. Modules are imported only when their section
runs, so a section's extra dependencies never break the others.
"""

from __future__ import annotations

# name -> (module, one-line description). Order is the order of `all`.
SECTIONS: dict[str, tuple[str, str]] = {
    "storage": ("benchmarks.storage", "commit/checkout speed vs cp+fsync, storage ratio, history vs Git LFS and DVC"),
    "merge": ("benchmarks.merge", "svd/ties vs PEFT add_weighted_adapter, errors vs exact results, TIES vs mergekit"),
    "remote": ("benchmarks.remote", "push/clone vs boto3 on one SeaweedFS server, negotiation time vs history length"),
    "many_tensors": ("benchmarks.many_tensors", "commit/re-commit/checkout/fsck of 200,000 small tensors: cost per tensor vs cp -r"),
    "merge_8b": ("benchmarks.merge_8b", "TIES dense and in Core Space over three r=16 adapters of Llama-3-8B shapes vs PEFT ties_svd (CPU)"),
    "gpu": ("benchmarks.gpu", "TIES (dense and Core Space), svd, dare_ties over three r=16 adapters of Llama-3-8B and -70B shapes on CUDA (skipped without one)"),
}
