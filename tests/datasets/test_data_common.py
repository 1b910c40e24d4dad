"""Shared loader machinery: frame listing and selection, crops, audio, pickles, carve-out, cache."""
from __future__ import annotations

import collections
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bbench.config.fields import SpecError
from bbench.data.errors import DataFormatError, MissingDataError, UnsafePickleError
from bbench.data.file_splits import carve_validation
from bbench.data.index_cache import cache_root, cached_json, list_frames, natural_key
from bbench.data.options import pick_option
from bbench.data.reading import decode_image, load_pickle
from bbench.data.splits import read_id_list, stratified_carve_out
from bbench.data.transforms import (clip_train_crop, fit_audio, frame_indices, resized_crop_box,
                                    sample_rng)


# -- frames ----------------------------------------------------------------------------------

def test_natural_sort_is_numeric_aware(tmp_path: Path) -> None:
    for name in ["frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "notes.txt", "frame_3.PNG"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.jpg").mkdir()  # a folder with an image-like name is not a frame
    assert list_frames(tmp_path) == ["frame_1.jpg", "frame_2.jpg", "frame_3.PNG", "frame_10.jpg"]
    assert list_frames(tmp_path / "absent") == []
    padded = ["00000.jpg", "00025.jpg", "00100.jpg", "frame_00002.jpg", "frame_00010.jpg"]
    assert sorted(padded, key=natural_key) == sorted(padded)  # zero-padded: same as plain order


def test_frame_selection_rule() -> None:
    assert frame_indices(10, 3, None) == [1, 4, 7]  # seg 3: segment centres
    assert frame_indices(10, 2, None) == [2, 7]
    assert frame_indices(1, 2, None) == [0, 0]  # short clip: repeated
    assert frame_indices(2, 3, None) == [0, 0, 1]
    assert frame_indices(2, 3, np.random.default_rng(0)) == [0, 0, 1]  # same in training
    with pytest.raises(ValueError):
        frame_indices(0, 3, None)


