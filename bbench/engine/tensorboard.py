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
    its record name (`train_loss`, `val_acc`, `val_acc_<m>`, `lr`). An epoch's scalars go
    out as one event holding one summary of all of them (TensorBoard reads each value as its
    own scalar series): `SummaryWriter.add_scalar` builds an event per value, which cost
    about 80 µs each, more than a small run's steps' own bookkeeping.
    """

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard.writer import FileWriter

        # The writer's own thread writes the events out every FLUSH_SECONDS (and on close).
        self.writer = FileWriter(str(log_dir), flush_secs=FLUSH_SECONDS)

    def __call__(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=f"method/{name}", simple_value=v)
                  for name, v in record.get("method", {}).items()]
        values += [Summary.Value(tag=key, simple_value=value) for key, value in record.items()
                   if isinstance(value, (int, float)) and key != "epoch"]
        self.writer.add_summary(Summary(value=values), epoch)

    def close(self) -> None:
        self.writer.close()
