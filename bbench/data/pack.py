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
clip as uint8 after the optional `frame_short_side` resize, stored as its (H, W, C) bytes
(`stored_item`: channels-last, the order the decoder gives and the one the resize's uint8
fast path reads) and read back as a (C, H, W) view of them, every stored spectrogram as
float32 in its stored shape. Frame selection, crops, flips, resizing to
`image_size`, normalisation and the audio crop/pad all stay at load time, so one pack serves
any `image_size`, `frames_per_clip` or `audio_frames`; only `frame_short_side` (and the data
itself) changes the content, and it is part of the pack's key.

Layout of one pack, `<root>/.bbench_pack/<split>-<key>/`:

    build.json            written first: the key and the digest of the entry list (resume record)
    c00000.index.npy      int64 rows (entry, stream, offset, ndim, d0, d1, d2) of chunk 0's items
    c00000.<stream>.bin   chunk 0's items of one stream, raw C-order bytes, one after the other
    manifest.json         written last: the key, entry ids, per-stream source signatures, the
                          size and sha256 of every chunk file, the decoder versions

A pack is complete when `manifest.json` exists. Opening one checks the manifest's structure,
compares every chunk file's size with it (a stat per file; `pack_verify=true` also re-hashes
every file), each sample's source signature (its folder and file names, and the size and
mtime of a single-file source: one stat per sample) and each sample's item count with the
data's. A process keeps at most MAX_OPEN_MAPS chunk files mapped.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence, TypeVar

import numpy as np
import torch

from bbench.data.errors import DataFormatError, MissingDataError, malformed
from bbench.data.index_cache import digest
from bbench.data.options import CommonOptions
from bbench.data.transforms import (clip_train_crop, crop_box, resize_and_flip, resize_exact,
                                    resized_crop_box, stack_frames)
from bbench.results.files import MalformedFileError, read_json

log = logging.getLogger("bbench")

PACK_DIRNAME = ".bbench_pack"
FORMAT_VERSION = 3
"""Bumped whenever the layout of a pack or its signatures change; a pack of another version is
rebuilt (2: signatures cover the size and mtime of single-file sources; 3: frames stored as
(H, W, C))."""
BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.json"
FRAMES, ARRAY = "frames", "array"
STREAM_DTYPES: dict[str, np.dtype] = {FRAMES: np.dtype(np.uint8), ARRAY: np.dtype(np.float32)}
"""Item dtype of each stream kind: decoded frames are uint8, spectrograms float32."""
MANIFEST_KEYS = ("key", "streams", "ids", "signatures", "chunks")
"""What a manifest must hold to be read."""
INDEX_COLUMNS = 7
"""Columns of a chunk index row: entry, stream, offset (in items' elements), ndim, d0, d1, d2."""
MAX_OPEN_MAPS = 128
"""Chunk files one process keeps memory-mapped; the least recently used beyond it is closed
(each map holds a file descriptor, and a large split has thousands of chunk files)."""


@dataclass(frozen=True)
class Source:
    """The files one stream of a sample is decoded from, and how many items it yields.

    `names` are file names inside `folder`; a frame folder's signature covers the folder and
    its names (a stat per frame would make opening a large split slow), a single-file source
    (`stamped`: an audio file, an HDF5 file, an image) also its size and modification time,
    so a file rewritten in place under the same name makes the pack stale.
    """

    folder: Path
    names: Sequence[str]
    count: int
    stamped: bool = False


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

    def pack_sources(self, position: int) -> dict[str, Source]:
        """The files each stream of a sample is decoded from (what its signature covers)."""
        ...

    def pack_content(self, position: int) -> dict[str, list[np.ndarray]]:
        """Each stream's decoded items of a sample, as the reader's decode step yields them."""
        ...

    def pack_subset(self, positions: Sequence[int]) -> "PackableReader":
        """A reader of the samples at `positions` only (what one chunk's build job carries)."""
        ...


R = TypeVar("R", bound=PackableReader)


def stored_item(kind: str, item: np.ndarray) -> np.ndarray:
    """An item as a pack stores it: a frame's (C, H, W) as (H, W, C) (no copy when it is a
    view of decoded (H, W, C) memory, as `reading.decode_image` gives), an array as it is."""
    return np.moveaxis(item, 0, -1) if kind == FRAMES else item


