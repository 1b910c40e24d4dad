"""From (method, dataset, preset, overrides) to one validated, frozen RunSpec.

Order of precedence: RunSpec defaults < the dataset's preset file < an explicit preset
file < overrides. Overrides are dotted keys (`train.optimizer.lr=0.1`); a bare key is a
method hyper-parameter when the method has it (`alpha=0.5`), else a shorthand of
`SHORTHANDS` (`lr`, `epochs`, …). Every value is validated before any work starts.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from bbench.config.fields import SpecError, build, fields_of, to_dict
from bbench.config.specs import RunSpec
from bbench.registry import suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHORTHANDS: dict[str, str] = {
    "lr": "train.optimizer.lr",
    "momentum": "train.optimizer.momentum",
    "weight_decay": "train.optimizer.weight_decay",
    "optimizer": "train.optimizer.type",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "device": "train.device",
    "step_size": "train.scheduler.step_size",
    "num_workers": "train.num_workers",
    "progress": "train.progress",
    "modalities": "dataset.modalities",
    "data_root": "dataset.root",
    "root": "dataset.root",
    "split_seed": "dataset.split_seed",
    "fusion": "model.fusion",
    "mask": "eval.mask",
    "output_root": "output_root",
    "out": "run_dir",
}


def preset_names() -> list[str]:
    """Stems of the preset files shipped in the package."""
    folder = resources.files("bbench.config") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A shipped preset by name, or any TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text = path.read_text()
    else:
        resource = resources.files("bbench.config") / "presets" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise SpecError(f"unknown preset {name_or_path!r}.{suggest(name_or_path, preset_names())}"
                            f" Available: {', '.join(preset_names())} (or a path to a .toml file)")
        text = resource.read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"preset {name_or_path}: not valid TOML: {err}") from None


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _route(key: str, method_keys: set[str]) -> str:
    """Where a bare or dotted override key goes in the spec tree."""
    if "." in key:
        return key
    if key in method_keys:
        return f"method_params.{key}"
    if key in SHORTHANDS:
        return SHORTHANDS[key]
    if key in fields_of(RunSpec):
        return key
    choices = sorted(method_keys | set(SHORTHANDS))
    raise SpecError(f"unknown setting {key!r}.{suggest(key, choices)} Method settings: "
                    f"{', '.join(sorted(method_keys)) or '(none)'}; general: {', '.join(SHORTHANDS)}; "
                    f"or a dotted key such as train.optimizer.lr")


def resolve_spec(method: str | None = None, dataset: str | None = None,
                 overrides: Mapping[str, Any] | None = None, preset: str | None = None,
                 base: Mapping[str, Any] | None = None) -> RunSpec:
    """Validate everything about a run and return its frozen spec."""
    from bbench.data.registry import DATASETS, resolve_modalities
    from bbench.methods.registry import METHODS, WINDOW_ALIASES, method_params, reference_method
    from bbench.models.encoders import ENCODERS
    from bbench.models.fusion import FUSIONS

    tree = to_dict(RunSpec()) if base is None else dict(base)
    method = method or tree["method"] or reference_method()
    dataset = dataset or tree["dataset"]["name"]
    method_cls = METHODS.get(method)
    entry = DATASETS.get(dataset)
    if base is None and entry.preset:
        tree = deep_merge(tree, load_preset(entry.preset))
    if preset:
        tree = deep_merge(tree, load_preset(preset))
    tree["method"] = method_cls.name
    tree.setdefault("dataset", {})["name"] = entry.name
    method_keys = set(fields_of(method_cls.Params)) | set(method_cls.param_aliases)
    if method_cls.windowed:
        method_keys |= set(WINDOW_ALIASES)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and "." not in key and key in fields_of(RunSpec):
            tree[key] = deep_merge(tree.get(key) or {}, value)
        else:
            set_dotted(tree, _route(key, method_keys), value)
    spec = build(RunSpec, tree, "run")
    _check_modality_count(method_cls, resolve_modalities(entry, spec.dataset.modalities))
    _check_shapley_mask(method_cls, spec.eval.mask)
    # Fail now, not mid-run, and record every setting typed and complete (defaults included,
    # BalanceMM key names mapped to bbench's).
    encoders = {name: replace(enc, type=ENCODERS.canonical(enc.type), options=to_dict(build(
        ENCODERS.get(enc.type).options, enc.options, f"encoder {enc.type} ({name})")))
        for name, enc in spec.model.encoders.items()}
    fusion = FUSIONS.canonical(spec.model.fusion)
    return replace(
        spec,
        method_params=to_dict(method_params(method_cls, spec.method_params)),
        dataset=replace(spec.dataset, options=to_dict(
            build(entry.options, spec.dataset.options, f"dataset {entry.name}"))),
        model=replace(spec.model, encoders=encoders, fusion=fusion, fusion_options=to_dict(
            build(FUSIONS.get(fusion).options, spec.model.fusion_options, f"fusion {fusion}"))))


def _check_shapley_mask(method_cls: Any, mask: str) -> None:
    """Feature masking zeroes h_m and runs the model's own head, which is not what a method
    with its own evaluation (e.g. an entropy-gated fusion) predicts with: its Shapley values
    would describe another classifier. Input masking goes through the method's evaluation."""
    if mask == "feature" and not method_cls.default_evaluation() and not method_cls.imbalance_undefined:
        raise SpecError(f"{method_cls.name} evaluates with its own fusion, which feature masking "
                        f"(eval.mask=feature zeroes h_m and runs the model's head) would bypass; "
                        f"use eval.mask=input")


def _check_modality_count(method_cls: Any, modalities: tuple[str, ...]) -> None:
    """A method outside its modality bounds would run and report a meaningless I = 0."""
    n, least, most = len(modalities), method_cls.min_modalities, method_cls.max_modalities
    fit = method_cls.modality_fit(n)
    if fit == "too few":
        from bbench.methods.facts import Family
        from bbench.methods.registry import METHODS

        fitting = [name for name in METHODS if METHODS.get(name).modality_fit(n) is None
                   and METHODS.get(name).family == Family.REFERENCE]
        raise SpecError(f"{method_cls.name} needs at least {least} modalities, got {n} "
                        f"({', '.join(modalities)}): it balances modalities against each other; "
                        f"with {n} use {' or '.join(fitting)}")
    if fit == "too many":
        raise SpecError(f"{method_cls.name} handles at most {most} modalities, got {n} "
                        f"({', '.join(modalities)})")
