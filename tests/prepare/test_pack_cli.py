"""`bbench prepare DATASET --pack ...` on the command line: the modes, the exit status, the errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from bbench.cli import main as bbench_main
from bbench.config.specs import DatasetSpec
from bbench.data import build_datamodule
from bbench.data.pack import pack_folder
from bbench.prepare.cli import main
from bbench.testing import MINIATURES
from bbench.testing.fixtures import Miniature


@pytest.fixture
def cremad(tmp_path: Path) -> Miniature:
    return MINIATURES["cremad"](tmp_path / "cremad", seed=0)


def pack_args(mini: Miniature, *extra: str) -> list[str]:
    opts = mini["dataset.options"]
    return ["cremad", "--pack", "--data-root", str(mini.root), "--quiet",
            "--option", f"expected_missing={opts['expected_missing']}",
            "--option", f"cache_dir={opts['cache_dir']}", *extra]


def test_pack_alone_builds_what_the_loader_requires(cremad: Miniature,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(pack_args(cremad, "--frame-short-side", "20")) == 0
    out = capsys.readouterr().out
    folder = pack_folder(cremad.root, "cremad", "train", 20)
    assert f"train: pack {folder}" in out
    options = {**cremad["dataset.options"], "pack": "require", "frame_short_side": 20}
    dm = build_datamodule(DatasetSpec(name="cremad", root=str(cremad.root), options=options))
    assert dm.train.reader.pack is not None and dm.test.reader.pack is not None
    # the top-level command line is the same parser
    assert bbench_main(["prepare", *pack_args(cremad, "--frame-short-side", "20")]) == 0
    assert "23 already done" in capsys.readouterr().out


def test_a_failing_chunk_exits_1_and_names_the_file(cremad: Miniature,
                                                    capsys: pytest.CaptureFixture) -> None:
    options = {**cremad["dataset.options"], "pack": "off"}
    train = build_datamodule(DatasetSpec(name="cremad", root=str(cremad.root), options=options))
    clip = train.train.reader.records[0]
    frame = clip.frames_dir / clip.frames[0]
    frame.write_bytes(b"broken")
    assert main(pack_args(cremad, "--only", "train")) == 1
    out = capsys.readouterr().out
    assert f"{frame}: cannot decode image" in out
    assert "pack not finished (chunks failed)" in out and "run the same command again" in out
    assert not pack_folder(cremad.root, "cremad", "test", None).exists()  # --only train


@pytest.mark.parametrize("args,message", [
    (["cremad", "--data-root", "D"], "--data-root applies only with --pack"),
    (["cremad", "--pack"], "--pack needs --data-root DIR"),
    (["cremad"], "the following arguments are required: --raw, --out"),
    (["cremad", "--pack", "--data-root", "D", "--lists", "L"],
     "--lists applies to preparing --raw, not to --pack --data-root"),
    (["cremad", "--pack", "--data-root", "D", "--raw", "R", "--out", "O"],
     "--pack takes either --data-root DIR"),
    (["cremad", "--raw", "R", "--out", "O", "--only", "val"],
     "--only val applies only with --pack"),
])
def test_wrong_combinations_are_usage_errors(args: list[str], message: str,
                                             capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["mosei", "--pack", "--data-root", "."], "cmu_mosei has no image frames to pack"),
    (["cremad", "--pack", "--data-root", "no/such/dir"], "is not a folder"),
])
def test_bad_inputs_are_one_message(args: list[str], message: str,
                                    capsys: pytest.CaptureFixture) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_dataset_options_are_one_message(cremad: Miniature,
                                             capsys: pytest.CaptureFixture) -> None:
    assert main(pack_args(cremad, "--option", "no_equals")) == 2
    assert "--option 'no_equals' is not KEY=VALUE" in capsys.readouterr().err
    assert main(pack_args(cremad, "--option", "frames_dir=x")) == 2
    assert "unknown key 'frames_dir'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["frame_short_side=224", "pack=require", "pack_verify=true"])
def test_run_options_are_not_pack_options(cremad: Miniature, option: str,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(pack_args(cremad, "--option", option)) == 2
    err = capsys.readouterr().err
    assert f"--option {option.split('=')[0]} is not a pack build option" in err
    assert "--frame-short-side S" in err and "Traceback" not in err
    assert not (cremad.root / ".bbench_pack").exists()


def test_only_val_packs_balanced_avs_own_validation_split(tmp_path: Path, cremad: Miniature,
                                                          capsys: pytest.CaptureFixture) -> None:
    mini = MINIATURES["balanced_av"](tmp_path / "bav", seed=0)
    args = ["balanced_av", "--pack", "--data-root", str(mini.root), "--quiet", "--only", "val",
            "--option", f"cache_dir={mini['dataset.options']['cache_dir']}"]
    assert main(args) == 0
    assert pack_folder(mini.root, "balanced_av", "val", None).is_dir()
    assert not pack_folder(mini.root, "balanced_av", "train", None).exists()
    capsys.readouterr()
    # CREMA-D's validation split is carved out of train: there is no val pack to build
    assert main(pack_args(cremad, "--only", "val")) == 2
    assert "cremad has no separate val split" in capsys.readouterr().err
