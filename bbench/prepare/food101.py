"""UPMC FOOD-101 (datasets.md §3.7): validate the circulated layout, write the token cache.

The raw copy already has the §2.6 layout. `prepare food101` checks it (title CSVs, class
folders, images present, unknown classes, empty titles), and with `--tokenizer PATH` (a local
bert-base-uncased folder with vocab.txt, or the vocab file) writes `texts/<split>_tokens.npz`:
`input_ids` and `attention_mask` int32 (N, 40) in CSV row order plus `vocab_sha256`, the
SHA-256 of the vocabulary file. Cleaning and tokenisation are the loader's own functions
(`bbench.data.food101`), so the cache equals what the loader would compute.

When --out differs from --raw, the output folder gets copies of the CSVs, the token caches,
and a symbolic link `images` → the raw images (nothing large is copied).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from bbench.prepare.core import PrepareError, PrepareReport, copy_file

TEXT_LENGTH = 40


def _token_cache_current(path: Path, digest: str, n_rows: int, length: int) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return (str(data["vocab_sha256"]) == digest and data["input_ids"].shape == (n_rows, length)
                    and data["attention_mask"].shape == (n_rows, length))
    except Exception:  # noqa: BLE001 - unreadable means: write it again
        return False


def write_token_cache(path: Path, ids: np.ndarray, mask: np.ndarray, digest: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
             vocab_sha256=np.array(digest))
    os.replace(tmp, path)


def prepare_food101(raw: Path, out: Path, opts: Any, report: PrepareReport) -> None:
    from bbench.data import food101 as loader

    texts, images = raw / "texts", raw / "images"
    for needed in (texts / "train_titles.csv", texts / "test_titles.csv", images / "train"):
        if not needed.exists():
            raise PrepareError(f"food101: {needed} is missing; expected the UPMC FOOD-101 layout:\n"
                               f"{loader.LAYOUT}")
    classes = sorted(e.name for e in os.scandir(images / "train") if e.is_dir())
    report.parameters.update(classes=len(classes), text_length=TEXT_LENGTH)
    if len(classes) != loader.NUM_CLASSES:
        report.notes.append(f"images/train has {len(classes)} class folders (UPMC FOOD-101 has "
                            f"{loader.NUM_CLASSES})")
    known = set(classes)
    tokenizer, digest = None, None
    if opts.tokenizer:
        tok_path = Path(opts.tokenizer).expanduser()
        vocab = loader.vocab_file(tok_path)
        if not vocab.is_file():
            raise PrepareError(f"food101: --tokenizer {str(tok_path)!r}: no vocabulary file "
                               f"{vocab} (give a local bert-base-uncased folder or its vocab.txt)")
        tokenizer = loader.load_tokenizer(tok_path)
        digest = hashlib.sha256(vocab.read_bytes()).hexdigest()
        report.parameters.update(tokenizer=str(tok_path), vocab_sha256=digest)
    else:
        report.skipped.append(("token cache (texts/<split>_tokens.npz)",
                               "no --tokenizer given; the loader tokenises at start instead"))
    separate = out.resolve() != raw.resolve()
    for split in ("train", "test"):
        if opts.only not in (None, split):
            continue
        csv_path = texts / f"{split}_titles.csv"
        rows = loader.read_titles(csv_path)
        empty = sum(1 for r in rows if not loader.clean_title(r.text).strip())
        for r in rows:
            report.count(split, "listed")
            if r.label_name not in known:
                report.count(split, "failed")
                report.failures.append((split, f"{r.label_name}/{r.image}",
                                        f"class {r.label_name!r} has no folder in images/train"))
            elif not (images / split / r.label_name / r.image).is_file():
                report.count(split, "failed")
                report.failures.append((split, f"{r.label_name}/{r.image}",
                                        f"image missing: images/{split}/{r.label_name}/{r.image}"))
            else:
                report.count(split, "existing")
        if empty:
            report.notes.append(f"{split}: {empty} title(s) are empty after cleaning (kept: the "
                                "text input is then [CLS] [SEP])")
        if separate:
            copy_file(csv_path, out / "texts" / csv_path.name, overwrite=opts.overwrite)
        if tokenizer is not None and digest is not None:
            cache = out / "texts" / f"{split}_tokens.npz"
            if not opts.overwrite and _token_cache_current(cache, digest, len(rows), TEXT_LENGTH):
                report.notes.append(f"{split}: token cache {cache.name} is current (skipped)")
            else:
                tokens = loader.tokenize(tokenizer, [r.text for r in rows], TEXT_LENGTH)
                write_token_cache(cache, tokens[:, 0], tokens[:, 1], digest)
                report.notes.append(f"{split}: wrote {cache.relative_to(out)} ({len(rows)} rows)")
    if separate:
        link = out / "images"
        if not link.exists():
            link.symlink_to(images.resolve(), target_is_directory=True)
            report.notes.append(f"{link} links to the raw images (nothing copied)")
