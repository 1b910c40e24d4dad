"""UPMC FOOD-101 (`food101`): 101 dishes, web-page title + image (datasets.md §2.6).

The CSVs are read by position (image file, title, class) with a real CSV reader, dropping a
header row if present. Titles are cleaned (§3.7) and tokenised once per split with a local
BERT WordPiece tokenizer (`text_model_path`: a folder with vocab.txt, or the file itself; never
downloaded) into `text` = (2, 40) int64: row 0 input ids, row 1 attention mask. A token cache
written by `bbench prepare food101` (`texts/<split>_tokens.npz`) is used when its vocabulary
hash matches. Val is the seeded 10% carve-out of the usable train rows.
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from bbench.config.fields import SpecError, param
from bbench.config.specs import DatasetSpec
from bbench.data.base import DataInfo, DataModule
from bbench.data.errors import DataFormatError, MissingDataError, malformed, missing
from bbench.data.file_splits import carve_and_assemble
from bbench.data.options import CommonOptions, data_path, dataset_root
from bbench.data.pack import FRAMES, Pack, Source, with_pack
from bbench.data.reading import decode_image
from bbench.data.registry import DatasetEntry, register_dataset, resolve_modalities
from bbench.data.skips import SkipReport
from bbench.data.transforms import fit_short_side, resize_exact

NAME = "food101"
MODALITIES = ("text", "visual")
NUM_CLASSES = 101
TEXT_LENGTH = 40
HEADER_WORDS = ("Image_path", "image_path", "filename")
ROTATION_DEGREES = 30.0

LAYOUT = """<root>/                              [targ_dir]
  texts/train_titles.csv             "<image file>,<title>,<class>" (header row optional)
  texts/test_titles.csv
  images/train/<class>/<image file>  JPEG images; classes = the folders of images/train
  images/test/<class>/<image file>
  (texts/<split>_tokens.npz          optional token cache written by `bbench prepare food101`)"""


@dataclass(frozen=True)
class Food101Options(CommonOptions):
    """FOOD-101 options. `text_model_path` is the local BERT (bert-base-uncased) folder or its
    vocab.txt; relative paths are taken from the working directory, like the encoder's."""

    text_model_path: Optional[str] = param(None, doc="local BERT folder (vocab.txt) or vocab file")
    tokenizer_path: Optional[str] = param(None, doc="tokenizer folder/vocab if not text_model_path")
    text_length: int = param(TEXT_LENGTH, ge=2, doc="tokens per title incl. [CLS]/[SEP]")
    train_csv: Optional[str] = None
    test_csv: Optional[str] = None
    images_dir: Optional[str] = None
    targ_dir: Optional[str] = param(None, doc="BalanceMM alias of dataset.root")


@dataclass(frozen=True)
class Row:
    row: int  # position among the CSV's data rows (token-cache order)
    image: str
    text: str
    label_name: str


def clean_title(text: str) -> str:
    """§3.7: drop a leading 'RT ', everything from http(s):// to the end of the line, every '#'."""
    text = re.sub(r"^RT\s+", "", text)
    text = re.sub(r"https?://[^\n]*", "", text)
    return text.replace("#", "")


def read_titles(path: Path) -> list[Row]:
    """Rows of a title CSV, by position; a header row is dropped; missing text = ''."""
    if not path.is_file():
        raise missing(NAME, "title CSV", path, LAYOUT)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            records = list(csv.reader(f))
    except UnicodeDecodeError:
        with open(path, encoding="latin-1", newline="") as f:
            records = list(csv.reader(f))
    except csv.Error as err:
        raise malformed(NAME, path, f"not a readable CSV ({err})") from None
    if records and records[0] and records[0][0].strip() in HEADER_WORDS:
        records = records[1:]
    rows: list[Row] = []
    for n, fields in enumerate(records):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) < 2:
            raise DataFormatError(f"{NAME}: {path}: row {n + 1} {fields!r} needs image file, "
                                  f"title and class")
        text = ",".join(fields[1:-1]) if len(fields) > 2 else ""
        rows.append(Row(len(rows), fields[0].strip(), text, fields[-1].strip()))
    return rows


def vocab_file(path: Path) -> Path:
    return path / "vocab.txt" if path.is_dir() else path


