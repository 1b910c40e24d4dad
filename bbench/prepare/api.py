"""`prepare(dataset, raw, out, ...)`: the library entry point of `bbench prepare`."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bbench.config.fields import SpecError, build, param
from bbench.prepare import audiovisual, food101, mosei, ucf101
from bbench.prepare.core import PrepareError, PrepareReport, run_jobs, write_records
from bbench.prepare.fbank import DEFAULT as FBANK
from bbench.prepare.fbank import FBANK_MEAN, FBANK_STD, PAD_VALUE
from bbench.prepare.media import ToolMissing, ffmpeg_version, find_ffmpeg


@dataclass(frozen=True)
class PrepareOptions:
    """Every option of `bbench prepare`; each dataset accepts the subset in RECIPES."""

    workers: int = param(1, ge=1, doc="parallel worker processes (whole clips per worker)")
    only: Literal["train", "test"] | None = param(None, doc="prepare one split only")
    overwrite: bool = param(False, doc="redo samples whose outputs already exist")
    progress: bool = param(True, doc="show progress bars")
    lists: str | None = param(None, doc="folder with the user's split lists")
    split_seed: int = param(0, ge=0, doc="seed of bbench's own split when no --lists")
    audio_frames: int | None = param(None, ge=1, doc="filter-bank frames per clip "
                                                     "(default: CREMA-D 300, others 1024)")
    ffmpeg: str | None = param(None, doc="path of the ffmpeg binary")
    annotations: str | None = param(None, doc="BalancedAV annotation JSON")
    trim: bool = param(False, doc="VGGSound: cut [start, start+10) out of full-length videos")
    flow: bool = param(True, doc="UCF-101: compute TV-L1 flow (needs OpenCV contrib)")
    flow_stride: int = param(1, ge=1, doc="UCF-101: flow of every s-th frame pair only")
    ucf_split: int = param(1, ge=1, le=3, doc="UCF-101: official split number")
    tokenizer: str | None = param(None, doc="FOOD-101: local BERT tokenizer folder or vocab.txt")
    npy: bool = param(False, doc="CMU-MOSEI: write per-split .npy arrays")
    trust_pickles: bool = param(False, doc="CMU-MOSEI: plain pickle instead of the restricted one")


COMMON = {"workers", "only", "overwrite", "progress"}
AV = COMMON | {"lists", "split_seed", "audio_frames", "ffmpeg"}


@dataclass(frozen=True)
class Recipe:
    plan: Callable[..., Any]
    options: frozenset[str]
    needs_ffmpeg: bool
    jobs: bool  # plan returns jobs (else it does the work itself)
    description: str


RECIPES: dict[str, Recipe] = {
    "cremad": Recipe(audiovisual.plan_cremad, frozenset(AV), True, True,
                     "AudioWAV/*.wav + VideoFlash/*.flv → audio/<clip>.pt (300×128), visual/<clip>/"),
    "kinetics_sounds": Recipe(audiovisual.plan_kinetics_sounds, frozenset(AV), True, True,
                              "videos → <split>/audio/<name>.npy (1024×128), <split>/visual/<name>/"),
    "balanced_av": Recipe(audiovisual.plan_balanced_av, frozenset(AV - {"lists", "split_seed"}
                                                                 | {"annotations"}), True, True,
                          "videos + annotation JSON → visual/<key>.hdf5, audio/<key>.pkl"),
    "vggsound": Recipe(audiovisual.plan_vggsound, frozenset(AV - {"split_seed"} | {"trim"}), True, True,
                       "vggsound.csv + clips → audio/<split>/<key>.npy, video/<split>/<key>/"),
    "ucf101": Recipe(ucf101.plan_ucf101, frozenset(COMMON | {"lists", "ffmpeg", "flow", "flow_stride",
                                                             "ucf_split"}), True, True,
                     "UCF-101/*.avi + ucfTrainTestlist → rgb/<v_X>/ (6 frames), flow/u|v/<v_X>/"),
    "food101": Recipe(food101.prepare_food101, frozenset(COMMON | {"tokenizer"}), False, False,
                      "validate texts/ + images/; token cache texts/<split>_tokens.npz"),
    "cmu_mosei": Recipe(mosei.prepare_cmu_mosei, frozenset(COMMON | {"npy", "trust_pickles"}), False,
                        False, "validate the MulT pickle(s); optional <split>_<modality>.npy"),
}

ALIASES = {"cremad": ("cremad", "crema-d", "crema_d"),
           "kinetics_sounds": ("kinetics_sounds", "kineticssounds", "ks", "kinetics-sounds"),
           "balanced_av": ("balanced_av", "balance", "balancedav", "balanced-av"),
           "vggsound": ("vggsound", "vgg"),
           "ucf101": ("ucf101", "ucf-101", "ucf_101"),
           "food101": ("food101", "upmc-food101", "food-101", "upmc_food101"),
           "cmu_mosei": ("cmu_mosei", "cmumosei", "mosei", "cmu-mosei")}


def canonical_dataset(name: str) -> str:
    key = name.strip().lower()
    for canonical, aliases in ALIASES.items():
        if key in aliases:
            return canonical
    from bbench.registry import suggest

    raise PrepareError(f"prepare: unknown dataset {name!r}.{suggest(name, list(RECIPES))} "
                       f"Preparable: {', '.join(RECIPES)} (mfeat ships with bbench and needs none)")


def prepare(dataset: str, raw: str | Path, out: str | Path, *, workers: int = 1,
            **options: Any) -> PrepareReport:
    """Turn the raw public download of `dataset` under `raw` into its §2 layout under `out`.

    Idempotent and resumable: samples whose outputs exist are skipped (and counted as such).
    One bad input never aborts the run; it is recorded in `<out>/prepare_failed.txt`. A
    manifest of every parameter and version goes to `<out>/prepare_manifest.json`.
    """
    name = canonical_dataset(dataset)
    recipe = RECIPES[name]
    try:
        opts = build(PrepareOptions, {"workers": workers, **options}, f"prepare {name}")
    except SpecError as err:
        raise PrepareError(str(err)) from None
    defaults = PrepareOptions()
    foreign = sorted(f.name for f in dataclasses.fields(PrepareOptions)
                     if f.name not in recipe.options and getattr(opts, f.name) != getattr(defaults, f.name))
    if foreign:
        raise PrepareError(f"prepare {name}: option(s) {', '.join(foreign)} do not apply to {name}; "
                           f"it accepts {', '.join(sorted(recipe.options))}")
    raw_path, out_path = Path(raw).expanduser(), Path(out).expanduser()
    if not raw_path.is_dir():
        raise PrepareError(f"prepare {name}: --raw {str(raw_path)!r} is not a folder")
    exe = find_ffmpeg(opts.ffmpeg)
    if recipe.needs_ffmpeg and exe is None:
        raise PrepareError(str(ToolMissing(
            f"prepare {name}: ffmpeg not found: install it (e.g. apt-get install ffmpeg), or "
            "`pip install imageio-ffmpeg` (ships a binary), or pass --ffmpeg PATH / set BBENCH_FFMPEG")))
    out_path.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(name, raw_path, out_path)
    report.parameters.update({k: getattr(opts, k) for k in sorted(recipe.options)})
    if name in ("cremad", "kinetics_sounds", "balanced_av", "vggsound"):
        report.parameters["fbank"] = {**FBANK.as_dict(), "global_dc_removal": True,
                                      "normalise_mean": FBANK_MEAN, "normalise_std": FBANK_STD,
                                      "normalise": "(x - mean) / (2 * std), after zero padding",
                                      "pad_value_after_normalisation": PAD_VALUE}
        report.parameters["frames"] = {"fps": 1, "pattern": "frame_%05d.jpg", "jpeg_q": 2}
    start = time.perf_counter()
    if recipe.jobs:
        jobs = recipe.plan(raw_path, out_path, opts, report)
        outcomes = run_jobs(jobs, out_path, workers=opts.workers, overwrite=opts.overwrite,
                            ffmpeg=exe, progress=opts.progress, label=f"prepare {name}")
        order = {(j.split, j.sample): i for i, j in enumerate(jobs)}
        report.add_outcomes(sorted(outcomes, key=lambda o: order.get((o.split, o.sample), 0)))
    else:
        recipe.plan(raw_path, out_path, opts, report)
    report.seconds = time.perf_counter() - start
    write_records(report, _versions(exe if recipe.needs_ffmpeg else None))
    return report


def _versions(exe: str | None) -> dict[str, Any]:
    import numpy
    import torch

    from bbench._version import __version__

    versions: dict[str, Any] = {"bbench": __version__, "torch": torch.__version__,
                                "numpy": numpy.__version__, "torchaudio": None,
                                "fbank": "bbench.prepare.fbank (torch port of torchaudio.compliance.kaldi.fbank)"}
    if exe:
        versions["ffmpeg"] = ffmpeg_version(exe)
        versions["ffmpeg_path"] = exe
    return versions
