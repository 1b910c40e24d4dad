"""The packed frame cache (`bbench/data/pack.py`, `bbench/prepare/pack.py`) on the miniatures.

What is pinned: a loader reading the pack gives the very tensors of the JPEG path for every
split, seed, epoch and index, with and without a stored resolution; the default JPEG path is
untouched (the contiguous-box crop equals the `resized_crop` it replaced); workers and
pickling behave as before, and a process keeps at most MAX_OPEN_MAPS chunk files mapped; an
incomplete, truncated, damaged, malformed or stale pack (sources renamed, rewritten in place,
or with another item count), or a missing one under `pack=require`, is one clear error naming
the file and the command; an interrupted build resumes, a finished pack of another list is
refused without --overwrite, and a re-run repairs only the damaged chunk.
"""
from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from bbench.config.specs import DatasetSpec
from bbench.data import build_datamodule
from bbench.data.base import DataModule
from bbench.data.errors import DataFormatError, MissingDataError
from bbench.data import pack as data_pack
from bbench.data.clips import FolderClipReader
from bbench.data.pack import MANIFEST_FILE, PACK_DIRNAME, pack_folder
from bbench.data.transforms import clip_train_crop, fit_short_side, resized_crop_box
from bbench.prepare import pack as pack_module
from bbench.prepare.core import PrepareError
from bbench.prepare.pack import pack_dataset
from bbench.testing import MINIATURES
from bbench.testing.fixtures import Miniature, frame_array, write_jpeg

torch.set_num_threads(1)
PACK_OPTIONS = ("expected_missing", "cache_dir")
"""The miniature options a pack build needs (which samples are declared missing, the cache)."""


def build(mini: Miniature, name: str = "cremad", root: Path | None = None,
          modalities: tuple[str, ...] | None = None, **options: Any) -> DataModule:
    opts = {**mini["dataset.options"], **options}
    return build_datamodule(DatasetSpec(name=name, root=str(root or mini.root), options=opts,
                                        modalities=modalities))


def pack(mini: Miniature, name: str = "cremad", root: Path | None = None, **kwargs: Any):
    options = {k: v for k, v in mini["dataset.options"].items() if k in PACK_OPTIONS}
    return pack_dataset(name, root or mini.root, options=options, progress=False, **kwargs)


def assert_same_samples(jpeg: DataModule, packed: DataModule, seeds: tuple[int, ...] = (0,),
                        epochs: tuple[int, ...] = (0, 1)) -> int:
    """Every sample of every split equal on both paths; returns the tensors compared."""
    compared = 0
    for split in ("train", "train_eval", "val", "test"):
        a, b = getattr(jpeg, split), getattr(packed, split)
        assert a.reader.pack is None and b.reader.pack is not None
        for seed in seeds:
            a.set_seed(seed)
            b.set_seed(seed)
            for epoch in epochs:
                a.set_epoch(epoch)
                b.set_epoch(epoch)
                for i in range(len(a)):
                    x, y = a[i], b[i]
                    assert x["id"] == y["id"]
                    for m in jpeg.info.modalities:
                        assert x[m].dtype == y[m].dtype
                        assert torch.equal(x[m], y[m]), (split, seed, epoch, i, m)
                        compared += 1
    return compared


@pytest.fixture(scope="module")
def cremad(tmp_path_factory: pytest.TempPathFactory) -> Miniature:
    """A CREMA-D miniature with packs as stored and at short side 20 (read-only for tests)."""
    mini = MINIATURES["cremad"](tmp_path_factory.mktemp("pack") / "cremad", seed=0)
    assert pack(mini).ok and pack(mini, frame_short_side=20).ok
    return mini


