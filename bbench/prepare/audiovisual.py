"""Audio–visual recipes (datasets.md §3.2–3.4): CREMA-D, Kinetics-Sounds, BalancedAV, VGGSound.

Per sample: the audio track → 16-kHz mono → normalised Kaldi filter bank of fixed length
(§3.2), and the video → JPEG frames at 1 fps (§3.3), written in the dataset's §2 layout.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bbench.data.splits import stratified_carve_out
from bbench.prepare.core import (
    Job,
    JobContext,
    PrepareError,
    PrepareReport,
    copy_file,
    find_file,
    index_files,
    save_npy,
    save_pickle,
    save_torch,
    write_text,
)
from bbench.prepare.fbank import spectrogram
from bbench.prepare.media import (
    VIDEO_EXTENSIONS,
    MediaError,
    ToolMissing,
    extract_frames,
    list_frames,
    load_audio,
)

OWN_SPLIT_TEST_FRACTION = 0.2
"""Without --lists, CREMA-D and KS get bbench's own stratified, seeded 80/20 split (§3.4)."""


# -- one audio-visual sample --------------------------------------------------------------------
def write_hdf5_frames(frames_dir: Path, dst: Path) -> int:
    """Pack the JPEGs of `frames_dir`, in order, as dataset "video" of vlen uint8 arrays (§2.3)."""
    import h5py

    frames = list_frames(frames_dir)
    with h5py.File(dst, "w") as f:
        ds = f.create_dataset("video", (len(frames),), dtype=h5py.vlen_dtype(np.uint8))
        for i, frame in enumerate(frames):
            ds[i] = np.frombuffer(frame.read_bytes(), dtype=np.uint8)
    return len(frames)


_AUDIO_WRITERS: dict[str, Callable[[JobContext, np.ndarray, Path], None]] = {
    "pt": save_torch, "npy": save_npy, "pkl": save_pickle}


def av_sample(ctx: JobContext, *, audio_src: Path | None, video_src: Path | None,
              audio_out: Path | None, audio_format: str, frames_out: Path | None,
              frames_format: str, length: int, trim: tuple[float, float] | None = None) -> None:
    """Write whichever of the sample's two outputs is missing; MediaError lists what failed."""
    problems: list[str] = []
    if audio_out is not None and ctx.needs(audio_out):
        src = audio_src or video_src
        try:
            if src is None:
                raise MediaError("no input file")
            samples = load_audio(ctx.ffmpeg, src, ctx.staging("-wav"),
                                 trim if src == video_src else None)
            feats = spectrogram(samples, length).numpy()
            _AUDIO_WRITERS[audio_format](ctx, feats, audio_out)
        except (MediaError, ToolMissing) as err:
            problems.append(f"audio: {err}")
    if frames_out is not None and ctx.needs(frames_out):
        staged = ctx.staging()
        try:
            if video_src is None:
                raise MediaError("no video file found")
            if ctx.ffmpeg is None:
                raise ToolMissing("ffmpeg is needed for frames")
            extract_frames(ctx.ffmpeg, video_src, staged, fps=1.0, trim=trim)
            if frames_format == "dir":
                ctx.commit(staged, frames_out)
            else:
                ctx.write(frames_out, lambda p: write_hdf5_frames(staged, p))
        except (MediaError, ToolMissing) as err:
            problems.append(f"visual: {err}")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    if problems:
        raise MediaError("; ".join(problems))


def _job(split: str, sample: str, outputs: Sequence[Path], **kwargs: Any) -> Job:
    return Job(split, sample, av_sample, kwargs, tuple(outputs))


def _own_split(ids: list[str], labels: list[int], seed: int) -> dict[str, list[str]]:
    train, test = stratified_carve_out(ids, labels, OWN_SPLIT_TEST_FRACTION, seed)
    return {"train": sorted(ids[i] for i in train), "test": sorted(ids[i] for i in test)}


def _previous_split_source(out: Path) -> str | None:
    try:
        manifest = json.loads((out / "prepare_manifest.json").read_text())
        return manifest.get("parameters", {}).get("split_source")
    except (OSError, ValueError):
        return None


