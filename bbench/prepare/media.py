"""ffmpeg and media helpers of `bbench prepare`: find ffmpeg, extract audio and frames, read WAVs.

ffmpeg is taken from, in order: an explicit path, `$BBENCH_FFMPEG`, the `ffmpeg` on PATH, the
binary shipped in the `imageio-ffmpeg` wheel. Every input and output is passed as an absolute
path (YouTube ids may start with `-`, which ffmpeg would read as an option).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".flv", ".mov", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac")
SAMPLE_RATE = 16000
BASE = ("-nostdin", "-hide_banner", "-loglevel", "error", "-y")


class MediaError(RuntimeError):
    """One input could not be processed; the message is the reason recorded for it."""


class ToolMissing(RuntimeError):
    """A required external tool (ffmpeg, OpenCV contrib) is not available."""


def find_ffmpeg(explicit: str | os.PathLike | None = None) -> str | None:
    """Path of a usable ffmpeg binary, or None."""
    candidates: list[str | None] = [str(explicit) if explicit else None,
                                    os.environ.get("BBENCH_FFMPEG"), shutil.which("ffmpeg")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(Path(c).resolve())
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and Path(exe).is_file():
            return str(exe)
    except Exception:  # noqa: BLE001, S110 - the package is optional and may lack a binary
        pass
    return None


def require_ffmpeg(explicit: str | os.PathLike | None = None) -> str:
    exe = find_ffmpeg(explicit)
    if exe is None:
        raise ToolMissing("ffmpeg not found: install it (e.g. apt-get install ffmpeg), or "
                          "`pip install imageio-ffmpeg` (ships a binary), or set BBENCH_FFMPEG "
                          "to its path")
    return exe


@functools.lru_cache(maxsize=8)
def ffmpeg_version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    found = re.search(r"ffmpeg version (\S+)", first)
    return found.group(1) if found else (first or "unknown")


def _abs(path: str | os.PathLike) -> str:
    return str(Path(path).absolute())


def run_ffmpeg(exe: str, args: Sequence[str], what: str, timeout: float = 3600) -> str:
    """Run ffmpeg with `args` (after the common flags); MediaError with its stderr on failure."""
    try:
        proc = subprocess.run([exe, *BASE, *args], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise MediaError(f"{what}: ffmpeg timed out after {timeout:.0f} s") from None
    except OSError as err:
        raise MediaError(f"{what}: could not run ffmpeg ({err})") from None
    if proc.returncode != 0:
        raise MediaError(f"{what}: ffmpeg failed: {_last_lines(proc.stderr)}")
    return proc.stdout


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no message)"


def trim_args(trim: tuple[float, float] | None) -> list[str]:
    """Input options that cut [start, start + duration) out of the input."""
    if trim is None:
        return []
    start, duration = trim
    return ["-ss", f"{start:g}", "-t", f"{duration:g}"]


def extract_wav(exe: str, src: Path, dst: Path, trim: tuple[float, float] | None = None) -> None:
    """§3.2 step 1: mono 16-bit PCM at 16 kHz. A clip without an audio stream is a MediaError."""
    try:
        run_ffmpeg(exe, [*trim_args(trim), "-i", _abs(src), "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE),
                         "-acodec", "pcm_s16le", _abs(dst)], "audio extraction")
    except MediaError as err:
        text = str(err)
        if "does not contain any stream" in text or "matches no streams" in text or \
                "Output file is empty" in text or "no streams" in text.lower():
            raise MediaError("no audio stream in the input") from None
        raise
    if not dst.is_file() or dst.stat().st_size <= 44:
        raise MediaError("no audio stream in the input (ffmpeg wrote no samples)")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(samples as float32 in [−1, 1] = int16 / 32768, sample rate) of a mono 16-bit WAV."""
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            data = f.readframes(n)
    except (wave.Error, EOFError, OSError) as err:
        raise MediaError(f"unreadable WAV {path.name}: {err}") from None
    if width != 2:
        raise MediaError(f"{path.name}: expected 16-bit PCM, got {8 * width}-bit samples")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples, rate


def wav_is_ready(path: Path) -> bool:
    """True for a 16-kHz mono 16-bit PCM WAV, which can be read without ffmpeg."""
    if path.suffix.lower() != ".wav":
        return False
    try:
        with wave.open(str(path), "rb") as f:
            return f.getnchannels() == 1 and f.getsampwidth() == 2 and f.getframerate() == SAMPLE_RATE
    except (wave.Error, EOFError, OSError):
        return False


