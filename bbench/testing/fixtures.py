"""Miniature copies of the seven paper-dataset formats, generated at test time (datasets.md §5).

Every generator writes real files with the real names and formats into `root`, so the
production loaders run unchanged; output is deterministic for a given seed and well under
1 MB. Each class gets a learnable signal: a distinct colour for its frames and images (plus
noise), a distinct band of high values in its spectrogram rows, a distinct grey level for
its flow, distinctive words in its titles, shifted features for MOSEI. `weak={"visual": 0.8}`
blends a modality towards noise to create imbalance on purpose. Each generator also writes
the edge cases listed in §5, and returns a `Miniature`: the `bbench.run` override dict that
points at the files, with `.facts` telling tests which samples carry which edge case.

Some miniatures deliberately leave one listed sample's file out, to exercise the loaders'
existence filter (datasets.md, "Existence filter"). The omission is declared in the dataset
option `expected_missing` of the returned overrides, so the loader still skips the sample and
names it, at INFO level as declared, instead of warning as if the data were broken.
`.facts["expected_missing"]` lists the declared ids.
"""
from __future__ import annotations

import colorsys
import csv
import io
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_T = 32
"""Spectrogram frames of every miniature (the override sets audio_frames to match)."""
MEL_BINS = 128
FRAME_HW = (24, 32)
IMAGE_SIZE = 32
"""What loaders resize frames to in miniature runs (the real default is 224)."""

SMOKE_TRAIN = {"epochs": 1, "batch_size": 4, "progress": False, "eval.batch_size": 16}
"""Training settings for a CPU smoke run on a miniature."""


class Miniature(dict):
    """The `bbench.run` override dict of a miniature, plus `.facts` about its edge cases."""

    def __init__(self, overrides: Mapping[str, Any], root: Path, facts: Mapping[str, Any]) -> None:
        super().__init__(overrides)
        self.root = Path(root)
        self.facts: dict[str, Any] = dict(facts)


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------

def _weak(weak: Mapping[str, float] | None, modality: str) -> float:
    value = float((weak or {}).get(modality, 0.0))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"weak[{modality!r}]={value} must be in [0, 1]")
    return value


def class_colour(k: int, n_classes: int) -> np.ndarray:
    """A distinct, saturated RGB colour (0..255) per class."""
    r, g, b = colorsys.hsv_to_rgb(k / max(n_classes, 1), 0.85, 0.9)
    return np.array([r, g, b]) * 255.0


