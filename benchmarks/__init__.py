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
}
