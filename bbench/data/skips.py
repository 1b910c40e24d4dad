"""Skip reporting: the listed samples a loader could not use, and the error when none are usable.

One job: the §2.0 existence filter of each loader drops listed samples whose files are missing;
a `SkipReport` collects them and logs them once per split (declared `expected_missing` ids at
INFO, the rest as a WARNING), and `no_usable_samples` is the error for a split left empty.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from bbench.data.errors import DataFormatError, MissingDataError, prepare_hint

log = logging.getLogger("bbench")


@dataclass
class SkipReport:
    """Listed samples that were not usable (missing files, no frames), reported once.

    `expected` holds the ids the user declared unusable (the `expected_missing` option):
    their skips are reported at INFO level as declared, every other skip with a WARNING.
    """

    dataset: str
    split: str
    listed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    expected: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.expected = frozenset(self.expected)

    def skip(self, sample_id: str, reason: str) -> None:
        self.skipped.append((sample_id, reason))

    @property
    def unexpected_skips(self) -> list[tuple[str, str]]:
        """Skips of ids not declared in `expected_missing` (the ones warned about)."""
        return [(i, r) for i, r in self.skipped if i not in self.expected]

    @property
    def expected_skips(self) -> list[tuple[str, str]]:
        """Skips of ids declared in `expected_missing` (reported at INFO level)."""
        return [(i, r) for i, r in self.skipped if i in self.expected]

    def emit(self, used: Iterable[str] = ()) -> None:
        """Log the skips; `used` (the split's usable ids) names declared ids that were present."""
        unexpected, expected = self.unexpected_skips, self.expected_skips
        if unexpected:
            also = (f"; {len(expected)} more skipped as declared in the dataset option "
                    f"expected_missing" if expected else "")
            log.warning("%s %s: skipped %d of %d listed samples: %s%s", self.dataset, self.split,
                        len(unexpected), self.listed, _first_skips(unexpected), also)
        if expected:
            log.info("%s %s: skipped %d of %d listed samples as declared in the dataset option "
                     "expected_missing: %s", self.dataset, self.split, len(expected), self.listed,
                     _first_skips(expected))
        present = [i for i in dict.fromkeys(used) if i in self.expected]
        if present:
            shown = ", ".join(present[:5]) + (f", … {len(present) - 5} more"
                                              if len(present) > 5 else "")
            log.info("%s %s: %d id(s) declared in the dataset option expected_missing are present "
                     "and usable, so they are used: %s", self.dataset, self.split, len(present),
                     shown)


def _first_skips(skips: Sequence[tuple[str, str]], count: int = 5) -> str:
    first = "; ".join(f"{i} ({r})" for i, r in skips[:count])
    return first + (f"; … {len(skips) - count} more" if len(skips) > count else "")


def no_usable_samples(dataset: str, split: str, report: SkipReport, layout: str
                      ) -> DataFormatError:
    first = "; ".join(f"{i} ({r})" for i, r in report.skipped[:3]) or "the list is empty"
    return MissingDataError(f"{dataset}: no usable {split} samples: {report.listed} listed, "
                            f"{len(report.skipped)} skipped (first: {first})\nexpected layout:\n"
                            f"{layout}\n{prepare_hint(dataset)}")
