"""Raw media for the prepare tests (generated with ffmpeg's test sources; skipped without it)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bbench.testing.raw_media import NO_FFMPEG, RawClip, ffmpeg_or_none, make_cremad_raw

torch.set_num_threads(1)

CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    exe = ffmpeg_or_none()
    if exe is None:
        pytest.skip(NO_FFMPEG)
    return exe


@pytest.fixture(scope="session")
def cremad_raw(ffmpeg, tmp_path_factory) -> dict:
    """The default clips (3 s, 10 s, 0.3 s, no audio, …) plus two more per emotion, so that
    bbench's own 80/20 split has a test part."""
    extra = tuple(RawClip(f"20{i:02d}_TIE_{CODES[i % 6]}_XX", 1.0 + (i % 2), True, True, True,
                          400.0 + 150 * i) for i in range(12))
    from bbench.testing.raw_media import DEFAULT_CLIPS

    return make_cremad_raw(tmp_path_factory.mktemp("cremad") / "raw", DEFAULT_CLIPS + extra,
                           ffmpeg=ffmpeg)


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "out"
