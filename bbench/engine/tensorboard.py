"""Per-epoch TensorBoard scalars, written only when the `tensorboard` package is installed."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

FLUSH_SECONDS = 10
"""At most this long until a running job's scalars are visible in TensorBoard."""


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger:
    """A Trainer callback: every numeric entry of the epoch record becomes a scalar.

    Method logs appear as `method/<key>` (e.g. `method/coef_audio`), everything else under
    its record name (`train_loss`, `val_acc`, `val_acc_<m>`, `lr`).
    """

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # The writer's own thread writes the events out every FLUSH_SECONDS (and on close):
        # a flush after every epoch cost a short run more than its steps' own bookkeeping.
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=FLUSH_SECONDS)

    def __call__(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key == "method":
                for name, v in value.items():
                    self.writer.add_scalar(f"method/{name}", v, epoch)
            elif isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, epoch)

    def close(self) -> None:
        self.writer.close()
