"""Kaldi-compatible log-mel filter banks in plain PyTorch (datasets.md §3.2).

`kaldi_fbank` reproduces `torchaudio.compliance.kaldi.fbank(w, htk_compat=True,
sample_frequency=16000, use_energy=False, window_type="hanning", num_mel_bins=128,
dither=0.0, frame_shift=10)` — i.e. Kaldi's `compute-fbank-feats` defaults — without
torchaudio (whose wheels track older torch releases):

- frames of 25 ms (400 samples) every 10 ms (160 samples), `snip_edges`: only frames that
  fit entirely, 1 + ⌊(N − 400) / 160⌋ of them (3.0 s → 298, 10.0 s → 998);
- dither 0; per-frame DC removal; pre-emphasis 0.97 (x[i] − 0.97·x[i−1], x[−1] := x[0]);
- symmetric Hann ("hanning") window; zero padding to the next power of two (512 points);
- power spectrum |FFT|²; 128 triangular mel filters (mel(f) = 1127·ln(1 + f/700)) equally
  spaced on the mel axis from 20 Hz to the Nyquist frequency (8 kHz), no VTLN warping;
- natural log with a floor at the machine epsilon of the dtype (float32: log(1.1920929e-07)
  = −15.9424).

`spectrogram` is the whole bbench recipe: global DC removal, the filter bank above, crop or
zero-pad to the target length, then the public normalisation (x + 4.503877) / 10.282552.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

FBANK_MEAN = -4.503877
"""Public GeWu-Lab normalisation mean of the log-mel values."""
FBANK_STD = 5.141276
"""Public normalisation std; the recipe divides by twice this value."""
PAD_VALUE = (0.0 - FBANK_MEAN) / (2 * FBANK_STD)
"""Normalised value of a zero-padded frame: 0.438012…"""


@dataclass(frozen=True)
class FbankParams:
    """Every parameter of the filter bank (all Kaldi defaults except the ones named in §3.2)."""

    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    num_mel_bins: int = 128
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means Nyquist + high_freq
    preemphasis: float = 0.97
    dither: float = 0.0
    remove_dc_offset: bool = True
    window: str = "hanning"  # symmetric Hann
    round_to_power_of_two: bool = True
    snip_edges: bool = True
    power_spectrum: bool = True  # |X|^2 (use_power)
    log: bool = True
    log_floor: float | None = None  # None: machine epsilon of the computation dtype
    use_energy: bool = False
    htk_compat: bool = True

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_size(self) -> int:
        n = self.window_size
        return 1 << (n - 1).bit_length() if self.round_to_power_of_two else n

    def as_dict(self) -> dict:
        return {**asdict(self), "window_size": self.window_size, "window_shift": self.window_shift,
                "fft_size": self.fft_size}


DEFAULT = FbankParams()


def num_frames(num_samples: int, params: FbankParams = DEFAULT) -> int:
    """Frames of a signal with `num_samples` samples under snip_edges: 1 + ⌊(N − W) / S⌋, or 0."""
    if num_samples < params.window_size:
        return 0
    return 1 + (num_samples - params.window_size) // params.window_shift


def mel_scale(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


def mel_banks(params: FbankParams = DEFAULT, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Triangular mel filters, (num_mel_bins, fft_size // 2 + 1); the Nyquist column is zero.

    Computed in float32 (as torchaudio does) and returned in `dtype`.
    """
    n_fft_bins = params.fft_size // 2
    nyquist = 0.5 * params.sample_rate
    high = params.high_freq if params.high_freq > 0 else nyquist + params.high_freq
    if not 0.0 <= params.low_freq < high <= nyquist:
        raise ValueError(f"fbank: need 0 <= low_freq < high_freq <= Nyquist, got "
                         f"{params.low_freq}, {high}, {nyquist}")
    fft_bin_width = params.sample_rate / params.fft_size
    mel_low, mel_high = mel_scale(params.low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / (params.num_mel_bins + 1)
    b = torch.arange(params.num_mel_bins, dtype=torch.float32).unsqueeze(1)
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = mel_scale(fft_bin_width * torch.arange(n_fft_bins, dtype=torch.float32)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1)).to(dtype)


def _frames(wave: torch.Tensor, params: FbankParams) -> torch.Tensor:
    n = num_frames(wave.shape[0], params)
    if n == 0:
        return wave.new_zeros((0, params.window_size))
    return wave.as_strided((n, params.window_size), (params.window_shift * wave.stride(0), wave.stride(0)))


def kaldi_fbank(wave: torch.Tensor | np.ndarray, params: FbankParams = DEFAULT) -> torch.Tensor:
    """Log-mel filter bank of a mono waveform (samples in [−1, 1]); (frames, num_mel_bins).

    Computed in the waveform's floating dtype (float32 unless float64 is given), like torchaudio.
    """
    if params.dither != 0.0:
        raise ValueError("fbank: dither must be 0 (deterministic features)")
    if not params.snip_edges:
        raise ValueError("fbank: only snip_edges=True is implemented")
    if params.window != "hanning":
        raise ValueError(f"fbank: only the 'hanning' window is implemented, got {params.window!r}")
    w = torch.as_tensor(wave)
    if w.dim() == 2 and w.shape[0] == 1:
        w = w[0]
    if w.dim() != 1:
        raise ValueError(f"fbank: expected a mono waveform (N,) or (1, N), got {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"fbank: waveform must be floating point in [-1, 1], got {w.dtype}")
    w = w.contiguous()
    dtype = w.dtype
    frames = _frames(w, params).clone()
    if frames.shape[0] == 0:  # shorter than one window (and MKL's FFT rejects empty batches)
        return w.new_zeros((0, params.num_mel_bins))
    if params.remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if params.preemphasis != 0.0:
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = frames - params.preemphasis * previous
    window = torch.hann_window(params.window_size, periodic=False, dtype=dtype)
    frames = frames * window
    frames = torch.nn.functional.pad(frames, (0, params.fft_size - params.window_size))
    spectrum = torch.fft.rfft(frames).abs()
    if params.power_spectrum:
        spectrum = spectrum.pow(2.0)
    energies = spectrum @ mel_banks(params, dtype).T
    if params.log:
        floor = params.log_floor if params.log_floor is not None else torch.finfo(dtype).eps
        energies = torch.clamp(energies, min=floor).log()
    return energies


def fit_length(features: torch.Tensor, length: int, value: float = 0.0) -> torch.Tensor:
    """Crop the end, or pad the end with `value`, along time (axis 0) to exactly `length` rows."""
    n = features.shape[0]
    if n >= length:
        return features[:length]
    pad = features.new_full((length - n, *features.shape[1:]), value)
    return torch.cat([features, pad], dim=0)


def normalise(features: torch.Tensor) -> torch.Tensor:
    """The public normalisation, applied once after padding: (x − mean) / (2·std)."""
    return (features - FBANK_MEAN) / (2 * FBANK_STD)


def spectrogram(wave: torch.Tensor | np.ndarray, length: int,
                params: FbankParams = DEFAULT) -> torch.Tensor:
    """bbench's audio recipe (§3.2 steps 3–5): float32 (length, num_mel_bins), normalised."""
    w = torch.as_tensor(wave, dtype=torch.float32)
    w = w - w.mean() if w.numel() else w
    feats = kaldi_fbank(w, params)
    return normalise(fit_length(feats, length, 0.0)).to(torch.float32).contiguous()