@pytest.fixture
def damaged(cremad: Miniature, tmp_path: Path) -> Miniature:
    """A private copy of the packed miniature (data and packs) that a test may damage."""
    root = tmp_path / "cremad"
    shutil.copytree(cremad.root, root)
    options = {**cremad["dataset.options"], "cache_dir": str(tmp_path / "cache")}
    return Miniature({**cremad, "dataset.root": str(root), "dataset.options": options}, root,
                     cremad.facts)


def train_pack(mini: Miniature, frame_short_side: int | None = None) -> Path:
    return pack_folder(mini.root, "cremad", "train", frame_short_side)


# ---- equality with the JPEG path -----------------------------------------------------------

@pytest.mark.parametrize("short_side", [None, 20])
def test_pack_gives_the_jpeg_paths_tensors(cremad: Miniature, short_side: int | None) -> None:
    jpeg = build(cremad, pack="off", frame_short_side=short_side)
    packed = build(cremad, pack="require", frame_short_side=short_side)
    compared = assert_same_samples(jpeg, packed, seeds=(0, 7, 123), epochs=(0, 1, 5))
    assert compared == 2 * 3 * 3 * (2 * len(jpeg.train) + len(jpeg.val) + len(jpeg.test))
    # training draws do change with seed and epoch: the comparison covered distinct samples
    train = packed.train
    train.set_seed(0)
    train.set_epoch(0)
    first = train[0]["visual"]
    train.set_epoch(1)
    assert not torch.equal(first, train[0]["visual"])


def test_short_side_is_the_stored_resolution(cremad: Miniature) -> None:
    frame = torch.from_numpy(frame_array(np.random.default_rng(0), 1, 6, 0.0)).permute(2, 0, 1)
    assert fit_short_side(frame, None) is frame  # the default JPEG path is untouched
    resized = fit_short_side(frame, 20)
    assert min(resized.shape[-2:]) == 20 and resized.dtype == torch.uint8
    assert resized.shape[-1] / resized.shape[-2] == pytest.approx(
        frame.shape[-1] / frame.shape[-2], rel=0.05)
    reader = build(cremad, pack="require", frame_short_side=20).train.reader
    assert min(reader.pack.frame(0, "visual", 0).shape[-2:]) == 20
    native = build(cremad, pack="require").train.reader
    assert tuple(native.pack.frame(0, "visual", 0).shape[-2:]) == tuple(frame.shape[-2:])


@pytest.mark.parametrize("name,modalities", [("kinetics_sounds", None), ("vggsound", None),
                                             ("balanced_av", None), ("ucf101", None),
                                             ("food101", ("visual",))])
def test_every_packed_dataset_matches(tmp_path: Path, name: str,
                                      modalities: tuple[str, ...] | None) -> None:
    extra = {"bert_weights": False} if name == "food101" else {}
    mini = MINIATURES[name](tmp_path / name, seed=0, **extra)
    assert pack(mini, name, frame_short_side=20).ok
    jpeg = build(mini, name, modalities=modalities, pack="off", frame_short_side=20)
    packed = build(mini, name, modalities=modalities, pack="require", frame_short_side=20)
    assert assert_same_samples(jpeg, packed) > 0


def test_one_modality_reads_a_pack_of_both(tmp_path: Path) -> None:
    mini = MINIATURES["kinetics_sounds"](tmp_path / "ks", seed=0)
    assert pack(mini, "kinetics_sounds").ok
    jpeg = build(mini, "kinetics_sounds", modalities=("visual",), pack="off")
    packed = build(mini, "kinetics_sounds", modalities=("visual",), pack="require")
    assert packed.train.reader.pack_streams == {"visual": "frames"}
    assert assert_same_samples(jpeg, packed, epochs=(2,)) > 0


