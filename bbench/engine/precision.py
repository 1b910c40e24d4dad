"""Mixed precision of a run: the autocast region and, for float16, dynamic loss scaling.

`train.precision` picks the dtype the training forward runs in (bf16 or fp16 under
`torch.autocast`; fp32 = no autocast). Parameters, gradients, optimizer state and
everything outside the forward (method scores, cosines, projections, prototypes,
validation, Shapley evaluation) stay float32: a method's math between backward and the
optimizer step always reads float32 gradients of the true loss.

float16 needs loss scaling (its smallest normal is 6e-5; small gradients flush to zero).
`torch.amp.GradScaler` allows one `unscale_` per optimizer step, after every backward of the
step, but bbench's methods read and edit gradients between backward passes (MMPareto's
per-loss gradients, MLA's sub-steps, methods that accumulate several losses), so the scaler
here unscales the gradients of each backward pass (or each `autograd.grad` call) right
away, with torch's own fused kernels (`_amp_foreach_non_finite_check_and_unscale_`,
`_amp_update_scale_`: the ones GradScaler runs). Gradients from earlier passes of the same
step are set aside during a pass and added back after it, so each pass's contribution is
unscaled exactly once. A step with a non-finite gradient is skipped and the scale halved;
2000 finite steps in a row double it (GradScaler's defaults).
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                         "fp16": torch.float16}

INIT_SCALE = 2.0 ** 16
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000


_FULL_PRECISION = contextlib.nullcontext()  # reusable: one for every fp32 step


class MixedPrecision:
    """The autocast context, backward passes and optimizer steps of one run's precision."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in DTYPES:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(DTYPES)}")
        self.precision = precision
        self.device = device
        self.dtype = DTYPES[precision]
        self.scaling = precision == "fp16"
        self.scale = torch.full((1,), INIT_SCALE, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros(1, dtype=torch.int32, device=device)
        self.found_inf = torch.zeros(1, dtype=torch.float32, device=device)
        self.skipped_steps = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The region that runs in the low-precision dtype (a no-op for fp32)."""
        if self.dtype is None:
            return _FULL_PRECISION
        return torch.autocast(self.device.type, dtype=self.dtype)

    # -- gradients ----------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, params: Sequence[torch.Tensor], **kwargs: Any) -> None:
        """`loss.backward(**kwargs)`; with loss scaling, the new gradients of `params` unscaled."""
        if not self.scaling:
            loss.backward(**kwargs)
            return
        earlier = [(p, p.grad) for p in params if p.grad is not None]
        for p, _ in earlier:
            p.grad = None
        (loss.float() * self.scale).backward(**kwargs)
        self._unscale([p.grad for p in params if p.grad is not None])
        for p, grad in earlier:
            p.grad = grad if p.grad is None else p.grad.add_(grad)

    def grads(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor],
              **kwargs: Any) -> tuple[torch.Tensor | None, ...]:
        """`torch.autograd.grad(loss, inputs, **kwargs)`, unscaled under loss scaling."""
        if not self.scaling:
            return torch.autograd.grad(loss, inputs, **kwargs)
        grads = torch.autograd.grad(loss.float() * self.scale, inputs, **kwargs)
        self._unscale([g for g in grads if g is not None])
        return grads

    def _unscale(self, grads: list[torch.Tensor]) -> None:
        if not grads:
            return
        inverse = self.scale.double().reciprocal().float()
        for dtype in {g.dtype for g in grads}:  # the fused kernel wants one dtype per call
            torch._amp_foreach_non_finite_check_and_unscale_(
                [g for g in grads if g.dtype == dtype], self.found_inf, inverse)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step, skipped when a gradient of this step was not finite (then the
        scale shrinks); returns whether the step ran."""
        if not self.scaling:
            optimizer.step()
            return True
        finite = not bool(self.found_inf.item())
        if finite:
            optimizer.step()
        else:
            self.skipped_steps += 1
        torch._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf,
                                 GROWTH_FACTOR, BACKOFF_FACTOR, GROWTH_INTERVAL)
        self.found_inf.zero_()
        return finite

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale.clone(), "growth_tracker": self.growth_tracker.clone(),
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])
        self.skipped_steps = int(state["skipped_steps"])
