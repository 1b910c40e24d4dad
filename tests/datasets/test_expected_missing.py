"""The `expected_missing` dataset option: declared skips are reported at INFO, others warned about.

datasets.md, "Existence filter": listed samples whose files are missing are skipped and named;
ids declared in `expected_missing` (e.g. the public CREMA-D's broken clips, or the samples a
miniature leaves out on purpose) are reported as declared at INFO level instead of with a
WARNING, and a declared id whose files are present is simply used.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import bbench
from bbench.config.fields import build
from bbench.data.cremad import CremadOptions
from bbench.data.skips import SkipReport
from bbench.testing import MINIATURES
from bbench.testing.__main__ import flatten

DECLARING = ("balanced_av", "cremad", "food101", "vggsound")
"""Miniatures that leave a listed sample's files out on purpose (and declare it)."""


def skip_records(caplog, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "bbench" and r.levelno == level and "listed samples" in r.getMessage()]


def all_skipped(dm) -> list[str]:
    return [i for split in (dm.train, dm.val, dm.test) for i, _ in split.skipped]


# -- the option ---------------------------------------------------------------------------------

def test_option_defaults_empty_and_coerces_lists_and_cli_strings() -> None:
    assert CremadOptions().expected_missing == ()
    owner = "dataset cremad"
    assert build(CremadOptions, {"expected_missing": ["a", "b"]}, owner).expected_missing == ("a", "b")
    assert build(CremadOptions, {"expected_missing": "a, b"}, owner).expected_missing == ("a", "b")
    assert build(CremadOptions, {"expected_missing": "a"}, owner).expected_missing == ("a",)


@pytest.mark.parametrize("name", sorted(MINIATURES))
def test_miniature_declares_exactly_its_deliberate_omissions(name: str, miniature) -> None:
    mini = miniature(name)
    declared = mini.facts["expected_missing"]
    skipped = [i for ids in mini.facts["skipped"].values() for i in ids]
    assert sorted(declared) == sorted(skipped)  # every deliberate omission is declared
    value = mini["dataset.options"].get("expected_missing", "")
    assert sorted(i for i in value.split(",") if i) == sorted(declared)
    # the `--set` command printed by `python -m bbench.testing miniature` carries it unchanged
    pairs = dict(flatten(mini))
    if declared:
        assert pairs["dataset.options.expected_missing"] == ",".join(declared)


# -- SkipReport -----------------------------------------------------------------------------------

def test_skip_report_splits_declared_and_undeclared_by_level(caplog) -> None:
    report = SkipReport("cremad", "train", listed=24, expected=frozenset({"gone", "here"}))
    report.skip("gone", "no audio file a/gone.pt")
    report.skip("surprise", "no frames in v/surprise")
    assert report.expected_skips == [("gone", "no audio file a/gone.pt")]
    assert report.unexpected_skips == [("surprise", "no frames in v/surprise")]
    with caplog.at_level(logging.INFO, logger="bbench"):
        report.emit(["x", "here", "y"])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert warned == ["cremad train: skipped 1 of 24 listed samples: surprise (no frames in "
                      "v/surprise); 1 more skipped as declared in the dataset option "
                      "expected_missing"]
    assert infos[0] == ("cremad train: skipped 1 of 24 listed samples as declared in the dataset "
                        "option expected_missing: gone (no audio file a/gone.pt)")
    assert "present and usable" in infos[1] and infos[1].endswith(": here")
    assert report.skipped == [("gone", "no audio file a/gone.pt"),
                              ("surprise", "no frames in v/surprise")]  # all still listed


def test_skip_report_without_declarations_warns_as_before(caplog) -> None:
    report = SkipReport("cremad", "train", listed=6)
    report.skip("a", "r")
    with caplog.at_level(logging.INFO, logger="bbench"):
        report.emit(["b"])
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "cremad train: skipped 1 of 6 listed samples: a (r)")]


# -- loaders on the miniatures ----------------------------------------------------------------------

