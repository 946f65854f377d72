"""GE2E speaker encoder torch pieces: the 40-band mel front end, partial windows, the LSTM.

Written from the published recipe of Resemblyzer 0.1.4 (the speaker encoder of Wan et
al., "Generalized End-to-End Loss for Speaker Verification", ICASSP 2018, as trained
by Resemble AI):

* 16 kHz audio; volume normalised up (never down) to -30 dBFS;
* power mel spectrogram (no log): 25 ms periodic-Hann frames (400 samples) every
  10 ms (160), centred with zero padding, 40 Slaney-scale, Slaney-normalised
  bands over 0-8 kHz;
* partial utterances of 160 frames (1.6 s), one every ``round(100 / rate)`` frames
  (``rate`` 1.3 per second); the last is kept if it covers at least
  ``min_coverage`` (0.75) of its window with audio, and a clip shorter than one
  window gets one zero-padded window;
* a 3-layer LSTM (40 -> 256), a linear layer on the last layer's final hidden
  state, ReLU, L2 normalisation per window; the clip's d-vector is the mean of its
  windows' vectors, L2-normalised again.

Parameter names match the checkpoint's ``model_state`` (``lstm.*``, ``linear.*``),
so it loads with ``strict=True`` once the two GE2E-loss scalars
(``similarity_weight``, ``similarity_bias``) are dropped.

Every window is cut from its clip as one fixed-length segment (:data:`SEGMENT`
samples, zeros outside the clip), whose uncentred STFT gives exactly the window's
160 centred frames. Windows of any clips then share one STFT and one LSTM call,
and a long clip never needs more than one batch of windows in memory.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio
from torch import nn
from torch.nn import functional as F

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
WINDOW_FRAMES = 160  # 1.6 s partial utterances
#: Samples of one window's segment: frames 0..159 centred at 0, 160, ..., 159 * 160.
SEGMENT = (WINDOW_FRAMES - 1) * HOP + N_FFT
HIDDEN = 256
N_LAYERS = 3
EMBEDDING_DIM = 256
#: Level quiet clips are raised to (dBFS); louder clips are left as they are.
TARGET_DBFS = -30.0
#: Silence trimming works on 30 ms windows, smoothed over 8 and dilated by 6 windows.
TRIM_WINDOW = 480
TRIM_SMOOTH = 8
TRIM_MAX_SILENCE = 6
#: Keys of the official checkpoint that belong to the GE2E training loss, not the encoder.
LOSS_KEYS = ("similarity_weight", "similarity_bias")


def window_starts(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> np.ndarray:
    """First frame of each 1.6 s partial window of a clip of ``n_samples``.

    Windows start every ``round(100 / rate)`` frames and cover the clip's
    ``ceil((n_samples + 1) / 160)`` frames; the last one is dropped when less than
    ``min_coverage`` of its samples lie in the clip, unless it is the only one.

    Examples
    --------
    >>> from skaudiocluster.transformers._speaker_net import window_starts
    >>> window_starts(8000).tolist(), window_starts(48000).tolist()
    ([0], [0, 77, 154])
    """
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round(SAMPLE_RATE / rate / HOP))
    if not 0 < step <= WINDOW_FRAMES:
        raise ValueError(f"rate={rate} gives a window step of {step} frames, not in 1..160")
    starts = np.arange(0, max(1, n_frames - WINDOW_FRAMES + step + 1), step)
    coverage = (n_samples - starts[-1] * HOP) / (WINDOW_FRAMES * HOP)
    if coverage < min_coverage and len(starts) > 1:
        starts = starts[:-1]
    return starts


def segment(clip: np.ndarray, start: int) -> np.ndarray:
    """The :data:`SEGMENT` samples the window starting at frame ``start`` reads (zeros outside)."""
    first = start * HOP - N_FFT // 2
    out = np.zeros(SEGMENT, dtype=np.float32)
    lo, hi = max(first, 0), min(first + SEGMENT, len(clip))
    if hi > lo:
        out[lo - first : hi - first] = clip[lo:hi]
    return out


def normalise_volume(clip: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise ``clip`` to ``target_dbfs`` RMS level; louder (and silent) clips are unchanged."""
    rms = float(np.sqrt(np.mean(np.square(clip, dtype=np.float32))))
    if rms == 0.0:
        return clip
    change = target_dbfs - 20.0 * np.log10(rms)
    if change <= 0:
        return clip
    return (clip * np.float32(10.0 ** (change / 20.0))).astype(np.float32)


