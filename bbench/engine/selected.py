"""A finished run's selected (best-validation) model, rebuilt from the run's own settings.

A method that consumes another run (probing its encoders, distilling from its features)
needs that run's selected weights inside the very model that run trained. The model is
therefore built by the run's own method from the run's own resolved spec, so every
state-dict key and shape matches without renaming, and the weights are loaded strictly:
a file saved from another model, or under a wrapper prefix such as DataParallel's
`module.`, is refused with the file named instead of being half-loaded over a random
initialisation. The model comes back frozen (eval mode, `requires_grad=False`): nothing
trains it, and its batch-norm statistics cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from bbench.config.resolve import resolve_spec
from bbench.config.specs import RunSpec
from bbench.data.base import DataInfo
from bbench.results.record import RunResult

if TYPE_CHECKING:
    from bbench.methods.base import Method

# The file the runner writes the selected weights to, in every finished run's directory.
BEST_MODEL_NAME = "best_model.pt"


@dataclass
class SelectedModel:
    """A finished run's resolved spec, its method object and its frozen selected model."""

    spec: RunSpec
    method: "Method"
    model: nn.Module


def load_selected_model(run: RunResult, info: DataInfo, device: torch.device) -> SelectedModel:
    """The run's best-validation model on `device`, built as the run built it, and frozen.

    `info` describes the data of the consuming run; the caller checks that the two runs
    used the same data where it relies on that.
    """
    # Imported here, as resolve_spec does: bbench.methods imports this module, so a
    # module-level import would make importing this module first a circular import.
    from bbench.methods.base import RunContext
    from bbench.methods.registry import build_method

    spec = resolve_spec(base=run.spec)
    method = build_method(spec.method, spec.method_params,
                          RunContext(info, spec.model, spec.train.seed, device, spec))
    model = method.build_model().to(device)
    weights = run.run_dir / BEST_MODEL_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"expected the selected weights of the {run.method} run "
                                f"{run.run_dir} at {weights}")
    state = torch.load(weights, map_location=device, weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{weights} does not fit the model of its {run.method} run ({first}): "
                         f"missing keys {sorted(set(model.state_dict()) - set(state))[:3]}, "
                         f"unexpected keys {sorted(set(state) - set(model.state_dict()))[:3]}; "
                         f"the weights must be the state dict of the bare model, saved "
                         f"without a wrapper prefix") from None
    model.eval().requires_grad_(False)
    return SelectedModel(spec, method, model)
