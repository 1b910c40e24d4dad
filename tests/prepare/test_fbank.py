"""The Kaldi filter bank of `bbench prepare` against an independent NumPy implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bbench.prepare import fbank
from bbench.prepare.fbank import (
    FBANK_MEAN,
    FBANK_STD,
    PAD_VALUE,
    kaldi_fbank,
    num_frames,
    spectrogram,
)

SR = 16000


def numpy_kaldi_fbank(x: np.ndarray, sr: int = SR, n_mels: int = 128) -> np.ndarray:
    """Kaldi compute-fbank-feats, written from the recipe in float64 with plain loops/NumPy:
    25 ms / 10 ms frames with snip_edges, per-frame DC removal, pre-emphasis 0.97 (first
    sample against itself), symmetric Hann window, 512-point power spectrum, 128 triangular
    mel filters 20 Hz – Nyquist on mel = 1127 ln(1 + f/700), log with a float32-eps floor."""
    win, shift, nfft = int(0.025 * sr), int(0.010 * sr), 512
    n = 1 + (len(x) - win) // shift if len(x) >= win else 0
    n_bins = nfft // 2
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)
    lo, hi = mel(20.0), mel(sr / 2)
    step = (hi - lo) / (n_mels + 1)
    bin_mel = mel(np.arange(n_bins) * sr / nfft)
    banks = np.zeros((n_mels, n_bins + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * step, lo + (m + 1) * step, lo + (m + 2) * step
        for k in range(n_bins):
            f = bin_mel[k]
            if left < f < right:
                banks[m, k] = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))
    out = np.zeros((n, n_mels))
    for i in range(n):
        frame = x[i * shift: i * shift + win].astype(np.float64)
        frame = frame - frame.mean()
        shifted = np.concatenate([[frame[0]], frame[:-1]])
        frame = (frame - 0.97 * shifted) * hann
        power = np.abs(np.fft.rfft(frame, n=nfft)) ** 2
        out[i] = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
    return out


def test_frame_counts():
    assert num_frames(3 * SR) == 298
    assert num_frames(10 * SR) == 998
    assert num_frames(399) == 0 and num_frames(400) == 1 and num_frames(560) == 2
    assert kaldi_fbank(torch.zeros(3 * SR)).shape == (298, 128)
    assert kaldi_fbank(torch.zeros(10 * SR)).shape == (998, 128)
    assert kaldi_fbank(torch.zeros(100)).shape == (0, 128)


def test_matches_independent_numpy_kaldi_recipe():
    rng = np.random.default_rng(0)
    t = np.arange(int(0.5 * SR)) / SR
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t)
         + 0.05 * rng.standard_normal(t.size) + 0.01).astype(np.float32)
    ref = numpy_kaldi_fbank(x.astype(np.float64))
    # float64 input: same computation with the float32-eps log floor of the reference
    got64 = kaldi_fbank(torch.from_numpy(x.astype(np.float64)),
                        fbank.FbankParams(log_floor=float(np.finfo(np.float32).eps))).numpy()
    got32 = kaldi_fbank(torch.from_numpy(x)).numpy()
    assert got32.dtype == np.float32 and got32.shape == ref.shape == (48, 128)
    np.testing.assert_allclose(got64, ref, atol=1e-4)  # mel weights are float32, as in torchaudio
    np.testing.assert_allclose(got32, ref, atol=5e-4)


def test_matches_torchaudio_when_installed():
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi",
                                reason="torchaudio not installed (the NumPy reference is used instead)")
    g = torch.Generator().manual_seed(1)
    w = 0.2 * torch.randn(1, SR, generator=g)
    ref = kaldi.fbank(w, htk_compat=True, sample_frequency=SR, use_energy=False,
                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    torch.testing.assert_close(kaldi_fbank(w), ref, atol=1e-4, rtol=1e-5)


def _centre_hz(m: int) -> float:
    mel = lambda f: 1127.0 * math.log(1 + f / 700)
    lo, hi = mel(20.0), mel(8000.0)
    c = lo + (m + 1) * (hi - lo) / 129
    return 700 * (math.exp(c / 1127.0) - 1)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_pure_tone_lands_in_its_mel_band(freq):
    t = torch.arange(SR) / SR
    feats = kaldi_fbank(0.5 * torch.sin(2 * math.pi * freq * t))
    peak = int(feats.mean(0).argmax())
    expected = min(range(128), key=lambda m: abs(_centre_hz(m) - freq))
    assert abs(peak - expected) <= 1, (peak, expected)


def test_silence_normalisation_and_padding():
    silent = spectrogram(torch.zeros(3 * SR), 300)
    assert silent.shape == (300, 128) and silent.dtype == torch.float32
    eps_log = math.log(np.finfo(np.float32).eps)
    assert eps_log == pytest.approx(-15.9424, abs=1e-4)
    torch.testing.assert_close(silent[:298], torch.full((298, 128), (eps_log - FBANK_MEAN) / (2 * FBANK_STD)))
    assert float(silent[0, 0]) == pytest.approx(-1.1124, abs=1e-4)
    assert PAD_VALUE == pytest.approx(0.438012, abs=1e-6)
    torch.testing.assert_close(silent[298:], torch.full((2, 128), PAD_VALUE))


def test_recipe_crops_pads_and_normalises_once():
    g = torch.Generator().manual_seed(0)
    w = 0.1 * torch.randn(3 * SR, generator=g) + 0.2  # DC offset removed globally
    raw = kaldi_fbank(w - w.mean())
    out = spectrogram(w, 300)
    torch.testing.assert_close(out[:298], (raw - FBANK_MEAN) / (2 * FBANK_STD))
    torch.testing.assert_close(out[298:], torch.full((2, 128), PAD_VALUE))
    long = spectrogram(torch.cat([w, w, w, w]), 1024)  # 12 s → 1198 frames, cropped
    assert long.shape == (1024, 128)
    torch.testing.assert_close(spectrogram(w, 100), out[:100])
    assert float(spectrogram(torch.zeros(10), 4).sub(PAD_VALUE).abs().max()) < 1e-6


def test_full_scale_signals_stay_in_the_documented_range():
    t = torch.arange(SR) / SR
    tone7k = spectrogram(torch.sin(2 * math.pi * 7000 * t), 98)
    assert 1.3 < float(tone7k.max()) < 1.6
    noise = spectrogram(torch.rand(SR, generator=torch.Generator().manual_seed(0)) * 2 - 1, 98)
    assert float(noise.max()) < 1.5


def test_rejects_bad_waveforms():
    with pytest.raises(ValueError, match="mono"):
        kaldi_fbank(torch.zeros(2, 1000))
    with pytest.raises(ValueError, match="floating"):
        kaldi_fbank(torch.zeros(1000, dtype=torch.int16))
    assert fbank.mel_banks().shape == (128, 257)