def clip_streams(modalities: Sequence[str]) -> dict[str, str]:
    """The pack streams of an audio + frames reader: frames for visual, arrays for audio."""
    return {m: FRAMES if m == "visual" else ARRAY for m in modalities}


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


def decoder_versions() -> dict[str, str]:
    """The versions of the libraries that decode and resize frames: a pack records those it was
    built with, since another Pillow or torchvision may decode or resize a frame differently."""
    import PIL
    import torchvision

    return {"Pillow": PIL.__version__, "torchvision": torchvision.__version__}


def source_signature(source: Source, root: Path) -> str:
    """A short digest of a sample's source files, the folder named relative to the data root.

    Relative names keep a pack valid when the whole data folder moves (a move keeps the files'
    modification times); a file added, removed or renamed changes the signature, and so does a
    single-file source rewritten in place. Frames rewritten in place under the same names are
    not seen: rebuild with `--overwrite` after editing a frame folder in place.
    """
    stamps: list[int] = []
    if source.stamped:
        for name in source.names:
            try:
                facts = os.stat(source.folder / name)
                stamps += [facts.st_size, facts.st_mtime_ns]
            except OSError:
                stamps += [-1, -1]
    return digest([os.path.relpath(source.folder, root), *source.names, *stamps], 16)


def signatures(reader: PackableReader, root: Path
               ) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Per stream, the source signature and the item count of every sample, in position order."""
    streams = list(reader.pack_streams)
    sigs: dict[str, list[str]] = {stream: [] for stream in streams}
    counts = {stream: np.zeros(len(reader.ids), dtype=np.int64) for stream in streams}
    for position in range(len(reader.ids)):
        sources = reader.pack_sources(position)
        for stream in streams:
            sigs[stream].append(source_signature(sources[stream], root))
            counts[stream][position] = sources[stream].count
    return sigs, counts


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
    """The hex sha256 of a file, read in 4 MiB blocks (chunk files are too large to read whole)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def manifest_problem(manifest: Any) -> Optional[str]:
    """What makes a parsed manifest unusable (None: nothing), so that a hand-edited or foreign
    manifest is one message instead of a KeyError deep in the checks."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    lacking = [k for k in MANIFEST_KEYS if k not in manifest]
    if lacking:
        return f"it lacks {', '.join(lacking)}"
    ids, streams, sigs, chunks = (manifest[k] for k in ("ids", "streams", "signatures", "chunks"))
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return "'ids' is not a list of sample ids"
    if not isinstance(streams, dict) or not all(v in STREAM_DTYPES for v in streams.values()):
        return f"'streams' does not map stream names to {' or '.join(STREAM_DTYPES)}"
    if not isinstance(sigs, dict) or any(not isinstance(sigs.get(s), list)
                                         or len(sigs[s]) != len(ids) for s in streams):
        return "'signatures' does not hold one signature per id for every stream"
    if not isinstance(chunks, list):
        return "'chunks' is not a list"
    for chunk in chunks:
        files = chunk.get("files") if isinstance(chunk, dict) else None
        if (not isinstance(files, dict) or not isinstance(chunk.get("name"), str)
                or not all(isinstance(f, dict) and isinstance(f.get("bytes"), int)
                           and isinstance(f.get("sha256"), str) for f in files.values())):
            return "a chunk lacks its name or the bytes and sha256 of its files"
    return None


def read_manifest(path: Path, dataset: str, rebuild: str) -> dict[str, Any]:
    """The parsed `manifest.json`, or one DataFormatError naming the file and the rebuild."""
    try:
        manifest = read_json(path, "pack manifest")
        problem = manifest_problem(manifest)
    except (OSError, MalformedFileError) as err:
        problem = str(err)
    if problem is not None:
        raise DataFormatError(f"{dataset}: the pack manifest {path} cannot be read ({problem}); "
                              f"rebuild the pack with `{rebuild} --overwrite`")
    return manifest


def file_problems(folder: Path, manifest: Mapping[str, Any], verify: bool
                  ) -> Iterator[tuple[str, Path, str]]:
    """(chunk, file, what is wrong) for every chunk file that is missing, has another size than
    the manifest's or (with `verify`) another sha256: the one check behind opening a pack
    (the first problem is an error) and re-running `prepare --pack` (each bad chunk rebuilt)."""
    for chunk in manifest["chunks"]:
        for name, facts in chunk["files"].items():
            path = folder / name
            try:
                size = path.stat().st_size
            except OSError:
                yield chunk["name"], path, "is missing"
                continue
            if size != facts["bytes"]:
                yield chunk["name"], path, (f"has {size} bytes, its manifest says "
                                            f"{facts['bytes']}: it is truncated or was replaced")
            elif verify and file_sha256(path) != facts["sha256"]:
                yield chunk["name"], path, "does not match the sha256 in its manifest"


def check_files(folder: Path, manifest: Mapping[str, Any], dataset: str, rebuild: str,
                verify: bool) -> None:
    """Every chunk file present with the manifest's size (and, with `verify`, its sha256)."""
    for _, path, problem in file_problems(folder, manifest, verify):
        raise DataFormatError(f"{dataset}: pack file {path} {problem}; the pack is damaged: "
                              f"re-run `{rebuild}` to rebuild it")


