"""`bbench prepare cremad` on generated raw media: names, shapes, resumability, errors, CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bbench.prepare import PrepareError, main, prepare
from bbench.prepare.fbank import PAD_VALUE, num_frames
from bbench.testing.raw_media import write_cremad_lists


def quiet(**options) -> dict:
    return {"progress": False, **options}

NO_AUDIO = "1004_MTI_NEU_XX"


@pytest.fixture(scope="module")
def prepared(cremad_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("cremad") / "out"
    report = prepare("CREMA-D", cremad_raw["root"], out, **quiet())
    return cremad_raw, out, report


def test_outputs_have_the_loader_layout(prepared):
    raw, out, _ = prepared
    clips = raw["clips"]
    listed = [line.split(",")[0] for s in ("train", "test")
              for line in (out / f"{s}.csv").read_text().splitlines()]
    assert sorted(listed) == sorted(clips)
    for name, clip in clips.items():
        if clip.expect_audio:
            feats = torch.load(out / "audio" / f"{name}.pt", weights_only=True)
            assert feats.dtype == torch.float32 and feats.shape == (300, 128)
        frames = sorted(p.name for p in (out / "visual" / name).iterdir())
        assert frames == [f"frame_{i:05d}.jpg" for i in range(1, clip.expect_frames + 1)], name
    assert not (out / "audio" / f"{NO_AUDIO}.pt").exists()
    assert not (out / ".prepare_tmp").exists()


def test_fbank_lengths_and_padding(prepared):
    _, out, _ = prepared
    three = torch.load(out / "audio" / "1001_DFA_ANG_XX.pt", weights_only=True)
    assert num_frames(3 * 16000) == 298
    assert (three[298:] - PAD_VALUE).abs().max() < 1e-6
    assert (three[:298] - PAD_VALUE).abs().max() > 0.1
    assert float(three.max()) < 1.5
    short = torch.load(out / "audio" / "1003_TIE_SAD_XX.pt", weights_only=True)  # 0.3 s → 28 frames
    assert (short[num_frames(4800):] - PAD_VALUE).abs().max() < 1e-6
    ten = torch.load(out / "audio" / "1002_IEO_HAP_HI.pt", weights_only=True)  # 998 frames, cut to 300
    assert (ten - PAD_VALUE).abs().min(dim=1).values.max() > 1e-3  # no padded row


def test_failures_split_and_records(prepared):
    _, out, report = prepared
    assert [(s, i) for s, i, _ in report.failures] == [("train", NO_AUDIO)] or \
        [i for _, i, _ in report.failures] == [NO_AUDIO]
    assert "no audio stream" in report.failures[0][2]
    assert NO_AUDIO in (out / "prepare_failed.txt").read_text()
    assert report.total["prepared"] == 17 and report.total["failed"] == 1
    assert set(report.counts) == {"train", "test"} and report.counts["test"]["listed"] > 0
    assert any("NOT comparable" in n for n in report.notes)
    manifest = json.loads((out / "prepare_manifest.json").read_text())
    fb = manifest["parameters"]["fbank"]
    assert (fb["num_mel_bins"], fb["window_size"], fb["window_shift"], fb["fft_size"]) == (128, 400, 160, 512)
    assert fb["preemphasis"] == 0.97 and fb["dither"] == 0.0 and fb["window"] == "hanning"
    assert manifest["versions"]["ffmpeg"] and manifest["parameters"]["audio_frames"] == 300
    assert manifest["parameters"]["split_source"].startswith("bbench-seeded")


def test_loader_reads_the_output(prepared, tmp_path):
    from bbench.config.specs import DatasetSpec
    from bbench.data.registry import build_datamodule

    _, out, _ = prepared
    dm = build_datamodule(DatasetSpec("cremad", root=str(out), options={
        "image_size": 32, "cache_dir": str(tmp_path / "cache")}))
    sample = dm.test[0]
    assert sample["audio"].shape == (1, 300, 128) and sample["visual"].shape == (2, 3, 32, 32)
    assert len(dm.train) + len(dm.val) + len(dm.test) == 17  # the clip without audio is skipped


def test_second_run_skips_finished_samples(prepared, tmp_path, cremad_raw):
    _, first_out, _ = prepared
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    marker = (out / "audio" / "1001_DFA_ANG_XX.pt").stat().st_mtime_ns
    shutil.rmtree(out / "visual" / "1005_ITS_FEA_XX")  # one output missing → redone
    report = prepare("cremad", cremad_raw["root"], out, **quiet())
    assert report.total["existing"] == 16 and report.total["prepared"] == 1
    assert report.total["failed"] == 1  # the clip without audio is retried, fails again
    assert "already prepared" in report.summary() and "skipped 16" in report.summary()
    assert (out / "audio" / "1001_DFA_ANG_XX.pt").stat().st_mtime_ns == marker
    assert len(list((out / "visual" / "1005_ITS_FEA_XX").iterdir())) == 3
    assert any("reusing train.csv" in n for n in report.notes)
    again = prepare("cremad", cremad_raw["root"], out, **quiet(overwrite=True))
    assert again.total["prepared"] == 17 and again.total["existing"] == 0


def test_user_lists_with_crlf_bom_header(cremad_raw, tmp_path):
    lists = write_cremad_lists(tmp_path / "lists", ["1001_DFA_ANG_XX", "1006_IWL_DIS_XX", "9999_XXX_ANG_XX"],
                               ["1005_ITS_FEA_XX"], crlf_bom_header=True)
    out = tmp_path / "out"
    report = prepare("cremad", cremad_raw["root"], out, **quiet(lists=str(lists)))
    assert report.counts["train"] == {"listed": 3, "prepared": 2, "existing": 0, "failed": 1}
    assert report.counts["test"]["prepared"] == 1
    assert "9999_XXX_ANG_XX" in report.failures[0][1] and "no input" in report.failures[0][2]
    assert (out / "train.csv").read_bytes() == (lists / "train.csv").read_bytes()
    assert not any("NOT comparable" in n for n in report.notes)
    only = prepare("cremad", cremad_raw["root"], tmp_path / "only", **quiet(lists=str(lists), only="test"))
    assert set(only.counts) == {"test"} and sorted(p.stem for p in (tmp_path / "only" / "audio").iterdir()) == \
        ["1005_ITS_FEA_XX"]


def test_parallel_workers_give_identical_files(cremad_raw, prepared, tmp_path):
    _, first_out, _ = prepared
    out = tmp_path / "out"
    report = prepare("cremad", cremad_raw["root"], out, workers=2, **quiet())
    assert report.total["prepared"] == 17
    for pt in sorted((first_out / "audio").glob("*.pt"))[:3]:
        a = torch.load(pt, weights_only=True)
        b = torch.load(out / "audio" / pt.name, weights_only=True)
        assert torch.equal(a, b)


def test_missing_ffmpeg_is_a_clear_error(cremad_raw, tmp_path, monkeypatch):
    from bbench.prepare import api

    monkeypatch.setattr(api, "find_ffmpeg", lambda explicit=None: None)
    with pytest.raises(PrepareError, match="ffmpeg not found.*imageio-ffmpeg"):
        prepare("cremad", cremad_raw["root"], tmp_path / "out", **quiet())


def test_argument_errors(cremad_raw, tmp_path):
    with pytest.raises(PrepareError, match="unknown dataset 'cremd'.*cremad"):
        prepare("cremd", cremad_raw["root"], tmp_path)
    with pytest.raises(PrepareError, match="tokenizer do not apply to cremad"):
        prepare("cremad", cremad_raw["root"], tmp_path, tokenizer="x")
    with pytest.raises(PrepareError, match="workers=0 is out of range"):
        prepare("cremad", cremad_raw["root"], tmp_path, workers=0)
    with pytest.raises(PrepareError, match="not a folder"):
        prepare("cremad", tmp_path / "nothing", tmp_path)
    with pytest.raises(PrepareError, match="no train.csv"):
        prepare("cremad", cremad_raw["root"], tmp_path / "o", lists=str(tmp_path), progress=False)


def test_cli_main(cremad_raw, prepared, tmp_path, capsys):
    _, first_out, _ = prepared
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    rc = main(["cremad", "--raw", str(cremad_raw["root"]), "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 1  # one clip has no audio
    assert "already done" in text and "skipped 17 sample(s)" in text
    assert main(["cremad", "--raw", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["cremad", "--raw", str(cremad_raw["root"]), "--out", str(out), "--npy"]) == 2
    assert "npy do not apply" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "cremad" in capsys.readouterr().out


def test_no_clips_found(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(PrepareError, match="no clips named like"):
        prepare("cremad", tmp_path / "raw", tmp_path / "out", progress=False)
    np.testing.assert_equal(list((tmp_path / "out").iterdir()), [])