def test_a_selection_using_samples_the_pack_lacks_reads_the_files(
        cremad: Miniature, caplog: pytest.LogCaptureFixture) -> None:
    # the miniature's train clip without audio is usable for a visual-only run, not in the pack
    lacking = cremad.facts["missing_audio"]
    with caplog.at_level(logging.INFO, logger="bbench"):
        dm = build(cremad, modalities=("visual",))
    assert dm.train.reader.pack is None and dm.test.reader.pack is not None
    assert f"also uses 1 other(s), e.g. {lacking}" in caplog.text
    with pytest.raises(DataFormatError, match="pack=auto or off for this selection"):
        build(cremad, modalities=("visual",), pack="require")


def test_workers_and_pickling_see_the_same_samples(cremad: Miniature) -> None:
    packed = build(cremad, pack="require")
    reader = packed.train.reader
    reader.pack.item(0, "visual", 0)  # maps the chunk files in this process
    reader.pack.item(0, "audio", 0)
    assert len(reader.pack._maps) == 2
    blob = pickle.dumps(reader)
    stored = sum(p.stat().st_size for p in train_pack(cremad).glob("*.bin"))
    assert pickle.loads(blob).pack._maps == {}  # the memory maps are not pickled
    assert len(blob) < stored / 20
    assert torch.equal(pickle.loads(blob).load(3, None, lambda *_: None)["visual"],
                       reader.load(3, None, lambda *_: None)["visual"])
    jpeg = build(cremad, pack="off")

    def batches(split: Any, workers: int) -> list[dict[str, Any]]:
        split.set_epoch(3)
        return list(DataLoader(split, batch_size=4, num_workers=workers))

    for a, b in zip(batches(jpeg.train, 0), batches(packed.train, 2)):
        assert torch.equal(a["visual"], b["visual"]) and torch.equal(a["audio"], b["audio"])


def test_the_log_says_which_path_is_read(cremad: Miniature,
                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bbench"):
        build(cremad)
    assert f"cremad train: reading the pack {train_pack(cremad)}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bbench"):
        dm = build(cremad, frame_short_side=16)  # no pack for this resolution: auto reads JPEG
    assert dm.train.reader.pack is None
    assert f"reading the image files (no pack at {train_pack(cremad, 16)})" in caplog.text


# ---- refusals -----------------------------------------------------------------------------

def test_require_without_a_pack_names_the_command(cremad: Miniature) -> None:
    with pytest.raises(MissingDataError) as err:
        build(cremad, pack="require", frame_short_side=16)
    text = str(err.value)
    assert str(train_pack(cremad, 16)) in text
    assert (f"python -m bbench prepare cremad --pack --data-root {cremad.root} "
            f"--frame-short-side 16") in text


def test_incomplete_pack_is_refused(damaged: Miniature) -> None:
    (train_pack(damaged) / MANIFEST_FILE).unlink()
    with pytest.raises(DataFormatError, match="is incomplete") as err:
        build(damaged)
    assert str(train_pack(damaged)) in str(err.value)
    assert f"prepare cremad --pack --data-root {damaged.root}" in str(err.value)


@pytest.mark.parametrize("text,problem", [("{", "cannot be read"), ("{}", "lacks key, streams")])
def test_unreadable_manifest_is_named(damaged: Miniature, text: str, problem: str) -> None:
    manifest = train_pack(damaged) / MANIFEST_FILE
    manifest.write_text(text)
    with pytest.raises(DataFormatError, match=problem) as err:
        build(damaged)
    assert str(manifest) in str(err.value) and "--overwrite" in str(err.value)


def drop_files(m: dict[str, Any]) -> None:
    del m["chunks"][0]["files"]


def shorten_signatures(m: dict[str, Any]) -> None:
    m["signatures"]["visual"] = m["signatures"]["visual"][:-1]


def drop_bytes(m: dict[str, Any]) -> None:
    del next(iter(m["chunks"][0]["files"].values()))["bytes"]


@pytest.mark.parametrize("edit,problem", [
    (drop_files, "a chunk lacks its name or the bytes and sha256 of its files"),
    (drop_bytes, "a chunk lacks its name or the bytes and sha256 of its files"),
    (shorten_signatures, "'signatures' does not hold one signature per id")])