class Pack:
    """The opened pack of one reader: reader position -> the decoded items of each stream.

    The chunk files are memory-mapped on first use in each process, at most MAX_OPEN_MAPS at
    a time, and never pickled, so a reader carrying a Pack goes to DataLoader workers (fork
    or spawn) as cheaply as before.
    """

    def __init__(self, folder: Path, streams: Sequence[str], kinds: Mapping[str, str],
                 chunks: Sequence[str], index: np.ndarray, ids: Sequence[str],
                 entry_of: np.ndarray) -> None:
        self.folder = folder
        self.kinds = dict(kinds)
        self.chunks = list(chunks)
        self.ids = list(ids)
        self.entry_of = entry_of
        self._rows: dict[str, np.ndarray] = {}
        self._first: dict[str, np.ndarray] = {}
        for sid, stream in enumerate(streams):
            rows = index[index[:, 1] == sid]
            self._rows[stream] = rows
            self._first[stream] = np.searchsorted(rows[:, 0], np.arange(len(self.ids) + 1))
        self._maps: OrderedDict[tuple[int, str], np.memmap] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = OrderedDict()
        return state

    def counts(self, stream: str) -> np.ndarray:
        """The number of items of `stream` the pack holds for each reader position."""
        return np.diff(self._first[stream])[self.entry_of]

    def _where(self, position: int, stream: str, k: int) -> tuple[np.memmap, int, tuple[int, ...]]:
        """The chunk map, element offset and shape of item k of a stream of a sample."""
        entry = int(self.entry_of[position])
        first = self._first[stream]
        start, stop = int(first[entry]), int(first[entry + 1])
        if not 0 <= k < stop - start:
            raise DataFormatError(f"pack {self.folder}: sample {self.ids[entry]} has "
                                  f"{stop - start} {stream} items, item {k} was asked for")
        row = self._rows[stream][start + k]
        offset, ndim = int(row[2]), int(row[3])
        return self._map(int(row[INDEX_COLUMNS]), stream), offset, tuple(int(d) for d in row[4:4 + ndim])

    def item(self, position: int, stream: str, k: int) -> np.ndarray:
        """A copy of the k-th item of a stream of the sample at `position` of the reader."""
        data, offset, shape = self._where(position, stream, k)
        return np.array(data[offset:offset + int(np.prod(shape))]).reshape(shape)

    def frame(self, position: int, stream: str, k: int) -> torch.Tensor:
        """The k-th decoded uint8 (C, H, W) frame of the sample, as the JPEG path decodes it
        (a view of (H, W, C) memory)."""
        return torch.from_numpy(self.item(position, stream, k)).permute(2, 0, 1)

    def frames(self, position: int, stream: str, picks: Sequence[int]) -> torch.Tensor:
        """Frames `picks` of the sample as (T, C, H, W), what `stack_frames` makes of them.

        Frames of one shape (the rule) are copied straight from the map into one tensor;
        a clip with frames of several sizes goes through `stack_frames`, which resizes them.
        """
        return self._read_frames(position, stream, picks, None)

    def train_crop(self, position: int, stream: str, picks: Sequence[int], size: int,
                   rng: np.random.Generator) -> torch.Tensor:
        """`clip_train_crop(self.frames(position, stream, picks), size, rng)`, the same draws and
        values, reading only the crop box from the map: the box is drawn from the frames' size
        (the first pick's, as `stack_frames` sizes a clip), before anything is read."""
        _, _, shape = self._where(position, stream, picks[0])
        box = resized_crop_box(shape[0], shape[1], rng)  # stored (H, W, C)
        return resize_and_flip(self._read_frames(position, stream, picks, box), size, rng)

    def _read_frames(self, position: int, stream: str, picks: Sequence[int],
                     box: Optional[tuple[int, int, int, int]]) -> torch.Tensor:
        """(T, C, H, W) frames in (T, H, W, C) memory, or only their `crop_box(…, box)`."""
        where = [self._where(position, stream, k) for k in picks]
        shape = where[0][2]
        if any(item_shape != shape for _, _, item_shape in where):
            frames = stack_frames([self.frame(position, stream, k) for k in picks])
            return frames if box is None else crop_box(frames, box)
        top, left, height, width = box if box is not None else (0, 0, shape[0], shape[1])
        out = np.empty((len(picks), height, width, *shape[2:]),
                       dtype=STREAM_DTYPES[self.kinds[stream]])
        size = int(np.prod(shape))
        for t, (data, offset, _) in enumerate(where):
            out[t] = data[offset:offset + size].reshape(shape)[top:top + height, left:left + width]
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def _map(self, chunk: int, stream: str) -> np.memmap:
        """The memory map of one chunk file, opened on first use; the least recently used map
        beyond MAX_OPEN_MAPS is dropped (and its file closed: `item` and `frames` return
        copies, so nothing else holds it)."""
        key = (chunk, stream)
        data = self._maps.get(key)
        if data is None:
            path = self.folder / f"{self.chunks[chunk]}.{stream}.bin"
            data = np.memmap(path, dtype=STREAM_DTYPES[self.kinds[stream]], mode="r")
            self._maps[key] = data
            if len(self._maps) > MAX_OPEN_MAPS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(key)
        return data


