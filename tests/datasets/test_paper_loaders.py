"""The seven paper-dataset loaders on their miniatures (datasets.md §2, §5)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bbench.config.fields import SpecError
from bbench.data import DATASETS
from bbench.data.base import DataModule, model_input
from bbench.data.errors import DataFormatError, MissingDataError, UnsafePickleError
from bbench.data.index_cache import list_frames
from bbench.data.reading import decode_image
from bbench.data.splits import read_id_list, stratified_carve_out
from bbench.data.transforms import (frame_indices, normalise_pixels, resize_exact, sample_rng,
                                    stack_frames)
from bbench.testing import MINIATURES, make_miniature
from bbench.testing.fixtures import IMAGE_SIZE

CANONICAL = {
    "cremad": (("audio", "visual"), ("CREMAD", "CREMA-D")),
    "kinetics_sounds": (("audio", "visual"), ("KineticsSounds", "KS")),
    "balanced_av": (("audio", "visual"), ("Balance", "BalancedAV")),
    "vggsound": (("audio", "visual"), ("VGGSound", "VGG")),
    "ucf101": (("flow", "visual"), ("UCF101", "UCF-101")),
    "food101": (("text", "visual"), ("FOOD101", "UPMC-Food101")),
    "cmu_mosei": (("audio", "visual", "text"), ("CMUMOSEI", "MOSEI")),
}
CARVED = ("cremad", "kinetics_sounds", "vggsound", "ucf101", "food101")


def ids_of(split) -> list[str]:
    return list(split.ids)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


# -- registry -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_registered_with_aliases_order_and_preset(name: str) -> None:
    modalities, aliases = CANONICAL[name]
    entry = DATASETS.get(name)
    assert entry.modalities == modalities and entry.preset == name
    for alias in aliases:
        assert DATASETS.canonical(alias) == name
    assert name in MINIATURES


# -- what every loader guarantees ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_samples_shapes_labels_and_determinism(name: str, miniature, load) -> None:
    mini = miniature(name)
    facts = mini.facts
    dm: DataModule = load(name, mini)
    info = dm.info
    assert info.name == name and info.modalities == CANONICAL[name][0]
    assert dm.train_eval is not None and ids_of(dm.train_eval) == ids_of(dm.train)
    for split in (dm.train, dm.val, dm.test, dm.train_eval):
        assert len(split) > 0
        for i in (0, len(split) - 1):
            sample = split[i]
            assert sample["index"].dtype == torch.int64 and int(sample["index"]) == i
            assert sample["label"].dtype == torch.int64 and sample["label"].shape == ()
            assert sample["id"] == split.ids[i]
            for m in info.modalities:
                value = model_input(sample[m])  # as move_batch gives it (uint8 pixels normalised)
                assert tuple(value.shape) == info.input_shapes[m], (name, m)
                assert value.dtype == info.input_dtypes[m]
                if value.is_floating_point():
                    assert torch.isfinite(value).all()
        if name != "cmu_mosei":
            assert all(int(y) == facts["labels"][i] for i, y in zip(split.ids, split.labels))
    # eval transforms are deterministic and independent of the epoch
    for split in (dm.val, dm.test, dm.train_eval):
        first = split[0]
        split.set_epoch(5)
        assert same(first, split[0])
    # training samples: a function of (seed, epoch, index)
    dm.train.set_epoch(0)
    a, b = dm.train[1], dm.train[1]
    assert same(a, b)
    dm.train.set_epoch(1)
    c = dm.train[1]
    dm.train.set_epoch(0)
    assert same(a, dm.train[1])
    augmented = name != "cmu_mosei"  # MOSEI features have no augmentation
    if augmented:
        assert not torch.equal(a["visual"], c["visual"])  # augmentation follows the epoch
    # the run seed (torch's initial seed when the data is built) keys augmentation too
    dm.train.set_seed(dm.train.seed + 1)
    if augmented:
        assert not torch.equal(a["visual"], dm.train[1]["visual"])


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_skips_and_splits(name: str, miniature, load) -> None:
    mini = miniature(name)
    facts = mini.facts
    dm = load(name, mini)
    for split_name in ("train", "test"):
        split = dm.split(split_name)
        assert [i for i, _ in split.skipped] == facts["skipped"][split_name]
    if name in CARVED:
        usable = [i for i in facts["listed"]["train"] if i not in facts["skipped"]["train"]]
        assert sorted(ids_of(dm.train) + ids_of(dm.val)) == sorted(usable)
        # §0.3: the val split is exactly the stratified carve-out of the usable train samples
        order = ids_of(dm.train_eval) + ids_of(dm.val)
        labels = [facts["labels"][i] for i in order]
        _, carved = stratified_carve_out(order, labels, 0.1, 0)
        assert sorted(ids_of(dm.val)) == sorted(order[p] for p in carved)
        assert read_id_list(dm.val.id_list_path) == ids_of(dm.val)
        assert Path(mini.root) not in dm.val.id_list_path.parents  # never in the data dir
        usable_test = [i for i in facts["listed"]["test"] if i not in facts["skipped"]["test"]]
        assert ids_of(dm.test) == usable_test  # list order, nothing dropped
        other = load(name, mini, split_seed=1)
        assert sorted(ids_of(other.train) + ids_of(other.val)) == sorted(usable)
        assert other.val.id_list_path != dm.val.id_list_path


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_class_signal_is_learnable(name: str, miniature, load) -> None:
    """Nearest class mean on each float modality beats chance on the test split."""
    dm = load(name, miniature(name))
    for m in dm.info.modalities:
        if dm.info.input_dtypes[m] != torch.float32:
            continue
        x = torch.stack([model_input(s[m]).flatten() for s in dm.train_eval])
        y = dm.train_eval.labels
        classes = y.unique()
        means = torch.stack([x[y == k].mean(0) for k in classes])
        xt = torch.stack([model_input(s[m]).flatten() for s in dm.test])
        pred = classes[torch.cdist(xt, means).argmin(1)]
        acc = float((pred == dm.test.labels).float().mean())
        assert acc > 1.0 / len(classes) + 0.1, (name, m, acc)


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_modality_subset_is_loaded_alone(name: str, miniature, load) -> None:
    modality = CANONICAL[name][0][-1]
    dm = load(name, miniature(name), modalities=[modality])
    assert dm.info.modalities == (modality,)
    assert set(dm.test[0]) == {modality, "label", "index", "id"}


def test_weak_option_blends_towards_noise(tmp_path: Path, load) -> None:
    strong = MINIATURES["cremad"](tmp_path / "a", seed=0)
    weak = MINIATURES["cremad"](tmp_path / "b", seed=0, weak={"visual": 1.0})
    spread = []
    for mini in (strong, weak):
        dm = load("cremad", mini)
        colours = torch.stack([model_input(s["visual"]).mean((0, 2, 3)) for s in dm.test])
        means = torch.stack([colours[dm.test.labels == k].mean(0) for k in range(6)])
        spread.append(float(means.std(0).mean()))
    assert spread[1] < 0.5 * spread[0]


def test_miniatures_are_deterministic_and_small(tmp_path: Path) -> None:
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix not in (".safetensors", ".json"):
                h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    for name, make in MINIATURES.items():
        kwargs = {"bert_weights": False} if name == "food101" else {}
        make(tmp_path / "a" / name, seed=3, **kwargs)
        make(tmp_path / "b" / name, seed=3, **kwargs)
        if name != "cremad":  # torch.save output is not byte-stable; same seed, same content
            assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name), name
        size = sum(p.stat().st_size for p in (tmp_path / "a" / name).rglob("*") if p.is_file())
        assert size < 1_000_000, (name, size)


def test_make_miniature_accepts_aliases(tmp_path: Path) -> None:
    overrides = make_miniature("CREMA-D", tmp_path / "c")
    assert overrides["dataset.root"] == str(tmp_path / "c")
    assert overrides["dataset.options"]["image_size"] == IMAGE_SIZE
    assert overrides["model.encoders"]["audio"] == {"type": "resnet18", "options": {"in_channels": 1}}
    with pytest.raises(KeyError):
        make_miniature("mfeat", tmp_path / "m")


# -- CREMA-D ------------------------------------------------------------------------------------

def test_cremad_edge_cases(miniature, load) -> None:
    mini = miniature("cremad")
    facts, root = mini.facts, mini.root
    dm = load("cremad", mini)
    assert len(dm.train) + len(dm.val) == 23 and len(dm.test) == 12  # BOM/CRLF/header handled
    assert dm.info.num_classes == 6
    # natural sort: frame_1 … frame_10; eval picks the segment centres 2 and 7 → frame_3, frame_8
    clip = facts["natural_sort"]
    assert list_frames(root / "visual" / clip) == [f"frame_{i}.jpg" for i in range(1, 11)]
    i = dm.test.ids.index(clip)
    expected = resize_exact(stack_frames(
        [decode_image(root / "visual" / clip / f"frame_{k}.jpg", "", "RGB", "t") for k in (3, 8)]),
        IMAGE_SIZE)  # uint8: move_batch normalises after the hand-over
    assert torch.equal(dm.test[i]["visual"], expected)
    # a clip with one frame: the frame is repeated (kept, not dropped)
    one = dm.test[dm.test.ids.index(facts["one_frame"])]["visual"]
    assert torch.equal(one[0], one[1])
    # a .pt saved as (1, T, F) loads like the others
    split = dm.train if facts["pt_3d"] in dm.train.ids else dm.val
    assert split[split.ids.index(facts["pt_3d"])]["audio"].shape == (1, 32, 128)


def test_cremad_train_frames_share_one_crop(miniature, load) -> None:
    """Train frames: random offsets per segment, one crop box and flip for the whole clip."""
    mini = miniature("cremad")
    dm = load("cremad", mini)
    reader = dm.train.reader
    for i in range(3):
        record = reader.records[dm.train.positions[i]]
        rng = sample_rng(dm.train.seed, 0, i)
        picks = frame_indices(len(record.frames), 2, rng)
        frames = stack_frames([decode_image(record.frames_dir / record.frames[k], "", "RGB", "t")
                               for k in picks])
        from bbench.data.transforms import clip_train_crop

        expected = clip_train_crop(frames, IMAGE_SIZE, rng)
        dm.train.set_epoch(0)
        assert torch.equal(dm.train[i]["visual"], expected)


def test_cremad_val_list_and_aliases(miniature, load, tmp_path: Path) -> None:
    mini = miniature("cremad")
    root = mini.root
    usable = [i for i in mini.facts["listed"]["train"] if i != mini.facts["missing_audio"]]
    chosen = usable[:5]
    (tmp_path / "val.txt").write_text("\n".join(chosen) + "\n")
    dm = load("cremad", mini, val_list=str(tmp_path / "val.txt"))
    assert sorted(dm.val.ids) == sorted(chosen) and len(dm.train) == len(usable) - 5
    # BalanceMM key names with trailing slashes, absolute paths, `fps`
    dm2 = load("cremad", mini, train_txt=str(root / "train.csv"), audio_path=f"{root}/audio/",
               visual_path=f"{root}/visual/", stat_path="stat.csv", fps=3)
    assert dm2.info.input_shapes["visual"][0] == 3 and len(dm2.test) == 12
    with pytest.raises(SpecError, match="give one"):
        load("cremad", mini, train_txt="a.csv", train_list="b.csv")


def test_cremad_audio_length_crop_pad(miniature, load, caplog) -> None:
    dm = load("cremad", miniature("cremad"), audio_frames=40)
    with caplog.at_level("WARNING", logger="bbench"):
        x = dm.test[0]["audio"]
        dm.test[1]
    assert x.shape == (1, 40, 128)
    assert torch.allclose(x[0, 32:], torch.tensor(0.438012))
    assert caplog.text.count("padded to audio_frames=40 (split test)") == 1  # once per split


# -- errors: missing and malformed data fail before training with a clear message --------------

def test_missing_root_and_list_errors(fresh, load, tmp_path: Path) -> None:
    from bbench.config.specs import DatasetSpec
    from bbench.data import build_datamodule

    with pytest.raises(SpecError, match=r"(?s)no data root.*dataset\.root.*bbench prepare cremad"):
        build_datamodule(DatasetSpec(name="cremad"))
    mini = fresh("cremad")
    (mini.root / "train.csv").unlink()
    with pytest.raises(MissingDataError, match=r"list file not found: .*train\.csv[\s\S]*"
                                               r"expected layout[\s\S]*python -m bbench prepare cremad"):
        load("cremad", mini)
    shutil.rmtree(mini.root / "audio")
    with pytest.raises(MissingDataError, match=r"audio folder not found: .*audio"):
        load("cremad", mini, train_list=str(mini.root / "test.csv"))


def test_no_usable_samples_is_an_error(fresh, load) -> None:
    mini = fresh("kinetics_sounds")
    for f in (mini.root / "train" / "audio").iterdir():
        f.unlink()
    with pytest.raises(MissingDataError, match=r"no usable train samples.*no audio file"):
        load("kinetics_sounds", mini)


def test_missing_audio_file_error_names_file(fresh, load) -> None:
    mini = fresh("cremad")
    dm = load("cremad", mini)
    clip = dm.test.ids[2]
    (mini.root / "audio" / f"{clip}.pt").unlink()
    with pytest.raises(MissingDataError, match=rf"audio file is missing: .*{clip}\.pt"):
        dm.test[2]
    (mini.root / "audio" / f"{dm.test.ids[3]}.pt").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match=rf"{dm.test.ids[3]}\.pt.*torch-saved"):
        dm.test[3]


def test_truncated_frame_folder_error_names_file(fresh, load) -> None:
    mini = fresh("kinetics_sounds")
    dm = load("kinetics_sounds", mini)
    name = dm.test.ids[0]
    folder = mini.root / "test" / "visual" / name
    frames = list_frames(folder)
    for f in frames:  # a half-copied folder: every frame cut short
        data = (folder / f).read_bytes()
        (folder / f).write_bytes(data[: len(data) // 3])
    with pytest.raises(DataFormatError, match=rf"{name}.*frame_\d+\.jpg.*cannot decode"):
        dm.test[0]
    with pytest.raises(DataFormatError, match=rf"{name}.*cannot decode"):  # caught at start-up
        load("kinetics_sounds", mini, verify_samples=100)
    other = mini.root / "test" / "visual" / dm.test.ids[1]
    for f in list_frames(other):  # listed in the (cached) index, gone now
        (other / f).unlink()
    dm = load("kinetics_sounds", mini, verify_samples=0)
    with pytest.raises(MissingDataError, match=rf"frame file is missing: .*{dm.test.ids[1]}"):
        dm.test[1]


def test_wrong_audio_shape_fails_at_startup(fresh, load) -> None:
    mini = fresh("vggsound")
    for f in (mini.root / "audio" / "test").iterdir():
        np.save(f, np.zeros((32, 64), np.float32))
    with pytest.raises(DataFormatError, match=r"\(32, 64\).*\(T, 128\).*mel_bins"):
        load("vggsound", mini)


# -- Kinetics-Sounds ---------------------------------------------------------------------------

def test_kinetics_sounds_lists(miniature, load, tmp_path: Path) -> None:
    mini = miniature("kinetics_sounds")
    dm = load("kinetics_sounds", mini)
    assert dm.info.num_classes == 31
    every = dm.train.ids + dm.val.ids + dm.test.ids
    assert any(i.startswith("-") for i in dm.test.ids) and any(i.startswith("-") for i in every)
    assert set(dm.train.labels.tolist() + dm.val.labels.tolist()) == {0, 10, 20, 30}
    two = mini.facts["two_frames"]
    split = dm.train_eval if two in dm.train_eval.ids else dm.val
    visual = split[split.ids.index(two)]["visual"]
    assert torch.equal(visual[0], visual[1]) and not torch.equal(visual[1], visual[2])
    bad = MINIATURES["kinetics_sounds"](tmp_path / "bad", seed=0, invalid=True)
    with pytest.raises(DataFormatError, match=r"train\.txt, line 3: label 31 is outside 0\.\.30"):
        load("kinetics_sounds", bad)


def test_kinetics_sounds_my_lists_and_aliases(fresh, load) -> None:
    mini = fresh("kinetics_sounds")
    root = mini.root
    (root / "train.txt").rename(root / "my_train.txt")
    (root / "test.txt").rename(root / "my_test.txt")
    assert len(load("kinetics_sounds", mini).test) == 8
    moved = root.parent / "elsewhere"
    shutil.move(str(root / "test"), moved)
    dm = load("kinetics_sounds", mini, audio_path_test=f"{moved}/audio/",
              visual_path_test=f"{moved}/visual/", csv_path_test="my_test.txt")
    assert len(dm.test) == 8


# -- BalancedAV ----------------------------------------------------------------------------------

def test_balanced_av_validation_subset_opaque_and_skip(miniature, load) -> None:
    mini = miniature("balanced_av")
    facts = mini.facts
    dm = load("balanced_av", mini)
    assert sorted(dm.val.ids) == sorted(facts["keys"]["validation"])  # used as val, no carve-out
    assert dm.val.id_list_path is None
    assert sorted(dm.train.ids) == sorted(k for k in facts["keys"]["training"]
                                          if k != facts["missing_pkl"])
    assert dm.info.num_classes == 3
    opaque = facts["opaque"]
    x = dm.train_eval[dm.train_eval.ids.index(opaque)]["visual"]
    assert x.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_balanced_av_without_validation_uses_carve_out(miniature, load) -> None:
    mini = miniature("balanced_av", validation=False)
    dm = load("balanced_av", mini)
    usable = sorted(k for k in mini.facts["keys"]["training"] if k != mini.facts["missing_pkl"])
    assert sorted(dm.train.ids + dm.val.ids) == usable and len(dm.val) == 3
    assert dm.val.id_list_path is not None


def test_balanced_av_pickles_are_restricted(fresh, load) -> None:
    import os

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import pickle

    mini = fresh("balanced_av")
    dm = load("balanced_av", mini)
    key = dm.test.ids[0]
    (mini.root / "audio" / f"{key}.pkl").write_bytes(pickle.dumps([Exploit()]))
    with pytest.raises(UnsafePickleError, match=rf"{key}\.pkl.*system"):
        dm.test[0]


# -- VGGSound ----------------------------------------------------------------------------------

def test_vggsound_csv_and_names(miniature, load) -> None:
    mini = miniature("vggsound")
    facts = mini.facts
    dm = load("vggsound", mini)
    assert facts["classes"] == sorted(facts["classes"]) and dm.info.num_classes == 3
    label_of = {i: int(y) for s in (dm.train, dm.val, dm.test) for i, y in zip(s.ids, s.labels)}
    assert facts["classes"][1] == "railroad car, train wagon"
    assert set(label_of.values()) == {0, 1, 2}
    test_labels = {facts["classes"][label_of[i]] for i in dm.test.ids}
    assert "train whistling" in test_labels  # a label with "train" stays in the test split
    assert facts["padded"] in label_of  # stored as <ytid>_<start:06d>, id stays unpadded
    assert facts["missing"] not in label_of
    assert any(i.startswith("-") for i in label_of)


# -- UCF-101 -----------------------------------------------------------------------------------

def test_ucf101_lists_flow_and_shared_flip(miniature, load) -> None:
    from bbench.data.ucf101 import flow_transform

    mini = miniature("ucf101")
    facts = mini.facts
    dm = load("ucf101", mini)
    assert dm.info.num_classes == 3
    handstand = [i for i in dm.test.ids if "HandStand" in i]
    assert handstand and all(int(dm.test.labels[dm.test.ids.index(i)]) == 1 for i in handstand)
    reader = dm.train.reader
    short = next(c for c in reader.clips if c.id == facts["short_v"])
    assert (len(short.u), len(short.v)) == (8, 7)
    # flow around 128 → values near 0; class offset moves u and v in opposite directions
    for i in range(len(dm.test)):
        flow = model_input(dm.test[i]["flow"])
        assert flow.min() >= -1 and flow.max() <= 1
    # one flip decision per sample shared by RGB and flow; flipping negates u
    for i in range(len(dm.train)):
        clip = reader.clips[dm.train.positions[i]]
        rng = sample_rng(dm.train.seed, 0, i)
        rgb_picks = frame_indices(len(clip.rgb), 3, rng)
        flow_picks = frame_indices(min(len(clip.u), len(clip.v)), 3, rng)
        flip = bool(rng.random() < 0.5)
        u = stack_frames([decode_image(clip.u_dir / clip.u[k], "", "L", "t") for k in flow_picks])
        v = stack_frames([decode_image(clip.v_dir / clip.v[k], "", "L", "t") for k in flow_picks])
        rgb = resize_exact(stack_frames([decode_image(clip.rgb_dir / clip.rgb[k], "", "RGB", "t")
                                         for k in rgb_picks]), IMAGE_SIZE)
        dm.train.set_epoch(0)
        sample = dm.train[i]
        assert torch.equal(sample["flow"], flow_transform(u, v, IMAGE_SIZE, flip))
        assert torch.equal(sample["visual"], rgb.flip(-1) if flip else rgb)
    u = torch.randint(0, 256, (3, 1, 20, 20), dtype=torch.uint8)
    v = torch.randint(0, 256, (3, 1, 20, 20), dtype=torch.uint8)
    plain, flipped = flow_transform(u, v, 20, False), flow_transform(u, v, 20, True)
    assert plain.dtype == torch.uint8  # move_batch maps the planes to [−1, 1]
    assert torch.equal(flipped[:, 0], 255 - plain[:, 0].flip(-1))  # u → −u, mirrored
    assert torch.equal(flipped[:, 1], plain[:, 1].flip(-1))
    assert torch.allclose(normalise_pixels(flipped)[:, 0], -normalise_pixels(plain)[:, 0].flip(-1),
                          atol=1e-6)
    zero = flow_transform(torch.full((1, 1, 4, 4), 128, dtype=torch.uint8),
                          torch.full((1, 1, 4, 4), 128, dtype=torch.uint8), 4, False)
    assert torch.allclose(normalise_pixels(zero), torch.tensor(128 / 255 * 2 - 1), atol=1e-6)


# -- FOOD-101 ----------------------------------------------------------------------------------

def test_food101_text_pipeline(miniature, load) -> None:
    from transformers import BertTokenizer

    mini = miniature("food101")
    facts = mini.facts
    dm = load("food101", mini)
    tok = BertTokenizer.from_pretrained(facts["bert"])
    vocab = tok.get_vocab()
    splits = (dm.train_eval, dm.val, dm.test)
    text = {i: s[k]["text"] for s in splits for k, i in enumerate(s.ids)}
    for t in text.values():
        assert t.shape == (2, 40) and t.dtype == torch.int64
        ids, mask = t
        assert ids[0] == vocab["[CLS]"] and set(mask.tolist()) <= {0, 1}
        assert torch.equal(mask, (ids != vocab["[PAD]"]).long())
        assert ids[int(mask.sum()) - 1] == vocab["[SEP]"]
    assert int(text[facts["long"]][1].sum()) == 40  # truncated
    assert int(text[facts["empty"]][1].sum()) == 2  # [CLS] [SEP]
    assert vocab["rt"] not in text[facts["rt"]][0]
    assert vocab["http"] not in text[facts["url"]][0] and vocab["example"] not in text[facts["url"]][0]
    assert vocab["#"] not in text[facts["tags"]][0]
    assert len(dm.test) == 6  # no header in the test CSV: every row is a sample


def test_food101_clean_title() -> None:
    from bbench.data.food101 import clean_title

    assert clean_title("RT  Best #pizza #recipe http://t.co/x?y=1 tail") == "Best pizza recipe "
    assert clean_title("ART of sushi https://a.b") == "ART of sushi "
    assert clean_title("") == ""


def test_food101_token_cache_and_tokenizer_errors(fresh, load) -> None:
    mini = fresh("food101", bert_weights=False)
    root = mini.root
    vocab = Path(mini.facts["bert"]) / "vocab.txt"
    n_rows = 12
    ids = np.full((n_rows, 40), 7, dtype=np.int32)
    mask = np.ones((n_rows, 40), dtype=np.int32)
    np.savez(root / "texts" / "train_tokens.npz", input_ids=ids, attention_mask=mask,
             vocab_sha256=hashlib.sha256(vocab.read_bytes()).hexdigest())
    dm = load("food101", mini)
    assert (dm.train_eval[0]["text"][0] == 7).all()  # the prepare cache is used …
    assert not (dm.test[0]["text"][0] == 7).all()
    vocab.write_text(vocab.read_text() + "extra\n")
    assert not (load("food101", mini).train_eval[0]["text"][0] == 7).all()  # … only if it matches
    assert len(load("food101", mini, text_model_path=str(vocab)).test) == 6  # vocab file path
    with pytest.raises(SpecError, match="text_model_path"):
        load("food101", mini, text_model_path=None)
    with pytest.raises(MissingDataError, match="vocab.txt"):
        load("food101", mini, text_model_path=str(root / "nowhere"))
    assert load("food101", mini, text_model_path=None, modalities=["visual"]).info.modalities == ("visual",)


def test_food101_unknown_test_class_is_an_error(fresh, load) -> None:
    mini = fresh("food101", bert_weights=False)
    csv_path = mini.root / "texts" / "test_titles.csv"
    csv_path.write_text(csv_path.read_text() + "x.jpg,some title,tacos\n")
    with pytest.raises(DataFormatError, match="tacos"):
        load("food101", mini)


# -- CMU-MOSEI ---------------------------------------------------------------------------------

def test_cmu_mosei_labels_sanitising_and_splits(miniature, load) -> None:
    import pickle

    mini = miniature("cmu_mosei")
    facts = mini.facts
    dm = load("cmu_mosei", mini)
    assert [len(dm.train), len(dm.val), len(dm.test)] == [8, 6, 6]
    assert dm.info.input_shapes == {"audio": (7, 74), "visual": (6, 35), "text": (5, 300)}
    assert dm.train.labels[:3].tolist() == [0, 1, 1]  # scores −1.2, 0.0, 2.5
    assert dm.train.labels.tolist() == facts["labels"]["train"]
    assert dm.val.labels.tolist() == facts["labels"]["valid"]
    with open(mini.root / "mosei_senti_data_noalign.pkl", "rb") as f:
        raw = pickle.load(f)["train"]
    assert dm.train_eval[0]["audio"][0, 0] == 0 and dm.train_eval[1]["audio"][1, 1] == 0
    assert dm.train_eval[2]["visual"][0, 3] == 0
    assert torch.allclose(dm.train_eval[3]["text"], torch.from_numpy(raw["text"][3]).float())
    assert dm.train.ids[0] == "trainvid0_0"
    assert torch.equal(dm.train[0]["audio"], dm.train_eval[0]["audio"])  # no augmentation


def test_cmu_mosei_variants(miniature, load, tmp_path: Path) -> None:
    base = load("cmu_mosei", miniature("cmu_mosei"))
    no_ids = load("cmu_mosei", miniature("cmu_mosei", with_ids=False))
    assert no_ids.train.ids[:2] == ["train-0", "train-1"]
    aligned = load("cmu_mosei", miniature("cmu_mosei"), aligned=True)
    assert aligned.info.input_shapes == {"audio": (4, 74), "visual": (4, 35), "text": (4, 300)}
    assert load("cmu_mosei", miniature("cmu_mosei"), if_align=True).info.input_shapes == \
        aligned.info.input_shapes
    npy = miniature("cmu_mosei", npy=True)
    (npy.root / "mosei_senti_data_noalign.pkl").rename(npy.root / "moved.pkl")
    try:
        mm = load("cmu_mosei", npy)  # memory-mapped .npy cache, no pickle needed
        for i in range(len(mm.test)):
            assert same(mm.test[i] | {"id": ""}, base.test[i] | {"id": ""})
    finally:
        (npy.root / "moved.pkl").rename(npy.root / "mosei_senti_data_noalign.pkl")
    with pytest.raises(MissingDataError, match=r"pickle not found: .*x\.pkl"):
        load("cmu_mosei", miniature("cmu_mosei"), use_npy=False, pickle_file=str(tmp_path / "x.pkl"))


def test_cmu_mosei_unsafe_pickle_refused(fresh, load) -> None:
    import collections
    import pickle

    mini = fresh("cmu_mosei")
    path = mini.root / "mosei_senti_data_noalign.pkl"
    with open(path, "rb") as f:
        data = pickle.load(f)
    path.write_bytes(pickle.dumps(collections.OrderedDict(data)))
    with pytest.raises(UnsafePickleError, match=r"mosei_senti_data_noalign\.pkl.*OrderedDict"):
        load("cmu_mosei", mini)
    assert len(load("cmu_mosei", mini, trust_pickles=True).test) == 6


def test_samples_do_not_depend_on_num_workers(miniature, load) -> None:
    """Worker processes (h5py opened per sample, pickled splits) give the same batches."""
    from torch.utils.data import DataLoader

    dm = load("balanced_av", miniature("balanced_av"))
    dm.train.set_epoch(2)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(dm.train, batch_size=4, shuffle=False, num_workers=workers,
                            collate_fn=dm.collate)
        batches.append(list(loader))
    for a, b in zip(*batches):
        assert a["id"] == b["id"]
        assert torch.equal(a["visual"], b["visual"]) and torch.equal(a["audio"], b["audio"])
