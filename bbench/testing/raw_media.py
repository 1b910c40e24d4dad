"""Raw media for testing `bbench prepare`: short WAVs and videos from ffmpeg's test sources.

Videos are ffmpeg `testsrc` patterns (tiny frames) with an optional `sine` audio track; WAVs
are written with the standard library (16-kHz mono 16-bit, exact sample counts). Everything
is generated at test time into a temporary folder; nothing binary is committed.

    from bbench.testing.raw_media import make_cremad_raw
    info = make_cremad_raw(tmp_path / "raw")   # AudioWAV/*.wav + VideoFlash/*.flv
"""
from __future__ import annotations

import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bbench.prepare.media import find_ffmpeg

SAMPLE_RATE = 16000


def ffmpeg_or_none() -> str | None:
    """The ffmpeg `bbench prepare` would use, or None (tests then skip with this reason)."""
    return find_ffmpeg()


NO_FFMPEG = ("ffmpeg not available (install ffmpeg or `pip install imageio-ffmpeg`); "
             "the prepare tests need it to generate and decode media")


def tone(seconds: float, freq: float = 440.0, amplitude: float = 0.5,
         sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Mono 16-bit PCM WAV of float samples in [−1, 1] (scaled by 32767, clipped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return path


def make_video(path: Path, seconds: float, *, audio: bool = True, freq: float = 440.0,
               size: tuple[int, int] = (64, 48), rate: int = 25, ffmpeg: str | None = None) -> Path:
    """A `testsrc` clip of `seconds` (w×h `size`, `rate` fps) with a `sine` track unless audio=False.

    The container follows the suffix: .flv (flv1 + mp3), .mp4 (mpeg4 + aac), .avi (mpeg4 + mp3).
    """
    exe = ffmpeg or find_ffmpeg()
    if exe is None:
        raise RuntimeError(NO_FFMPEG)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
           f"testsrc=duration={seconds:g}:size={w}x{h}:rate={rate}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={freq:g}:sample_rate=44100:duration={seconds:g}"]
    suffix = path.suffix.lower()
    vcodec = {".flv": "flv", ".mp4": "mpeg4", ".avi": "mpeg4", ".mkv": "mpeg4"}.get(suffix, "mpeg4")
    acodec = {".mp4": "aac", ".mkv": "aac"}.get(suffix, "libmp3lame")
    cmd += ["-c:v", vcodec, "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", acodec, "-ac", "1"]
    cmd += [str(path.absolute())]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {path.name}: {proc.stderr.strip()[-400:]}")
    return path


@dataclass(frozen=True)
class RawClip:
    """One generated CREMA-D-style clip and what `prepare` should make of it."""

    name: str
    seconds: float
    wav: bool  # AudioWAV/<name>.wav written
    video: bool  # VideoFlash/<name>.flv written
    video_audio: bool  # the video has an audio track
    freq: float

    @property
    def code(self) -> str:
        return self.name.split("_")[2]

    @property
    def expect_audio(self) -> bool:
        return self.wav or (self.video and self.video_audio)

    @property
    def expect_frames(self) -> int:
        """Frames at 1 fps: one per started second, at least 1 (the first-frame fallback)."""
        if not self.video:
            return 0
        return max(1, int(np.ceil(self.seconds - 1e-9)))


DEFAULT_CLIPS: tuple[RawClip, ...] = (
    RawClip("1001_DFA_ANG_XX", 3.0, True, True, True, 440.0),
    RawClip("1002_IEO_HAP_HI", 10.0, True, True, True, 1000.0),
    RawClip("1003_TIE_SAD_XX", 0.3, True, True, True, 2000.0),
    RawClip("1004_MTI_NEU_XX", 2.0, False, True, False, 0.0),  # no audio anywhere → audio fails
    RawClip("1005_ITS_FEA_XX", 2.5, True, True, True, 3000.0),
    RawClip("1006_IWL_DIS_XX", 1.5, True, True, True, 600.0),
)


def make_cremad_raw(root: Path, clips: Sequence[RawClip] = DEFAULT_CLIPS,
                    size: tuple[int, int] = (64, 48), ffmpeg: str | None = None) -> dict:
    """The CREMA-D raw layout: `AudioWAV/<clip>.wav` (16 kHz mono tones) and
    `VideoFlash/<clip>.flv` (testsrc, with a sine track unless the clip has none).

    Returns {"root": root, "clips": {name: RawClip}}.
    """
    for clip in clips:
        if clip.wav:
            write_wav(root / "AudioWAV" / f"{clip.name}.wav", tone(clip.seconds, clip.freq))
        if clip.video:
            make_video(root / "VideoFlash" / f"{clip.name}.flv", clip.seconds,
                       audio=clip.video_audio, freq=clip.freq or 440.0, size=size, ffmpeg=ffmpeg)
    return {"root": root, "clips": {c.name: c for c in clips}}


def write_cremad_lists(folder: Path, train: Sequence[str], test: Sequence[str],
                       crlf_bom_header: bool = False) -> Path:
    """train.csv / test.csv in the public `<clip>,<EMO>` form (optionally CRLF + BOM + header)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in (("train", train), ("test", test)):
        end = "\r\n" if crlf_bom_header else "\n"
        body = "".join(f"{n},{n.split('_')[2]}{end}" for n in names)
        if crlf_bom_header:
            body = "\ufeffname,label" + end + body
        (folder / f"{split}.csv").write_text(body, encoding="utf-8", newline="")
    return folder