def load_audio(exe: str | None, src: Path, tmp_dir: Path,
               trim: tuple[float, float] | None = None) -> np.ndarray:
    """16-kHz mono samples of any input: read directly when already in that form, else ffmpeg."""
    if trim is None and wav_is_ready(src):
        return read_wav(src)[0]
    if exe is None:
        raise ToolMissing("ffmpeg is needed to decode " + src.name)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    dst = tmp_dir / "audio.wav"
    try:
        extract_wav(exe, src, dst, trim)
        samples, rate = read_wav(dst)
    finally:
        dst.unlink(missing_ok=True)
    if rate != SAMPLE_RATE:
        raise MediaError(f"ffmpeg produced {rate} Hz instead of {SAMPLE_RATE}")
    return samples


FRAME_PATTERN = "frame_%05d.jpg"


def extract_frames(exe: str, src: Path, dst_dir: Path, fps: float = 1.0,
                   trim: tuple[float, float] | None = None) -> int:
    """§3.3: frames at `fps` as frame_00001.jpg … into `dst_dir` (created); returns the count.

    If the fps filter yields nothing (very short clip), retries with the first frame only;
    zero frames after that is a MediaError.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    pattern = _abs(dst_dir / FRAME_PATTERN)
    first_error = None
    try:
        run_ffmpeg(exe, [*trim_args(trim), "-i", _abs(src), "-map", "0:v:0", "-vf", f"fps={fps:g}",
                         "-q:v", "2", "-start_number", "1", pattern], "frame extraction")
    except MediaError as err:
        first_error = err
    frames = list_frames(dst_dir)
    if not frames:
        for f in dst_dir.iterdir():
            f.unlink()
        try:
            run_ffmpeg(exe, [*trim_args(trim), "-i", _abs(src), "-map", "0:v:0", "-frames:v", "1",
                             "-q:v", "2", "-start_number", "1", pattern], "frame extraction")
        except MediaError as err:
            reason = str(first_error or err)
            if "matches no streams" in reason or "does not contain any stream" in reason:
                raise MediaError("no video stream in the input") from None
            raise MediaError(reason) from None
        frames = list_frames(dst_dir)
        if not frames:
            raise MediaError("frame extraction: ffmpeg wrote no frame")
    return len(frames)


def list_frames(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def count_video_frames(exe: str, src: Path) -> int:
    """Number of decoded frames of the first video stream (one decoding pass)."""
    out = run_ffmpeg(exe, ["-nostats", "-i", _abs(src), "-map", "0:v:0", "-f", "null",
                           "-progress", "pipe:1", "-"], "frame count")
    counts = re.findall(r"^frame=(\d+)", out, flags=re.MULTILINE)
    if not counts:
        raise MediaError("frame count: ffmpeg reported no video frames")
    return int(counts[-1])


def even_indices(n: int, k: int) -> list[int]:
    """k evenly spaced frame indices ⌊(j + 0.5)·n / k⌋, j = 0 … k−1 (§3.5)."""
    return [((2 * j + 1) * n) // (2 * k) for j in range(k)] if n > 0 else []


def extract_selected_frames(exe: str, src: Path, dst_dir: Path, indices: Sequence[int],
                            quality: int = 2) -> int:
    """Write the decoded frames with the given 0-based indices as frame_00001.jpg … (in order).

    Repeated indices (clips shorter than the number of frames asked for) are written once by
    ffmpeg and copied afterwards, so exactly len(indices) files result.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    unique = sorted(set(indices))
    expr = "+".join(f"eq(n\\,{i})" for i in unique)
    staging = dst_dir / "_sel"
    staging.mkdir(exist_ok=True)
    tail = ["-q:v", str(quality), "-start_number", "0", _abs(staging / "%05d.jpg")]
    head = ["-i", _abs(src), "-map", "0:v:0", "-vf", f"select={expr}"]
    try:
        run_ffmpeg(exe, [*head, "-fps_mode", "passthrough", *tail], "frame selection")
    except MediaError as err:  # ffmpeg < 5.1 has no -fps_mode
        if "fps_mode" not in str(err):
            raise
        run_ffmpeg(exe, [*head, "-vsync", "0", *tail], "frame selection")
    written = sorted(staging.iterdir())
    if len(written) != len(unique):
        raise MediaError(f"frame selection: expected {len(unique)} frames, ffmpeg wrote {len(written)}")
    by_index = dict(zip(unique, written))
    for j, i in enumerate(indices, start=1):
        shutil.copyfile(by_index[i], dst_dir / (FRAME_PATTERN % j))
    shutil.rmtree(staging)
    return len(indices)
