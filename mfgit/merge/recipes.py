"""Recipe files: mfgit's own YAML recipe, and mergekit's merge configuration read as one.

mfgit's recipe names the request's fields (``strategy``, ``inputs``,
``weights``, ``params``, ``rank``, ...). A file with ``merge_method`` is a
mergekit configuration (its ``config.py`` schema: ``merge_method``,
``base_model``, ``models`` with per-model ``parameters``, global
``parameters``, ``dtype``): each method mfgit has is mapped to mfgit's
recipe with mergekit's meaning kept (``density`` is DARE's and DELLA's keep
fraction, ``linear`` and ``ties`` normalise the weights by default, ...);
the merge commit records the original configuration next to the recipe it
became. mergekit's ``model_stock``, ``slerp``, ``nuslerp`` and ``karcher`` are
mapped with their own parameters (slerp's ``t`` and nuslerp's weights become
mfgit's interpolation weights); where they act on full weights and mfgit on the
adapters' updates, the recorded differences say so. What mfgit cannot compute
as mergekit does is refused with one line naming the method or field — never
silently merged another way.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mfgit.errors import MergeError

RECIPE_KEYS = {"strategy", "inputs", "weights", "weights_from", "params", "rank", "energy", "seed", "device",
               "dtype", "message", "rebuild", "base_weights"}

# mergekit's top-level keys; the ones that only concern full models (tokenizers, chat
# templates) are accepted and recorded, since an adapter merge has nothing to do with them.
_MERGEKIT_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
                  "tokenizer_source", "tokenizer", "chat_template", "name"}
_MERGEKIT_UNSUPPORTED_KEYS = {"slices": "slices (layer ranges of several models) describe full models",
                              "modules": "modules describe parts of full models"}
_DTYPES = {"float32": "F32", "fp32": "F32", "bfloat16": "BF16", "bf16": "BF16", "float16": "F16", "fp16": "F16",
           "float64": "F64"}


def load_recipe(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(mfgit recipe, the mergekit configuration it came from or None) of a YAML file."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"recipe {p} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MergeError(f"recipe {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise MergeError(f"recipe {p} must be a mapping of keys ({', '.join(sorted(RECIPE_KEYS))})")
    if "merge_method" in data:
        return from_mergekit(data, str(p)), data
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise MergeError(f"recipe {p}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(RECIPE_KEYS))}")
    return data, None


# -- mergekit ---------------------------------------------------------------------------------------


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        kind = "a list (a gradient over layers or filters)" if isinstance(value, list) else repr(value)
        raise MergeError(f"mergekit recipe {where}: {what} must be one number here, got {kind}; "
                         "mfgit takes one value per model for the whole adapter")
    return float(value)


def _flag(value: Any, what: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise MergeError(f"mergekit recipe {where}: {what} must be true or false, got {value!r}")
    return value


def _one_value(models: list[dict[str, Any]], name: str, default: Any, where: str) -> Any:
    """A per-model parameter that mfgit applies to the whole merge: every model must give the same value."""
    values = {m["parameters"].get(name, default) for m in models}
    if len(values) > 1:
        raise MergeError(f"mergekit recipe {where}: models give different {name} values ({sorted(map(str, values))}); "
                         f"mfgit's {name} is one value for all inputs")
    return values.pop()


# mergekit method → (mfgit strategy, how its parameters map). `normalize` is mergekit's default per method.
_METHODS: dict[str, dict[str, Any]] = {
    "linear": {"strategy": "linear", "normalize": True},
    "task_arithmetic": {"strategy": "task_arithmetic", "normalize": False},
    "ties": {"strategy": "ties", "normalize": True, "mean": True},
    "dare_linear": {"strategy": "dare_linear", "normalize": False},
    "dare_ties": {"strategy": "dare_ties", "normalize": False, "mean": True},
    "breadcrumbs": {"strategy": "breadcrumbs", "normalize": False},
    "della": {"strategy": "della", "normalize": True, "mean": True},
}
_MODEL_PARAMS = {"weight", "density", "gamma", "epsilon"}
_GLOBAL_PARAMS = {"normalize", "rescale", "lambda", "int8_mask", "density", "gamma", "epsilon", "weight"}
# mergekit's methods from the angles between models: (global parameters, per-model parameters) as mergekit
# declares them. model_stock and karcher take no weight: every model counts the same.
_ANGULAR: dict[str, tuple[set[str], set[str]]] = {
    "model_stock": ({"filter_wise"}, set()),
    "slerp": ({"t"}, set()),
    "nuslerp": ({"nuslerp_flatten", "nuslerp_row_wise", "weight"}, {"weight"}),
    "karcher": ({"max_iter", "tol"}, set()),
}
_METHODS.update({name: {"strategy": name} for name in _ANGULAR})


def _plain(value: Any, path: str, where: str) -> None:
    """The configuration is recorded in the merge commit: it must be plain JSON data."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise MergeError(f"mergekit recipe {where}: key {k!r} at {path} is not a string")
            _plain(v, f"{path}.{k}", where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, f"{path}[{i}]", where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise MergeError(f"mergekit recipe {where}: {path} is {value!r}, not a finite number")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise MergeError(f"mergekit recipe {where}: {path} is a {type(value).__name__}, not plain data")


def from_mergekit(data: dict[str, Any], where: str = "recipe") -> dict[str, Any]:
    """mfgit's recipe for a mergekit configuration (see the module docstring)."""
    _plain(data, "$", where)
    for key in data:
        if key in _MERGEKIT_UNSUPPORTED_KEYS:
            raise MergeError(f"mergekit recipe {where}: {key!r} is not supported: "
                             f"{_MERGEKIT_UNSUPPORTED_KEYS[key]}; list the adapters under 'models'")
        if key not in _MERGEKIT_KEYS:
            raise MergeError(f"mergekit recipe {where}: unknown field {key!r}; allowed: {', '.join(sorted(_MERGEKIT_KEYS))}")
    method = data["merge_method"]
    if method not in _METHODS:
        raise MergeError(f"mergekit recipe {where}: merge_method {method!r} is not one mfgit has; "
                         f"mapped methods: {', '.join(sorted(_METHODS))}")
    spec = _METHODS[method]
    glob_names, model_names = _ANGULAR.get(method, (_GLOBAL_PARAMS, _MODEL_PARAMS))
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise MergeError(f"mergekit recipe {where}: 'models' must list the adapters to merge "
                         "(- model: REVISION, parameters: {weight: ...})")
    glob = data.get("parameters") or {}
    if not isinstance(glob, dict):
        raise MergeError(f"mergekit recipe {where}: 'parameters' must be a mapping")
    for name in glob:
        if name not in glob_names:
            raise MergeError(f"mergekit recipe {where}: unknown parameter {name!r} for {method} "
                             f"(its parameters: {', '.join(sorted(glob_names)) or 'none'})")
    entries = []
    for i, m in enumerate(models):
        if not isinstance(m, dict) or not isinstance(m.get("model"), str) or set(m) - {"model", "parameters"}:
            raise MergeError(f"mergekit recipe {where}: models[{i}] must be {{model: REVISION, parameters: {{...}}}}")
        params = m.get("parameters") or {}
        if not isinstance(params, dict):
            raise MergeError(f"mergekit recipe {where}: models[{i}].parameters must be a mapping")
        for name in params:
            if name == "weight" and not model_names:
                raise MergeError(f"mergekit recipe {where}: {method} takes no weight (mergekit weighs every model "
                                 f"the same and ignores it); remove models[{i}].parameters.weight")
            if name not in model_names:
                raise MergeError(f"mergekit recipe {where}: unknown parameter {name!r} of models[{i}] "
                                 f"(per-model parameters of {method}: {', '.join(sorted(model_names)) or 'none'})")
        # A per-model value wins over the global one (mergekit's precedence).
        entries.append({"model": m["model"], "parameters": {**{k: v for k, v in glob.items() if k in model_names},
                                                           **params}})
    if method in _ANGULAR:
        recipe = _angular_recipe(method, data, glob, entries, where)
    else:
        recipe = _task_arithmetic_recipe(method, spec, glob, entries, where)
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype is not None:
        if dtype not in _DTYPES:
            raise MergeError(f"mergekit recipe {where}: dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        recipe["dtype"] = _DTYPES[dtype]
    return recipe


def _task_arithmetic_recipe(method: str, spec: dict[str, Any], glob: dict[str, Any], entries: list[dict[str, Any]],
                            where: str) -> dict[str, Any]:
    """The recipe of mergekit's task-arithmetic family: weights, λ, densities as mfgit's parameters."""
    normalize = _flag(glob.get("normalize", spec["normalize"]), "normalize", where)
    if spec.get("mean") and not normalize:
        raise MergeError(f"mergekit recipe {where}: {method} with normalize: false sums the agreeing updates; "
                         f"mfgit's {spec['strategy']} is the paper's disjoint weighted mean (normalize: true)")
    if "weight" not in entries[0]["parameters"] and any("weight" not in e["parameters"] for e in entries):
        raise MergeError(f"mergekit recipe {where}: every model needs parameters.weight (mergekit requires it)")
    weights = [_number(e["parameters"]["weight"], f"the weight of {e['model']}", where) for e in entries]
    if normalize and spec["strategy"] in ("linear", "task_arithmetic"):
        total = sum(weights)
        if abs(total) < 1e-8:
            raise MergeError(f"mergekit recipe {where}: the weights sum to 0, which normalize: true cannot divide by")
        weights = [w / total for w in weights]
    params: dict[str, float] = {}
    if "lambda" in glob:
        params["lambda"] = _number(glob["lambda"], "lambda", where)
    strategy = spec["strategy"]
    density = _one_value(entries, "density", 1.0, where)
    if strategy in ("ties",):
        params["density"] = _number(density, "density", where)
    elif strategy in ("dare_linear", "dare_ties"):
        params["density"] = _number(density, "density", where)  # keep fraction: drop rate 1 - density
    elif strategy == "della":
        params["density"] = _number(density, "density", where)
        params["epsilon"] = _number(_one_value(entries, "epsilon", 0.15, where), "epsilon", where)
    elif strategy == "breadcrumbs":
        gamma = _number(_one_value(entries, "gamma", 0.01, where), "gamma", where)
        params["gamma"] = gamma
        params["beta"] = float(f"{1.0 - _number(density, 'density', where) - gamma:.15g}")
    elif density != 1.0:
        raise MergeError(f"mergekit recipe {where}: {method} takes no density")
    return {"strategy": strategy, "inputs": [e["model"] for e in entries], "weights": weights, "params": params}


def _angular_recipe(method: str, data: dict[str, Any], glob: dict[str, Any], entries: list[dict[str, Any]],
                    where: str) -> dict[str, Any]:
    """The recipe of mergekit's model_stock, slerp, nuslerp and karcher, with mergekit's meaning of the weights."""
    refs = [e["model"] for e in entries]
    params: dict[str, float] = {}
    if method in ("slerp", "nuslerp") and len(refs) != 2:
        raise MergeError(f"mergekit recipe {where}: {method} interpolates between exactly two models, got {len(refs)}")
    if method == "slerp":
        base = data.get("base_model")
        if base not in refs:
            raise MergeError(f"mergekit recipe {where}: mergekit's slerp goes from base_model (t = 0) to the other "
                             f"model; name one of the two adapters as base_model")
        if "t" not in glob:
            raise MergeError(f"mergekit recipe {where}: slerp needs parameters.t (mergekit requires it)")
        t = _number(glob["t"], "t", where)
        if not 0.0 <= t <= 1.0:
            raise MergeError(f"mergekit recipe {where}: slerp's t must be in [0, 1], got {t!r}")
        refs = [base, refs[1] if refs[0] == base else refs[0]]
        weights = [float(f"{1.0 - t:.15g}"), t]  # mfgit's slerp takes t = w₁ / (w₀ + w₁)
    elif method == "nuslerp":
        if data.get("base_model") in refs:
            raise MergeError(f"mergekit recipe {where}: mergekit's nuslerp interpolates two models besides "
                             f"base_model; base_model must not be one of them")
        if any("weight" not in e["parameters"] for e in entries):
            raise MergeError(f"mergekit recipe {where}: every model needs parameters.weight (mergekit requires it)")
        w0, w1 = (_number(e["parameters"]["weight"], f"the weight of {e['model']}", where) for e in entries)
        t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)  # mergekit's interpolation factor
        weights = [float(f"{1.0 - t:.15g}"), t]
        params["flatten"] = float(_flag(glob.get("nuslerp_flatten", True), "nuslerp_flatten", where))
        params["row_wise"] = float(_flag(glob.get("nuslerp_row_wise", False), "nuslerp_row_wise", where))
    else:
        weights = [1.0 / len(refs)] * len(refs)  # mergekit weighs every model the same
        if method == "model_stock":
            params["filter_wise"] = float(_flag(glob.get("filter_wise", False), "filter_wise", where))
        else:
            for name in ("max_iter", "tol"):
                if name in glob:
                    params[name] = _number(glob[name], name, where)
    return {"strategy": method, "inputs": refs, "weights": weights, "params": params}


def mergekit_differences(source: dict[str, Any]) -> list[str]:
    """Where mfgit's merge of a mergekit configuration computes something mergekit would not (recorded)."""
    method = source.get("merge_method")
    glob = source.get("parameters") or {}
    out = []
    if method in ("dare_linear", "dare_ties", "della") and glob.get("rescale", True):
        out.append("survivors are rescaled by 1/(1 - p) (the paper), not by mergekit's L1-norm matching (rescale)")
    if method in ("ties", "dare_ties", "della"):
        out.append("a sign tie (the weighted sum is exactly 0) elects no sign; mergekit elects +")
    if method in ("ties", "dare_ties", "della", "breadcrumbs"):
        out.append("a fraction f of n elements is floor(f*n + 0.5) elements; mergekit keeps int(f*n)")
    if method == "model_stock":
        out.append("cos θ of two updates is exact; mergekit divides by max(|δi| |δj|, 1e-6)")
    if method == "slerp":
        out.append("SLERP of the two adapters' updates, from base_model's to the other's; mergekit's slerp "
                   "interpolates the full weights, whose angle the shared base weights dominate (near 0: mergekit "
                   "interpolates linearly above cos 0.9995)")
    elif method == "karcher":
        out.append("the Karcher mean of the adapters' updates; mergekit's is that of the full weights, of "
                   "base_model too when it is given")
    elif method == "nuslerp" and source.get("base_model") is None:
        out.append("NuSLERP of the adapters' updates; mergekit without base_model interpolates the full weights "
                   "(with base_model it interpolates the updates, as here)")
    else:
        out.append("the adapters' updates are merged directly; mergekit merges full models (base_model is the "
                   "adapters' base, not an input)")
    return out