def frame_array(rng: np.random.Generator, k: int, n_classes: int, w: float,
                hw: tuple[int, int] = FRAME_HW) -> np.ndarray:
    """(H, W, 3) uint8: the class colour blended with a random colour by `w`, plus noise."""
    colour = (1 - w) * class_colour(k, n_classes) + w * rng.uniform(0, 255, 3)
    pixels = colour + rng.normal(0.0, 12.0, (*hw, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_jpeg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(array))


def spectrogram(rng: np.random.Generator, k: int, n_classes: int, w: float,
                frames: int = AUDIO_T, bins: int = MEL_BINS) -> np.ndarray:
    """(frames, bins) float32: noise around 0.2 plus a band of high values for class k."""
    x = rng.normal(0.2, 0.05, (frames, bins))
    width = max(bins // max(n_classes, 1), 1)
    band = np.zeros(bins)
    band[k * width % bins:(k * width % bins) + width] = 1.0
    noise_band = np.zeros(bins)
    start = int(rng.integers(0, bins - width + 1))
    noise_band[start:start + width] = 1.0
    return (x + (1 - w) * band + w * noise_band).astype(np.float32)


def _cache_dir(root: Path) -> str:
    """The miniature's bbench cache: beside the data, never inside it."""
    return str(root.parent / f"{root.name}.bbench-cache")


def _resnet(channels: int) -> dict[str, Any]:
    return {"type": "resnet18", "options": {"in_channels": channels}}


def _clip_overrides(root: Path, frames_per_clip: int, encoders: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    options = {"image_size": IMAGE_SIZE, "frames_per_clip": frames_per_clip,
               "audio_frames": AUDIO_T, "cache_dir": _cache_dir(root), **(extra or {})}
    return {"dataset.root": str(root), "dataset.options": options,
            "model.encoders": dict(encoders), **SMOKE_TRAIN}


def _declared(*ids: str) -> str:
    """`expected_missing` of a miniature's overrides: the deliberately omitted sample ids.

    Comma-separated, as on the command line, so the `--set` command that
    `python -m bbench.testing miniature` prints carries it unchanged (the option coerces it
    to a tuple). Miniature ids never contain commas.
    """
    assert all("," not in i for i in ids), ids
    return ",".join(ids)


def _ytid(rng: np.random.Generator, dash: bool = False) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    body = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 11))
    return ("-" + body[1:]) if dash else body.lstrip("-").rjust(11, "x")


# ---------------------------------------------------------------------------------------------
# CREMA-D
# ---------------------------------------------------------------------------------------------

CREMAD_CODES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
_SENTENCES = ("DFA", "IEO", "IOM", "ITH", "ITS", "IWL", "IWW", "MTI", "TAI", "TIE", "TSI", "WSI")
_LEVELS = ("XX", "LO", "MD", "HI")


def make_cremad(root: Path, seed: int = 0, per_class: Mapping[str, int] | None = None,
                weak: Mapping[str, float] | None = None) -> Miniature:
    """`train.csv`/`test.csv`, `audio/<clip>.pt` (T, 128), `visual/<clip>/frame_0000k.jpg`.

    Edge cases: CRLF + BOM in train.csv; a header row in test.csv; a listed train clip without
    audio (`facts["missing_audio"]`), left out on purpose to exercise the existence filter and
    declared in the overrides' `expected_missing`, so it is skipped and named at INFO level,
    not warned about; a test clip with 1 frame; a test clip with frames frame_1 … frame_10;
    one .pt saved as (1, T, F).
    """
    import torch

    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"train": 4, "test": 2, **(per_class or {})}
    wa, wv = _weak(weak, "audio"), _weak(weak, "visual")
    ids: dict[str, list[str]] = {"train": [], "test": []}
    labels: dict[str, int] = {}
    serial = 0
    for split in ("train", "test"):
        for label, code in enumerate(CREMAD_CODES):
            for _ in range(counts[split]):
                clip = (f"{1001 + serial % 91}_{_SENTENCES[serial % 12]}_{code}_"
                        f"{_LEVELS[serial // 12 % 4]}")
                serial += 1
                ids[split].append(clip)
                labels[clip] = label
    order = {s: list(rng.permutation(ids[s])) for s in ids}  # lists are not grouped by class
    missing_audio = ids["train"][-1]
    pt_3d = ids["train"][0]
    one_frame = ids["test"][0]
    natural = ids["test"][-1]
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        for clip in ids[split]:
            k = labels[clip]
            if clip != missing_audio:
                spec = torch.from_numpy(spectrogram(rng, k, 6, wa))
                torch.save(spec.unsqueeze(0) if clip == pt_3d else spec, root / "audio" / f"{clip}.pt")
            if clip == natural:
                names = [f"frame_{i}.jpg" for i in range(1, 11)]
            else:
                n = 1 if clip == one_frame else int(rng.integers(2, 5))
                names = [f"frame_{i:05d}.jpg" for i in range(1, n + 1)]
            for name in names:
                write_jpeg(root / "visual" / clip / name, frame_array(rng, k, 6, wv))
    train_lines = "".join(f"{c},{CREMAD_CODES[labels[c]]}\r\n" for c in order["train"])
    (root / "train.csv").write_bytes(b"\xef\xbb\xbf" + train_lines.encode())
    test_lines = "name,label\n" + "".join(f"{c},{CREMAD_CODES[labels[c]]}\n" for c in order["test"])
    (root / "test.csv").write_text(test_lines, encoding="utf-8")
    facts = {"num_classes": 6, "listed": {s: list(order[s]) for s in order}, "labels": labels,
             "skipped": {"train": [missing_audio], "test": []}, "missing_audio": missing_audio,
             "expected_missing": [missing_audio],
             "pt_3d": pt_3d, "one_frame": one_frame, "natural_sort": natural}
    overrides = _clip_overrides(root, 2, {"audio": _resnet(1), "visual": _resnet(3)},
                                {"expected_missing": _declared(missing_audio)})
    return Miniature(overrides, root, facts)


# ---------------------------------------------------------------------------------------------
# Kinetics-Sounds
# ---------------------------------------------------------------------------------------------