def clip_visual(pack: Optional[Pack], position: int, picks: Sequence[int], size: int,
                rng: Optional[np.random.Generator], read_files: Callable[[], torch.Tensor]
                ) -> torch.Tensor:
    """A clip's frames `picks` as its reader returns them, uint8 (T, C, size, size): the
    training crop and flip (`rng` given) or the evaluation resize, from the pack's `visual`
    stream when the reader has a pack, else from `read_files()` (the decoded, stacked frames)."""
    if pack is not None and rng is not None:
        return pack.train_crop(position, "visual", picks, size, rng)
    frames = pack.frames(position, "visual", picks) if pack is not None else read_files()
    return clip_train_crop(frames, size, rng) if rng is not None else resize_exact(frames, size)


def _load_index(folder: Path, chunks: Sequence[str], dataset: str, rebuild: str) -> np.ndarray:
    """All chunks' index rows, with the chunk number as an extra last column."""
    parts = []
    for c, name in enumerate(chunks):
        path = folder / f"{name}.index.npy"
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataFormatError(f"{dataset}: pack file {path} cannot be read ({err}); the pack "
                                  f"is damaged: re-run `{rebuild}` to rebuild it") from None
        if rows.ndim != 2 or rows.shape[1] != INDEX_COLUMNS or rows.dtype != np.int64:
            raise DataFormatError(f"{dataset}: pack file {path} is not a chunk index (shape "
                                  f"{rows.shape}, dtype {rows.dtype}); re-run `{rebuild} "
                                  f"--overwrite`")
        parts.append(np.concatenate([rows, np.full((len(rows), 1), c, dtype=np.int64)], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, INDEX_COLUMNS + 1), dtype=np.int64)