def load_tokenizer(path: Path) -> Any:
    """A BERT WordPiece tokenizer from a local folder or vocab.txt (no download, ever)."""
    vocab = vocab_file(path)
    if not vocab.is_file():
        raise MissingDataError(f"{NAME}: BERT vocabulary not found: {vocab}; set "
                               f"dataset.options.text_model_path to a local bert-base-uncased "
                               f"folder (with vocab.txt) or to the vocab file itself; bbench never "
                               f"downloads it")
    try:
        from transformers import BertTokenizer
    except ImportError:
        raise DataFormatError(f"{NAME}: tokenising titles needs the `transformers` package: "
                              f"pip install transformers") from None
    if path.is_dir():
        return BertTokenizer.from_pretrained(str(path), local_files_only=True)
    key = "vocab_file" if "vocab_file" in inspect.signature(BertTokenizer.__init__).parameters \
        else "vocab"
    return BertTokenizer(**{key: str(vocab)}, do_lower_case=True)


def tokenize(tokenizer: Any, texts: Sequence[str], length: int) -> np.ndarray:
    """(N, 2, length) int64: input ids and attention mask, padded/truncated to `length`."""
    if not texts:
        return np.zeros((0, 2, length), dtype=np.int64)
    enc = tokenizer([clean_title(t) for t in texts], padding="max_length", truncation=True,
                    max_length=length)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    return np.stack([ids, mask], axis=1)


def cached_tokens(root: Path, split: str, vocab: Path, n_rows: int, length: int
                  ) -> Optional[np.ndarray]:
    """The prepare tool's token cache for a split, if it exists and matches the vocabulary."""
    path = root / "texts" / f"{split}_tokens.npz"
    if not path.is_file():
        return None
    digest = hashlib.sha256(vocab.read_bytes()).hexdigest()
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = str(data["vocab_sha256"]) if "vocab_sha256" in data else ""
            ids, mask = data["input_ids"], data["attention_mask"]
    except Exception:  # noqa: BLE001 - an unreadable cache is just not used
        return None
    if stored != digest or ids.shape != (n_rows, length) or mask.shape != ids.shape:
        return None
    return np.stack([ids, mask], axis=1).astype(np.int64)