def _own_split_note(report: PrepareReport, seed: int, what: str) -> None:
    report.parameters["split_source"] = f"bbench-seeded-80/20 (seed {seed})"
    report.notes.append(f"no --lists given: {what} uses bbench's own seeded, stratified 80/20 "
                        f"train/test split (split seed {seed}); results on it are NOT comparable "
                        "with the paper's numbers — pass --lists DIR with the public list files")


def _wanted(split: str, only: str | None) -> bool:
    return only is None or split == only or (only == "train" and split == "val")


# -- CREMA-D -----------------------------------------------------------------------------------
CREMAD_CODES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CREMAD_NAME = re.compile(r"^\d{4}_[A-Z]{3}_(NEU|HAP|SAD|FEA|DIS|ANG)_[A-Z]{2}$")
CREMAD_FRAMES = 300


def read_cremad_list(path: Path) -> list[tuple[str, str]]:
    """(clip, code) rows of a CREMA-D list; BOM, CRLF and a header row are tolerated."""
    rows = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[1] in CREMAD_CODES and parts[0]:
            rows.append((parts[0], parts[1]))
    return rows


def plan_cremad(raw: Path, out: Path, opts: Any, report: PrepareReport) -> list[Job]:
    wavs = index_files(raw, [".wav"], exclude=[out])
    videos = index_files(raw, VIDEO_EXTENSIONS, exclude=[out])
    if opts.lists:
        lists = Path(opts.lists)
        splits = {}
        for split in ("train", "test"):
            src = lists / f"{split}.csv"
            if not src.is_file():
                raise PrepareError(f"cremad: --lists {str(lists)!r} has no {split}.csv")
            splits[split] = read_cremad_list(src)
            copy_file(src, out / f"{split}.csv", overwrite=opts.overwrite)
        report.parameters["split_source"] = f"user lists from {lists}"
    elif (out / "train.csv").is_file() and (out / "test.csv").is_file():
        splits = {s: read_cremad_list(out / f"{s}.csv") for s in ("train", "test")}
        source = _previous_split_source(out) or "lists found in the output folder"
        report.parameters["split_source"] = source
        report.notes.append(f"reusing train.csv/test.csv of the output folder ({source})")
        if source.startswith("bbench-seeded"):
            report.notes.append("that split is bbench's own; results on it are NOT comparable "
                                "with the paper's numbers")
    else:
        clips = sorted(s for s in set(wavs) | set(videos) if CREMAD_NAME.match(s))
        if not clips:
            raise PrepareError(f"cremad: no clips named like 1001_DFA_ANG_XX (.wav or video) "
                               f"under {raw}")
        labels = [CREMAD_CODES.index(c.split("_")[2]) for c in clips]
        chosen = _own_split(clips, labels, opts.split_seed)
        splits = {s: [(c, c.split("_")[2]) for c in ids] for s, ids in chosen.items()}
        for split, rows in splits.items():
            write_text(out / f"{split}.csv", "".join(f"{c},{code}\n" for c, code in rows))
        _own_split_note(report, opts.split_seed, "cremad")
    length = opts.audio_frames or CREMAD_FRAMES
    report.parameters["audio_frames"] = length
    jobs, seen = [], set()
    for split, rows in splits.items():
        if not _wanted(split, opts.only):
            continue
        report.count(split, "listed", 0)
        for clip, _ in rows:
            if clip in seen:
                continue
            seen.add(clip)
            wav, video = wavs.get(clip), videos.get(clip)
            if wav is None and video is None:
                report.fail(split, clip, f"no input: neither {clip}.wav nor a video named {clip}.* "
                                         f"under {raw}")
                continue
            jobs.append(_job(split, clip, [out / "audio" / f"{clip}.pt", out / "visual" / clip],
                             audio_src=wav, video_src=video, audio_out=out / "audio" / f"{clip}.pt",
                             audio_format="pt", frames_out=out / "visual" / clip,
                             frames_format="dir", length=length))
    return jobs


# -- Kinetics-Sounds ----------------------------------------------------------------------------
KS_FRAMES = 1024


