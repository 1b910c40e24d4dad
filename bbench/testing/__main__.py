"""Write a miniature dataset or raw media from the shell, for trying the CLI without real data.

    python -m bbench.testing miniature CREMAD /tmp/cremad-mini   # the BalanceMM on-disk format
    python -m bbench.testing raw CREMAD /tmp/cremad-raw          # raw media for `bbench prepare`

`miniature` prints the `python -m bbench run` command that trains on what it wrote (tiny image
and spectrogram sizes, tiny backbones, CPU settings), so each step of the datasets' done-when
list can be replayed by hand. Neither overwrites an existing folder.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

RAW_GENERATORS = ("cremad",)
"""Datasets with a raw-media generator (the others' raw paths are covered by unit tests)."""


def flatten(overrides: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested override dicts as (dotted key, leaf value) pairs, as `--set` takes them."""
    pairs: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs += flatten(value, dotted + ".")
        elif not isinstance(value, Mapping):
            pairs.append((dotted, value))
    return pairs


def run_command(dataset: str, overrides: Mapping[str, Any]) -> str:
    """The `python -m bbench run` line of the reference method on `dataset` with `overrides`."""
    from bbench.methods.registry import reference_method

    words = ["python", "-m", "bbench", "run", "--method", reference_method(), "--dataset", dataset]
    for key, value in flatten(overrides):
        if key == "progress":
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        words += ["--set", f"{key}={text}"]
    return shlex.join(words)


def _fresh(folder: Path) -> Path:
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; choose a new folder")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bbench.testing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("miniature", "a few samples per class in the dataset's on-disk format"),
                       ("raw", "raw media (wav, video) for `python -m bbench prepare`")):
        p = sub.add_parser(name, help=text)
        p.add_argument("dataset")
        p.add_argument("out", type=Path)
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from bbench.data.registry import DATASETS
    from bbench.registry import UnknownNameError

    try:
        name = DATASETS.canonical(args.dataset)
        out = _fresh(args.out)
        if args.command == "miniature":
            from bbench.testing import make_miniature

            overrides = make_miniature(name, out, seed=args.seed)
            print(f"wrote the {name} miniature to {out}; train on it with:\n"
                  f"{run_command(args.dataset, overrides)}")
        else:
            if name not in RAW_GENERATORS:
                raise ValueError(f"no raw-media generator for {name!r}; available: {', '.join(RAW_GENERATORS)}")
            from bbench.testing.raw_media import make_cremad_raw

            made = make_cremad_raw(out)
            print(f"wrote {len(made['clips'])} raw clips to {out}; prepare them with:\n"
                  f"python -m bbench prepare {args.dataset} --raw {shlex.quote(str(out))} --out <DIR>")
    except (UnknownNameError, KeyError, ValueError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