KS_LABELS = (0, 10, 20, 30)


def make_kinetics_sounds(root: Path, seed: int = 0, per_class: Mapping[str, int] | None = None,
                         weak: Mapping[str, float] | None = None, invalid: bool = False
                         ) -> Miniature:
    """`train.txt` (`name,10,label`, CRLF), `test.txt` (`name label`), `<split>/audio/<name>.npy`,
    `<split>/visual/<name>/frame_0000k.jpg` (5–10 frames).

    Edge cases: names starting with '-'; a train clip with 2 frames; `invalid=True` writes a
    train line with label 31 (≥ K), which the loader must reject naming the line.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"train": 3, "test": 2, **(per_class or {})}
    wa, wv = _weak(weak, "audio"), _weak(weak, "visual")
    listed: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    two_frames = ""
    for split in ("train", "test"):
        for c, label in enumerate(KS_LABELS):
            for j in range(counts[split]):
                dash = j == 0
                if split == "train":
                    start = int(rng.integers(0, 300))
                    name = f"{_ytid(rng, dash)}_{start:06d}_{start + 10:06d}"
                else:
                    name = f"{_ytid(rng, dash)}_{int(rng.integers(0, 9))}"
                listed[split].append((name, label))
                (root / split / "audio").mkdir(parents=True, exist_ok=True)
                np.save(root / split / "audio" / f"{name}.npy",
                        spectrogram(rng, c, len(KS_LABELS), wa))
                n = int(rng.integers(5, 11))
                if split == "train" and c == 1 and j == 1:
                    n, two_frames = 2, name
                for i in range(1, n + 1):
                    write_jpeg(root / split / "visual" / name / f"frame_{i:05d}.jpg",
                               frame_array(rng, c, len(KS_LABELS), wv))
    order = {s: [listed[s][i] for i in rng.permutation(len(listed[s]))] for s in listed}
    train_lines = [f"{n},10,{y}" for n, y in order["train"]]
    if invalid:
        train_lines.insert(2, f"{order['train'][0][0]}_bad,10,31")
    (root / "train.txt").write_bytes(("\r\n".join(train_lines) + "\r\n").encode())
    (root / "test.txt").write_text("".join(f"{n} {y}\n" for n, y in order["test"]))
    facts = {"num_classes": 31, "listed": {s: [n for n, _ in order[s]] for s in order},
             "labels": {n: y for s in listed for n, y in listed[s]},
             "skipped": {"train": [], "test": []}, "expected_missing": [], "two_frames": two_frames,
             "invalid_line": 3 if invalid else None}
    overrides = _clip_overrides(root, 3, {"audio": _resnet(1), "visual": _resnet(3)})
    return Miniature(overrides, root, facts)


# ---------------------------------------------------------------------------------------------
# BalancedAV
# ---------------------------------------------------------------------------------------------

BALANCED_LABELS = ("baby crying", "dog barking", "playing piano")


def make_balanced_av(root: Path, seed: int = 0, per_class: Mapping[str, int] | None = None,
                     weak: Mapping[str, float] | None = None, validation: bool = True
                     ) -> Miniature:
    """`annotations.json`, `visual/<key>.hdf5` (`video` = vlen-uint8 JPEG blobs, 4–6 frames),
    `audio/<key>.pkl` (pickled float32 (T, 128) ndarray).

    Edge cases: one HDF5 stored with opaque (void) elements; a training key without `.pkl`
    (`facts["missing_pkl"]`: left out on purpose and declared in `expected_missing`, so it is
    skipped and named at INFO level); a few `validation` entries used as val
    (`validation=False`: none, carve-out).
    """
    import h5py

    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"training": 4, "testing": 2, "validation": 1 if validation else 0,
              **(per_class or {})}
    wa, wv = _weak(weak, "audio"), _weak(weak, "visual")
    n_classes = len(BALANCED_LABELS)
    database: dict[str, dict[str, str]] = {}
    (root / "visual").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    keys: dict[str, list[str]] = {s: [] for s in counts}
    serial = 0
    for subset, count in counts.items():
        for name in BALANCED_LABELS:
            for _ in range(count):
                key = f"{_ytid(rng)}_{serial:04d}"
                serial += 1
                keys[subset].append(key)
                database[key] = {"subset": subset, "label": name}
    opaque, missing_pkl = keys["training"][1], keys["training"][-1]
    for key, entry in database.items():
        k = BALANCED_LABELS.index(entry["label"])
        blobs = [jpeg_bytes(frame_array(rng, k, n_classes, wv)) for _ in range(int(rng.integers(4, 7)))]
        with h5py.File(root / "visual" / f"{key}.hdf5", "w") as f:
            if key == opaque:
                width = max(len(b) for b in blobs)
                f.create_dataset("video", data=np.array([np.void(b.ljust(width, b"\0")) for b in blobs]))
            else:
                video = f.create_dataset("video", (len(blobs),), dtype=h5py.vlen_dtype(np.uint8))
                for t, blob in enumerate(blobs):
                    video[t] = np.frombuffer(blob, dtype=np.uint8)
        if key != missing_pkl:
            with open(root / "audio" / f"{key}.pkl", "wb") as f:
                pickle.dump(spectrogram(rng, k, n_classes, wa), f, protocol=4)
    (root / "annotations.json").write_text(json.dumps(
        {"labels": list(BALANCED_LABELS), "database": database}, indent=1))
    facts = {"num_classes": n_classes, "keys": keys, "opaque": opaque, "missing_pkl": missing_pkl,
             "labels": {k: BALANCED_LABELS.index(e["label"]) for k, e in database.items()},
             "skipped": {"train": [missing_pkl], "test": [], "val": []},
             "expected_missing": [missing_pkl]}
    overrides = _clip_overrides(root, 3, {"audio": _resnet(1), "visual": _resnet(3)},
                                {"expected_missing": _declared(missing_pkl)})
    return Miniature(overrides, root, facts)


# ---------------------------------------------------------------------------------------------
# VGGSound
# ---------------------------------------------------------------------------------------------

VGG_LABELS = ("dog barking", "railroad car, train wagon", "train whistling")


def make_vggsound(root: Path, seed: int = 0, per_class: Mapping[str, int] | None = None,
                  weak: Mapping[str, float] | None = None) -> Miniature:
    """`vggsound.csv` (no header), `video/<split>/<ytid>_<start>/00000.jpg, 00025.jpg, …`,
    `audio/<split>/<ytid>_<start>.npy`.

    Edge cases: a quoted label with a comma; "train whistling" in test rows; an id starting
    with '-'; one clip stored under the padded `<ytid>_<start:06d>` name; a CSV row whose
    files are missing (`facts["missing"]`: left out on purpose and declared in
    `expected_missing`, so it is skipped and named at INFO level).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"train": 4, "test": 2, **(per_class or {})}
    wa, wv = _weak(weak, "audio"), _weak(weak, "visual")
    classes = sorted(VGG_LABELS)
    rows: list[tuple[str, int, str, str]] = []
    for split in ("train", "test"):
        for label in VGG_LABELS:
            for j in range(counts[split]):
                rows.append((_ytid(rng, dash=(j == 0)), int(rng.integers(0, 300)), label, split))
    padded_key = f"{rows[1][0]}_{rows[1][1]}"
    missing_key = f"{rows[-1][0]}_{rows[-1][1]}"
    facts_labels: dict[str, int] = {}
    for ytid, start, label, split in rows:
        key = f"{ytid}_{start}"
        facts_labels[key] = classes.index(label)
        if key == missing_key:
            continue
        folder = f"{ytid}_{start:06d}" if key == padded_key else key
        k = classes.index(label)
        (root / "audio" / split).mkdir(parents=True, exist_ok=True)
        np.save(root / "audio" / split / f"{folder}.npy", spectrogram(rng, k, len(classes), wa))
        for i in range(int(rng.integers(3, 7))):
            write_jpeg(root / "video" / split / folder / f"{i * 25:05d}.jpg",
                       frame_array(rng, k, len(classes), wv))
    order = [rows[i] for i in rng.permutation(len(rows))]
    with open(root / "vggsound.csv", "w", newline="") as f:
        csv.writer(f).writerows(order)
    split_of = {f"{y}_{s}": sp for y, s, _, sp in rows}
    facts = {"num_classes": len(classes), "classes": classes, "labels": facts_labels,
             "listed": {sp: [f"{y}_{s}" for y, s, _, p in order if p == sp]
                        for sp in ("train", "test")},
             "padded": padded_key, "missing": missing_key,
             "skipped": {sp: [missing_key] if split_of[missing_key] == sp else []
                         for sp in ("train", "test")},
             "expected_missing": [missing_key]}
    overrides = _clip_overrides(root, 3, {"audio": _resnet(1), "visual": _resnet(3)},
                                {"expected_missing": _declared(missing_key)})
    return Miniature(overrides, root, facts)


