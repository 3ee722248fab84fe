"""The user's code: the score function, the base model and the data loader, found and called safely.

A score function is the user's: ``score(model)`` or, when a data loader is
given, ``score(model, data)``; it returns a number to minimise or a mapping
with a ``"score"`` entry (the number to minimise) and other metrics. See
:func:`resolve_scorer` for how the base model and the data are found.
Whatever the user's code raises becomes one `ScoreError` line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from mfgit.api.prompts import NAME as PROMPTS
from mfgit.api.prompts import check_sites, prompt_counts, prompt_score
from mfgit.api.sitedata import PREFIX as ATTACHMENTS_PREFIX
from mfgit.errors import ScoreError
from mfgit.formats import peft as peftfmt
from mfgit.repo.provenance import code_revision

if TYPE_CHECKING:
    from mfgit.merge.engine import MergeOutput


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """``package.module:function`` (or ``path/to/file.py:function``) → the function."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ScoreError(str(spec), f"{what} is given as MODULE:FUNCTION (e.g. mypkg.evaluate:score)")
    mod_name, func_name = spec.split(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).absolute()
            if not path.is_file():
                raise ScoreError(spec, f"{what}: {path} does not exist")
            name = "mfgit_score_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            module = sys.modules.get(name)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ScoreError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module failed to import: say so in one line
        raise ScoreError(spec, f"{what}: cannot import {mod_name} ({type(e).__name__}: {e})") from None
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        raise ScoreError(spec, f"{what}: {mod_name} has no function {func_name}")
    return fn


def _describe(obj: Any) -> str | None:
    """What the provenance records for a score/base/data given as a Python object."""
    if obj is None:
        return None
    if isinstance(obj, str):
        return obj
    if callable(obj) and hasattr(obj, "__qualname__") and not isinstance(obj, type):
        return f"{getattr(obj, '__module__', '?')}:{obj.__qualname__}"
    return f"<{type(obj).__module__}.{type(obj).__qualname__} object>"


@dataclass
class Scorer:
    """The user's score function with its base model and data, resolved once."""

    fn: Callable[..., Any]
    base_source: Any  # an nn.Module, or a zero-argument factory returning one
    data_source: Any = None  # a zero-argument loader (a data object given as such is preloaded)
    has_data: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    _base: Any = None
    _data: Any = None
    _data_loaded: bool = False

    def base_model(self):
        if self._base is None:
            import torch

            src = self.base_source
            if isinstance(src, torch.nn.Module):
                self._base = src
            else:
                try:
                    model = src()
                except Exception as e:  # noqa: BLE001
                    raise ScoreError(self.record.get("base") or "base", f"the base model factory raised "
                                     f"{type(e).__name__}: {e}") from None
                if not isinstance(model, torch.nn.Module):
                    raise ScoreError(self.record.get("base") or "base",
                                     f"the base model factory returned a {type(model).__name__}, not a torch model")
                self._base = model
        return self._base

    def use_base(self, model) -> None:
        """Score on `model`, a base model already built from this scorer's base source: a caller that scores
        several revisions with several scorers builds it once. The record still names the source."""
        self._base = model

    def data(self):
        if not self._data_loaded:
            try:
                self._data = self.data_source()
            except Exception as e:  # noqa: BLE001
                raise ScoreError(self.record.get("data") or "data", f"the data loader raised "
                                 f"{type(e).__name__}: {e}") from None
            self._data_loaded = True
        return self._data

    def __call__(self, model) -> dict[str, float]:
        """Score `model`; return its values (always with a finite or NaN ``score``)."""
        args = (model, self.data()) if self.has_data else (model,)
        try:
            result = self.fn(*args)
        except ScoreError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's code failed: report it as such
            raise ScoreError(self.record.get("score") or "score", f"the score function raised {type(e).__name__}: {e}") from e
        return score_values(result, self.record.get("score") or "score")


def score_values(result: Any, where: str = "score") -> dict[str, float]:
    """A score function's return value as {"score": x, other metrics...}."""
    def number(v: Any, key: str) -> float:
        if isinstance(v, bool):
            raise ScoreError(where, f"the score function returned a boolean for {key!r}, not a number")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ScoreError(where, f"the score function returned {type(v).__name__} for {key!r}, not a number") from None
        return x

    if isinstance(result, Mapping):
        if "score" not in result:
            raise ScoreError(where, "the score function returned a mapping without a 'score' entry "
                                    "(the number to minimise)")
        return {str(k): number(v, str(k)) for k, v in sorted(result.items(), key=lambda kv: str(kv[0]))}
    return {"score": number(result, "score")}