def voiced_mask(clip: np.ndarray, trim_db: float) -> np.ndarray:
    """Samples of ``clip`` to keep: 30 ms windows within ``trim_db`` of the loudest, smoothed.

    A window is voiced when its mean power is at most ``trim_db`` decibels below the
    loudest window's. As in Resemblyzer's VAD path, the flags are then smoothed by a
    majority over 8 windows (more than half voiced) and every voiced window is
    dilated by 3 windows each side, so silences up to 6 windows (180 ms) stay.
    When nothing survives (a clip shorter than the smoothing, or silent), every
    sample is kept.
    """
    n_windows = -(-len(clip) // TRIM_WINDOW)
    padded = np.zeros(n_windows * TRIM_WINDOW, dtype=np.float64)
    padded[: len(clip)] = clip
    sizes = np.full(n_windows, TRIM_WINDOW)
    sizes[-1] = len(clip) - (n_windows - 1) * TRIM_WINDOW
    power = np.square(padded).reshape(n_windows, TRIM_WINDOW).sum(axis=1) / sizes
    loudest = power.max()
    if loudest <= 0:
        return np.ones(len(clip), dtype=bool)
    voiced = power >= loudest * 10.0 ** (-trim_db / 10.0)
    # majority over windows [i - 3, i + 4] (zeros beyond the clip): strictly more than half
    before, after = (TRIM_SMOOTH - 1) // 2, TRIM_SMOOTH // 2
    counts = np.convolve(np.pad(voiced.astype(int), (before, after)), np.ones(TRIM_SMOOTH), "valid")
    smoothed = counts > TRIM_SMOOTH / 2
    # dilation by a centred run of TRIM_MAX_SILENCE + 1 windows
    reach = TRIM_MAX_SILENCE // 2
    dilated = np.convolve(smoothed.astype(int), np.ones(2 * reach + 1), "same") > 0
    if not dilated.any():
        return np.ones(len(clip), dtype=bool)
    return np.repeat(dilated, TRIM_WINDOW)[: len(clip)]


@functools.cache
def _mel_fbank() -> torch.Tensor:
    """(40, 201) Slaney-scale, Slaney-normalised mel filterbank over 0-8 kHz (librosa's)."""
    fbank = torchaudio.functional.melscale_fbanks(
        N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
    )
    return fbank.T.contiguous()


class MelFrontend(nn.Module):
    """(B, :data:`SEGMENT`) window segments -> (B, 160, 40) mel power frames (no log)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("fbank", _mel_fbank().clone(), persistent=False)

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            segments, N_FFT, HOP, N_FFT, self.window, center=False, return_complex=True
        )
        power = spec.real.square() + spec.imag.square()
        return torch.matmul(self.fbank, power).transpose(1, 2)


class GE2EEncoder(nn.Module):
    """3-layer LSTM over mel frames, linear + ReLU on the last hidden state, L2-normalised.

    Parameters
    ----------
    n_mels, hidden, n_layers, dim : int
        Input bands, LSTM width and depth, embedding size (40, 256, 3, 256 for the
        published checkpoint).
    """

    def __init__(
        self,
        n_mels: int = N_MELS,
        hidden: int = HIDDEN,
        n_layers: int = N_LAYERS,
        dim: int = EMBEDDING_DIM,
    ):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, n_layers, batch_first=True)
        self.linear = nn.Linear(hidden, dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(B, T, 40) mel frames -> (B, dim) unit vectors (a zero vector stays zero)."""
        _, (hidden, _) = self.lstm(mels)
        return F.normalize(F.relu(self.linear(hidden[-1])), dim=1)


def encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's encoder tensors: everything but the GE2E loss's two scalars."""
    return {key: value for key, value in state.items() if key not in LOSS_KEYS}
