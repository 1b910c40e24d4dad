"""The packed frame cache: its layout and manifest, its checks, and reading samples from it.

One job. Decoding JPEG frames (and unpickling or `torch.load`-ing spectrograms) for every
sample of every epoch is the bottleneck of a real run on a small machine, so `bbench prepare
DATASET --pack` (`bbench/prepare/pack.py`) decodes each split once into flat memory-mapped
files. This module defines where a pack lives and what is in it, opens the pack of a reader
(dataset option `pack`: auto / require / off), refuses an incomplete, stale or truncated pack
with one message naming the file and the command that rebuilds it, and hands the reader the
decoded arrays. The readers then apply their usual transforms to those arrays, exactly as to
freshly decoded files, so both paths give the same tensors for the same (seed, epoch, index).

What a pack holds is what a reader's decode step produces (`pack_content`): every frame of a
clip as uint8 (C, H, W) after the optional `frame_short_side` resize, every stored
spectrogram as float32 in its stored shape. Frame selection, crops, flips, resizing to
`image_size`, normalisation and the audio crop/pad all stay at load time, so one pack serves
any `image_size`, `frames_per_clip` or `audio_frames`; only `frame_short_side` (and the data
itself) changes the content, and it is part of the pack's key.

Layout of one pack, `<root>/.bbench_pack/<split>-<key>/`:

    build.json            written first: the key and the digest of the entry list (resume record)
    c00000.index.npy      int64 rows (entry, stream, offset, ndim, d0, d1, d2) of chunk 0's items
    c00000.<stream>.bin   chunk 0's items of one stream, raw C-order bytes, one after the other
    manifest.json         written last: the key, entry ids, per-stream source signatures, and
                          the size and sha256 of every chunk file

A pack is complete when `manifest.json` exists. Opening one compares every chunk file's size
with the manifest (a stat per file); `pack_verify=true` also re-hashes every file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence, TypeVar

import numpy as np
import torch

from bbench.data.errors import DataFormatError, MissingDataError, malformed
from bbench.data.index_cache import digest
from bbench.data.options import CommonOptions

log = logging.getLogger("bbench")

PACK_DIRNAME = ".bbench_pack"
FORMAT_VERSION = 1
"""Bumped whenever the layout of a pack changes; a pack of another version is rebuilt."""
BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.json"
FRAMES, ARRAY = "frames", "array"
STREAM_DTYPES: dict[str, np.dtype] = {FRAMES: np.dtype(np.uint8), ARRAY: np.dtype(np.float32)}
"""Item dtype of each stream kind: decoded frames are uint8, spectrograms float32."""
MANIFEST_KEYS = ("key", "streams", "ids", "signatures", "chunks")
"""What a manifest must hold to be read."""
INDEX_COLUMNS = 7
"""Columns of a chunk index row: entry, stream, offset (in items' elements), ndim, d0, d1, d2."""


class PackableReader(Protocol):
    """What a sample reader offers the pack: its streams, their source files, their decoding."""

    dataset: str
    ids: list[str]
    options: CommonOptions
    pack: Optional["Pack"]

    @property
    def pack_streams(self) -> dict[str, str]:
        """Stream name -> FRAMES or ARRAY, for the streams this reader reads."""
        ...

    def pack_sources(self, position: int) -> dict[str, list[Path]]:
        """The files each stream of a sample is decoded from (what its signature covers)."""
        ...

    def pack_content(self, position: int) -> dict[str, list[np.ndarray]]:
        """Each stream's decoded items of a sample, as the reader's decode step yields them."""
        ...


R = TypeVar("R", bound=PackableReader)


def pack_key(dataset: str, split: str, frame_short_side: Optional[int]) -> dict[str, Any]:
    """Everything that changes a pack's content, other than the data it was built from."""
    return {"format": FORMAT_VERSION, "dataset": dataset, "split": split,
            "frame_short_side": frame_short_side}


def pack_folder(root: Path, dataset: str, split: str, frame_short_side: Optional[int]) -> Path:
    """`<root>/.bbench_pack/<split>-<key digest>`: packs for other options live beside it."""
    return root / PACK_DIRNAME / f"{split}-{digest(pack_key(dataset, split, frame_short_side), 12)}"


def pack_command(dataset: str, root: Path, frame_short_side: Optional[int]) -> str:
    """The command that builds (or resumes, or rebuilds) the pack for these options."""
    size = f" --frame-short-side {frame_short_side}" if frame_short_side is not None else ""
    return f"python -m bbench prepare {dataset} --pack --data-root {root}{size}"


def source_signature(paths: Sequence[Path], root: Path) -> str:
    """A short digest of a sample's source files, named relative to the data root.

    Relative names keep a pack valid when the whole data folder moves; a file added,
    removed or renamed changes the signature (files rewritten in place under the same name
    do not: rebuild with `--overwrite` after that, as after editing a frame folder in place).
    """
    return digest([os.path.relpath(p, root) for p in paths], 16)


def signatures(reader: PackableReader, root: Path) -> dict[str, list[str]]:
    """Per stream, the source signature of every sample of the reader, in position order."""
    out: dict[str, list[str]] = {stream: [] for stream in reader.pack_streams}
    for position in range(len(reader.ids)):
        sources = reader.pack_sources(position)
        for stream in out:
            out[stream].append(source_signature(sources[stream], root))
    return out


def list_digest(ids: Sequence[str], sigs: Mapping[str, Sequence[str]],
                streams: Mapping[str, str]) -> str:
    """The digest of a pack's entry list: what `build.json` records to resume the right build."""
    return digest({"ids": list(ids), "signatures": {k: list(v) for k, v in sigs.items()},
                   "streams": dict(streams)}, 32)


def chunk_files(name: str, streams: Sequence[str]) -> list[str]:
    """The files of one chunk, the index last (it is committed last, after the stream files)."""
    return [f"{name}.{stream}.bin" for stream in streams] + [f"{name}.index.npy"]


def stored_array(value: Any, source: str, dataset: str) -> np.ndarray:
    """A stored spectrogram as a pack keeps it: float32, in its stored 2-D or 3-D shape.

    The conversion is the one `fit_audio` makes at load time, so both paths see the same
    values; a non-float array, which `fit_audio` refuses, is refused here already.
    """
    tensor = torch.as_tensor(value if isinstance(value, torch.Tensor) else np.asarray(value))
    if tensor.ndim not in (2, 3) or not tensor.is_floating_point():
        raise malformed(dataset, source, f"audio array has shape {tuple(tensor.shape)} and dtype "
                                         f"{tensor.dtype}; expected a float (T, F) or (1, T, F) "
                                         f"spectrogram")
    return tensor.to(torch.float32).contiguous().numpy()


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def read_manifest(path: Path, dataset: str, rebuild: str) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise DataFormatError(f"{dataset}: the pack manifest {path} cannot be read ({err}); "
                              f"rebuild the pack with `{rebuild} --overwrite`") from None
    return manifest


def check_files(folder: Path, manifest: Mapping[str, Any], dataset: str, rebuild: str,
                verify: bool) -> None:
    """Every chunk file present with the manifest's size (and, with `verify`, its sha256)."""
    for chunk in manifest["chunks"]:
        for name, facts in chunk["files"].items():
            path = folder / name
            try:
                size = path.stat().st_size
            except OSError:
                raise DataFormatError(f"{dataset}: pack file {path} is missing; the pack is "
                                      f"damaged: re-run `{rebuild}` to rebuild it") from None
            if size != facts["bytes"]:
                raise DataFormatError(f"{dataset}: pack file {path} has {size} bytes, its "
                                      f"manifest says {facts['bytes']}: it is truncated or was "
                                      f"replaced; re-run `{rebuild}` to rebuild it")
            if verify and file_sha256(path) != facts["sha256"]:
                raise DataFormatError(f"{dataset}: pack file {path} does not match the sha256 "
                                      f"in its manifest: it is damaged; re-run `{rebuild}` to "
                                      f"rebuild it")


class Pack:
    """The opened pack of one reader: reader position -> the decoded items of each stream.

    The chunk files are memory-mapped on first use in each process and never pickled, so a
    reader carrying a Pack goes to DataLoader workers (fork or spawn) as cheaply as before.
    """

    def __init__(self, folder: Path, streams: Sequence[str], kinds: Mapping[str, str],
                 chunks: Sequence[str], index: np.ndarray, entries: int,
                 entry_of: np.ndarray) -> None:
        self.folder = folder
        self.kinds = dict(kinds)
        self.chunks = list(chunks)
        self.entry_of = entry_of
        self._rows: dict[str, np.ndarray] = {}
        self._first: dict[str, np.ndarray] = {}
        for sid, stream in enumerate(streams):
            rows = index[index[:, 1] == sid]
            self._rows[stream] = rows
            self._first[stream] = np.searchsorted(rows[:, 0], np.arange(entries + 1))
        self._maps: dict[tuple[int, str], np.memmap] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def item(self, position: int, stream: str, k: int) -> np.ndarray:
        """A copy of the k-th item of a stream of the sample at `position` of the reader."""
        entry = int(self.entry_of[position])
        first = self._first[stream]
        start, stop = int(first[entry]), int(first[entry + 1])
        if not 0 <= k < stop - start:
            raise DataFormatError(f"pack {self.folder}: sample {entry} has {stop - start} "
                                  f"{stream} items, item {k} was asked for")
        _, _, offset, ndim, *dims = (int(v) for v in self._rows[stream][start + k][:INDEX_COLUMNS])
        chunk = int(self._rows[stream][start + k][INDEX_COLUMNS])
        shape = tuple(dims[:ndim])
        data = self._map(chunk, stream)
        return np.array(data[offset:offset + int(np.prod(shape))]).reshape(shape)

    def frame(self, position: int, stream: str, k: int) -> torch.Tensor:
        """The k-th decoded uint8 (C, H, W) frame of the sample, as the JPEG path decodes it."""
        return torch.from_numpy(self.item(position, stream, k))

    def _map(self, chunk: int, stream: str) -> np.memmap:
        key = (chunk, stream)
        if key not in self._maps:
            path = self.folder / f"{self.chunks[chunk]}.{stream}.bin"
            self._maps[key] = np.memmap(path, dtype=STREAM_DTYPES[self.kinds[stream]], mode="r")
        return self._maps[key]


def _load_index(folder: Path, chunks: Sequence[str]) -> np.ndarray:
    """All chunks' index rows, with the chunk number as an extra last column."""
    parts = []
    for c, name in enumerate(chunks):
        rows = np.load(folder / f"{name}.index.npy", allow_pickle=False)
        parts.append(np.concatenate([rows, np.full((len(rows), 1), c, dtype=np.int64)], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, INDEX_COLUMNS + 1), dtype=np.int64)


def _match(reader: PackableReader, manifest: Mapping[str, Any], root: Path, folder: Path,
           rebuild: str) -> tuple[np.ndarray, list[str]]:
    """The pack entry of every reader position, and the ids the pack does not hold.

    A sample whose source files differ from those the pack was built from is an error here.
    """
    where = {sample_id: e for e, sample_id in enumerate(manifest["ids"])}
    stored = manifest["signatures"]
    absent_streams = [s for s in reader.pack_streams if s not in stored]
    if absent_streams:
        raise DataFormatError(f"{reader.dataset}: the pack {folder} holds no "
                              f"{', '.join(absent_streams)} (built for other modalities); re-run "
                              f"`{rebuild}` to rebuild it")
    current = signatures(reader, root)
    entry_of = np.zeros(len(reader.ids), dtype=np.int64)
    absent: list[str] = []
    for position, sample_id in enumerate(reader.ids):
        entry = where.get(sample_id)
        if entry is None:
            absent.append(sample_id)
            continue
        changed = [s for s in current if stored[s][entry] != current[s][position]]
        if changed:
            raise DataFormatError(f"{reader.dataset}: the pack {folder} is stale: the "
                                  f"{'/'.join(changed)} files of {sample_id} are not those it was "
                                  f"built from; re-run `{rebuild}` to update it, or set "
                                  f"dataset.options.pack=off")
        entry_of[position] = entry
    return entry_of, absent


def open_pack(reader: PackableReader, root: Path, split: str) -> Optional[Pack]:
    """The reader's pack per its `pack` option, or None to read the image files; logs which."""
    opts = reader.options
    if opts.pack == "off":
        log.info("%s %s: reading the image files (dataset.options.pack=off)", reader.dataset, split)
        return None
    if not reader.pack_streams:
        return None  # none of the selected modalities is packed (FOOD-101 text alone)
    folder = pack_folder(root, reader.dataset, split, opts.frame_short_side)
    rebuild = pack_command(reader.dataset, root, opts.frame_short_side)
    if not folder.is_dir():
        if opts.pack == "require":
            raise MissingDataError(f"{reader.dataset} {split}: no pack for frame_short_side="
                                   f"{opts.frame_short_side} at {folder} (dataset.options.pack="
                                   f"require); build it with `{rebuild}`")
        log.info("%s %s: reading the image files (no pack at %s)", reader.dataset, split, folder)
        return None
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataFormatError(f"{reader.dataset} {split}: the pack {folder} is incomplete (its "
                              f"{MANIFEST_FILE} is missing: an interrupted `prepare --pack`?); "
                              f"re-run `{rebuild}` to finish it, or set dataset.options.pack=off")
    manifest = read_manifest(manifest_path, reader.dataset, rebuild)
    lacking = [k for k in MANIFEST_KEYS if k not in manifest]
    if lacking:
        raise DataFormatError(f"{reader.dataset}: the pack manifest {manifest_path} lacks "
                              f"{', '.join(lacking)}; rebuild the pack with `{rebuild} --overwrite`")
    key = pack_key(reader.dataset, split, opts.frame_short_side)
    if manifest.get("key") != key:
        raise DataFormatError(f"{reader.dataset} {split}: the pack {folder} was built for "
                              f"{manifest.get('key')}, not {key}; re-run `{rebuild} --overwrite`")
    check_files(folder, manifest, reader.dataset, rebuild, opts.pack_verify)
    entry_of, absent = _match(reader, manifest, root, folder, rebuild)
    if absent:
        if set(reader.pack_streams) < set(manifest["streams"]):
            # the pack holds the samples usable with all of its streams; a run on fewer
            # modalities may use more samples (one whose audio is missing, for a visual run)
            why = (f"the pack {folder} holds the samples usable with all of "
                   f"{', '.join(manifest['streams'])}, and this selection of "
                   f"{', '.join(reader.pack_streams)} also uses {len(absent)} other(s), e.g. "
                   f"{absent[0]}")
            if opts.pack == "require":
                raise DataFormatError(f"{reader.dataset} {split}: {why}; set "
                                      f"dataset.options.pack=auto or off for this selection")
            log.info("%s %s: reading the image files: %s", reader.dataset, split, why)
            return None
        raise DataFormatError(f"{reader.dataset}: the pack {folder} is stale: {len(absent)} of "
                              f"{len(reader.ids)} samples are not in it, e.g. {absent[0]}; re-run "
                              f"`{rebuild}` to update it, or set dataset.options.pack=off")
    chunks = [c["name"] for c in manifest["chunks"]]
    streams = list(manifest["streams"])
    pack = Pack(folder, streams, manifest["streams"], chunks, _load_index(folder, chunks),
                len(manifest["ids"]), entry_of)
    log.info("%s %s: reading the pack %s (%d samples)", reader.dataset, split, folder,
             len(reader.ids))
    return pack


def with_pack(reader: R, root: Path, split: str) -> R:
    """The reader, reading its pack when `open_pack` finds one for its options."""
    reader.pack = open_pack(reader, root, split)
    return reader