def resolve_scorer(score: Any, base: Any = None, data: Any = None, *, need_base: bool = True,
                   output_space: bool = False) -> Scorer:
    """Find the score function, the base model and the data.

    ``score``: ``"module:function"`` (imported; ``path/file.py:function`` also
    works) or a callable. ``base``: ``"module:function"`` (a factory called
    once), a zero-argument callable, or a torch model; when omitted, the score
    function's module must define ``base_model()``. ``data``:
    ``"module:function"`` (a loader called once), or any object passed as it
    is; when omitted, the score module's ``load_data()`` is used if it defines
    one. With data the score function is called as ``score(model, data)``,
    without as ``score(model)``. Nothing else is ever passed to it.

    ``score="prompts"`` is the built-in prompt classifier (mfgit.api.prompts)
    on `data`, the sites' data (a list of SiteData, from ``--data
    attachments:NAME``); with `output_space` (a mixture is scored) its
    mixture form, mfgit.api.mixscore.
    """
    if score is None:
        raise ScoreError("-", "a score function is needed: --score MODULE:FUNCTION")
    if isinstance(data, str) and data.startswith(ATTACHMENTS_PREFIX):
        raise ScoreError(data, "--data attachments:NAME reads the attachments of the commits scored; merge --search, "
                               "mix --search and eval read them (elsewhere give --data MODULE:FUNCTION)")
    if score == PROMPTS:  # the built-in prompt classifier (mfgit.api.prompts), with the --base module's tokenizer
        check_sites(data)
        for site in data:
            prompt_counts(site)  # a missing or malformed task spec is refused before any model is built
        if base is None:
            raise ScoreError(PROMPTS, "--score prompts needs the base model: pass --base MODULE:FUNCTION")
        base_fn = load_callable(base, "--base") if isinstance(base, str) else base
        fn = prompt_score(base_fn, base if isinstance(base, str) else None)
        if output_space:
            from mfgit.api.mixscore import MixturePromptScore

            fn = MixturePromptScore(fn)
        scorer = resolve_scorer(fn, base_fn, data, need_base=need_base)
        scorer.record.update(score=PROMPTS, base=_describe(base), prompts=fn.record())
        return scorer
    fn = load_callable(score, "--score") if isinstance(score, str) else score
    if not callable(fn):
        raise ScoreError(_describe(score) or "-", "the score is not callable")
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    record: dict[str, Any] = {"score": _describe(score) if not isinstance(score, str) else score}
    base_source: Any = None
    if base is not None:
        base_source = load_callable(base, "--base") if isinstance(base, str) else base
        record["base"] = _describe(base)
    elif module is not None and callable(getattr(module, "base_model", None)):
        base_source = getattr(module, "base_model")
        record["base"] = f"{record['score'].split(':')[0]}:base_model" if isinstance(score, str) else _describe(base_source)
    elif need_base:
        raise ScoreError(record["score"], "needs a base model to load the candidate onto: define base_model() "
                                          "in the score function's module, or pass --base MODULE:FUNCTION")
    has_data, data_source, data_obj = False, None, None
    if data is not None:
        has_data = True
        if isinstance(data, str):
            data_source = load_callable(data, "--data")  # a loader, called once
        else:
            data_obj = data  # the object itself, passed as it is
        record["data"] = _describe(data)
    elif module is not None and callable(getattr(module, "load_data", None)):
        has_data = True
        data_source = getattr(module, "load_data")
        record["data"] = (f"{record['score'].split(':')[0]}:load_data" if isinstance(score, str)
                          else _describe(data_source))
    code = None
    try:
        # the file of the function's module (a decorator's wrapper lives in another package)
        src = getattr(module, "__file__", None) or inspect.getsourcefile(inspect.unwrap(fn))
        code = code_revision(Path(src).parent) if src else None
    except Exception:  # noqa: BLE001 - provenance of the scorer is best effort, never a failure
        code = None
    record["code"] = code
    scorer = Scorer(fn, base_source, data_source, has_data, record)
    if has_data and data_source is None:
        scorer._data, scorer._data_loaded = data_obj, True
    return scorer


class CandidateLoader:
    """Loads merge outputs as PeftModels onto one base model, one at a time.

    Each candidate is written (safetensors + adapter_config.json) to a
    private temporary directory, loaded with ``PeftModel.from_pretrained``,
    handed to the score function, then unloaded (``unload()``: the LoRA
    layers are removed, nothing is merged into the base), so the base model
    is restored for the next candidate.
    """

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._tmp = tempfile.TemporaryDirectory(prefix="mfgit-candidate-")

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> "CandidateLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, out: "MergeOutput") -> dict[str, float]:
        from peft import PeftModel
        from safetensors.torch import save_file

        d = Path(self._tmp.name) / "adapter"
        d.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in out.tensors.items()}, str(d / peftfmt.WEIGHTS_NAME),
                  metadata={"format": "pt"})
        (d / peftfmt.CONFIG_NAME).write_bytes(peftfmt.config_bytes(out.config))
        base = self.scorer.base_model()
        model = PeftModel.from_pretrained(base, str(d))
        try:
            model.eval()
            return self.scorer(model)
        finally:
            model.unload()  # the base model without the LoRA layers, as it was
