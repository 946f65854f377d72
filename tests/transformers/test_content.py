"""The content view: trim_silence, content_view and group_by on the embedders."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skaudiocluster import BYOLAEmbedder, SpectrogramTransformer
from skaudiocluster.transformers import CONTENT_FRAMES, content_view, trim_silence

finite = st.floats(-100, 100, allow_nan=False, width=32)
sequences = st.integers(1, 30).flatmap(lambda n: arrays(np.float64, (n, 3), elements=finite))


@settings(max_examples=60, deadline=None)
@given(sequences, st.floats(-1e3, 1e3), st.integers(2, 16))
def test_a_constant_offset_of_every_frame_is_removed(sequence, offset, n_frames):
    rows = content_view([sequence, sequence + offset], n_frames=n_frames)
    assert rows.shape == (2, n_frames * 3)
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-3 * (1 + abs(offset)))


@settings(max_examples=40, deadline=None)
@given(sequences)
def test_resampling_keeps_the_ends_and_the_order(sequence):
    centred = sequence - sequence.mean(axis=0)
    frames = content_view([sequence], n_frames=max(2, len(sequence) * 2 - 1))[0].reshape(-1, 3)
    np.testing.assert_allclose(frames[0], centred[0], atol=1e-3)
    np.testing.assert_allclose(frames[-1], centred[-1], atol=1e-3)
    if len(sequence) > 1:  # every second resampled frame is an original one
        np.testing.assert_allclose(frames[::2], centred, atol=1e-3)


def test_a_slower_sequence_gives_the_same_row():
    def said(n_frames):
        t = np.linspace(0, 1, n_frames)
        return np.stack([np.sin(3 * t), t], axis=1)

    fast, slow = said(50), said(200)
    np.testing.assert_allclose(content_view([fast])[0], content_view([slow])[0], atol=0.01)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 4000), st.integers(160, 4000), st.integers(0, 4000), st.floats(0.01, 1))
def test_trim_silence_keeps_the_sound_and_drops_the_silence(before, length, after, level):
    clip = np.concatenate([np.zeros(before), np.full(length, level), np.zeros(after)])
    trimmed = trim_silence(clip, 16000)
    assert np.all(trimmed[400:-400] == level)  # the sound stays (frames reach 400 past it)
    assert len(trimmed) <= length + 2 * 400  # silence beyond one frame either side goes


def test_trim_silence_leaves_silent_and_short_clips_alone():
    assert len(trim_silence(np.zeros(1000), 16000)) == 1000
    assert len(trim_silence(np.ones(100), 16000)) == 100


def _word(pitch: float, rising: bool, delay: float, rng) -> np.ndarray:
    """A 0.4 s chirp (its direction is the 'word', its pitch the 'voice') after a pause."""
    t = np.arange(int(0.4 * 16000)) / 16000
    sweep = np.linspace(0, 1, len(t)) if rising else np.linspace(1, 0, len(t))
    frequency = pitch * (1 + 1.5 * sweep)
    tone = np.sin(2 * np.pi * np.cumsum(frequency) / 16000) * np.hanning(len(t))
    return np.concatenate([np.zeros(int(delay * 16000)), tone]) + 1e-4 * rng.normal(
        size=int(delay * 16000) + len(t)
    )


@pytest.fixture(scope="module")
def words():
    """Two words (rising, falling) said by two voices (low, high), at random delays."""
    rng = np.random.default_rng(0)
    clips, word, voice = [], [], []
    for index in range(40):
        rising, high = index % 2 == 0, (index // 2) % 2 == 0
        clips.append(_word(600 if high else 200, rising, rng.uniform(0, 0.3), rng))
        word.append(int(rising))
        voice.append(int(high))
    return clips, np.asarray(word), np.asarray(voice)


def _nearest_share(X: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose nearest other row has their label."""
    distance = ((X[:, None] - X[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    return float(np.mean(labels[distance.argmin(1)] == labels))


def test_spectrogram_group_by_switches_from_voice_to_word(words):
    clips, word, voice = words
    source = SpectrogramTransformer().fit_transform(clips)
    content = SpectrogramTransformer(group_by="content").fit_transform(clips)
    assert content.shape == (len(clips), CONTENT_FRAMES * 12)
    assert _nearest_share(source, voice) == 1.0
    assert _nearest_share(content, word) == 1.0


def test_byola_content_view_has_one_frame_row_per_clip(words):
    clips, _, _ = words
    embedder = BYOLAEmbedder(weights=None, group_by="content", random_state=0)
    content = embedder.fit_transform(clips[:4])
    assert content.shape == (4, CONTENT_FRAMES * 512)
    frames = embedder.frames(clips[:1])[0]
    assert frames.shape[1] == 512 and 3 <= len(frames) <= 10
    np.testing.assert_allclose(embedder.transform(clips[:4]), content, atol=1e-5)


@pytest.mark.parametrize(
    "params", [{"kind": "chroma"}, {"pooling": None}], ids=["chroma", "no-pooling"]
)
def test_content_view_needs_mel_frames(params, words):
    with pytest.raises(ValueError, match='group_by="content"'):
        SpectrogramTransformer(group_by="content", **params).fit(words[0][:2])


def test_frames_are_the_untrimmed_mfccs(words):
    clips, _, _ = words
    embedder = SpectrogramTransformer().fit(clips[:2])
    frames = embedder.frames(clips[:2])
    assert [f.shape for f in frames] == [(1 + len(c) // 160, 12) for c in clips[:2]]


def test_clips_of_one_frame_warn_that_their_content_is_empty():
    clips = [np.random.default_rng(0).normal(size=1600) for _ in range(3)]  # 0.1 s: 1 frame
    embedder = BYOLAEmbedder(weights=None, group_by="content", random_state=0)
    with pytest.warns(UserWarning, match="3 of 3 clips give one frame"):
        content = embedder.fit_transform(clips)
    assert not content.any()
