"""demo."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("workdir", default="mfgit-demo", required=False)
@click.option("--sites", type=click.IntRange(2, 8), default=3, show_default=True, help="Hospitals at the start (one more arrives late).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every split, initialisation and batch order.")
@click.pass_context
def demo(ctx, workdir, sites, seed):
    """Run the MedForge workflow end to end on CPU into WORKDIR (about a minute).

    A tiny transformer pre-trained on part of scikit-learn's breast-cancer data; SITES hospitals
    train LoRA adapters, push to a hub, a coordinator merges them; everything stays on disk.
    """
    from mfgit.demo.workflow import run_demo

    run_demo(Path(ctx.obj["cwd"]) / workdir, sites=sites, seed=seed, progress=click.echo)


COMMANDS = [demo]
