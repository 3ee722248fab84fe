"""merge, mix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mfgit.cli.common import emit_json, import_path, open_repo
from mfgit.cli.progress import progress_bar
from mfgit.render import text as render


def _parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    from mfgit.repo.provenance import parse_meta

    return parse_meta(list(items))


class _StrategyOption(click.Option):
    """-s/--strategy: its help lists the strategies by name (mfgit.merge.names: the table itself needs torch)."""

    @property
    def help(self) -> str:
        from mfgit.merge.names import STRATEGY_NAMES

        return f"One of {', '.join(STRATEGY_NAMES)} (default linear); docs/merging.md defines them."

    @help.setter
    def help(self, _value: str | None) -> None:
        pass  # generated from the table


@click.command()
@click.argument("revs", nargs=-1)
@click.option("-s", "--strategy", cls=_StrategyOption, default=None)
@click.option("--weights", default=None, metavar="W1,W2,...", help="One weight per revision, in order.")
@click.option("--weights-from", default=None, metavar="KEY", help="Weights proportional to commit metadata KEY (e.g. samples).")
@click.option("--density", type=float, default=None, help="Fraction kept (ties, core_ties, knots_ties, magnitude_prune; for dare_*, della and their core_/knots_ forms the keep rate 1 - drop rate, as mergekit names it).")
@click.option("--drop-rate", type=float, default=None, help="Drop probability p (dare_*, della and their core_/knots_ forms).")
@click.option("--lambda", "lambda_", type=float, default=None, help="Scale of the merged update (λ).")
@click.option("--param", "extra", multiple=True, metavar="NAME=VALUE", help="Any other strategy parameter, e.g. flatten=false (repeatable).")
@click.option("--rank", default=None, help="Output rank: N, sum, or max (default: the largest input rank).")
@click.option("--energy", type=float, default=None, help="Smallest rank per module keeping this fraction of energy.")
@click.option("--seed", type=int, default=None, help="Seed of every random mask (default 0).")
@click.option("--base-weights", type=click.Path(), default=None, metavar="PATH",
              help="The base model's weights (.safetensors file or directory): needed to merge DoRA adapters.")
@click.option("--device", default=None, help="auto (default), cpu or cuda[:N].")
@click.option("--dtype", default=None, help="Output dtype (F32, BF16, F16); default: the inputs'.")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("--recipe", type=click.Path(), default=None, help="Read the merge from a YAML recipe file.")
@click.option("--rebuild", is_flag=True, help="Re-merge all current leaves of the composite from scratch.")
@click.option("--no-commit", is_flag=True, help="Do not commit; write the result with --to.")
@click.option("--to", type=click.Path(), default=None, help="Also write the result as a PEFT adapter directory.")
@click.option("-f", "--force", is_flag=True, help="Overwrite a non-empty --to directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result and provenance as JSON.")
@click.option("-S", "--sign", is_flag=True, help="Sign the merge commit with the key in config signing.key.")
@click.option("--search", type=click.Choice(["weights", "layer-weights", "weights+density"]), default=None,
              help="Search the weights (per revision, or per revision and layer) that minimise --score.")
@click.option("--score", default=None, metavar="MODULE:FUNC", help="Your score function (lower is better), or 'prompts': the built-in prompt classifier; see docs/search-and-eval.md.")
@click.option("--base", "base_spec", default=None, metavar="MODULE:FUNC", help="Base model factory (default: base_model() in the score module).")
@click.option("--data", "data_spec", default=None, metavar="MODULE:FUNC", help="Data loader, or attachments:NAME: attachment NAME of every leaf (default: load_data() in the score module, if any).")
@click.option("--budget", type=int, default=None, help="Optimiser proposals to evaluate (default 40).")
@click.option("--bounds", default=None, metavar="LOW,HIGH", help="Bounds of every searched weight (default -1.5,1.5).")
@click.option("--l1", type=float, default=None, help="Penalty l1 * mean(|w|) on the searched weights (default 0; LoraHub and MedForge use 0.05).")
@click.option("--start", type=float, default=None, help="Start the search with every weight at this value (default: the merge's weights; MedForge uses 0.5).")
@click.option("--candidates", type=int, default=None, metavar="N", help="Publish N candidate composites on candidates/<round>/<k> for the sites to evaluate.")
@click.option("--from-candidates", default=None, metavar="ROUND", help="Commit the candidate of ROUND chosen by the sites' notes (--select-by).")
@click.option("--select-by", default=None, metavar="NAME,...", help="Evaluation names (mfgit eval --name) to choose by.")
@click.option("--select-rule", type=click.Choice(["worst", "mean"]), default=None, help="Best worst-site score (default) or best mean.")
@click.pass_context
def merge(ctx, revs, strategy, weights, weights_from, density, drop_rate, lambda_, extra, rank, energy, seed,
          base_weights, device, dtype, message, recipe, rebuild, no_commit, to, force, as_json, sign, search, score, base_spec,
          data_spec, budget, bounds, l1, start, candidates, from_candidates, select_by, select_rule):
    """Merge the adapters of REVS in weight space into the current branch."""
    repo = open_repo(ctx)
    if score or search or from_candidates or candidates:
        import_path(ctx)
    params = _parse_params(extra)
    for key, value in (("density", density), ("drop_rate", drop_rate), ("lambda", lambda_)):
        if value is not None:
            params[key] = value
    wlist = None
    if weights is not None:
        try:
            wlist = [float(w) for w in weights.split(",")]
        except ValueError:
            raise click.BadParameter(f"{weights!r}: give numbers separated by commas", param_hint="--weights") from None
    cwd = Path(ctx.obj["cwd"])
    with progress_bar("merging modules") as progress:
        report = repo.merge(
            list(revs), strategy=strategy, weights=wlist, weights_from=weights_from, params=params, rank=rank,
            energy=energy, seed=seed, device=device, dtype=dtype, message=message, no_commit=no_commit,
            to=(cwd / to) if to else None, rebuild=rebuild, force=force,
            recipe=(cwd / recipe) if recipe else None, base_weights=(cwd / base_weights) if base_weights else None,
            progress=progress, sign=repo.signer() if sign else None,
            search=search, score=score, base=base_spec, data=data_spec, budget=budget, bounds=bounds, l1=l1,
            start=start,
            candidates=candidates, from_candidates=from_candidates, select_by=select_by, select_rule=select_rule,
        )
    if as_json:
        emit_json(report.to_dict())
        return
    if getattr(report, "candidates", None) is not None:
        click.echo(render.candidates_text(report.to_dict()), nl=False)
        return
    prov = report.provenance
    if report.commit:
        click.echo(f"[{repo.head_branch() or 'detached HEAD'} {report.commit[:10]}] merged "
                   f"{len(prov['leaves'])} leaf/leaves with {prov['recipe']['strategy']} "
                   f"({prov['integration']['mode']}) on {prov['device']['type']}")
    if report.output_dir:
        click.echo(f"Wrote {report.output_dir}")
    e = prov["kept_energy"]
    click.echo(f"kept energy: min {e['min']:.4f}, mean {e['mean']:.4f}; {prov['wall_time_s']:.2f} s")
    if prov.get("dora"):
        click.echo(f"DoRA: {len(prov['dora']['modules'])} module(s) merged as effective updates on base weights "
                   f"{prov['dora']['base_weights']['sha256'][:16]}")
    if prov.get("search") or prov.get("selection"):
        click.echo(render.search_text(prov), nl=False)


def _weights_list(weights: str | None) -> list[float] | None:
    if weights is None:
        return None
    try:
        return [float(w) for w in weights.split(",")]
    except ValueError:
        raise click.BadParameter(f"{weights!r}: give numbers separated by commas", param_hint="--weights") from None


@click.command()
@click.argument("revs", nargs=-1, required=True)
@click.option("--weights", default=None, metavar="W1,W2,...",
              help="One weight per revision, in order (a mixture's weight scales its members'); default: "
                   "each revision's share of the members.")
@click.option("--search", type=click.Choice(["weights"]), default=None,
              help="Search the revisions' weights that minimise --score.")
@click.option("--stagewise", is_flag=True, help="Search as MedForge does: one revision at a time, [a, b] from "
                                                "[0.5, 0.5], then w <- [a*w, b].")
@click.option("--score", default=None, metavar="MODULE:FUNC", help="Your score function (lower is better; it "
                                                                   "receives the mixture module, probabilities), or "
                                                                   "'prompts': the built-in prompt classifier's "
                                                                   "generalized KL of the mixture on each member "
                                                                   "site's data; see docs/search-and-eval.md.")
@click.option("--base", "base_spec", default=None, metavar="MODULE:FUNC", help="Base model factory (default: base_model() in the score module).")
@click.option("--data", "data_spec", default=None, metavar="MODULE:FUNC", help="Data loader, or attachments:NAME: attachment NAME of every member site (default: load_data() in the score module, if any).")
@click.option("--budget", type=int, default=None, help="Optimiser proposals to evaluate (per stage with --stagewise; default 40).")
@click.option("--bounds", default=None, metavar="LOW,HIGH", help="Bounds of every searched weight (default -1.5,1.5).")
@click.option("--l1", type=float, default=None, help="Penalty l1 * mean(|w|) on the searched weights (default 0.05, MedForge's).")
@click.option("--seed", type=int, default=None, help="Seed of the optimiser (default 0).")
@click.option("--logits", "logits_spec", default=None, metavar="MODULE:FUNC",
              help="fn(model, *args, **kwargs) giving one member's logits (default: the model output's .logits).")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("--branch", default=None, metavar="NAME", help="Commit on branch NAME (created if absent) instead of the current branch.")
@click.option("--json", "as_json", is_flag=True, help="Print the result and provenance as JSON.")
@click.option("-S", "--sign", is_flag=True, help="Sign the mixture commit with the key in config signing.key.")
@click.pass_context
def mix(ctx, revs, weights, search, stagewise, score, base_spec, data_spec, budget, bounds, l1, seed, logits_spec,
        message, branch, as_json, sign):
    """Commit the output-space mixture of REVS (MedForge-Mixture): sum of w_j * softmax(member j); no weights merged."""
    repo = open_repo(ctx)
    if score or search or logits_spec:
        import_path(ctx)
    say = None if as_json else (lambda line: click.echo(line, err=True))
    report = repo.mix(list(revs), weights=_weights_list(weights), search=search, stagewise=stagewise, score=score,
                      base=base_spec, data=data_spec, budget=budget, bounds=bounds, l1=l1, seed=seed,
                      logits=logits_spec, message=message, branch=branch, sign=repo.signer() if sign else None,
                      say=say if search else None)
    if as_json:
        emit_json(report.to_dict())
        return
    click.echo(render.mix_text(report.to_dict(), branch or repo.head_branch() or "detached HEAD"), nl=False)


COMMANDS = [merge, mix]
