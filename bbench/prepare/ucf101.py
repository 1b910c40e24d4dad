"""UCF-101 recipe (datasets.md §3.5–3.6): 6 RGB frames per clip and, optionally, TV-L1 flow.

RGB: of the N decoded frames, indices ⌊(k + 0.5)·N/6⌋, k = 0…5, are written as
`rgb/<v_X>/frame_00001.jpg … frame_00006.jpg` (native resolution, JPEG q:v 2 ≈ quality 95).
Flow: dual TV-L1 (OpenCV contrib, default parameters) between consecutive grayscale frames,
each component clipped to ±20 px and mapped to p = round((f + 20)·255/40) (128 ≈ no motion),
written as `flow/u/<v_X>/frame000001.jpg …` and `flow/v/<v_X>/…`. OpenCV contrib is optional:
without it flow is skipped with the reason in the report.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bbench.prepare.core import (
    Job,
    JobContext,
    PrepareError,
    PrepareReport,
    copy_file,
    find_file,
    index_files,
)
from bbench.prepare.media import (
    VIDEO_EXTENSIONS,
    MediaError,
    ToolMissing,
    count_video_frames,
    even_indices,
    extract_selected_frames,
)

RGB_FRAMES = 6
FLOW_BOUND = 20.0
FLOW_PATTERN = "frame{:06d}.jpg"


def quantise_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Flow component(s) in pixels → uint8: clip to ±bound, p = round((f + bound)·255/(2·bound)).

    Rounds half up, so zero motion gives 128.
    """
    f = np.clip(np.asarray(flow, dtype=np.float64), -bound, bound)
    return np.floor((f + bound) * 255.0 / (2 * bound) + 0.5).clip(0, 255).astype(np.uint8)


def flow_unavailable() -> str | None:
    """Why TV-L1 flow cannot be computed here (OpenCV contrib missing), or None."""
    try:
        import cv2
    except ImportError:
        return ("OpenCV with the contrib modules is not installed (TV-L1 needs "
                "cv2.optflow.DualTVL1OpticalFlow_create): pip install opencv-contrib-python-headless, "
                "or use a pre-computed TV-L1 pack (flow/u, flow/v)")
    if not hasattr(getattr(cv2, "optflow", None), "DualTVL1OpticalFlow_create"):
        return (f"OpenCV {getattr(cv2, '__version__', '?')} lacks the contrib module cv2.optflow "
                "(install opencv-contrib-python-headless instead of opencv-python), or use a "
                "pre-computed TV-L1 pack (flow/u, flow/v)")
    return None


def tvl1_flow(video: Path, u_dir: Path, v_dir: Path, stride: int = 1) -> int:
    """Write quantised TV-L1 flow of every `stride`-th consecutive frame pair; returns the count."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    finally:
        cap.release()
    if len(frames) < 2:
        raise MediaError(f"flow: OpenCV decoded {len(frames)} frame(s); need at least 2")
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    u_dir.mkdir(parents=True, exist_ok=True)
    v_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for k in range(0, len(frames) - 1, stride):
        flow = tvl1.calc(frames[k], frames[k + 1], None)
        n += 1
        cv2.imwrite(str(u_dir / FLOW_PATTERN.format(n)), quantise_flow(flow[..., 0]))
        cv2.imwrite(str(v_dir / FLOW_PATTERN.format(n)), quantise_flow(flow[..., 1]))
    return n


def ucf_clip(ctx: JobContext, *, video: Path, rgb_out: Path, flow_u: Path | None,
             flow_v: Path | None, flow_stride: int) -> None:
    problems: list[str] = []
    if ctx.needs(rgb_out):
        staged = ctx.staging()
        try:
            if ctx.ffmpeg is None:
                raise ToolMissing("ffmpeg is needed for RGB frames")
            n = count_video_frames(ctx.ffmpeg, video)
            extract_selected_frames(ctx.ffmpeg, video, staged, even_indices(n, RGB_FRAMES))
            ctx.commit(staged, rgb_out)
        except (MediaError, ToolMissing) as err:
            problems.append(f"rgb: {err}")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    if flow_u is not None and flow_v is not None and (ctx.needs(flow_u) or ctx.needs(flow_v)):
        su, sv = ctx.staging("-u"), ctx.staging("-v")
        try:
            tvl1_flow(video, su, sv, flow_stride)
            ctx.commit(su, flow_u)
            ctx.commit(sv, flow_v)
        except (MediaError, ImportError) as err:
            problems.append(f"flow: {err}")
        finally:
            shutil.rmtree(su, ignore_errors=True)
            shutil.rmtree(sv, ignore_errors=True)
    if problems:
        raise MediaError("; ".join(problems))


def plan_ucf101(raw: Path, out: Path, opts: Any, report: PrepareReport) -> list[Job]:
    from bbench.data.ucf101 import read_class_index, read_list

    if opts.lists:
        class_ind = Path(opts.lists) / "classInd.txt"
        if not class_ind.is_file():
            raise PrepareError(f"ucf101: --lists {opts.lists!r} has no classInd.txt")
    else:
        found = find_file(raw, ["classInd.txt"], exclude=[out])
        if found is None:
            raise PrepareError(f"ucf101: no ucfTrainTestlist/classInd.txt under {raw}: extract "
                               "UCF101TrainTestSplits-RecognitionTask.zip there, or pass --lists DIR")
        class_ind = found
    list_dir = class_ind.parent
    for f in sorted(list_dir.glob("*.txt")):
        copy_file(f, out / "ucfTrainTestlist" / f.name, overwrite=opts.overwrite)
    classes = read_class_index(class_ind)
    number = opts.ucf_split
    splits = {}
    for split in ("train", "test"):
        path = list_dir / f"{split}list0{number}.txt"
        if not path.is_file():
            raise PrepareError(f"ucf101: {path} is missing")
        splits[split] = read_list(path, classes)
    flow = opts.flow
    if flow:
        problem = flow_unavailable()
        if problem:
            report.skipped.append(("optical flow (flow/u, flow/v)", problem))
            flow = False
    else:
        report.skipped.append(("optical flow (flow/u, flow/v)", "--no-flow given"))
    report.parameters.update(rgb_frames=RGB_FRAMES, split_number=number, flow=flow,
                             flow_stride=opts.flow_stride, flow_bound_px=FLOW_BOUND)
    videos = index_files(raw, VIDEO_EXTENSIONS, exclude=[out])
    jobs = []
    for split, rows in splits.items():
        if opts.only not in (None, split):
            continue
        report.count(split, "listed", 0)
        for name in dict.fromkeys(n for n, _ in rows):
            video = videos.get(name)
            if video is None:
                report.fail(split, name, f"no input video named {name}.* under {raw}")
                continue
            rgb_out = out / "rgb" / name
            u, v = (out / "flow" / "u" / name, out / "flow" / "v" / name) if flow else (None, None)
            outputs = (rgb_out,) + ((u, v) if flow else ())
            kwargs = {"video": video, "rgb_out": rgb_out, "flow_u": u, "flow_v": v,
                      "flow_stride": opts.flow_stride}
            jobs.append(Job(split, name, ucf_clip, kwargs,
                            tuple(p for p in outputs if p is not None)))
    return jobs
