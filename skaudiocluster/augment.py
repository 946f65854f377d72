"""Random waveform augmentations: crop, gain, linear fade and noise mixing.

They make the weak and strong views with which :class:`~skaudiocluster.cluster.SPICEClusterer`
trains an encoder jointly with its classifier. Every function takes a mono 1-D float
tensor and an explicit :class:`torch.Generator`, so a seeded run repeats exactly.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "AudioAugmentation",
    "linear_fade",
    "mix_noise",
    "random_crop",
    "random_gain",
    "strong_augmentation",
    "weak_augmentation",
]


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_crop(
    clip: torch.Tensor,
    *,
    min_fraction: float,
    max_samples: int | None = None,
    min_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random window of ``clip``: a uniform fraction in ``[min_fraction, 1]`` of its length.

    The window is at most ``max_samples`` and at least ``min_samples`` long (never
    longer than the clip) and starts at a uniform random offset.

    Examples
    --------
    >>> import torch
    >>> crop = random_crop(torch.arange(100.0), min_fraction=0.5, generator=torch.Generator())
    >>> 50 <= len(crop) <= 100 and bool((crop.diff() == 1).all())
    True
    """
    length = len(clip)
    size = round(length * _uniform(min_fraction, 1.0, generator))
    if max_samples is not None:
        size = min(size, max_samples)
    size = min(length, max(size, min_samples))
    start = int(torch.randint(0, length - size + 1, (), generator=generator))
    return clip[start : start + size]


def random_gain(
    clip: torch.Tensor, *, max_db: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``clip`` scaled by a gain drawn uniformly in ``[-max_db, max_db]`` decibels.

    Examples
    --------
    >>> import torch
    >>> louder = random_gain(torch.ones(4), max_db=6.0, generator=torch.Generator())
    >>> 10 ** (-6 / 20) <= float(louder[0]) <= 10 ** (6 / 20)
    True
    """
    return clip * 10.0 ** (_uniform(-max_db, max_db, generator) / 20.0)


def linear_fade(
    clip: torch.Tensor, *, max_fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Linear fade-in and fade-out, each over a random fraction up to ``max_fraction`` of the clip.

    Examples
    --------
    >>> import torch
    >>> faded = linear_fade(torch.ones(100), max_fraction=0.5, generator=torch.Generator())
    >>> bool(faded.max() <= 1.0) and bool(faded[0] < 1.0) and bool(faded[-1] < 1.0)
    True
    """
    length = len(clip)
    fade_in = max(1, int(_uniform(0, max_fraction, generator) * length))
    fade_out = max(1, int(_uniform(0, max_fraction, generator) * length))
    envelope = torch.ones(length, dtype=clip.dtype)
    # Ramps start at 1 / (size + 1) rather than 0, so a fade never silences a whole frame.
    envelope[:fade_in] *= torch.arange(1, fade_in + 1, dtype=clip.dtype) / (fade_in + 1)
    envelope[length - fade_out :] *= torch.arange(fade_out, 0, -1, dtype=clip.dtype) / (
        fade_out + 1
    )
    return clip * envelope.to(clip.device)


def mix_noise(
    clip: torch.Tensor,
    *,
    snr_db: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``clip`` mixed with white Gaussian noise at a signal-to-noise ratio drawn in ``snr_db``.

    Examples
    --------
    >>> import torch
    >>> clip = torch.sin(torch.arange(16000.0) / 5)
    >>> noisy = mix_noise(clip, snr_db=(20.0, 20.0), generator=torch.Generator().manual_seed(0))
    >>> snr = 10 * torch.log10(clip.square().mean() / (noisy - clip).square().mean())
    >>> round(float(snr))
    20
    """
    power = float(clip.square().mean())
    snr = _uniform(*snr_db, generator)
    noise = torch.randn(clip.shape, generator=generator, dtype=clip.dtype).to(clip.device)
    return clip + noise * math.sqrt(power / 10 ** (snr / 10))


class AudioAugmentation:
    """Random crop, then gain, linear fade and noise mixing, of one mono clip.

    Parameters
    ----------
    min_crop : float, default=1.0
        Smallest fraction of the clip kept by the random crop (1 keeps it whole).
    max_samples : int or None, default=None
        Longest crop in samples.
    min_samples : int, default=1
        Shortest crop in samples (clips shorter than this are kept whole).
    gain_db : float, default=0.0
        Largest gain change in decibels (0 disables it).
    fade : float, default=0.0
        Largest fade-in / fade-out length as a fraction of the clip (0 disables it).
    snr_db : tuple of (float, float) or None, default=None
        Range of the white-noise signal-to-noise ratio; ``None`` adds no noise.

    Examples
    --------
    >>> import torch
    >>> augment = AudioAugmentation(min_crop=0.5, gain_db=3.0, fade=0.1, snr_db=(10, 20))
    >>> view = augment(torch.randn(16000), generator=torch.Generator().manual_seed(0))
    >>> 8000 <= len(view) <= 16000
    True
    """

    def __init__(
        self,
        *,
        min_crop: float = 1.0,
        max_samples: int | None = None,
        min_samples: int = 1,
        gain_db: float = 0.0,
        fade: float = 0.0,
        snr_db: tuple[float, float] | None = None,
    ):
        self.min_crop = min_crop
        self.max_samples = max_samples
        self.min_samples = min_samples
        self.gain_db = gain_db
        self.fade = fade
        self.snr_db = snr_db

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        out = random_crop(
            clip,
            min_fraction=self.min_crop,
            max_samples=self.max_samples,
            min_samples=self.min_samples,
            generator=generator,
        )
        if self.gain_db:
            out = random_gain(out, max_db=self.gain_db, generator=generator)
        if self.fade:
            out = linear_fade(out, max_fraction=self.fade, generator=generator)
        if self.snr_db is not None:
            out = mix_noise(out, snr_db=self.snr_db, generator=generator)
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({params})"


def weak_augmentation(*, max_samples: int | None = None, min_samples: int = 1) -> AudioAugmentation:
    """Mild views: keep 90-100 % of the clip, gain within +/- 3 dB.

    Examples
    --------
    >>> weak_augmentation(min_samples=1120).gain_db
    3.0
    """
    return AudioAugmentation(
        min_crop=0.9, max_samples=max_samples, min_samples=min_samples, gain_db=3.0
    )


def strong_augmentation(
    *, max_samples: int | None = None, min_samples: int = 1
) -> AudioAugmentation:
    """Heavy views: keep 60-100 % of the clip, +/- 6 dB, fades up to 20 %, noise at 10-30 dB SNR.

    Examples
    --------
    >>> strong_augmentation().snr_db
    (10.0, 30.0)
    """
    return AudioAugmentation(
        min_crop=0.6,
        max_samples=max_samples,
        min_samples=min_samples,
        gain_db=6.0,
        fade=0.2,
        snr_db=(10.0, 30.0),
    )
