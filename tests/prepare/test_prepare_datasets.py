"""`bbench prepare` for KS, BalancedAV, VGGSound, UCF-101, FOOD-101 and CMU-MOSEI on tiny raw
inputs; each output is read back by the dataset's own loader."""
from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbench.prepare import prepare
from bbench.prepare.fbank import PAD_VALUE
from bbench.testing.raw_media import make_video

SIZE = (32, 24)


def quiet(**options) -> dict:
    return {"progress": False, **options}


def load(name: str, root: Path, tmp: Path, modalities=None, **options):
    from bbench.config.specs import DatasetSpec
    from bbench.data.registry import build_datamodule

    if name != "cmu_mosei":
        options = {"image_size": 32, "cache_dir": str(tmp / "cache"), **options}
    return build_datamodule(DatasetSpec(name, root=str(root), options=options,
                                        modalities=modalities))


def clip(ffmpeg: str, path: Path, seconds: float = 2.0, **kw) -> Path:
    return make_video(path, seconds, size=SIZE, rate=10, ffmpeg=ffmpeg, **kw)


# -- Kinetics-Sounds ------------------------------------------------------------------------------
def test_kinetics_sounds_with_user_lists(ffmpeg, tmp_path):
    raw, lists = tmp_path / "raw", tmp_path / "lists"
    names = {"train": [("-a1_000010_000020", 0), ("b2_000001_000011", 0), ("-c3_000005_000015", 1),
                       ("d4_000000_000010", 1)],
             "test": [("e5_000003_000013", 0), ("f6_000004_000014", 1), ("missing_0", 1)]}
    for rows in names.values():
        for name, label in rows:
            if name != "missing_0":
                clip(ffmpeg, raw / f"class{label}" / f"{name}.mp4", freq=300 + 500 * label)
    lists.mkdir()
    (lists / "my_train.txt").write_bytes("".join(f"{n},10,{lab}\r\n" for n, lab in names["train"]).encode())
    (lists / "my_test.txt").write_text("".join(f"{n} {lab}\n" for n, lab in names["test"]))
    out = tmp_path / "out"
    report = prepare("KS", raw, out, **quiet(lists=str(lists)))
    assert report.counts["train"]["prepared"] == 4 and report.counts["test"]["failed"] == 1
    spec = np.load(out / "train" / "audio" / "-a1_000010_000020.npy")
    assert spec.shape == (1024, 128) and spec.dtype == np.float32
    assert np.abs(spec[198:] - PAD_VALUE).max() < 1e-6  # 2 s → 198 frames
    assert len(list((out / "test" / "visual" / "e5_000003_000013").glob("frame_*.jpg"))) == 2
    assert (out / "train.txt").is_file() and (out / "test.txt").is_file()
    dm = load("kinetics_sounds", out, tmp_path)
    assert dm.test[0]["audio"].shape == (1, 1024, 128) and dm.test[0]["visual"].shape == (3, 3, 32, 32)


def test_kinetics_sounds_own_split_from_class_folders(ffmpeg, tmp_path):
    raw = tmp_path / "raw"
    for label in range(2):
        for i in range(5):
            clip(ffmpeg, raw / f"playing_{label}" / f"v{label}{i}_000000_000010.mp4", 1.0)
    report = prepare("kinetics_sounds", raw, tmp_path / "out", **quiet())
    assert report.counts["train"]["prepared"] == 8 and report.counts["test"]["prepared"] == 2
    assert any("NOT comparable" in n for n in report.notes)
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines() == ["0 playing_0", "1 playing_1"]


