"""ffmpeg helpers: 16-kHz mono WAV, 1-fps frames, frame counting and selection."""
from __future__ import annotations

import wave

import numpy as np
import pytest

from bbench.prepare.media import (
    MediaError,
    count_video_frames,
    even_indices,
    extract_frames,
    extract_selected_frames,
    extract_wav,
    list_frames,
    load_audio,
    read_wav,
)
from bbench.testing.raw_media import make_video, tone, write_wav


def test_wav_round_trip_without_ffmpeg(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(0.5, 1000.0))
    samples, rate = read_wav(path)
    assert rate == 16000 and samples.dtype == np.float32 and samples.shape == (8000,)
    assert np.abs(samples).max() == pytest.approx(0.5, abs=1e-3)
    # already 16-kHz mono: read directly, no ffmpeg needed
    np.testing.assert_array_equal(load_audio(None, path, tmp_path / "t"), samples)


def test_extract_wav_is_16k_mono_pcm(ffmpeg, tmp_path):
    clip = make_video(tmp_path / "-starts-with-dash.mp4", 3.0, freq=1000.0, ffmpeg=ffmpeg)
    dst = tmp_path / "a.wav"
    extract_wav(ffmpeg, clip, dst)
    with wave.open(str(dst)) as f:
        assert (f.getnchannels(), f.getframerate(), f.getsampwidth()) == (1, 16000, 2)
        assert abs(f.getnframes() - 48000) < 2000  # encoder padding
    silent = make_video(tmp_path / "silent.mp4", 1.0, audio=False, ffmpeg=ffmpeg)
    with pytest.raises(MediaError, match="no audio stream"):
        extract_wav(ffmpeg, silent, tmp_path / "b.wav")


@pytest.mark.parametrize("seconds,frames", [(3.0, 3), (10.0, 10), (0.3, 1)])
def test_frames_at_one_fps(ffmpeg, tmp_path, seconds, frames):
    clip = make_video(tmp_path / "c.flv", seconds, ffmpeg=ffmpeg)
    assert extract_frames(ffmpeg, clip, tmp_path / "f") == frames
    names = [p.name for p in list_frames(tmp_path / "f")]
    assert names == [f"frame_{i:05d}.jpg" for i in range(1, frames + 1)]


def test_frames_of_a_broken_file_fail(ffmpeg, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError):
        extract_frames(ffmpeg, bad, tmp_path / "f")


def test_even_indices_and_selection(ffmpeg, tmp_path):
    assert even_indices(60, 6) == [5, 15, 25, 35, 45, 55]
    assert even_indices(4, 6) == [0, 1, 1, 2, 3, 3]
    assert even_indices(0, 6) == []
    clip = make_video(tmp_path / "v_X.avi", 2.0, rate=25, ffmpeg=ffmpeg)
    assert count_video_frames(ffmpeg, clip) == 50
    assert extract_selected_frames(ffmpeg, clip, tmp_path / "rgb", [0, 0, 49]) == 3
    files = list_frames(tmp_path / "rgb")
    assert [p.name for p in files] == ["frame_00001.jpg", "frame_00002.jpg", "frame_00003.jpg"]
    assert files[0].read_bytes() == files[1].read_bytes() != files[2].read_bytes()