# ---------------------------------------------------------------------------------------------
# UCF-101
# ---------------------------------------------------------------------------------------------

UCF_CLASSES = ("ApplyEyeMakeup", "HandstandPushups", "YoYo")
UCF_FILE_NAMES = {"HandstandPushups": "HandStandPushups"}


def make_ucf101(root: Path, seed: int = 0, per_class: Mapping[str, int] | None = None,
                weak: Mapping[str, float] | None = None) -> Miniature:
    """`ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt`, `rgb/<v_X>/frame_00001..6.jpg`,
    `flow/{u,v}/<v_X>/frame00000k.jpg` (8 frames, grey 128 ± class offset).

    Edge cases: files `v_HandStandPushups_…` under folder `HandstandPushups`; CRLF in the
    train list; one clip with 8 u and 7 v flow frames (the loader uses 7).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"train": 4, "test": 2, **(per_class or {})}
    wf, wv = _weak(weak, "flow"), _weak(weak, "visual")
    n = len(UCF_CLASSES)
    lists_dir = root / "ucfTrainTestlist"
    lists_dir.mkdir(parents=True, exist_ok=True)
    (lists_dir / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES)))
    listed: dict[str, list[tuple[str, int, str]]] = {"train": [], "test": []}
    group = {"train": 8, "test": 1}
    for split in ("train", "test"):
        for k, cls in enumerate(UCF_CLASSES):
            for j in range(counts[split]):
                clip = f"v_{UCF_FILE_NAMES.get(cls, cls)}_g{group[split] + j:02d}_c{j % 4 + 1:02d}"
                listed[split].append((clip, k, cls))
    short_v = listed["train"][0][0]
    for split in listed:
        for clip, k, _ in listed[split]:
            for i in range(1, 7):
                write_jpeg(root / "rgb" / clip / f"frame_{i:05d}.jpg", frame_array(rng, k, n, wv))
            offset = (k - (n - 1) / 2) * 40.0
            for plane, sign in (("u", 1.0), ("v", -1.0)):
                count = 7 if (clip == short_v and plane == "v") else 8
                for i in range(1, count + 1):
                    level = 128 + sign * ((1 - wf) * offset + wf * rng.uniform(-40, 40))
                    grey = np.clip(level + rng.normal(0, 6, FRAME_HW), 0, 255).astype(np.uint8)
                    write_jpeg(root / "flow" / plane / clip / f"frame{i:06d}.jpg", grey)
    train = "".join(f"{cls}/{clip}.avi {k + 1}\r\n" for clip, k, cls in listed["train"])
    (lists_dir / "trainlist01.txt").write_bytes(train.encode())
    (lists_dir / "testlist01.txt").write_text("".join(f"{cls}/{clip}.avi\n"
                                                      for clip, _, cls in listed["test"]))
    facts = {"num_classes": n, "labels": {c: k for s in listed for c, k, _ in listed[s]},
             "listed": {s: [c for c, _, _ in listed[s]] for s in listed}, "short_v": short_v,
             "skipped": {"train": [], "test": []}, "expected_missing": []}
    overrides = {"dataset.root": str(root),
                 "dataset.options": {"image_size": IMAGE_SIZE, "cache_dir": _cache_dir(root)},
                 "model.encoders": {"flow": _resnet(2), "visual": _resnet(3)}, **SMOKE_TRAIN}
    return Miniature(overrides, root, facts)


# ---------------------------------------------------------------------------------------------
# UPMC FOOD-101
# ---------------------------------------------------------------------------------------------

FOOD_CLASSES = ("apple_pie", "pizza", "sushi")
FOOD_WORDS = {"apple_pie": ["apple", "pie", "cinnamon"], "pizza": ["pizza", "cheese", "oven"],
              "sushi": ["sushi", "rice", "salmon"]}
FOOD_COMMON = ["best", "easy", "recipe", "homemade", "the", "with", "and", "how", "to", "make",
               "blog", "my", "food", "dinner", "quick", "kitchen"]
FOOD_MARKERS = ["rt", "http", "https", "example", "com", "more", "id"]
"""In the vocabulary but never in a generated title: they appear only if cleaning failed."""
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_food101(root: Path, seed: int = 0, per_class: Mapping[str, int] | None = None,
                 weak: Mapping[str, float] | None = None, bert_weights: bool = True
                 ) -> Miniature:
    """`texts/{train,test}_titles.csv`, `images/<split>/<class>/<file>.jpg`, and `bert/` with a
    tiny `vocab.txt` (BERT specials + ~30 words; the tokenizer is built offline from it) and,
    with `bert_weights`, a tiny random BERT (`config.json`, weights) for the `bert` encoder.

    Edge cases: header row in the train CSV only; titles with a leading `RT `, a URL, `#tags`,
    an empty title, a title longer than 40 tokens; a train row whose image is missing
    (`facts["skipped"]["train"]`: deleted on purpose and declared in `expected_missing`, so it
    is skipped and named at INFO level).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {"train": 4, "test": 2, **(per_class or {})}
    wt, wv = _weak(weak, "text"), _weak(weak, "visual")
    all_words = [w for c in FOOD_CLASSES for w in FOOD_WORDS[c]] + FOOD_COMMON
    rows: dict[str, list[list[str]]] = {"train": [], "test": []}
    for split in rows:
        for k, cls in enumerate(FOOD_CLASSES):
            for j in range(counts[split]):
                file_name = f"{cls}_{split}_{j}.jpg"
                words = list(rng.choice(FOOD_COMMON, 3))
                own = FOOD_WORDS[cls] if rng.random() >= wt else FOOD_WORDS[FOOD_CLASSES[rng.integers(0, 3)]]
                words += list(rng.choice(own, 2))
                rows[split].append([file_name, " ".join(rng.permutation(words)), cls])
                write_jpeg(root / "images" / split / cls / file_name,
                           frame_array(rng, k, len(FOOD_CLASSES), wv, hw=(32, 32)))
    train = rows["train"]
    train[0][1] = "RT " + train[0][1]
    train[1][1] = train[1][1] + " http://example.com/recipe?id=1 more"
    train[2][1] = "#" + train[2][1].replace(" ", " #")
    train[3][1] = ""
    long_row = train[4]
    long_row[1] = " ".join([long_row[1]] * 12)
    missing_row = train[5]
    (root / "images" / "train" / missing_row[2] / missing_row[0]).unlink()
    (root / "texts").mkdir(parents=True, exist_ok=True)
    with open(root / "texts" / "train_titles.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Image_path", "text", "label"])
        writer.writerows(train)
    with open(root / "texts" / "test_titles.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows["test"])
    bert = root / "bert"
    bert.mkdir(parents=True, exist_ok=True)
    vocab = (BERT_SPECIALS + sorted(set(all_words)) + FOOD_MARKERS
             + ["#", ":", "/", ".", "?", "=", "1", "##s"])
    (bert / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab))
    if bert_weights:
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(seed)
        config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=32,
                            max_position_embeddings=64)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        BertModel(config).save_pretrained(str(bert))
    ids = {s: [f"{r[2]}/{r[0]}" for r in rows[s]] for s in rows}
    facts = {"num_classes": len(FOOD_CLASSES), "classes": list(FOOD_CLASSES),
             "labels": {f"{r[2]}/{r[0]}": FOOD_CLASSES.index(r[2]) for s in rows for r in rows[s]},
             "listed": ids, "rt": ids["train"][0], "url": ids["train"][1], "tags": ids["train"][2],
             "empty": ids["train"][3], "long": ids["train"][4],
             "skipped": {"train": [ids["train"][5]], "test": []},
             "expected_missing": [ids["train"][5]], "bert": str(bert),
             "titles": {f"{r[2]}/{r[0]}": r[1] for s in rows for r in rows[s]}}
    overrides = {"dataset.root": str(root),
                 "dataset.options": {"image_size": IMAGE_SIZE, "cache_dir": _cache_dir(root),
                                     "text_model_path": str(bert),
                                     "expected_missing": _declared(ids["train"][5])},
                 "model.encoders": {"text": {"type": "bert", "options": {"model_path": str(bert),
                                                                         "out_dim": 16}},
                                    "visual": _resnet(3)}, **SMOKE_TRAIN}
    return Miniature(overrides, root, facts)