def test_malformed_manifest_is_one_message(damaged: Miniature, edit: Any, problem: str) -> None:
    path = train_pack(damaged) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="cannot be read") as err:
        build(damaged)
    assert problem in str(err.value) and str(path) in str(err.value)
    assert "--overwrite" in str(err.value)


def test_other_decoder_versions_are_a_warning(damaged: Miniature,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = train_pack(damaged) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    assert manifest["decoders"] == data_pack.decoder_versions()
    manifest["decoders"]["Pillow"] = "0.0"
    path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="bbench"):
        assert build(damaged, pack="require").train.reader.pack is not None
    assert "'Pillow': '0.0'" in caplog.text and "--overwrite" in caplog.text


def test_truncated_pack_file_is_named(damaged: Miniature) -> None:
    data = train_pack(damaged) / "c00000.visual.bin"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match="truncated") as err:
        build(damaged)
    assert str(data) in str(err.value)


def test_damaged_bytes_are_found_by_pack_verify(damaged: Miniature) -> None:
    data = train_pack(damaged) / "c00000.visual.bin"
    raw = bytearray(data.read_bytes())
    raw[10] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert build(damaged).train.reader.pack is not None  # sizes only: opening stays cheap
    with pytest.raises(DataFormatError, match="sha256") as err:
        build(damaged, pack_verify=True)
    assert str(data) in str(err.value)


def add_clip(mini: Miniature) -> str:
    """A new listed train clip (audio and two frames): the data's list no longer is the pack's."""
    clip = "1091_TSI_SAD_HI"
    torch.save(torch.zeros(32, 128), mini.root / "audio" / f"{clip}.pt")
    for i in (1, 2):
        write_jpeg(mini.root / "visual" / clip / f"frame_{i:05d}.jpg",
                   frame_array(np.random.default_rng(i), 2, 6, 0.0))
    with open(mini.root / "train.csv", "a", encoding="utf-8") as f:
        f.write(f"{clip},SAD\r\n")
    return clip


def test_stale_pack_is_refused_and_rebuilt(damaged: Miniature) -> None:
    clip = add_clip(damaged)
    with pytest.raises(DataFormatError, match="is stale: 1 of 24 samples are not in it") as err:
        build(damaged)
    assert f"e.g. {clip}" in str(err.value)
    assert "pack=off" in str(err.value)
    # a finished pack is never removed silently: the new list needs --overwrite
    with pytest.raises(PrepareError, match="1 sample\\(s\\) differ\\); add --overwrite") as refused:
        pack(damaged)
    assert str(train_pack(damaged)) in str(refused.value)
    assert (train_pack(damaged) / MANIFEST_FILE).is_file()
    assert pack(damaged, overwrite=True).ok
    assert clip in build(damaged, pack="require").train.reader.ids


def test_an_unfinished_pack_of_another_list_is_rebuilt(damaged: Miniature) -> None:
    (train_pack(damaged) / MANIFEST_FILE).unlink()
    add_clip(damaged)
    report = pack(damaged)
    assert report.ok and any("unfinished pack" in n and "rebuilt from scratch" in n
                             for n in report.notes)


def test_changed_source_files_make_the_pack_stale(damaged: Miniature) -> None:
    clip = build(damaged, pack="off").test.reader.ids[3]
    folder = damaged.root / "visual" / clip
    first = sorted(folder.iterdir())[0]
    first.rename(folder / "frame_00099.jpg")
    with pytest.raises(DataFormatError, match="is stale") as err:
        build(damaged, index_cache=False)
    assert f"the visual files of {clip} are not those it was built from" in str(err.value)


def test_a_file_rewritten_in_place_makes_the_pack_stale(damaged: Miniature) -> None:
    record = build(damaged, pack="off").train.reader.records[2]
    torch.save(torch.ones(40, 128), record.audio)  # same name, new content
    with pytest.raises(DataFormatError, match="is stale") as err:
        build(damaged)
    assert f"the audio files of {record.id} are not those it was built from" in str(err.value)
    assert "path option such as visual_dir" in str(err.value)


