"""BYOL-A v1 torch pieces: the log-mel front end and the ``AudioNTT2020`` encoder.

Written from the layer-by-layer spec (``research/embedders.md`` section 1); parameter
names match the official checkpoints, so their state dicts load with ``strict=True``.
Both modules take padded batches with per-clip lengths and give every clip what it
would get alone, up to float rounding (see :func:`padded_waveforms` and
:meth:`AudioNTT2020.forward`).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import torch
import torchaudio
from torch import nn
from torch.nn import functional as F

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 160
N_MELS = 64
F_MIN, F_MAX = 60.0, 7800.0
LOG_EPS = float(torch.finfo(torch.float32).eps)
#: Shortest clip the encoder accepts: 8 frames survive three 2x2 poolings (70 ms).
MIN_SAMPLES = 7 * HOP
_CONVS = (0, 4, 8)  # index of each block's Conv2d in ``features``; BN follows it


def n_frames(n_samples: int | np.ndarray) -> int | np.ndarray:
    """Log-mel frames of a clip of ``n_samples`` (centred STFT): ``1 + n_samples // 160``."""
    return 1 + n_samples // HOP


def padded_waveforms(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack clips for :class:`LogMelFrontend`: reflect-pad each by ``n_fft / 2``, then zero-pad.

    The per-clip reflect padding is what ``torch.stft(center=True)`` would do to the
    clip alone, and every valid frame reads only its own clip's samples, so padding to
    the batch's longest clip changes nothing. Returns the (B, L_max + n_fft) batch and
    the valid frame count of each clip.
    """
    half = N_FFT // 2
    width = max(len(clip) for clip in clips) + 2 * half
    batch = np.zeros((len(clips), width), dtype=np.float32)
    for row, clip in enumerate(clips):
        batch[row, : len(clip) + 2 * half] = np.pad(clip, half, mode="reflect")
    lengths = torch.as_tensor([n_frames(len(clip)) for clip in clips])
    return torch.from_numpy(batch), lengths


@functools.cache
def _mel_fbank() -> torch.Tensor:
    """(64, 513) HTK mel filterbank of the front end (built once: torchaudio's is slow)."""
    fbank = torchaudio.functional.melscale_fbanks(
        N_FFT // 2 + 1, F_MIN, F_MAX, N_MELS, SAMPLE_RATE, norm=None, mel_scale="htk"
    )
    return fbank.T.contiguous()


class LogMelFrontend(nn.Module):
    """BYOL-A v1 front end: 16 kHz power STFT, 64 HTK mel bands (60-7800 Hz), ``log(x + eps)``.

    Numerically the official ``torchaudio.transforms.MelSpectrogram`` recipe, but the
    input is already centre-padded (:func:`padded_waveforms`), so clips of different
    lengths share one STFT call. Differentiable.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("fbank", _mel_fbank().clone(), persistent=False)

    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, L + n_fft) centre-padded waveforms -> (B, 64, T) log-mel, T = 1 + L // 160."""
        spec = torch.stft(padded, N_FFT, HOP, N_FFT, self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return torch.log(torch.matmul(self.fbank, power) + LOG_EPS)


class AudioNTT2020(nn.Module):
    """BYOL-A v1 encoder: 3 x (conv3x3-BN-ReLU-maxpool2) over 64 mels, frame MLP, mean + max.

    Parameters
    ----------
    d : int
        Embedding size (512, 1024 or 2048 for the official checkpoints).
    """

    def __init__(self, d: int = 512):
        super().__init__()
        layers: list[nn.Module] = []
        for in_channels in (1, 64, 64):
            layers += [
                nn.Conv2d(in_channels, 64, 3, padding=1),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(64 * (N_MELS // 8), d),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(d, d),
            nn.ReLU(),
        )

    def frame_features(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, *, fold: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 1, 64, T) normalised log-mel -> (B, T // 8, d) frame features and their lengths.

        With ``lengths`` (valid frames per clip, the rest being padding), columns past
        each clip's end are zeroed after every block, so they act like the convolution's
        own zero padding and each clip's output equals its unpadded output. ``fold=True``
        (eval mode only) folds each batch norm into its convolution (:func:`folded_conv`),
        which saves a pass over the largest activations.
        """
        if fold and self.training:
            raise RuntimeError("fold=True needs eval mode: batch norm must use running stats")
        if lengths is not None:
            x = _zero_tail(x, lengths)
        for index in _CONVS:
            conv, norm = self.features[index], self.features[index + 1]
            if fold:
                weight, bias = folded_conv(conv, norm)
                x = F.conv2d(x, weight, bias, padding=conv.padding)
            else:
                x = norm(conv(x))
            # features[index + 3] (MaxPool2d) is computed by _max_pool2, which is faster on
            # channels-last tensors; pooling before the ReLU is the same function (both are
            # monotone) on 4x fewer values
            x = F.relu(_max_pool2(x))
            if lengths is not None:
                lengths = lengths // 2
                x = _zero_tail(x, lengths)
        batch, channels, mels, frames = x.shape
        # (B, C, F, T) -> (B, T, F * C): channel varies fastest, as the checkpoint expects
        x = x.permute(0, 3, 2, 1).reshape(batch, frames, mels * channels)
        return self.fc(x), lengths

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, *, fold: bool = False
    ) -> torch.Tensor:
        """(B, 1, 64, T) normalised log-mel -> (B, d) clip embeddings (max + mean over time).

        ``lengths`` and ``fold`` are as in :meth:`frame_features`.
        """
        frames, lengths = self.frame_features(x, lengths, fold=fold)
        if lengths is None:
            return frames.amax(dim=1) + frames.mean(dim=1)
        valid = _time_mask(lengths, frames.shape[1]).unsqueeze(-1)
        # features are >= 0 (final ReLU), so zeroed padding never wins the max
        frames = frames * valid
        return frames.amax(dim=1) + frames.sum(dim=1) / lengths.unsqueeze(-1).to(frames.dtype)


def _max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``MaxPool2d(2)`` (floor mode) as the maximum of four strided views."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    return torch.maximum(
        torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
        torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]),
    )


def _time_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device) < lengths.to(lengths.device).unsqueeze(-1)


def _zero_tail(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    if bool((lengths >= x.shape[-1]).all()):
        return x
    mask = _time_mask(lengths.to(x.device), x.shape[-1])
    return x * mask[:, None, None, :].to(x.dtype)


def folded_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` followed by eval-mode ``norm``, as one convolution.

    ``w' = w * g / s`` and ``b' = (b - mu) * g / s + beta`` with ``s = sqrt(var + eps)``;
    the weight is channels-last, the layout oneDNN's CPU convolutions run fastest in.
    """
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale[:, None, None, None]
    bias = (conv.bias - norm.running_mean) * scale + norm.bias
    return weight.contiguous(memory_format=torch.channels_last), bias


def checkpoint_d(state: dict[str, torch.Tensor]) -> int:
    """Embedding size of a BYOL-A v1 state dict (rows of ``fc.0.weight``)."""
    for key, value in state.items():
        if key.endswith("fc.0.weight"):
            return int(value.shape[0])
    raise ValueError("the checkpoint has no 'fc.0.weight': it is not a BYOL-A v1 encoder")


def encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the encoder's ``features.*`` / ``fc.*`` tensors, dropping any prefix before them.

    Like the official loader, this accepts training checkpoints whose keys read
    ``online_encoder.net.features.0.weight`` and so on.
    """
    pattern = re.compile(r"(?:^|\.)((?:features|fc)\..*)$")
    kept = {}
    for key, value in state.items():
        match = pattern.search(key)
        if match:
            kept[match.group(1)] = value
    return kept