# ---------------------------------------------------------------------------------------------
# CMU-MOSEI
# ---------------------------------------------------------------------------------------------

MOSEI_DIMS = {"text": 300, "audio": 74, "vision": 35}
MOSEI_LENGTHS = {"text": 5, "audio": 7, "vision": 6}
MOSEI_ALIGNED_LENGTH = 4


def _mosei_split(rng: np.random.Generator, n: int, lengths: Mapping[str, int],
                 weak: Mapping[str, float] | None, with_ids: bool, split: str) -> dict[str, Any]:
    scores = rng.uniform(-3, 3, n)
    scores[:3] = [-1.2, 0.0, 2.5]
    positive = (scores >= 0).astype(np.float64) * 2 - 1
    part: dict[str, Any] = {}
    for key, dim in MOSEI_DIMS.items():
        w = _weak(weak, "visual" if key == "vision" else key)
        x = rng.normal(0, 1, (n, lengths[key], dim))
        x[:, :, : max(8, dim // 4)] += ((1 - w) * 1.5 * positive)[:, None, None]
        part[key] = x
    part["audio"][0, 0, 0] = -np.inf
    part["audio"][1, 1, 1] = np.nan
    part["vision"][2, 0, 3] = np.nan
    part["labels"] = scores.reshape(n, 1, 1)
    if with_ids:
        part["id"] = np.array([[f"{split}vid{i}", str(i)] for i in range(n)])
    return part


def make_cmu_mosei(root: Path, seed: int = 0, per_split: Mapping[str, int] | None = None,
                   weak: Mapping[str, float] | None = None, with_ids: bool = True,
                   npy: bool = False) -> Miniature:
    """`mosei_senti_data_noalign.pkl` (and the aligned `mosei_senti_data.pkl`): `train`/`valid`/
    `test` dicts of float64 `text` (n, 5, 300), `audio` (n, 7, 74), `vision` (n, 6, 35),
    `labels` (n, 1, 1) and `id`.

    Edge cases: scores −1.2, 0.0 (→ 1) and 2.5; −inf and NaN in audio, a NaN in vision (→ 0);
    `with_ids=False` drops `id`; `npy=True` also writes the `<split>_*.npy` cache of prepare.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {"train": 8, "valid": 6, "test": 6, **(per_split or {})}
    unaligned = {s: _mosei_split(rng, n, MOSEI_LENGTHS, weak, with_ids, s) for s, n in sizes.items()}
    aligned_lengths = {k: MOSEI_ALIGNED_LENGTH for k in MOSEI_DIMS}
    aligned = {s: _mosei_split(rng, n, aligned_lengths, weak, with_ids, s) for s, n in sizes.items()}
    with open(root / "mosei_senti_data_noalign.pkl", "wb") as f:
        pickle.dump(unaligned, f, protocol=4)
    with open(root / "mosei_senti_data.pkl", "wb") as f:
        pickle.dump(aligned, f, protocol=2)
    if npy:
        for split, part in unaligned.items():
            for key, name in (("text", "text"), ("audio", "audio"), ("vision", "visual")):
                x = np.nan_to_num(part[key].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
                np.save(root / f"{split}_{name}.npy", x)
            np.save(root / f"{split}_labels.npy", part["labels"].astype(np.float32))
    facts = {"num_classes": 2, "sizes": sizes,
             "labels": {s: [0 if v < 0 else 1 for v in unaligned[s]["labels"].reshape(-1)]
                        for s in sizes},
             "lengths": {"audio": MOSEI_LENGTHS["audio"], "visual": MOSEI_LENGTHS["vision"],
                         "text": MOSEI_LENGTHS["text"]},
             "skipped": {"train": [], "test": []}, "expected_missing": []}
    transformer = {m: {"type": "transformer", "options": {"d_model": 16, "layers": 1, "heads": 2}}
                   for m in ("audio", "visual", "text")}
    overrides = {"dataset.root": str(root), "dataset.options": {}, "model.encoders": transformer,
                 **SMOKE_TRAIN}
    return Miniature(overrides, root, facts)