class Food101Reader:
    """Samples of title + image rows: tokens from the cache, the image from JPEG or the pack."""

    def __init__(self, records: list[tuple[str, int, Path]], tokens: Optional[np.ndarray],
                 modalities: tuple[str, ...], options: Food101Options) -> None:
        self.dataset = NAME
        self.records = records
        self.ids = [r[0] for r in records]
        self.labels = [r[1] for r in records]
        self.tokens = torch.from_numpy(tokens) if tokens is not None else None
        self.modalities = modalities
        self.options = options
        self.pack: Optional[Pack] = None

    def load(self, position: int, rng: Optional[np.random.Generator],
             warn: Callable[[str, str], None]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "text" in self.modalities and self.tokens is not None:
            out["text"] = self.tokens[position].clone()
        if "visual" in self.modalities:
            image = (self.pack.frame(position, "visual", 0) if self.pack is not None
                     else self._decode(position))
            size = self.options.image_size
            if rng is not None:  # RandomRotation(±30°, black fill) → resize → flip
                angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
                image = TF.rotate(image, angle, interpolation=InterpolationMode.NEAREST, fill=0)
                image = resize_exact(image, size)
                if rng.random() < 0.5:
                    image = image.flip(-1)
            else:
                image = resize_exact(image, size)
            out["visual"] = image.unsqueeze(0)  # uint8: normalised by move_batch
        return out

    def _decode(self, position: int) -> torch.Tensor:
        """The row's image from its file, at the stored resolution (`frame_short_side`)."""
        path = self.records[position][2]
        return fit_short_side(decode_image(path, str(path), "RGB", NAME),
                              self.options.frame_short_side)

    @property
    def pack_streams(self) -> dict[str, str]:
        """The pack's stream of this reader: the image, when visual is selected (titles have
        their own token cache)."""
        return {"visual": FRAMES} if "visual" in self.modalities else {}

    def pack_sources(self, position: int) -> dict[str, Source]:
        """The row's image file (stamped)."""
        path = self.records[position][2]
        return {s: Source(path.parent, (path.name,), 1, stamped=True) for s in self.pack_streams}

    def pack_content(self, position: int) -> dict[str, list[np.ndarray]]:
        """The row's image, decoded as `load` decodes it."""
        return {s: [self._decode(position).numpy()] for s in self.pack_streams}

    def pack_subset(self, positions: Sequence[int]) -> "Food101Reader":
        """A reader of the rows at `positions` only: what one chunk's build job pickles."""
        tokens = self.tokens[list(positions)].numpy() if self.tokens is not None else None
        return Food101Reader([self.records[p] for p in positions], tokens, self.modalities,
                             self.options)


def build_food101(spec: DatasetSpec, options: Food101Options) -> DataModule:
    owner = f"dataset {NAME}"
    modalities = resolve_modalities(ENTRY, spec.modalities)
    root = dataset_root(NAME, spec.root, LAYOUT, options.targ_dir)
    images = data_path(root, options.images_dir, "images")
    csvs = {"train": data_path(root, options.train_csv, "texts/train_titles.csv"),
            "test": data_path(root, options.test_csv, "texts/test_titles.csv")}
    train_images = images / "train"
    if not train_images.is_dir():
        raise missing(NAME, "image folder", train_images, LAYOUT)
    classes = sorted(e.name for e in os.scandir(train_images) if e.is_dir())
    if not classes:
        raise malformed(NAME, train_images, "holds no class folders")
    label_of = {name: k for k, name in enumerate(classes)}
    tokenizer, vocab = None, None
    if "text" in modalities:
        model_path = options.tokenizer_path or options.text_model_path
        if not model_path:
            raise SpecError(f"{owner}: the text modality needs a local BERT tokenizer: set "
                            f"dataset.options.text_model_path=DIR (a bert-base-uncased folder "
                            f"with vocab.txt); bbench never downloads it")
        model_dir = Path(os.path.expanduser(model_path))
        vocab = vocab_file(model_dir)
        tokenizer = load_tokenizer(model_dir)
    readers, reports = {}, {}
    for split, csv_path in csvs.items():
        rows = read_titles(csv_path)
        report = SkipReport(NAME, split, listed=len(rows),
                            expected=frozenset(options.expected_missing))
        usable: list[Row] = []
        seen: set[str] = set()
        for row in rows:
            sample_id = f"{row.label_name}/{row.image}"
            if row.label_name not in label_of:
                if split == "test":
                    raise DataFormatError(f"{NAME}: {csv_path}: row {row.row + 1} has class "
                                          f"{row.label_name!r}, which has no folder in "
                                          f"{train_images}")
                report.skip(sample_id, f"unknown class {row.label_name!r}")
            elif sample_id in seen:
                report.skip(sample_id, "listed twice")
            elif "visual" in modalities and not (images / split / row.label_name / row.image).is_file():
                report.skip(sample_id, f"no image {images / split / row.label_name / row.image}")
            else:
                seen.add(sample_id)
                usable.append(row)
        tokens = None
        if tokenizer is not None and vocab is not None:
            cached = cached_tokens(root, split, vocab, len(rows), options.text_length)
            tokens = (cached[[r.row for r in usable]] if cached is not None
                      else tokenize(tokenizer, [r.text for r in usable], options.text_length))
        records = [(f"{r.label_name}/{r.image}", label_of[r.label_name],
                    images / split / r.label_name / r.image) for r in usable]
        readers[split] = with_pack(Food101Reader(records, tokens, modalities, options), root,
                                   split)
        reports[split] = report
    size = options.image_size
    shapes = {"text": (2, options.text_length), "visual": (1, 3, size, size)}
    dtypes = {"text": torch.int64, "visual": torch.float32}
    info = DataInfo(name=NAME, modalities=modalities, num_classes=len(classes),
                    input_shapes={m: shapes[m] for m in modalities},
                    input_dtypes={m: dtypes[m] for m in modalities})
    return carve_and_assemble(info, spec.split_seed, options, readers["train"], readers["test"],
                              reports, LAYOUT, [str(root.resolve()), str(csvs["train"])])


ENTRY = register_dataset(DatasetEntry(
    name=NAME, build=build_food101, options=Food101Options, modalities=MODALITIES,
    available_modalities=MODALITIES, num_classes=NUM_CLASSES,
    description="UPMC FOOD-101: BERT-tokenised page title + image, 101 classes",
    preset=NAME, info_text=lambda: f"expected layout:\n{LAYOUT}"),
    aliases=("UPMC-Food101",))  # "FOOD101" matches case-insensitively
