"""Waveform augmentations: ranges, shapes, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from skaudiocluster.augment import (
    AudioAugmentation,
    linear_fade,
    mix_noise,
    random_crop,
    random_gain,
    strong_augmentation,
    weak_augmentation,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", range(5))
def test_random_crop_is_a_contiguous_window_within_bounds(seed):
    clip = torch.arange(1000.0)
    crop = random_crop(
        clip, min_fraction=0.3, max_samples=600, min_samples=200, generator=_gen(seed)
    )
    assert 300 <= len(crop) <= 600
    assert torch.equal(crop, clip[int(crop[0]) : int(crop[0]) + len(crop)])


def test_random_crop_keeps_short_clips_whole():
    clip = torch.arange(50.0)
    assert torch.equal(random_crop(clip, min_fraction=0.5, min_samples=100, generator=_gen()), clip)
    assert torch.equal(random_crop(clip, min_fraction=1.0, generator=_gen()), clip)


def test_gain_is_a_bounded_scalar():
    clip = torch.randn(200, generator=_gen())
    out = random_gain(clip, max_db=6.0, generator=_gen(1))
    ratio = out / clip
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))
    assert abs(20 * math.log10(float(ratio[0]))) <= 6.0


def test_fade_is_monotone_at_the_edges_and_keeps_the_middle():
    out = linear_fade(torch.ones(1000), max_fraction=0.2, generator=_gen(2))
    assert torch.all(out > 0) and torch.all(out <= 1)
    assert torch.all(out[500] == 1.0)
    head, tail = out[:200], out[800:]
    assert torch.all(head.diff() >= 0) and torch.all(tail.diff() <= 0)


@pytest.mark.parametrize("snr", [0.0, 10.0, 30.0])
def test_noise_reaches_the_requested_snr(snr):
    clip = torch.sin(torch.arange(48000.0) / 7)
    noisy = mix_noise(clip, snr_db=(snr, snr), generator=_gen(3))
    measured = 10 * torch.log10(clip.square().mean() / (noisy - clip).square().mean())
    assert abs(float(measured) - snr) < 0.2


def test_views_repeat_with_the_seed_and_strong_is_stronger():
    clip = torch.sin(torch.arange(16000.0) / 9)
    weak, strong = weak_augmentation(min_samples=1120), strong_augmentation(min_samples=1120)
    assert torch.equal(weak(clip, generator=_gen(4)), weak(clip, generator=_gen(4)))
    assert not torch.equal(strong(clip, generator=_gen(4)), strong(clip, generator=_gen(5)))
    assert weak.min_crop > strong.min_crop and weak.gain_db < strong.gain_db
    assert weak.snr_db is None and strong.snr_db is not None and strong.fade > 0
    assert "min_crop=0.6" in repr(strong)


def test_identity_augmentation():
    clip = torch.randn(500, generator=_gen())
    assert torch.equal(AudioAugmentation()(clip, generator=_gen()), clip)
