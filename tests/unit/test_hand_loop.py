"""The hand-written loop does exactly the work of a reference-method run (bbench/testing/hand_loop.py).

The overhead benchmark's ratio means something only if both sides train the same model on
the same batches with the same updates; these tests pin that down bit for bit on a short
mfeat run with FLOP counting off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import bbench
import bbench.runner
from bbench.config.fields import SpecError
from bbench.config.resolve import resolve_spec
from bbench.engine.selected import BEST_MODEL_NAME
from bbench.engine.trainer import Trainer
from bbench.methods.registry import METHODS, reference_method
from bbench.testing.hand_loop import HandLoop

SHORT = {"epochs": 3, "progress": False, "train.flops": "off",
         "dataset.options": {"subsample_per_class": 12}}


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key].to(got[key].device)), key


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One bbench run (initial weights captured as its Trainer is built) and the hand loop's
    set-up and fit of the same spec."""
    out = tmp_path_factory.mktemp("runs")
    initial: dict[str, torch.Tensor] = {}
    final: dict[str, torch.Tensor] = {}

    class Capturing(Trainer):
        def __init__(self, spec: Any, data: Any, method: Any, model: torch.nn.Module,
                     *args: Any, **kwargs: Any) -> None:
            initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().__init__(spec, data, method, model, *args, **kwargs)

        def fit(self, *args: Any, **kwargs: Any) -> Any:
            fitted = super().fit(*args, **kwargs)  # the weights after the last step, before
            final.update({k: v.detach().clone()  # the runner loads the selected ones
                          for k, v in self.model.state_dict().items()})
            return fitted

    patch = pytest.MonkeyPatch()
    patch.setattr(bbench.runner, "Trainer", Capturing)
    try:
        result = bbench.run(None, "mfeat", output_root=str(out), **SHORT)
    finally:
        patch.undo()
    hand = HandLoop(resolve_spec(None, "mfeat", SHORT))
    hand_initial = {k: v.detach().clone() for k, v in hand.model.state_dict().items()}
    fit = hand.fit()
    best = torch.load(Path(result.run_dir) / BEST_MODEL_NAME, weights_only=True)
    return {"result": result, "initial": initial, "hand": hand, "hand_initial": hand_initial,
            "fit": fit, "final": final, "best": best}


def test_initial_weights_are_the_runs(paired: dict[str, Any]) -> None:
    assert paired["initial"], "the run built no Trainer"
    assert_same_tensors(paired["hand_initial"], paired["initial"])


def test_training_changed_the_weights(paired: dict[str, Any]) -> None:
    """Guards the next test against comparing two untrained models."""
    hand = paired["hand"].model.state_dict()
    assert any(not torch.equal(hand[k], paired["hand_initial"][k]) for k in hand)


def test_final_weights_are_the_runs_bit_for_bit(paired: dict[str, Any]) -> None:
    assert_same_tensors(paired["hand"].model.state_dict(), paired["final"])


def test_per_epoch_validation_is_the_runs(paired: dict[str, Any]) -> None:
    history = paired["result"].history
    fit = paired["fit"]
    assert len(fit.history) == len(history) == SHORT["epochs"]
    for mine, theirs in zip(fit.history, history):
        assert mine["epoch"] == theirs["epoch"]
        assert mine["val_acc"] == theirs["val_acc"]
        assert mine["val_loss"] == theirs["val_loss"]


def test_model_selection_is_the_runs(paired: dict[str, Any]) -> None:
    fit = paired["fit"]
    assert fit.best_epoch == paired["result"].metrics["best_epoch"]
    assert_same_tensors(fit.best_state, paired["best"])
    assert fit.seconds > 0


def test_another_method_is_refused() -> None:
    other = next(name for name in METHODS if name != reference_method()
                 and METHODS.get(name).min_modalities <= 2 and not METHODS.get(name).inputs)
    spec = resolve_spec(other, "mfeat", {"progress": False})
    with pytest.raises(SpecError, match=f"reference method {reference_method()} only"):
        HandLoop(spec)


def test_a_setting_it_does_not_mirror_is_refused() -> None:
    spec = resolve_spec(None, "mfeat", {"train.precision": "bf16"})
    with pytest.raises(SpecError, match=r"train\.precision='bf16'"):
        HandLoop(spec)
