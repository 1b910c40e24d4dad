from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from bbench.config.fields import SpecError, build, param, to_dict
from bbench.config.resolve import resolve_spec
from bbench.config.specs import RunSpec


@dataclass(frozen=True)
class Demo:
    alpha: float = param(0.3, ge=0)
    q: float = param(0.4, ge=0, le=1)
    n: int = param(2, ge=1)
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()
    maybe: Optional[int] = None
    flag: bool = False


def test_strings_are_coerced_to_the_declared_types():
    demo = build(Demo, {"alpha": "0.5", "n": "3", "mode": "B", "names": "x,y", "maybe": "none",
                        "flag": "true"}, "Demo")
    assert demo == Demo(alpha=0.5, n=3, mode="b", names=("x", "y"), maybe=None, flag=True)


def test_out_of_range_value_names_owner_field_value_and_range():
    with pytest.raises(SpecError, match=r"OGM: alpha=-0.1 is out of range; need alpha >= 0"):
        build(Demo, {"alpha": -0.1}, "OGM")
    with pytest.raises(SpecError, match=r"q=1.5 is out of range; need 0 <= q <= 1"):
        build(Demo, {"q": 1.5}, "OPM")
    with pytest.raises(SpecError, match="nan"):
        build(Demo, {"alpha": "nan"}, "OGM")


def test_wrong_type_and_unknown_key_are_rejected_with_suggestions():
    with pytest.raises(SpecError, match="n='x' must be an integer"):
        build(Demo, {"n": "x"}, "Demo")
    with pytest.raises(SpecError, match="unknown key 'alpah'.*Did you mean 'alpha'"):
        build(Demo, {"alpah": 1}, "Demo")
    with pytest.raises(SpecError, match="not allowed; choose one of 'a', 'b'"):
        build(Demo, {"mode": "c"}, "Demo")


def test_overrides_route_bare_keys_to_method_then_shorthands():
    spec = resolve_spec("OGM", "mfeat", {"alpha": "0.5", "epochs": "3", "train.optimizer.lr": "0.1",
                                         "modalities": "fac,pix"})
    assert spec.method_params == {"start": 10, "end": 80, "alpha": 0.5, "variant": "OGM_GE"}
    assert spec.train.epochs == 3 and spec.train.optimizer.lr == 0.1
    assert spec.dataset.modalities == ("fac", "pix")


def test_preset_is_applied_and_defaults_fill_the_rest():
    spec = resolve_spec("Baseline", "mfeat")
    assert spec.train.optimizer.lr == 0.01 and spec.train.epochs == 70
    assert spec.model.encoders["*"].options == {"hidden": [128, 64], "activation": "relu", "dropout": 0.0}
    assert build(RunSpec, to_dict(spec), "run") == spec


def test_bad_settings_fail_before_any_work():
    with pytest.raises(SpecError, match="unknown setting 'alhpa'.*Did you mean 'alpha'"):
        resolve_spec("OGM", "mfeat", {"alhpa": 1})
    with pytest.raises(SpecError, match="OGM: alpha=-1.0 is out of range"):
        resolve_spec("OGM", "mfeat", {"alpha": -1})
    with pytest.raises(SpecError, match="start=5 is after end=2"):
        resolve_spec("OGM", "mfeat", {"start": 5, "end": 2})
    with pytest.raises(SpecError, match="Baseline: 'start' is not accepted; Baseline is not a windowed"):
        resolve_spec("Baseline", "mfeat", {"method_params.start": 1})
    with pytest.raises(SpecError, match="epochs=0 is out of range"):
        resolve_spec("Baseline", "mfeat", {"epochs": 0})
    with pytest.raises(SpecError, match="encoder mlp.*unknown key 'hiden'"):
        resolve_spec("Baseline", "mfeat", {"model.encoders.*.options.hiden": "4"})


def test_balancemm_key_names_are_accepted():
    spec = resolve_spec("MMPareto", "mfeat", {"alpha": 2.0, "modulation_starts": 1})
    from bbench.methods.registry import METHODS, method_params
    params = method_params(METHODS.get("MMPareto"), spec.method_params)
    assert params.gamma == 2.0 and params.start == 1
