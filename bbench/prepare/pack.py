"""`bbench prepare DATASET --pack --data-root DIR`: build the packed frame cache of a dataset.

One job: decode every sample of every split once, through the loader's own readers, into the
chunked memory-mapped files that `bbench.data.pack` defines and reads. The samples are the
loader's: the DataModule is built with the given dataset options (`pack=off`), so the pack
holds exactly the usable clips of each split, decoded by the very code the JPEG path runs.

Resumable like the rest of `prepare`: each chunk of `CHUNK_ENTRIES` samples is one job of the
prepare engine (`run_jobs`: workers, progress, atomic writes under `.prepare_tmp`, one failing
chunk recorded and the others kept), its index file committed after its data files; a chunk
whose files all exist with consistent sizes is skipped. Each job carries a reader of its own
chunk's samples only (`pack_subset`), so `--workers N` pickles a chunk's records, not the
split's. `build.json`, written first, records the key and the digest of the entry list: an
unfinished pack started for another list (clips added or removed) is removed and rebuilt,
never resumed; a finished one is refused, with the number of samples that differ, unless
`--overwrite`. `manifest.json`, written last, records the size and sha256 of every file and the
decoder versions; running the command on a finished pack re-hashes every file and rebuilds
the chunks that no longer match.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from bbench._version import __version__
from bbench.config.fields import SpecError
from bbench.data.errors import DataFormatError
from bbench.data.pack import (BUILD_FILE, INDEX_COLUMNS, MANIFEST_FILE, STREAM_DTYPES,
                              PackableReader, chunk_files, decoder_versions, file_problems,
                              file_sha256, list_digest, pack_folder, pack_key, read_manifest,
                              signatures, stored_item)
from bbench.prepare.api import canonical_dataset
from bbench.prepare.core import (Job, JobContext, PrepareError, PrepareReport, run_jobs,
                                 save_npy)
from bbench.results.files import MalformedFileError, read_json, write_json

CHUNK_ENTRIES = 128
"""Samples per chunk: the unit of resumption and of parallel work."""
RUN_OPTIONS = ("frame_short_side", "pack", "pack_verify")
"""Dataset options that say how a run reads a pack, not which data it holds: not `--option`s."""
PACKABLE: dict[str, Optional[tuple[str, ...]]] = {
    "cremad": None, "kinetics_sounds": None, "vggsound": None, "balanced_av": None,
    "ucf101": None, "food101": ("visual",)}
"""The datasets with a pack and the modalities it holds (None: all of them; FOOD-101's titles
have their own token cache, `prepare food101 --tokenizer`)."""


@dataclass(frozen=True)
class SplitPack:
    """One split's pack to build: its reader, folder, entry list and streams."""

    split: str
    reader: PackableReader
    folder: Path
    key: dict[str, Any]
    signatures: dict[str, list[str]]

    @property
    def streams(self) -> dict[str, str]:
        """The split's streams (modality -> kind), as its reader packs them."""
        return dict(self.reader.pack_streams)

    @property
    def digest(self) -> str:
        """The digest of the entry list (ids, signatures, streams) that `build.json` records."""
        return list_digest(self.reader.ids, self.signatures, self.streams)


def write_chunk(ctx: JobContext, reader: PackableReader, first: int, name: str,
                folder: Path) -> None:
    """Decode every sample of `reader` (the split's samples from position `first` on) into
    one chunk: a data file per stream, then the index."""
    streams = list(reader.pack_streams)
    staged = {s: ctx.staging(".bin") for s in streams}
    handles = {s: open(staged[s], "wb") for s in streams}
    rows: list[list[int]] = []
    offsets = dict.fromkeys(streams, 0)
    try:
        for position in range(len(reader.ids)):
            content = reader.pack_content(position)
            for sid, stream in enumerate(streams):
                kind = reader.pack_streams[stream]
                for item in content[stream]:
                    array = np.ascontiguousarray(stored_item(kind, item), dtype=STREAM_DTYPES[kind])
                    shape = list(array.shape) + [0] * (3 - array.ndim)
                    rows.append([first + position, sid, offsets[stream], array.ndim, *shape])
                    handles[stream].write(array.tobytes())
                    offsets[stream] += array.size
    finally:
        for handle in handles.values():
            handle.close()
    for stream in streams:
        ctx.commit(staged[stream], folder / f"{name}.{stream}.bin")
    index = np.asarray(rows, dtype=np.int64).reshape(-1, INDEX_COLUMNS)
    save_npy(ctx, index, folder / f"{name}.index.npy")