def read_ks_list(path: Path) -> list[tuple[str, int]]:
    """(name, label) rows: first field, last field; split on commas or whitespace (§2.2)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = [p.strip() for p in (line.split(",") if "," in line else line.split())]
        try:
            rows.append((parts[0], int(parts[-1])))
        except (ValueError, IndexError):
            if number == 1:
                continue  # a header row
            raise PrepareError(f"kinetics_sounds: {path}:{number}: cannot read {line!r} as "
                               "'<name>,...,<label>'") from None
    return rows


def _ks_list_file(folder: Path, split: str) -> Path | None:
    for name in (f"my_{split}.txt", f"{split}.txt"):
        if (folder / name).is_file():
            return folder / name
    return None


def plan_kinetics_sounds(raw: Path, out: Path, opts: Any, report: PrepareReport) -> list[Job]:
    videos = index_files(raw, VIDEO_EXTENSIONS, exclude=[out])
    splits: dict[str, list[tuple[str, int]]] = {}
    if opts.lists:
        lists = Path(opts.lists)
        for split in ("train", "test"):
            src = _ks_list_file(lists, split)
            if src is None:
                raise PrepareError(f"kinetics_sounds: --lists {str(lists)!r} has neither "
                                   f"my_{split}.txt nor {split}.txt")
            splits[split] = read_ks_list(src)
            copy_file(src, out / f"{split}.txt", overwrite=opts.overwrite)
        report.parameters["split_source"] = f"user lists from {lists}"
    elif (out / "train.txt").is_file() and (out / "test.txt").is_file():
        splits = {s: read_ks_list(out / f"{s}.txt") for s in ("train", "test")}
        source = _previous_split_source(out) or "lists found in the output folder"
        report.parameters["split_source"] = source
        report.notes.append(f"reusing train.txt/test.txt of the output folder ({source})")
    else:
        classes = sorted({p.parent.name for p in videos.values()})
        if len(classes) < 2:
            raise PrepareError("kinetics_sounds: without --lists the videos must sit in one folder "
                               f"per class (<class>/<clip>.mp4); found {len(classes)} folder(s) "
                               f"under {raw}. Pass --lists DIR with my_train.txt / my_test.txt")
        names = sorted(videos)
        labels = [classes.index(videos[n].parent.name) for n in names]
        chosen = _own_split(names, labels, opts.split_seed)
        label_of = dict(zip(names, labels))
        for split, ids in chosen.items():
            splits[split] = [(n, label_of[n]) for n in ids]
            write_text(out / f"{split}.txt", "".join(f"{n},{label_of[n]}\n" for n in ids))
        write_text(out / "classes.txt", "".join(f"{i} {c}\n" for i, c in enumerate(classes)))
        _own_split_note(report, opts.split_seed, "kinetics_sounds (classes = sorted folder names, "
                        "see classes.txt)")
    length = opts.audio_frames or KS_FRAMES
    report.parameters["audio_frames"] = length
    jobs = []
    for split, rows in splits.items():
        if not _wanted(split, opts.only):
            continue
        report.count(split, "listed", 0)
        for name in dict.fromkeys(n for n, _ in rows):
            video = videos.get(name)
            if video is None:
                report.fail(split, name, f"no input video named {name}.* under {raw}")
                continue
            audio_out = out / split / "audio" / f"{name}.npy"
            frames_out = out / split / "visual" / name
            jobs.append(_job(split, name, [audio_out, frames_out], audio_src=None, video_src=video,
                             audio_out=audio_out, audio_format="npy", frames_out=frames_out,
                             frames_format="dir", length=length))
    return jobs


# -- BalancedAV ----------------------------------------------------------------------------------
BALANCED_SUBSETS = {"training": "train", "testing": "test", "validation": "val"}


def _find_annotations(raw: Path, out: Path, explicit: str | None) -> Path:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise PrepareError(f"balanced_av: --annotations {str(path)!r} does not exist")
        return path
    found = find_file(raw, ["annotations.json"], exclude=[out])
    if found:
        return found
    for candidate in sorted(raw.rglob("*.json")):
        try:
            if "database" in json.loads(candidate.read_text(encoding="utf-8")):
                return candidate
        except (OSError, ValueError):
            continue
    raise PrepareError(f"balanced_av: no annotation JSON (with 'labels' and 'database') under {raw}; "
                       "pass --annotations FILE")


def plan_balanced_av(raw: Path, out: Path, opts: Any, report: PrepareReport) -> list[Job]:
    ann_path = _find_annotations(raw, out, opts.annotations)
    try:
        ann = json.loads(ann_path.read_text(encoding="utf-8"))
        labels, database = ann["labels"], ann["database"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PrepareError(f"balanced_av: {ann_path} is not an annotation JSON with 'labels' and "
                           f"'database' ({err})") from None
    copy_file(ann_path, out / "annotations.json", overwrite=opts.overwrite)
    videos = index_files(raw, VIDEO_EXTENSIONS, exclude=[out])
    length = opts.audio_frames or KS_FRAMES
    report.parameters.update(audio_frames=length, annotations=str(ann_path), classes=len(labels))
    jobs = []
    for key in sorted(database):
        entry = database[key]
        split = BALANCED_SUBSETS.get(str(entry.get("subset", "")))
        if split is None or not _wanted(split, opts.only):
            continue
        video = videos.get(key)
        if video is None:
            report.fail(split, key, f"no input video named {key}.* under {raw}")
            continue
        audio_out, frames_out = out / "audio" / f"{key}.pkl", out / "visual" / f"{key}.hdf5"
        jobs.append(_job(split, key, [audio_out, frames_out], audio_src=None, video_src=video,
                         audio_out=audio_out, audio_format="pkl", frames_out=frames_out,
                         frames_format="hdf5", length=length))
    return jobs


# -- VGGSound ------------------------------------------------------------------------------------
VGG_SECONDS = 10.0


def read_vggsound_csv(path: Path) -> list[tuple[str, str, str, str]]:
    """(ytid, start as written, label, split) rows with split train/test; others ignored."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for rec in csv.reader(f):
            if len(rec) < 4:
                continue
            ytid, start, label, split = (r.strip() for r in rec[:4])
            if split in ("train", "test") and ytid:
                rows.append((ytid, start, label, split))
    return rows


