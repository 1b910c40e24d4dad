"""`bbench prepare DATASET --raw DIR --out DIR [...]`: the command line of `prepare`.

`main(argv)` parses the arguments after `prepare` and returns the exit status: 0 when every
sample is prepared (or was already), 1 when some samples failed (listed in
<out>/prepare_failed.txt), 2 when the preparation could not start (bad arguments, missing
raw inputs, no ffmpeg). `--pack` builds the packed frame cache (`bbench/prepare/pack.py`):
alone with `--data-root DIR` for data already prepared, or after preparing `--raw` into
`--out`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bbench.prepare.api import ALIASES, RECIPES, prepare
from bbench.prepare.core import PrepareError
from bbench.prepare.media import ToolMissing
from bbench.prepare.pack import PACKABLE, pack_dataset

EPILOG = "datasets:\n" + "\n".join(f"  {name:16s} {r.description}" for name, r in RECIPES.items()) + \
    "\n\nAliases (any case): " + "; ".join(f"{k}: {', '.join(v[1:])}" for k, v in ALIASES.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `prepare` (for embedding in another parser as a subcommand)."""
    parser.add_argument("dataset", help="dataset to prepare: " + ", ".join(RECIPES))
    parser.add_argument("--raw", metavar="DIR", help="folder with the raw download")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder = the dataset root the loader reads")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="parallel worker processes (default 1)")
    parser.add_argument("--only", choices=["train", "val", "test"],
                        help="prepare one split only (val: --pack of BalancedAV's own "
                             "validation split)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo samples whose outputs exist (default: skip them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--lists", metavar="DIR",
                        help="your split lists: CREMA-D train.csv/test.csv, KS my_train.txt/"
                             "my_test.txt, VGGSound vggsound.csv, UCF-101 ucfTrainTestlist/")
    parser.add_argument("--split-seed", type=int, default=0, metavar="K",
                        help="CREMA-D/KS without --lists: seed of bbench's own 80/20 split")
    parser.add_argument("--audio-frames", type=int, metavar="L",
                        help="filter-bank frames per clip (default CREMA-D 300, others 1024)")
    parser.add_argument("--ffmpeg", metavar="PATH", help="ffmpeg binary to use")
    parser.add_argument("--annotations", metavar="FILE", help="BalancedAV annotation JSON")
    parser.add_argument("--trim", action="store_true",
                        help="VGGSound: cut [start, start+10 s) out of full-length <ytid>.* videos")
    parser.add_argument("--no-flow", dest="flow", action="store_false",
                        help="UCF-101: RGB frames only, no TV-L1 flow")
    parser.add_argument("--flow-stride", type=int, default=1, metavar="S",
                        help="UCF-101: flow of every S-th frame pair only")
    parser.add_argument("--ucf-split", type=int, default=1, choices=[1, 2, 3],
                        help="UCF-101: official split (default 1)")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="FOOD-101: local bert-base-uncased folder (vocab.txt) or the vocab "
                             "file; writes the token cache")
    parser.add_argument("--npy", action="store_true",
                        help="CMU-MOSEI: also write <split>_{text,audio,visual,labels}.npy")
    parser.add_argument("--trust-pickles", action="store_true",
                        help="CMU-MOSEI: read the pickle with plain pickle (runs code)")
    parser.add_argument("--pack", action="store_true",
                        help="build the packed frame cache the loader reads instead of the JPEG "
                             "files (" + ", ".join(PACKABLE) + "): of --data-root DIR, or of "
                             "--out after preparing --raw")
    parser.add_argument("--data-root", metavar="DIR",
                        help="--pack: the dataset root to pack (data already prepared)")
    parser.add_argument("--frame-short-side", type=int, metavar="S",
                        help="--pack: store frames with their shorter side resized to S pixels "
                             "(runs then set dataset.options.frame_short_side=S; default: as "
                             "stored)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="--pack: a dataset option the runs set (path options, "
                             "expected_missing, ...); repeatable")


def build_parser(prog: str = "bbench prepare") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Turn raw public downloads into the on-disk formats bbench's "
                               "loaders (and the BalanceMM toolkit) read. Resumable: finished "
                               "samples are skipped.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


PACK_ONLY = {"data_root": "--data-root", "frame_short_side": "--frame-short-side",
             "option": "--option"}
"""The flags that only `--pack` reads (argparse destination → flag)."""


def dataset_options(pairs: Sequence[str]) -> dict[str, str]:
    """`--option KEY=VALUE` pairs as a dict of strings (the dataset options coerce them)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PrepareError(f"prepare: --option {pair!r} is not KEY=VALUE (e.g. --option "
                               f"visual_dir=frames)")
        options[key.strip()] = value.strip()
    return options


def check_modes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Raw preparation needs --raw and --out; packing alone needs --data-root and no raw flag."""
    if not args.pack:
        if args.only == "val":
            parser.error("--only val applies only with --pack (raw preparation writes train "
                         "and test; validation is carved out of train or listed with them)")
        given = [flag for dest, flag in PACK_ONLY.items() if getattr(args, dest)]
        if given:
            parser.error(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only "
                         f"with --pack")
        if args.raw is None or args.out is None:
            parser.error("the following arguments are required: --raw, --out (or --pack "
                         "--data-root DIR to pack data already prepared)")
        return
    if args.raw is not None or args.out is not None:
        if args.raw is None or args.out is None or args.data_root is not None:
            parser.error("--pack takes either --data-root DIR (data already prepared) or --raw "
                         "DIR --out DIR (prepare, then pack --out)")
        return
    if args.data_root is None:
        parser.error("--pack needs --data-root DIR (or --raw DIR --out DIR)")
    raw_only = [f"--{option.replace('_', '-')}" for option, dest in FORWARDED.items()
                if option not in ("only", "overwrite", "progress")
                and getattr(args, dest) != parser.get_default(dest)]
    if raw_only:
        parser.error(f"{', '.join(raw_only)} {'applies' if len(raw_only) == 1 else 'apply'} to "
                     f"preparing --raw, not to --pack --data-root")


def run_pack(args: argparse.Namespace, name: str, root: str) -> int:
    """`--pack`: build the pack of `root`; prints the summary; 1 when chunks failed."""
    report = pack_dataset(name, root, frame_short_side=args.frame_short_side,
                          options=dataset_options(args.option), only=args.only,
                          workers=args.workers, overwrite=args.overwrite,
                          progress=not args.quiet)
    print(report.summary())
    return 1 if report.failures else 0


def run_args(args: argparse.Namespace) -> int:
    """Run a parsed `prepare` command line; prints the summary; returns the exit status."""
    from bbench.prepare.api import canonical_dataset

    parser = build_parser()
    check_modes(args, parser)
    try:
        name = canonical_dataset(args.dataset)
        if args.pack and args.raw is None:
            return run_pack(args, name, args.data_root)
        accepted = RECIPES[name].options
        # forward the options the dataset takes, and any other flag the user actually set
        # (prepare() then rejects it with a clear message)
        options = {}
        for option, dest in FORWARDED.items():
            value = getattr(args, dest)
            if option in accepted or value != parser.get_default(dest):
                options[option] = (not value) if option == "progress" else value
        report = prepare(name, args.raw, args.out, workers=args.workers, **options)
        print(report.summary())
        status = 1 if report.failures else 0
        if args.pack:
            status = max(status, run_pack(args, name, args.out))
    except (PrepareError, ToolMissing, FileNotFoundError) as err:
        print(f"bbench prepare: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bbench prepare: interrupted; finished samples are kept, run the same command "
              "again to resume", file=sys.stderr)
        return 130
    return status


FORWARDED = {"only": "only", "overwrite": "overwrite", "progress": "quiet", "lists": "lists",
             "split_seed": "split_seed", "audio_frames": "audio_frames", "ffmpeg": "ffmpeg",
             "annotations": "annotations", "trim": "trim", "flow": "flow",
             "flow_stride": "flow_stride", "ucf_split": "ucf_split", "tokenizer": "tokenizer",
             "npy": "npy", "trust_pickles": "trust_pickles"}
"""PrepareOptions field → argparse destination (progress is the negation of --quiet)."""


def main(argv: Sequence[str] | None = None) -> int:
    """`bbench prepare` with `argv` = the arguments after `prepare` (sys.argv[1:] if None)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_args(args)


if __name__ == "__main__":
    sys.exit(main())