# -- BalancedAV -----------------------------------------------------------------------------------------
def test_balanced_av_hdf5_and_pickle(ffmpeg, tmp_path):
    h5py = pytest.importorskip("h5py")
    from bbench.data.reading import load_pickle

    raw = tmp_path / "raw"
    subsets = {"k1": "training", "k2": "training", "k3": "training", "k4": "training",
               "k5": "validation", "k6": "testing", "k7": "testing", "k8": "testing"}
    database = {k: {"subset": s, "label": "dog" if i % 2 else "cat"}
                for i, (k, s) in enumerate(subsets.items())}
    (raw / "ann").mkdir(parents=True)
    (raw / "ann" / "annotations.json").write_text(json.dumps({"labels": ["cat", "dog"],
                                                              "database": database}))
    for k in subsets:
        if k != "k8":
            clip(ffmpeg, raw / "videos" / f"{k}.mp4", 3.0 if k == "k1" else 2.0)
    out = tmp_path / "out"
    report = prepare("BalancedAV", raw, out, **quiet())
    assert report.total["prepared"] == 7 and [f[1] for f in report.failures] == ["k8"]
    assert json.loads((out / "annotations.json").read_text())["labels"] == ["cat", "dog"]
    with h5py.File(out / "visual" / "k1.hdf5", "r") as f:
        video = f["video"]
        assert len(video) == 3
        image = Image.open(io.BytesIO(video[0].tobytes()))
        assert image.size == SIZE
    audio = load_pickle(out / "audio" / "k1.pkl", trust=False)
    assert isinstance(audio, np.ndarray) and audio.shape == (1024, 128) and audio.dtype == np.float32
    dm = load("balanced_av", out, tmp_path)
    assert len(dm.val) == 1 and dm.train[0]["visual"].shape == (3, 3, 32, 32)


# -- VGGSound -------------------------------------------------------------------------------------------
def test_vggsound_names_trim_and_csv(ffmpeg, tmp_path):
    raw = tmp_path / "raw"
    rows = [("-dash", 30, "railroad car, train wagon", "train"), ("pad", 7, "train whistling", "train"),
            ("plain", 12, "railroad car, train wagon", "train"), ("full", 1, "train whistling", "train"),
            ("tst", 0, "train whistling", "test"), ("gone", 5, "dog barking", "test")]
    raw.mkdir()
    lines = [f'{y},{s},"{lab}",{sp}' for y, s, lab, sp in rows]
    (raw / "vggsound.csv").write_text("\n".join(lines) + "\n")
    clip(ffmpeg, raw / "clips" / "-dash_000030.mp4")
    clip(ffmpeg, raw / "clips" / "pad_000007.mp4")
    clip(ffmpeg, raw / "clips" / "plain_12.mp4")
    clip(ffmpeg, raw / "clips" / "tst_000000.mp4")
    clip(ffmpeg, raw / "full" / "full.mp4", 4.0)  # full-length video: cut [1, 11) → 3 s
    out = tmp_path / "out"
    first = prepare("VGGSound", raw, out, **quiet())
    assert sorted(f[1] for f in first.failures) == ["full_1", "gone_5"]
    assert "--trim" in {f[1]: f[2] for f in first.failures}["full_1"]
    report = prepare("vggsound", raw, out, **quiet(trim=True))
    assert report.total["existing"] == 4 and report.total["prepared"] == 1
    assert (out / "audio" / "train" / "-dash_30.npy").is_file()
    assert (out / "audio" / "test" / "tst_0.npy").is_file()
    assert len(list((out / "video" / "train" / "full_1").iterdir())) == 3
    assert (out / "vggsound.csv").read_text() == (raw / "vggsound.csv").read_text()
    dm = load("vggsound", out, tmp_path)
    assert len(dm.test) == 1 and dm.test[0]["audio"].shape == (1, 1024, 128)


# -- UCF-101 --------------------------------------------------------------------------------------------
def _ucf_raw(ffmpeg: str, raw: Path) -> None:
    lists = raw / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1",
             "HandstandPushups/v_HandStandPushups_g08_c01.avi 2",
             "HandstandPushups/v_HandStandPushups_g09_c01.avi 2"]
    test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "HandstandPushups/v_HandStandPushups_g01_c01.avi"]
    (lists / "trainlist01.txt").write_bytes(("\r\n".join(train) + "\r\n").encode())
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    for line in train + test:
        folder, file = line.split()[0].split("/")
        clip(ffmpeg, raw / "UCF-101" / folder / file, 1.0 if "g09" in file else 2.0, audio=False)