def chunk_is_whole(folder: Path, name: str, streams: Mapping[str, str]) -> bool:
    """All files of a chunk exist and each data file has the bytes its index accounts for."""
    files = chunk_files(name, list(streams))
    if not all((folder / f).is_file() for f in files):
        return False
    try:
        index = np.load(folder / f"{name}.index.npy", allow_pickle=False)
    except (OSError, ValueError):
        return False
    for sid, (stream, kind) in enumerate(streams.items()):
        rows = index[index[:, 1] == sid]
        sizes = [int(np.prod(r[4:4 + r[3]])) for r in rows]
        if (folder / f"{name}.{stream}.bin").stat().st_size != sum(sizes) * STREAM_DTYPES[kind].itemsize:
            return False
    return True


def _chunks(n: int, size: int) -> list[tuple[str, range]]:
    """The chunks of a split of `n` samples: (name, positions), `size` samples each."""
    return [(f"c{c:05d}", range(start, min(start + size, n)))
            for c, start in enumerate(range(0, n, size))]


def _remove_chunk(folder: Path, name: str, streams: Sequence[str]) -> None:
    """Delete a chunk's files, so that its job runs again."""
    for f in chunk_files(name, streams):
        (folder / f).unlink(missing_ok=True)


def _differing(plan: SplitPack, manifest: Mapping[str, Any]) -> int:
    """How many samples the finished pack and the plan do not share with the same sources."""
    def entries(ids: Sequence[str], sigs: Mapping[str, Sequence[str]]) -> dict[str, tuple]:
        return {i: tuple(sigs.get(s, ["?"] * len(ids))[e] for s in plan.streams)
                for e, i in enumerate(ids)}

    old = entries(manifest["ids"], manifest["signatures"])
    new = entries(plan.reader.ids, plan.signatures)
    return sum(old.get(i) != new.get(i) for i in set(old) | set(new))


def _started(folder: Path) -> Any:
    """The parsed `build.json` of a pack folder, or None when it is absent or unreadable."""
    try:
        return read_json(folder / BUILD_FILE, "pack build record")
    except (OSError, MalformedFileError):
        return None


def prepare_folder(plan: SplitPack, overwrite: bool, report: PrepareReport) -> bool:
    """Start, resume or repair the split's pack folder; `build.json` says which build it is.

    True when the folder already holds the finished pack and every file matches its manifest.
    A finished pack of another list of samples (or settings) is refused without `overwrite`.
    """
    folder, streams = plan.folder, list(plan.streams)
    manifest_path = folder / MANIFEST_FILE
    build = {"key": plan.key, "list": plan.digest, "entries": len(plan.reader.ids),
             "chunk_entries": CHUNK_ENTRIES, "streams": plan.streams}
    if folder.is_dir() and not overwrite and _started(folder) != build:
        if manifest_path.is_file():
            try:
                differ = f"{_differing(plan, read_manifest(manifest_path, '', ''))} sample(s) " \
                         f"differ"
            except DataFormatError:
                differ = "its manifest cannot be read"
            raise PrepareError(f"prepare {plan.reader.dataset} --pack: the finished {plan.split} "
                               f"pack at {folder} was built from another list of samples or "
                               f"other settings ({differ}); add --overwrite to replace it")
        report.notes.append(f"{plan.split}: the unfinished pack at {folder} was started for "
                            f"another list of samples or other settings; rebuilt from scratch")
        overwrite = True
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if manifest_path.is_file():
        manifest = read_manifest(manifest_path, plan.reader.dataset, "prepare --pack")
        bad = {chunk for chunk, _, _ in file_problems(folder, manifest, verify=True)}
        if not bad:
            report.notes.append(f"{plan.split}: the pack at {folder} is complete; every file "
                                f"matches its sha256")
            return True
        manifest_path.unlink()
        report.notes.append(f"{plan.split}: {len(bad)} chunk(s) no longer matched the manifest "
                            f"(first: {sorted(bad)[0]}); rebuilt")
        for name in bad:
            _remove_chunk(folder, name, streams)
    for name, _ in _chunks(len(plan.reader.ids), CHUNK_ENTRIES):
        if not chunk_is_whole(folder, name, plan.streams):
            _remove_chunk(folder, name, streams)
    write_json(folder / BUILD_FILE, build, "pack build record")
    return False


def write_manifest(plan: SplitPack) -> int:
    """`manifest.json` with every chunk file's size and sha256; returns the pack's bytes."""
    chunks, total = [], 0
    for name, positions in _chunks(len(plan.reader.ids), CHUNK_ENTRIES):
        files = {}
        for fname in chunk_files(name, list(plan.streams)):
            path = plan.folder / fname
            size = path.stat().st_size
            files[fname] = {"bytes": size, "sha256": file_sha256(path)}
            total += size
        chunks.append({"name": name, "entries": [positions.start, positions.stop], "files": files})
    manifest = {"format": plan.key["format"], "tool": "bbench prepare --pack",
                "bbench": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "decoders": decoder_versions(), "key": plan.key, "streams": plan.streams,
                "ids": plan.reader.ids,
                "signatures": plan.signatures, "chunks": chunks, "bytes": total}
    write_json(plan.folder / MANIFEST_FILE, manifest, "pack manifest")
    return total