def plan_vggsound(raw: Path, out: Path, opts: Any, report: PrepareReport) -> list[Job]:
    csv_path = (Path(opts.lists) / "vggsound.csv") if opts.lists else \
        find_file(raw, ["vggsound.csv"], exclude=[out])
    if csv_path is None or not csv_path.is_file():
        raise PrepareError(f"vggsound: vggsound.csv not found under {raw}"
                           + (f" nor in --lists {opts.lists}" if opts.lists else "")
                           + "; pass --lists DIR holding it")
    rows = read_vggsound_csv(csv_path)
    copy_file(csv_path, out / "vggsound.csv", overwrite=opts.overwrite)
    videos = index_files(raw, VIDEO_EXTENSIONS, exclude=[out])
    length = opts.audio_frames or KS_FRAMES
    report.parameters.update(audio_frames=length, csv=str(csv_path), trim=bool(opts.trim))
    jobs, seen = [], set()
    for ytid, start, _label, split in rows:
        key = f"{ytid}_{start}"
        if (split, key) in seen or not _wanted(split, opts.only):
            continue
        seen.add((split, key))
        try:
            padded = f"{ytid}_{int(float(start)):06d}"
        except ValueError:
            padded = key
        video, trim = videos.get(padded) or videos.get(key), None
        if video is None and opts.trim and ytid in videos:
            video, trim = videos[ytid], (float(start), VGG_SECONDS)
        if video is None:
            hint = "" if opts.trim else " (full-length downloads named <ytid>.*: add --trim)"
            report.fail(split, key, f"no input video named {padded}.* or {key}.*{hint}")
            continue
        audio_out = out / "audio" / split / f"{key}.npy"
        frames_out = out / "video" / split / key
        jobs.append(_job(split, key, [audio_out, frames_out], audio_src=None, video_src=video,
                         audio_out=audio_out, audio_format="npy", frames_out=frames_out,
                         frames_format="dir", length=length, trim=trim))
    return jobs
