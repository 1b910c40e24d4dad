"""A per-run progress bar (tqdm) over epochs, with each epoch's training loss and validation
accuracy (read once per epoch: the bar adds no host synchronisation to a step)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, epochs: int, enabled: bool, label: str, start: int = 0) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.epochs = epochs
        self._bar = tqdm(total=epochs, initial=start, desc=label, unit="ep", leave=False,
                         dynamic_ncols=True, file=sys.stderr) if self.enabled else None
        self._postfix: dict[str, str] = {}

    def epoch_done(self, epoch: int, train_loss: float, val_acc: float) -> None:
        if self._bar is not None:
            self._postfix["loss"] = f"{train_loss:.3f}"
            self._postfix["val_acc"] = f"{val_acc:.3f}"
            self._bar.set_postfix(self._postfix, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