@pytest.mark.parametrize("name", DECLARING)
def test_declared_omission_is_skipped_and_named_at_info_not_warned(name: str, miniature, load,
                                                                  caplog) -> None:
    mini = miniature(name)
    declared = mini.facts["expected_missing"]
    assert declared
    with caplog.at_level(logging.INFO, logger="bbench"):
        dm = load(name, mini)
    assert sorted(all_skipped(dm)) == sorted(declared)  # still skipped, still named per split
    assert not skip_records(caplog, logging.WARNING)
    infos = [r.getMessage() for r in skip_records(caplog, logging.INFO)]
    assert len(infos) == 1
    assert "declared" in infos[0] and "expected_missing" in infos[0]
    assert all(i in infos[0] for i in declared)


@pytest.mark.parametrize("name", DECLARING)
def test_undeclared_missing_sample_still_warns(name: str, miniature, load, caplog) -> None:
    mini = miniature(name)
    with caplog.at_level(logging.INFO, logger="bbench"):
        dm = load(name, mini, expected_missing=())
    assert sorted(all_skipped(dm)) == sorted(mini.facts["expected_missing"])
    warned = [r.getMessage() for r in skip_records(caplog, logging.WARNING)]
    assert len(warned) == 1 and all(i in warned[0] for i in mini.facts["expected_missing"])
    assert "declared" not in warned[0]
    assert not skip_records(caplog, logging.INFO)


def test_undeclared_omission_warns_beside_a_declared_one(fresh, load, caplog) -> None:
    mini = fresh("cremad")
    declared = mini.facts["missing_audio"]
    other = next(i for i in mini.facts["listed"]["train"] if i != declared)
    (Path(mini.root) / "audio" / f"{other}.pt").unlink()
    with caplog.at_level(logging.INFO, logger="bbench"):
        dm = load("cremad", mini)
    assert sorted(i for i, _ in dm.train.skipped) == sorted([declared, other])
    warned = [r.getMessage() for r in skip_records(caplog, logging.WARNING)]
    infos = [r.getMessage() for r in skip_records(caplog, logging.INFO)]
    assert len(warned) == 1 and other in warned[0] and declared not in warned[0]
    assert "skipped 1 of 24 listed samples" in warned[0]
    assert len(infos) == 1 and declared in infos[0] and other not in infos[0]


def test_declared_id_that_is_present_is_used(miniature, load, caplog) -> None:
    mini = miniature("cremad")
    missing = mini.facts["missing_audio"]
    present = next(i for i in mini.facts["listed"]["train"] if i != missing)
    with caplog.at_level(logging.INFO, logger="bbench"):
        dm = load("cremad", mini, expected_missing=(missing, present))
    assert present in list(dm.train.ids) + list(dm.val.ids)
    assert [i for i, _ in dm.train.skipped] == [missing]
    assert not skip_records(caplog, logging.WARNING)
    used = [r.getMessage() for r in caplog.records
            if r.levelno == logging.INFO and "present and usable" in r.getMessage()]
    assert len(used) == 1 and present in used[0] and missing not in used[0]


def test_present_declared_id_of_a_non_carved_loader_is_used(miniature, load, caplog) -> None:
    """UCF-101 skips nothing on its miniature: a declared id that is there is simply used."""
    mini = miniature("ucf101")
    clip = mini.facts["listed"]["test"][0]
    with caplog.at_level(logging.INFO, logger="bbench"):
        dm = load("ucf101", mini, expected_missing=clip)
    assert clip in dm.test.ids and not all_skipped(dm)
    assert any("present and usable" in r.getMessage() and clip in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)


def test_baseline_run_on_cremad_miniature_does_not_warn_about_the_declared_clip(
        miniature, tmp_path: Path, caplog) -> None:
    torch.set_num_threads(1)
    mini = miniature("cremad")
    overrides = dict(mini)
    overrides["model.encoders"] = {"*": {"type": "mlp", "options": {"hidden": [16]}}}
    with caplog.at_level(logging.INFO, logger="bbench"):
        bbench.run("Baseline", "cremad", output_root=str(tmp_path / "runs"), **overrides)
    assert not skip_records(caplog, logging.WARNING)
    infos = [r.getMessage() for r in skip_records(caplog, logging.INFO)]
    assert any(mini.facts["missing_audio"] in m and "expected_missing" in m for m in infos)