def split_readers(dataset: str, root: Path, options: Mapping[str, Any]
                  ) -> dict[str, PackableReader]:
    """The loader's reader of each split, built from the data with `pack=off`."""
    from bbench.config.specs import DatasetSpec
    from bbench.data import build_datamodule

    modalities = PACKABLE[dataset]
    spec = DatasetSpec(name=dataset, root=str(root), modalities=modalities,
                       options={**options, "pack": "off", "verify_samples": 0})
    try:
        dm = build_datamodule(spec)
    except (SpecError, DataFormatError) as err:
        raise PrepareError(f"prepare {dataset} --pack: {err}") from None
    readers: dict[str, PackableReader] = {}
    for split in (dm.train, dm.val, dm.test):
        reader = split.reader
        if not any(r is reader for r in readers.values()):
            readers[split.split] = reader
    return readers


def pack_dataset(dataset: str, data_root: str | Path, *, frame_short_side: Optional[int] = None,
                 options: Optional[Mapping[str, Any]] = None, only: Optional[str] = None,
                 workers: int = 1, overwrite: bool = False, progress: bool = True
                 ) -> PrepareReport:
    """Build (or resume, or verify) the pack of every split of `dataset` under `data_root`.

    `options` are dataset options (path options, `expected_missing`, ...) as the runs give
    them; `frame_short_side` is the stored resolution (None: frames as stored). Samples are
    counted per split in the report, a failing chunk as failed samples with the reason.
    """
    name = canonical_dataset(dataset)
    if name not in PACKABLE:
        raise PrepareError(f"prepare {name} --pack: {name} has no image frames to pack; --pack "
                           f"applies to {', '.join(PACKABLE)}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise PrepareError(f"prepare {name} --pack: --data-root {str(root)!r} is not a folder")
    run_options = [k for k in RUN_OPTIONS if k in (options or {})]
    if run_options:
        raise PrepareError(f"prepare {name} --pack: --option {', '.join(run_options)} is not a "
                           f"pack build option: give the stored resolution as --frame-short-side "
                           f"S (pack and pack_verify are set by the runs that read the pack)")
    given = {**(options or {}), "frame_short_side": frame_short_side}
    report = PrepareReport(name, root, root)
    report.parameters.update({"pack": True, **given})
    start = time.perf_counter()
    readers = split_readers(name, root, given)
    if only is not None and only not in readers:
        raise PrepareError(f"prepare {name} --pack --only {only}: {name} has no separate {only} "
                           f"split (its validation split is carved out of train, whose pack "
                           f"serves it); --only takes {', '.join(readers)}")
    for split, reader in readers.items():
        if only is not None and split != only:
            continue
        sigs, _ = signatures(reader, root)
        plan = SplitPack(split, reader, pack_folder(root, name, split, frame_short_side),
                         pack_key(name, split, frame_short_side), sigs)
        finished = prepare_folder(plan, overwrite, report)
        chunks = _chunks(len(reader.ids), CHUNK_ENTRIES)
        jobs = [Job(split, f"{name_} ({reader.ids[p.start]} …)", write_chunk,
                    {"reader": reader.pack_subset(p), "first": p.start, "name": name_,
                     "folder": plan.folder},
                    tuple(plan.folder / f for f in chunk_files(name_, list(plan.streams))))
                for name_, p in chunks]
        outcomes = run_jobs(jobs, plan.folder, workers=workers, progress=progress,
                            label=f"pack {name} {split}")
        sizes = {job.sample: len(job.kwargs["reader"].ids) for job in jobs}
        for outcome in outcomes:
            report.count(split, "listed", sizes[outcome.sample])
            report.count(split, outcome.status, sizes[outcome.sample])
            if outcome.status == "failed":
                report.failures.append((split, outcome.sample, outcome.reason))
        if any(o.status == "failed" for o in outcomes):
            report.notes.append(f"{split}: pack not finished (chunks failed); the finished "
                                f"chunks are kept, run the same command again to resume")
            continue
        if finished:
            continue
        size = write_manifest(plan)
        report.notes.append(f"{split}: pack {plan.folder} ({len(reader.ids)} samples, "
                            f"{size / 2**20:.1f} MiB, sha256 of every file in {MANIFEST_FILE})")
    report.seconds = time.perf_counter() - start
    return report
