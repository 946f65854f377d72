"""SpeakerEmbedder: parity with Resemblyzer, the published framing, trimming, errors, pickling."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from skaudiocluster.audio import resample
from skaudiocluster.transformers import _weights
from skaudiocluster.transformers._speaker_net import (
    HOP,
    N_FFT,
    SEGMENT,
    MelFrontend,
    _mel_fbank,
    normalise_volume,
    segment,
    voiced_mask,
    window_starts,
)
from skaudiocluster.transformers._weights import GE2E_RESEMBLYZER
from skaudiocluster.transformers.speaker import SpeakerEmbedder

REFERENCE = Path(__file__).parent / "data" / "speaker_reference.npz"


def _clips(seed=0, lengths=(300, 4000, 9000, 16000, 30000)):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=0.1, size=n).astype(np.float32) for n in lengths]


@pytest.fixture(scope="module")
def random_embedder():
    return SpeakerEmbedder(weights=None, random_state=0).fit(_clips())


@pytest.fixture(scope="module")
def reference(shared_dir, make_speaker_reference):
    ref = np.load(REFERENCE)
    fsdd = shared_dir / "data" / "fsdd" / "recordings"
    assert fsdd.is_dir(), f"missing shared folder {fsdd}"
    waves = make_speaker_reference.reference_waveforms(fsdd)
    # the same waveforms Resemblyzer embedded (decoded and resampled the same way)
    assert [len(w) for w in waves] == ref["n_samples"].tolist()
    assert_allclose([np.abs(w).astype(np.float64).sum() for w in waves], ref["abs_sum"], 1e-6)
    return ref, waves


# --------------------------------------------------------------------------- parity


def test_matches_resemblyzer_embed_utterance_on_the_same_waveforms(reference, ge2e_weights):
    ref, waves = reference
    emb = SpeakerEmbedder(ge2e_weights, trim_db=None).fit(waves).transform(waves)
    diff = float(np.abs(emb - ref["emb"]).max())
    print(f"max abs difference to Resemblyzer 0.1.4: {diff:.2e}")
    assert diff <= 1e-4
    # the four long clips have 2-3 partial windows each: the framing is the published one
    assert [len(window_starts(len(w))) for w in waves[-4:]] != [1, 1, 1, 1]


def test_energy_trimming_stays_close_to_webrtc_trimming(reference, ge2e_weights):
    ref, waves = reference
    est = SpeakerEmbedder(ge2e_weights).fit(waves)
    cosine = np.sum(est.transform(waves) * ref["emb_webrtc"], axis=1)
    print(f"cosine to WebRTC-trimmed embeddings: min {cosine.min():.4f}, mean {cosine.mean():.4f}")
    assert cosine.min() >= 0.97 and cosine.mean() >= 0.99
    kept = np.array([len(est.preprocess(w)) for w in waves])
    assert abs(kept.sum() / ref["n_kept_webrtc"].sum() - 1) < 0.1


def test_module_keys_are_the_checkpoints_encoder_keys(ge2e_weights):
    state = torch.load(ge2e_weights, weights_only=True, map_location="cpu")["model_state"]
    est = SpeakerEmbedder(ge2e_weights).fit(_clips(lengths=(3000,)))
    encoder_keys = [key for key in state if not key.startswith("similarity_")]
    assert list(est.module_.state_dict()) == encoder_keys
    for key in encoder_keys:
        assert_array_equal(est.module_.state_dict()[key].numpy(), state[key].numpy())


def test_real_speech_from_files_gives_unit_vectors_that_group_by_speaker(fsdd_dir, ge2e_weights):
    names = [f"{d}_{who}_0.wav" for who in ("george", "jackson", "theo") for d in range(4)]
    paths = [str(fsdd_dir / name) for name in names]
    emb = SpeakerEmbedder(ge2e_weights).fit_transform(paths)
    assert emb.shape == (12, 256) and emb.dtype == np.float32
    assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    similarity = emb @ emb.T
    speaker = np.repeat(np.arange(3), 4)
    same = (speaker[:, None] == speaker[None, :]) & ~np.eye(12, dtype=bool)
    other = speaker[:, None] != speaker[None, :]
    assert similarity[same].mean() > similarity[other].mean() + 0.1


@pytest.mark.slow  # 3,000 files embedded (about 20 s on one core), then UMAP 3 times
def test_fsdd_by_speaker_umap_kmeans_reaches_095(fsdd_speaker_ge2e):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from skaudiocluster.cluster._neighbors import umap_layout

    X, y = fsdd_speaker_ge2e["X"], fsdd_speaker_ge2e["speaker"]
    assert X.shape == (3000, 256)
    for seed in range(3):
        labels = KMeans(6, n_init=10, random_state=seed).fit_predict(umap_layout(X, 10, seed))
        nmi = normalized_mutual_info_score(y, labels)
        print(f"seed {seed}: UMAP + k-means NMI {nmi:.3f}")
        assert nmi >= 0.95, (seed, nmi)


@pytest.mark.slow  # three SPICE fits at their defaults, two at a time
def test_fsdd_by_speaker_spice_reaches_095(fit_seeds, fsdd_speaker_ge2e):
    # measured here: 0.969 / 0.972 / 0.970; bench_quality (docs/benchmark.rst): SPICE
    # 0.972 / 0.969 / 0.971, TEMI 0.975 / 0.982 / 0.965, DeepDPM 0.964 / 0.977 / 0.970
    from sklearn.metrics import normalized_mutual_info_score

    from skaudiocluster import SPICEClusterer

    X, y = fsdd_speaker_ge2e["X"], fsdd_speaker_ge2e["speaker"]
    for seed, fit in enumerate(fit_seeds(SPICEClusterer(n_clusters=6), X)):
        nmi = normalized_mutual_info_score(y, fit.labels_)
        print(f"seed {seed}: SPICE NMI {nmi:.3f}")
        assert nmi >= 0.95, (seed, nmi)


# --------------------------------------------------------------------------- the recipe


@pytest.mark.parametrize(
    "n_samples, starts",
    [
        (1, [0]),
        (8000, [0]),  # shorter than a window: one zero-padded window
        (25440, [0]),  # 1.59 s
        (25600, [0]),  # 160 frames + 1: a second window would cover 1/160 of itself
        (48000, [0, 77, 154]),
        (16000 * 10, [77 * i for i in range(12)]),  # 1001 frames
    ],
)
def test_window_starts_follow_the_published_rule(n_samples, starts):
    assert window_starts(n_samples).tolist() == starts


def test_window_starts_coverage_and_rate():
    # 3 s: the third window starts at 1.54 s and covers (48000 - 24640) / 25600 = 0.91
    assert window_starts(48000, min_coverage=0.95).tolist() == [0, 77]
    assert window_starts(48000, rate=0.625).tolist() == [0, 160]
    with pytest.raises(ValueError, match="window step"):
        window_starts(48000, rate=0.5)


def test_segments_give_the_centred_frames_of_the_whole_clip():
    clip = _clips(lengths=(50000,))[0]
    frontend = MelFrontend()
    whole = torch.stft(
        torch.from_numpy(clip),
        N_FFT,
        HOP,
        N_FFT,
        torch.hann_window(N_FFT),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    whole = (frontend.fbank @ whole.abs().square()).T.numpy()  # (frames, 40)
    for start in window_starts(len(clip)):
        window = frontend(torch.from_numpy(segment(clip, int(start)))[None])[0].numpy()
        expected = np.zeros_like(window)
        rows = whole[start : start + 160]
        expected[: len(rows)] = rows
        # past the clip's last frame the segment is zeros, as in Resemblyzer's padding
        n = min(160, len(whole) - start - 2)
        assert_allclose(window[:n], expected[:n], rtol=1e-4, atol=1e-6)
    assert segment(clip, 0).shape == (SEGMENT,)


@pytest.mark.extras("librosa")
def test_mel_filterbank_is_librosas_slaney_filterbank():
    import librosa

    expected = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)
    assert_allclose(_mel_fbank().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_volume_is_raised_to_minus_30_dbfs_never_lowered():
    quiet = _clips(lengths=(8000,))[0] * 0.001
    raised = normalise_volume(quiet)
    assert_allclose(20 * np.log10(np.sqrt(np.mean(raised.astype(np.float64) ** 2))), -30, atol=1e-3)
    loud = quiet * 1000
    assert normalise_volume(loud) is loud
    silent = np.zeros(100, np.float32)
    assert_array_equal(normalise_volume(silent), silent)


def test_quiet_and_loud_copies_of_a_clip_embed_alike(random_embedder):
    clip = _clips(seed=3, lengths=(12000,))[0] * 0.01  # well below -30 dBFS
    out = random_embedder.transform([clip, clip * 0.1, clip * 3])
    assert_allclose(out[1], out[0], atol=1e-5)
    assert_allclose(out[2], out[0], atol=1e-5)


def test_trimming_cuts_long_silences_and_keeps_short_ones():
    rng = np.random.default_rng(0)
    speech = rng.normal(scale=0.1, size=4800).astype(np.float32)  # 300 ms
    long_gap = np.concatenate([speech, np.zeros(16000, np.float32), speech])
    kept = voiced_mask(long_gap, 40.0)
    assert 9600 <= kept.sum() <= 9600 + 2 * 4 * 480  # both bursts, at most 120 ms around each
    assert kept[:4800].all() and kept[-4800:].all()
    short_gap = np.concatenate([speech, np.zeros(2400, np.float32), speech])  # 150 ms
    assert voiced_mask(short_gap, 40.0).all()
    assert voiced_mask(speech[:1000], 40.0).all()  # shorter than the smoothing: all kept
    assert voiced_mask(np.zeros(5000, np.float32), 40.0).all()  # silent: all kept


def test_trimming_makes_a_clip_with_a_long_silence_embed_like_the_clip_without(random_embedder):
    speech = _clips(seed=5, lengths=(9600, 9600))
    gap = np.concatenate([speech[0], np.zeros(32000, np.float32), speech[1]])
    joined = np.concatenate(speech)
    trimmed, untrimmed = clone(random_embedder), clone(random_embedder).set_params(trim_db=None)
    trimmed.module_ = untrimmed.module_ = random_embedder.module_
    trimmed.device_ = untrimmed.device_ = random_embedder.device_
    a, b = trimmed.transform([gap, joined])
    assert float(a @ b) > float(untrimmed.transform([gap])[0] @ b)


# --------------------------------------------------------------------------- the estimator


def test_shape_dtype_and_unit_norm(random_embedder):
    out = random_embedder.transform(_clips(seed=1))
    assert out.shape == (5, 256) and out.dtype == np.float32
    assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert random_embedder.get_feature_names_out()[0] == "speakerembedder0"


def test_windows_are_batched_across_clips_and_bounded(random_embedder):
    clips = _clips(seed=2, lengths=(800, 16000 * 30, 5000, 16000 * 4))
    est = clone(random_embedder).set_params(batch_size=7)
    batches = list(est._window_batches(clips))
    assert max(len(owners) for owners, _ in batches) == 7
    assert all(segments.shape[1:] == (SEGMENT,) for _, segments in batches)
    per_clip = np.bincount(np.concatenate([owners for owners, _ in batches]))
    assert per_clip.tolist() == [len(window_starts(len(est.preprocess(c)))) for c in clips]
    assert per_clip[1] >= 38  # 30 s at 1.3 windows per second


def test_embedding_does_not_depend_on_batch_size_or_batch_mates(random_embedder):
    clips = _clips(seed=4, lengths=(1500, 16000 * 3, 4100, 7000, 23456))
    est = clone(random_embedder)
    est.module_, est.device_ = random_embedder.module_, random_embedder.device_
    reference = est.set_params(batch_size=64).transform(clips)
    for batch_size in (1, 3):
        assert_allclose(
            est.set_params(batch_size=batch_size).transform(clips), reference, atol=1e-5
        )
    alone = np.concatenate([est.transform([clip]) for clip in clips[::-1]])[::-1]
    assert_allclose(alone, reference, atol=1e-5)


def test_resamples_in_memory_input(random_embedder):
    clip = _clips(seed=3, lengths=(8000,))[0]
    est = clone(random_embedder).set_params(sample_rate=8000).fit(_clips())
    out = est.transform([clip])
    assert out.shape == (1, 256) and np.all(np.isfinite(out))
    assert_allclose(out, random_embedder.transform([resample(clip, 8000, 16000)]), atol=1e-6)


def test_pickle_round_trip_gives_identical_embeddings(random_embedder):
    clips = _clips(seed=6)
    loaded = pickle.loads(pickle.dumps(random_embedder))
    assert loaded.device_ == torch.device("cpu")
    assert_array_equal(loaded.transform(clips), random_embedder.transform(clips))


def test_random_state_repeats_random_init():
    clips = _clips(lengths=(4000, 9000))
    first = SpeakerEmbedder(weights=None, random_state=7).fit_transform(clips)
    assert_array_equal(first, SpeakerEmbedder(weights=None, random_state=7).fit_transform(clips))
    assert not np.allclose(
        first, SpeakerEmbedder(weights=None, random_state=8).fit_transform(clips)
    )


def test_silent_clip_embeds_finitely(random_embedder):
    out = random_embedder.transform([np.zeros(4000, np.float32)])
    assert np.all(np.isfinite(out))


def test_verbose_shows_progress(random_embedder, capsys):
    est = clone(random_embedder).set_params(verbose=1)
    est.module_, est.device_ = random_embedder.module_, random_embedder.device_
    est.transform(_clips(lengths=(4000, 5000)))
    assert "embedding" in capsys.readouterr().err


@pytest.mark.parametrize(
    "params",
    [{"rate": 0.5}, {"rate": 101}, {"min_coverage": 0.0}, {"trim_db": -3.0}, {"batch_size": 0}],
)
def test_invalid_parameters_are_refused(params):
    with pytest.raises(InvalidParameterError):
        SpeakerEmbedder(weights=None, **params).fit(_clips(lengths=(4000,)))


# --------------------------------------------------------------------------- weights


def test_registered_weights_are_documented_and_hash_pinned():
    info = _weights.weights_info("speaker-ge2e-resemblyzer")
    assert info is GE2E_RESEMBLYZER
    assert info.sha256 == "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
    assert info.url == (
        "https://github.com/resemble-ai/Resemblyzer/raw/master/resemblyzer/pretrained.pt"
    )
    assert "Apache-2.0" in info.licence and "Generalized End-to-End Loss" in info.citation


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SKAUDIOCLUSTER_CACHE", str(folder))
    monkeypatch.setattr(_weights, "_VERIFIED", set())
    return folder


def test_cached_weights_are_hash_checked_on_load(cache, ge2e_weights, monkeypatch):
    def no_network(url, dst, hash_prefix=None, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    clips = _clips(lengths=(4000,))
    with pytest.raises(
        ValueError, match="could not obtain weights 'speaker-ge2e-resemblyzer'"
    ) as err:
        SpeakerEmbedder().fit(clips)
    assert str(cache / "resemblyzer" / "pretrained.pt") in str(err.value)
    target = cache / "resemblyzer" / "pretrained.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ge2e_weights, target)
    from_cache = SpeakerEmbedder().fit(clips).transform(clips)
    assert_array_equal(from_cache, SpeakerEmbedder(ge2e_weights).fit(clips).transform(clips))
    with open(target, "r+b") as handle:  # one byte changed: the hash no longer matches
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 1]))
    monkeypatch.setattr(_weights, "_VERIFIED", set())
    with pytest.raises(ValueError, match="is corrupt"):
        SpeakerEmbedder().fit(clips)


def test_download_checks_the_hash(cache, monkeypatch):
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        raise RuntimeError('invalid hash value (expected "39373b", got "000000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(ValueError, match="is corrupt"):
        SpeakerEmbedder().fit(_clips(lengths=(4000,)))
    assert calls == [(GE2E_RESEMBLYZER.url, GE2E_RESEMBLYZER.sha256)]


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    clips = _clips(lengths=(4000,))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        SpeakerEmbedder(weights=garbage).fit(clips)
    partial = tmp_path / "partial.pt"
    torch.save({"model_state": {"linear.weight": torch.zeros(256, 256)}}, partial)
    with pytest.raises(ValueError, match="does not fit the GE2E speaker encoder: missing key"):
        SpeakerEmbedder(weights=partial).fit(clips)
    with pytest.raises(ValueError, match="registered for another network, not for SpeakerEmb"):
        SpeakerEmbedder(weights="byola-v1-d512").fit(clips)
    with pytest.raises(ValueError, match="neither an existing file nor a registered name"):
        SpeakerEmbedder(weights="ge2e").fit(clips)


def test_a_plain_state_dict_loads(tmp_path, random_embedder):
    path = tmp_path / "plain.pt"
    torch.save(random_embedder.module_.state_dict(), path)
    clips = _clips(seed=8)
    assert_array_equal(
        SpeakerEmbedder(weights=path).fit(clips).transform(clips), random_embedder.transform(clips)
    )