def _match(reader: PackableReader, manifest: Mapping[str, Any], root: Path, folder: Path,
           rebuild: str) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """The pack entry of every reader position, the ids the pack does not hold, and the item
    count of each stream of every reader position as the data has it now.

    A sample whose source files differ from those the pack was built from is an error here.
    """
    where = {sample_id: e for e, sample_id in enumerate(manifest["ids"])}
    stored = manifest["signatures"]
    absent_streams = [s for s in reader.pack_streams if s not in manifest["streams"]]
    if absent_streams:
        raise DataFormatError(f"{reader.dataset}: the pack {folder} holds no "
                              f"{', '.join(absent_streams)} (built for other modalities); re-run "
                              f"`{rebuild}` to rebuild it")
    current, counts = signatures(reader, root)
    entry_of = np.zeros(len(reader.ids), dtype=np.int64)
    absent: list[str] = []
    for position, sample_id in enumerate(reader.ids):
        entry = where.get(sample_id)
        if entry is None:
            absent.append(sample_id)
            continue
        changed = [s for s in current if stored[s][entry] != current[s][position]]
        if changed:
            raise stale(reader, folder, rebuild, f"the {'/'.join(changed)} files of {sample_id} "
                                                 f"are not those it was built from")
        entry_of[position] = entry
    return entry_of, absent, counts


def stale(reader: PackableReader, folder: Path, rebuild: str, why: str) -> DataFormatError:
    """The error of a pack built from other data than the reader's (or from other paths)."""
    return DataFormatError(f"{reader.dataset}: the pack {folder} is stale: {why} (data changed "
                           f"since the build, or a path option such as visual_dir or audio_dir "
                           f"now names other files); re-run `{rebuild}` to update it, or set "
                           f"dataset.options.pack=off")


def open_pack(reader: PackableReader, root: Path, split: str) -> Optional[Pack]:
    """The reader's pack per its `pack` option, or None to read the image files; logs which."""
    opts = reader.options
    if opts.pack == "off":
        log.info("%s %s: reading the image files (dataset.options.pack=off)", reader.dataset, split)
        return None
    if not reader.pack_streams:
        if opts.pack == "require":
            log.warning("%s %s: dataset.options.pack=require has nothing to read: none of the "
                        "selected modalities is packed", reader.dataset, split)
        return None
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
    key = pack_key(reader.dataset, split, opts.frame_short_side)
    if manifest["key"] != key:
        raise DataFormatError(f"{reader.dataset} {split}: the pack {folder} was built for "
                              f"{manifest['key']}, not {key}; re-run `{rebuild} --overwrite`")
    built_with, now = manifest.get("decoders"), decoder_versions()
    if built_with != now:
        log.warning("%s %s: the pack %s was built with %s, this process decodes with %s: frames "
                    "may differ from the image files' by rounding; rebuild with `%s --overwrite` "
                    "to be sure", reader.dataset, split, folder, built_with, now, rebuild)
    check_files(folder, manifest, reader.dataset, rebuild, opts.pack_verify)
    entry_of, absent, counts = _match(reader, manifest, root, folder, rebuild)
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
        raise stale(reader, folder, rebuild, f"{len(absent)} of {len(reader.ids)} samples are not "
                                             f"in it, e.g. {absent[0]}")
    chunks = [c["name"] for c in manifest["chunks"]]
    streams = list(manifest["streams"])
    pack = Pack(folder, streams, manifest["streams"], chunks,
                _load_index(folder, chunks, reader.dataset, rebuild), manifest["ids"], entry_of)
    for stream, count in counts.items():
        differ = np.flatnonzero(pack.counts(stream) != count)
        if len(differ):
            p = int(differ[0])
            raise stale(reader, folder, rebuild, f"{len(differ)} sample(s) have another number of "
                                                 f"{stream} items than the pack holds, e.g. "
                                                 f"{reader.ids[p]}: {int(count[p])} now, "
                                                 f"{int(pack.counts(stream)[p])} in the pack")
    log.info("%s %s: reading the pack %s (%d samples)", reader.dataset, split, folder,
             len(reader.ids))
    return pack


def with_pack(reader: R, root: Path, split: str) -> R:
    """The reader, reading its pack when `open_pack` finds one for its options."""
    reader.pack = open_pack(reader, root, split)
    return reader