def test_ucf101_rgb_frames_and_flow_skipped_without_opencv(ffmpeg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were absent
    raw, out = tmp_path / "raw", tmp_path / "out"
    _ucf_raw(ffmpeg, raw)
    report = prepare("UCF-101", raw, out, **quiet())
    assert report.total["prepared"] == 6 and not report.failures
    (what, why), = report.skipped
    assert "flow" in what and "opencv-contrib" in why
    assert "not prepared: optical flow" in report.summary()
    frames = sorted(p.name for p in (out / "rgb" / "v_HandStandPushups_g09_c01").iterdir())
    assert frames == [f"frame_{i:05d}.jpg" for i in range(1, 7)]
    assert not (out / "flow").exists()
    assert (out / "ucfTrainTestlist" / "classInd.txt").is_file()
    dm = load("ucf101", out, tmp_path, modalities=("visual",))
    assert dm.test[0]["visual"].shape == (3, 3, 32, 32)


def test_flow_quantisation():
    from bbench.prepare.ucf101 import quantise_flow

    q = quantise_flow(np.array([0.0, -20.0, 20.0, -100.0, 100.0, 10.0]))
    assert q.dtype == np.uint8 and q.tolist() == [128, 0, 255, 0, 255, 191]


def test_tvl1_flow_when_opencv_contrib_is_installed(ffmpeg, tmp_path):
    from bbench.prepare.ucf101 import flow_unavailable

    reason = flow_unavailable()
    if reason:
        pytest.skip(reason)
    raw, out = tmp_path / "raw", tmp_path / "out"
    _ucf_raw(ffmpeg, raw)
    report = prepare("ucf101", raw, out, **quiet())
    assert not report.skipped and not report.failures
    u = sorted((out / "flow" / "u" / "v_ApplyEyeMakeup_g01_c01").iterdir())
    assert len(u) == 19 and u[0].name == "frame000001.jpg"  # 20 frames → 19 pairs
    assert len(list((out / "flow" / "v" / "v_ApplyEyeMakeup_g01_c01").iterdir())) == 19
    dm = load("ucf101", out, tmp_path)
    assert dm.test[0]["flow"].shape == (3, 2, 32, 32)


# -- FOOD-101 --------------------------------------------------------------------------------------------
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "apple", "pie", "best", "recipe", "for",
         "the", "easy", "sushi", "rolls", "home", "made", "rt", "http", "com", "##s", "a"]


