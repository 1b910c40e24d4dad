"""A per-run progress bar (tqdm) over training steps, with the epoch's validation accuracy."""
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

    def step(self, loss: float) -> None:
        if self._bar is not None:
            self._postfix["loss"] = f"{loss:.3f}"

    def epoch_done(self, epoch: int, val_acc: float) -> None:
        if self._bar is not None:
            self._postfix["val_acc"] = f"{val_acc:.3f}"
            self._bar.set_postfix(self._postfix, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
