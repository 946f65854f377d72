"""PaSST log-mel front end: 32 kHz audio to the normalised 128-band log-mel the network expects."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.compliance.kaldi import get_mel_banks

__all__ = ["PaSSTFrontend", "SAMPLE_RATE", "min_samples", "n_frames"]

SAMPLE_RATE = 32000
N_FFT = 1024
WIN_LENGTH = 800
HOP_LENGTH = 320
N_MELS = 128
F_MAX = 15000.0
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5


def n_frames(n_samples: int) -> int:
    """Frames of the log-mel of ``n_samples`` samples (pre-emphasis drops one sample)."""
    return 1 + (n_samples - 2) // HOP_LENGTH


def min_samples(frames: int) -> int:
    """Fewest samples whose log-mel has ``frames`` frames."""
    return (frames - 1) * HOP_LENGTH + 2


class PaSSTFrontend(nn.Module):
    """Waveforms ``(batch, n_samples)`` at 32 kHz to log-mels ``(batch, 128, n_frames)``.

    Pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]`` (one sample shorter), STFT with
    a symmetric 800-tap Hann window inside 1024 points and hop 320 (centred,
    reflect padding), power, 128 Kaldi mel bands over 0-15 kHz, ``ln(. + 1e-5)``
    and the fixed ``(x + 4.5) / 5``. ``n_frames = 1 + (n_samples - 2) // 320``.
    The buffers are not persistent, so the module adds nothing to a state dict.
    """

    def __init__(self) -> None:
        super().__init__()
        banks, _ = get_mel_banks(N_MELS, N_FFT, float(SAMPLE_RATE), 0.0, F_MAX, 100.0, -500.0, 1.0)
        # Kaldi banks cover the 512 bins below Nyquist; the Nyquist bin gets weight 0.
        self.register_buffer("mel_basis", F.pad(banks, (0, 1)), persistent=False)
        self.register_buffer(
            "window", torch.hann_window(WIN_LENGTH, periodic=False), persistent=False
        )

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        emphasised = waveforms[:, 1:] - PREEMPHASIS * waveforms[:, :-1]
        spec = torch.stft(
            emphasised,
            N_FFT,
            hop_length=HOP_LENGTH,
            win_length=WIN_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_basis, power)
        return (torch.log(mel + LOG_OFFSET) + 4.5) / 5.0