def test_food101_validation_and_token_cache(tmp_path):
    pytest.importorskip("transformers")
    from bbench.data.food101 import load_tokenizer, tokenize

    raw = tmp_path / "raw"
    (raw / "texts").mkdir(parents=True)
    (raw / "texts" / "train_titles.csv").write_text(
        "Image_path,text,label\n"
        "a1.jpg,RT Best apple pie recipe http://x.com/a,apple_pie\n"
        "a2.jpg,#easy apple pie,apple_pie\n"
        "s1.jpg,home made sushi rolls,sushi\n"
        "s2.jpg,,sushi\n"
        f"s3.jpg,{' '.join(['sushi'] * 60)},sushi\n"
        "gone.jpg,apple pie,apple_pie\n")
    (raw / "texts" / "test_titles.csv").write_text("t1.jpg,apple pie,apple_pie\nt2.jpg,sushi,sushi\n")
    for split, files in {"train": ["apple_pie/a1", "apple_pie/a2", "sushi/s1", "sushi/s2", "sushi/s3"],
                         "test": ["apple_pie/t1", "sushi/t2"]}.items():
        for f in files:
            (raw / "images" / split / f).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 16), (200, 10, 10)).save(raw / "images" / split / f"{f}.jpg")
    vocab_dir = tmp_path / "bert"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    out = tmp_path / "out"
    report = prepare("UPMC-Food101", raw, out, **quiet(tokenizer=str(vocab_dir)))
    assert [f[1] for f in report.failures] == ["apple_pie/gone.jpg"]
    assert report.counts["train"] == {"listed": 6, "prepared": 0, "existing": 5, "failed": 1}
    with np.load(out / "texts" / "train_tokens.npz") as data:
        ids, mask = data["input_ids"], data["attention_mask"]
        assert ids.dtype == np.int32 and ids.shape == (6, 40) and mask.shape == (6, 40)
        assert len(str(data["vocab_sha256"])) == 64
    tok = load_tokenizer(vocab_dir)
    first = tok.convert_ids_to_tokens(ids[0][mask[0] == 1].tolist())
    assert first == ["[CLS]", "best", "apple", "pie", "recipe", "[SEP]"]  # RT and URL removed
    assert mask[3].sum() == 2 and mask[4].sum() == 40  # empty title; truncated at 40
    np.testing.assert_array_equal(ids, tokenize(tok, ["x"] * 0 + [r for r in [
        "RT Best apple pie recipe http://x.com/a", "#easy apple pie", "home made sushi rolls", "",
        " ".join(["sushi"] * 60), "apple pie"]], 40)[:, 0])
    assert (out / "images").is_symlink()
    again = prepare("food101", raw, out, **quiet(tokenizer=str(vocab_dir)))
    assert any("is current (skipped)" in n for n in again.notes)
    dm = load("food101", out, tmp_path, text_model_path=str(vocab_dir))
    sample = dm.test[0]
    assert sample["text"].shape == (2, 40) and sample["visual"].shape == (1, 3, 32, 32)


# -- CMU-MOSEI ------------------------------------------------------------------------------------------
def _mosei(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    audio = rng.normal(size=(n, 7, 74))
    audio[0, 0, 0] = -np.inf
    vision = rng.normal(size=(n, 6, 35))
    vision[1, 2, 3] = np.nan
    labels = np.array([-1.2, 0.0, 2.5, -0.4, 1.0, 0.3][:n]).reshape(n, 1, 1)
    return {"text": rng.normal(size=(n, 5, 300)), "audio": audio, "vision": vision, "labels": labels}


def test_cmu_mosei_validation_and_npy(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "mosei_senti_data_noalign.pkl", "wb") as f:
        pickle.dump({"train": _mosei(6, 0), "valid": _mosei(6, 1), "test": _mosei(6, 2)}, f)
    out = tmp_path / "out"
    report = prepare("MOSEI", raw, out, **quiet(npy=True))
    assert not report.failures
    assert any("label 0 (score < 0): 2, label 1: 4" in n for n in report.notes)
    audio = np.load(out / "train_audio.npy")
    assert audio.dtype == np.float32 and audio.shape == (6, 7, 74) and audio[0, 0, 0] == 0
    assert np.isfinite(np.load(out / "valid_visual.npy")).all()
    assert np.load(out / "test_labels.npy").shape == (6, 1, 1)
    dm = load("cmu_mosei", out, tmp_path)
    assert dm.train[0]["text"].shape == (5, 300)
    bad = tmp_path / "bad"
    bad.mkdir()
    broken = {"train": _mosei(6, 0), "valid": _mosei(6, 1), "test": _mosei(6, 2)}
    broken["test"]["vision"] = broken["test"]["vision"][:, :, :20]
    with open(bad / "mosei_senti_data.pkl", "wb") as f:
        pickle.dump(broken, f)
    report = prepare("cmu_mosei", bad, tmp_path / "out2", **quiet())
    assert any("vision has shape (6, 6, 20)" in f[2] for f in report.failures)


def test_cmu_mosei_missing_pickle(tmp_path):
    from bbench.prepare import PrepareError

    with pytest.raises(PrepareError, match="mosei_senti_data_noalign.pkl"):
        prepare("cmu_mosei", tmp_path, tmp_path / "out", progress=False)