@given(n=st.integers(1, 400), t=st.integers(1, 12), seed=st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_frame_selection_properties(n: int, t: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for picks in (frame_indices(n, t, None), frame_indices(n, t, rng)):
        assert len(picks) == t and all(0 <= p < n for p in picks)
        assert picks == sorted(picks)
        seg = n // t
        if seg:  # each pick lies in its own segment; the whole clip can be sampled
            assert all(i * seg <= p < (i + 1) * seg for i, p in enumerate(picks))


@given(h=st.integers(1, 300), w=st.integers(1, 300), seed=st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_crop_box_inside_image(h: int, w: int, seed: int) -> None:
    top, left, ch, cw = resized_crop_box(h, w, np.random.default_rng(seed))
    assert 0 < ch <= h and 0 < cw <= w and 0 <= top <= h - ch and 0 <= left <= w - cw


def test_sample_rng_is_keyed_by_seed_epoch_index() -> None:
    draw = lambda *k: sample_rng(*k).random(4).tolist()  # noqa: E731
    assert draw(0, 1, 2) == draw(0, 1, 2)
    assert len({tuple(draw(*k)) for k in [(0, 1, 2), (1, 1, 2), (0, 2, 2), (0, 1, 3)]}) == 4


def test_clip_crop_is_shared_by_all_frames() -> None:
    frame = torch.arange(24 * 32, dtype=torch.float32).view(1, 24, 32).expand(3, 24, 32)
    clip = torch.stack([frame, frame, frame]).to(torch.uint8)
    out = clip_train_crop(clip, 16, np.random.default_rng(3))
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.uint8
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


# -- audio -------------------------------------------------------------------------------------

def test_fit_audio_shapes_crop_pad_and_warns_once() -> None:
    warned: list[str] = []
    warn = lambda topic, msg: warned.append(topic)  # noqa: E731
    x = np.arange(5 * 4, dtype=np.float64).reshape(5, 4)
    out = fit_audio(x, 5, 4, 0.4, "a.npy", "ds", warn)
    assert out.shape == (1, 5, 4) and out.dtype == torch.float32 and not warned
    assert torch.equal(fit_audio(x[None], 5, 4, 0.4, "a", "ds", warn), out)  # (1, T, F) accepted
    padded = fit_audio(x, 7, 4, 0.438012, "a", "ds", warn)
    assert torch.equal(padded[0, :5], out[0]) and torch.allclose(padded[0, 5:], torch.tensor(0.438012))
    assert torch.equal(fit_audio(x, 3, 4, 0.0, "a", "ds", warn)[0], out[0, :3])
    assert warned == ["audio_length", "audio_length"]
    with pytest.raises(DataFormatError, match=r"b\.npy.*shape \(5, 3\).*\(T, 4\)"):
        fit_audio(np.zeros((5, 3), np.float32), 5, 4, 0.0, "b.npy", "ds", warn)
    with pytest.raises(DataFormatError, match="dtype"):
        fit_audio(np.zeros((5, 4), np.int64), 5, 4, 0.0, "c.npy", "ds", warn)


# -- restricted unpickler ------------------------------------------------------------------------

class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_loads_numpy_and_containers(tmp_path: Path, protocol: int) -> None:
    value = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "b": [np.float32(1.5), (1, "x")],
             "c": np.array(["u", "vw"]), "d": np.array([b"x", "y", 3], dtype=object),
             "e": {1, 2}, "f": frozenset({3}), "g": b"\x00\xff", "h": bytearray(b"ab"),
             "i": np.array([1 + 2j]), "j": np.int64(7)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    out = load_pickle(path, trust=False)
    assert np.array_equal(out["a"], value["a"]) and out["a"].dtype == np.float64
    assert out["b"] == value["b"] and list(out["c"]) == ["u", "vw"] and list(out["d"]) == [b"x", "y", 3]
    assert out["e"] == {1, 2} and out["f"] == frozenset({3}) and out["g"] == b"\x00\xff"
    assert out["h"] == bytearray(b"ab") and out["i"][0] == 1 + 2j and out["j"] == 7


def test_restricted_unpickler_refuses_other_globals_naming_them(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": _Exploit()}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*(posix|os)\.system.*trust_pickles"):
        load_pickle(evil, trust=False)
    ordered = tmp_path / "ordered.pkl"
    ordered.write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(UnsafePickleError, match=r"collections\.OrderedDict"):
        load_pickle(ordered, trust=False)
    assert load_pickle(ordered, trust=True) == {"a": 1}  # trust_pickles: plain pickle
    assert isinstance(UnsafePickleError("x"), pickle.UnpicklingError)


def test_python2_pickle_retried_with_latin1(tmp_path: Path) -> None:
    # A protocol-2 pickle of a py2 `str` holding non-ASCII bytes: SHORT_BINSTRING opcode.
    blob = b"\x80\x02}q\x00U\x01kq\x01U\x02\xe9\xffq\x02s."
    path = tmp_path / "py2.pkl"
    path.write_bytes(blob)
    assert load_pickle(path, trust=False) == {"k": "\xe9\xff"}


def test_pickle_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"gone\.pkl"):
        load_pickle(tmp_path / "gone.pkl", trust=False, dataset="balanced_av")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(np.zeros(100))[:40])
    with pytest.raises(DataFormatError, match=r"bad\.pkl.*cannot unpickle.*bbench prepare"):
        load_pickle(bad, trust=False, dataset="balanced_av")


# -- options, carve-out, cache ---------------------------------------------------------------------

def test_pick_option_accepts_one_spelling() -> None:
    class Opts:
        train_list = None
        train_txt = "/data/train.csv/"
        other = "/data/train.csv"

    assert pick_option(Opts, "train_list", "train_txt", owner="o") == "/data/train.csv/"
    assert pick_option(Opts, "train_txt", "other", owner="o") == "/data/train.csv/"  # slash ignored
    Opts.train_list = "/elsewhere.csv"
    with pytest.raises(SpecError, match="train_list=.*train_txt=.*give one"):
        pick_option(Opts, "train_list", "train_txt", owner="dataset cremad")


def test_carve_validation_writes_reuses_and_honours_val_list(tmp_path: Path, caplog) -> None:
    ids = [f"clip{i:02d}" for i in range(30)]
    labels = [i % 3 for i in range(30)]
    kept, val, path = carve_validation("ds", ids, labels, 5, None, tmp_path / "splits")
    assert (kept, val) == stratified_carve_out(ids, labels, 0.1, 5)
    assert path == tmp_path / "splits" / "ds-val-seed5.txt"
    assert read_id_list(path) == [ids[p] for p in val]
    path.write_text("clip00\nclip01\n")  # a list on disk is reused as is …
    assert carve_validation("ds", ids, labels, 5, None, tmp_path / "splits")[1] == [0, 1]
    path.write_text("clip00\nnot-a-sample\n")  # … unless it no longer matches the data
    with caplog.at_level(logging.WARNING, logger="bbench"):
        assert carve_validation("ds", ids, labels, 5, None, tmp_path / "splits")[1] == val
    assert "does not match" in caplog.text
    own = tmp_path / "mine.txt"
    own.write_text("clip03\r\nclip07\nunknown\n")
    kept, val, used = carve_validation("ds", ids, labels, 5, str(own), tmp_path / "splits")
    assert val == [3, 7] and used == own and len(kept) == 28
    with pytest.raises(MissingDataError, match="nope.txt"):
        carve_validation("ds", ids, labels, 5, str(tmp_path / "nope.txt"), tmp_path)


def test_cached_json_memoises_by_key(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute():
        calls.append(1)
        return {"a": [1, 2]}

    assert cached_json(tmp_path, "k", {"x": 1}, compute) == {"a": [1, 2]}
    assert cached_json(tmp_path, "k", {"x": 1}, compute) == {"a": [1, 2]}
    assert len(calls) == 1
    cached_json(tmp_path, "k", {"x": 2}, compute)
    assert len(calls) == 2
    assert cached_json(None, "k", {"x": 1}, compute) and len(calls) == 3


def test_cache_root_resolution(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BBENCH_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    assert cache_root(str(tmp_path / "opt")) == tmp_path / "opt"
    monkeypatch.delenv("BBENCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(None) == tmp_path / "xdg" / "bbench"


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.new("RGB", (8, 6), (255, 0, 0)).save(good)
    assert decode_image(good, str(good), "RGB", "ds").shape == (3, 6, 8)
    assert decode_image(good.read_bytes(), "blob", "L", "ds").shape == (1, 6, 8)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataFormatError, match=r"cut\.jpg.*cannot decode"):
        decode_image(truncated, str(truncated), "RGB", "ds")
    with pytest.raises(MissingDataError, match=r"gone\.jpg"):
        decode_image(tmp_path / "gone.jpg", str(tmp_path / "gone.jpg"), "RGB", "ds")
    with pytest.raises(DataFormatError, match="blob"):
        decode_image(b"not an image", "blob", "RGB", "ds")
