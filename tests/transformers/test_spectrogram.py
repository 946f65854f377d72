import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.pipeline import make_pipeline

from skaudiocluster import SpectrogramTransformer


@pytest.fixture
def clips():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(np.float32) for n in (4000, 16000, 9000, 300, 16000)]


def test_features_do_not_depend_on_batch_mates(clips):
    est = SpectrogramTransformer(batch_size=5).fit(clips)
    together = est.transform(clips)
    alone = np.vstack([est.set_params(batch_size=1).transform([c]) for c in clips])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_training_features_are_standardised_per_band(clips):
    est = SpectrogramTransformer(pooling=None, n_frames=101, n_mels=16).fit(clips[1:2])
    images = est.transform(clips[1:2])
    assert images.shape == (1, 16, 101)
    np.testing.assert_allclose(images[0].mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(images[0].std(axis=1), 1, atol=1e-3)


def test_pooled_shape_and_short_clips_are_padded(clips):
    est = SpectrogramTransformer(n_mels=20, pooling=None, n_frames=50).fit(clips)
    assert est.transform(clips).shape == (5, 20, 50)
    pooled = est.set_params(pooling="meanstd").transform(clips)
    assert pooled.shape == (5, 40) and pooled.dtype == np.float32


def test_pickle_and_clone_round_trip(clips):
    est = SpectrogramTransformer(n_mels=8).fit(clips)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(est.transform(clips), again.transform(clips))
    assert clone(est).get_params() == est.get_params()


def test_invalid_frequency_range_is_rejected(clips):
    with pytest.raises(ValueError, match="f_max"):
        SpectrogramTransformer(f_min=9000.0).fit(clips)


@pytest.mark.slow
def test_fsdd_speaker_clustering_floor(fsdd_dir):
    from skaudiocluster.datasets import load_fsdd

    paths, speaker = load_fsdd(fsdd_dir, target="speaker")
    _, digit = load_fsdd(fsdd_dir, target="digit")
    features = SpectrogramTransformer().fit_transform(paths)
    speaker_nmi = normalized_mutual_info_score(
        speaker, KMeans(6, n_init=10, random_state=0).fit_predict(features)
    )
    digit_nmi = normalized_mutual_info_score(
        digit, KMeans(10, n_init=10, random_state=0).fit_predict(features)
    )
    print(
        f"SpectrogramTransformer + KMeans on FSDD: speaker NMI {speaker_nmi:.3f}, "
        f"digit NMI {digit_nmi:.3f}"
    )
    assert speaker_nmi >= 0.6
    pipe = make_pipeline(SpectrogramTransformer(), KMeans(6, n_init=10, random_state=0))
    labels = pipe.fit_predict(paths[::10])
    assert len(labels) == 300


def test_absurd_amplitude_is_refused_naming_the_clip(clips):
    fitted = SpectrogramTransformer().fit(clips)
    loud = [clip.copy() for clip in clips]
    loud[1] *= 1e30
    with pytest.raises(ValueError, match="clip 1 has a sample of absolute value"):
        fitted.transform(loud)


def test_non_finite_features_name_the_clip(clips):
    fitted = SpectrogramTransformer().fit(clips)
    fitted.mean_[0] = np.inf
    with pytest.raises(
        ValueError, match="SpectrogramTransformer computed a NaN or infinite output"
    ):
        fitted.transform(clips)


def test_loudest_accepted_samples_give_finite_features(clips):
    # 2**31 is check_audio's limit: the power spectra must not overflow below it
    loud = [np.clip(clip, -1, 1) * 2.0**31 for clip in clips]
    assert np.isfinite(SpectrogramTransformer().fit_transform(loud)).all()


# --- chroma ---------------------------------------------------------------------------------


def _hand_chroma(frame: np.ndarray, rate: int) -> np.ndarray:
    """One frame's chroma, by the textbook: Hann, |rfft|^2, each bin to its nearest semitone."""
    n = len(frame)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic Hann
    power = np.abs(np.fft.rfft(frame * window)) ** 2
    chroma = np.zeros(12)
    for k in range(1, len(power)):
        midi = 12 * np.log2(k * rate / n / 440.0) + 69
        chroma[int(np.round(midi)) % 12] += power[k]
    return chroma / chroma.max()


@given(note=st.integers(72, 100), cents=st.floats(-20, 20))
@settings(max_examples=25, deadline=None)
def test_chroma_of_a_pure_tone(note, cents):
    from skaudiocluster.transformers.spectrogram import _Chroma

    rate, n_fft = 16000, 4096  # 3.9 Hz bins: a semitone above C5 spans 8 or more
    freq = 440.0 * 2 ** ((note - 69 + cents / 100) / 12)
    t = np.arange(4 * n_fft) / rate
    tone = np.sin(2 * np.pi * freq * t).astype(np.float32)
    chroma = _Chroma(rate, n_fft, n_fft // 4, 0.0, None)(torch.from_numpy(tone)[None])[0]
    middle = chroma[:, 8].double().numpy()  # a frame well inside the tone
    start = 8 * (n_fft // 4) - n_fft // 2  # centred frames
    expected = _hand_chroma(tone[start : start + n_fft].astype(np.float64), rate)
    np.testing.assert_allclose(middle, expected, atol=1e-4)
    assert int(np.argmax(middle)) == note % 12 and middle[note % 12] == 1.0
    # the Hann main lobe (+-2 bins) stays inside the tone's semitone at 20 cents or less
    assert np.delete(middle, note % 12).max() < 0.1


def test_chroma_features_tell_pitch_classes_apart():
    rate = 16000
    t = np.arange(rate // 2) / rate
    notes = [69, 72, 76, 69 + 12, 72 + 12, 76 + 12]  # A, C, E in two octaves
    clips = [np.sin(2 * np.pi * 440 * 2 ** ((n - 69) / 12) * t) for n in notes]
    est = SpectrogramTransformer(kind="chroma", n_fft=2048, hop_length=512, sample_rate=rate)
    features = est.fit_transform(clips)
    assert features.shape == (6, 24) and est.mean_.shape == (12,)
    labels = KMeans(3, n_init=10, random_state=0).fit_predict(features)
    assert normalized_mutual_info_score([n % 12 for n in notes], labels) == 1.0
    assert est.set_params(pooling=None).transform(clips).shape == (6, 12, 100)