def test_another_item_count_makes_the_pack_stale(damaged: Miniature,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # what an HDF5 rewritten with more frames looks like: same sources, other count
    sources = FolderClipReader.pack_sources

    def more_frames(self: FolderClipReader, position: int) -> dict[str, data_pack.Source]:
        out = sources(self, position)
        if position == 1:
            out["visual"] = data_pack.Source(out["visual"].folder, out["visual"].names,
                                             out["visual"].count + 1)
        return out

    monkeypatch.setattr(FolderClipReader, "pack_sources", more_frames)
    with pytest.raises(DataFormatError, match="1 sample\\(s\\) have another number of visual "
                                              "items") as err:
        build(damaged)
    assert "now, " in str(err.value) and "in the pack" in str(err.value)


def test_moved_data_keeps_its_pack(damaged: Miniature, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "cremad"
    shutil.move(str(damaged.root), moved)
    jpeg = build(damaged, root=moved, pack="off")
    assert assert_same_samples(jpeg, build(damaged, root=moved, pack="require")) > 0


# ---- building: resume, verification, repair -------------------------------------------------

@pytest.fixture
def fresh_cremad(tmp_path: Path) -> Miniature:
    return MINIATURES["cremad"](tmp_path / "cremad", seed=0)


def test_interrupted_build_resumes(fresh_cremad: Miniature, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    monkeypatch.setattr(pack_module, "CHUNK_ENTRIES", 4)
    mini = fresh_cremad
    train_ids = build(mini, pack="off").train.reader.ids
    broken = mini.root / "visual" / train_ids[9]
    frame = sorted(broken.iterdir())[0]
    good = frame.read_bytes()
    frame.write_bytes(b"not a jpeg")
    first = pack(mini)
    assert [(s, c) for s, c, _ in first.failures] == [("train", f"c00002 ({train_ids[8]} …)")]
    assert "cannot decode image" in first.failures[0][2]
    assert first.counts["train"]["failed"] == 4 and first.counts["test"]["failed"] == 0
    with pytest.raises(DataFormatError, match="is incomplete"):
        build(mini)
    frame.write_bytes(good)
    second = pack(mini)
    assert second.ok
    assert second.counts["train"] == {"listed": len(train_ids), "prepared": 4,
                                      "existing": len(train_ids) - 4, "failed": 0}
    assert second.counts["test"]["existing"] == second.counts["test"]["listed"]
    assert assert_same_samples(build(mini, pack="off"), build(mini, pack="require")) > 0


def test_rerun_verifies_and_repairs_only_what_changed(fresh_cremad: Miniature,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_module, "CHUNK_ENTRIES", 4)
    mini = fresh_cremad
    assert pack(mini).ok
    folder = train_pack(mini)
    again = pack(mini)
    assert again.counts["train"]["prepared"] == 0
    assert any("every file matches its sha256" in n for n in again.notes)
    untouched = {p.name: p.stat().st_mtime_ns for p in folder.glob("c*") if "c00001" not in p.name}
    data = folder / "c00001.audio.bin"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    repaired = pack(mini)
    assert repaired.ok and repaired.counts["train"]["prepared"] == 4  # chunk c00001 alone
    assert repaired.counts["test"]["prepared"] == 0
    assert any("1 chunk(s) no longer matched the manifest (first: c00001)" in n
               for n in repaired.notes)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("c*")
            if "c00001" not in p.name} == untouched
    assert assert_same_samples(build(mini, pack="off"), build(mini, pack="require")) > 0


def test_open_maps_are_capped(fresh_cremad: Miniature, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_module, "CHUNK_ENTRIES", 2)
    monkeypatch.setattr(data_pack, "MAX_OPEN_MAPS", 3)
    assert pack(fresh_cremad).ok
    packed, jpeg = build(fresh_cremad, pack="require"), build(fresh_cremad, pack="off")
    reader = packed.train.reader
    assert len(reader.pack.chunks) >= 8
    for position in range(len(reader.ids)):
        assert torch.equal(reader.load(position, None, lambda *_: None)["visual"],
                           jpeg.train.reader.load(position, None, lambda *_: None)["visual"])
        assert len(reader.pack._maps) <= 3
    # the most recently used maps are the ones kept: the last sample's audio, then its frames
    last = int(reader.pack._rows["audio"][reader.pack._first["audio"][
        reader.pack.entry_of[len(reader.ids) - 1]]][data_pack.INDEX_COLUMNS])
    assert list(reader.pack._maps)[-2:] == [(last, "audio"), (last, "visual")]


def test_packs_live_beside_the_data_under_their_key(cremad: Miniature) -> None:
    folders = sorted(p.name for p in (cremad.root / PACK_DIRNAME).iterdir())
    assert len(folders) == 4  # {train, test} x {as stored, short side 20}
    assert train_pack(cremad) != train_pack(cremad, 20)
    assert {f.split("-")[0] for f in folders} == {"train", "test"}


# ---- the crop of the read path ---------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), height=st.integers(8, 64), width=st.integers(8, 64),
       size=st.integers(4, 48), frames=st.integers(1, 3), decoded_layout=st.booleans())
def test_the_contiguous_box_crop_equals_resized_crop(seed: int, height: int, width: int,
                                                     size: int, frames: int,
                                                     decoded_layout: bool) -> None:
    """Whether the clip is in (C, H, W) memory or, as decoded and packed, (H, W, C)."""
    clip = torch.from_numpy(np.random.default_rng(seed).integers(
        0, 256, (frames, 3, height, width), dtype=np.uint8))
    if decoded_layout:
        clip = clip.contiguous(memory_format=torch.channels_last)
    ours = clip_train_crop(clip, size, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)  # the form clip_train_crop had before, same draws
    top, left, h, w = resized_crop_box(height, width, rng)
    before = TF.resized_crop(clip, top, left, h, w, [size, size], antialias=True)
    if rng.random() < 0.5:
        before = before.flip(-1)
    assert ours.dtype == before.dtype and torch.equal(ours, before)


def test_a_clip_with_frames_of_several_sizes_gives_the_jpeg_paths_tensors(tmp_path: Path) -> None:
    """`Pack.train_crop` reads only the crop box from the map when a clip's frames share a
    size; a clip whose frames differ goes through `stack_frames` (resized to the first's size)
    and is cropped after, the same draws and values as the JPEG path."""
    mini = MINIATURES["cremad"](tmp_path / "cremad", seed=0)
    clip = sorted((mini.root / "visual").iterdir())[0]
    frames = sorted(clip.iterdir())
    rng = np.random.default_rng(1)
    write_jpeg(frames[1], frame_array(rng, 0, 6, 0.3, hw=(30, 44)))  # the others are smaller
    assert pack(mini).ok
    jpeg, packed = build(mini, pack="off"), build(mini, pack="require")
    assert assert_same_samples(jpeg, packed, seeds=(0, 3), epochs=(0, 1, 2)) > 0
    reader = packed.train.reader
    position = packed.train.positions[packed.train.ids.index(clip.name)]  # a training clip
    for picks in ([0, 1], [1, 2], [0, 2]):  # mixed sizes (through stack_frames), and one size
        for seed in range(4):
            cropped = reader.pack.train_crop(position, "visual", picks, 16,
                                             np.random.default_rng(seed))
            whole = clip_train_crop(reader.pack.frames(position, "visual", picks), 16,
                                    np.random.default_rng(seed))
            assert torch.equal(cropped, whole), (picks, seed)
