import copy
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone

from skaudiocluster._torch import forked_rng
from skaudiocluster.transformers import _byola_pretrain
from skaudiocluster.transformers._byola_net import AudioNTT2020
from skaudiocluster.transformers.byola import BYOLAEmbedder


def _fixture_path(shared_dir):
    path = shared_dir / "reference" / "byola_d512_fsdd.npz"
    assert path.is_file(), f"missing shared file {path}"
    return path


def _clips(seed=0, lengths=(4000, 9000, 12345, 16000, 2500)):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=0.1, size=n).astype(np.float32) for n in lengths]


@pytest.fixture(scope="module")
def reference(shared_dir):
    ref = np.load(_fixture_path(shared_dir))
    waves = np.split(ref["wav16k_concat"], np.cumsum(ref["len_16k"])[:-1])
    return ref, waves


@pytest.fixture(scope="module")
def random_embedder():
    return BYOLAEmbedder(weights=None, random_state=0).fit(_clips())


# The fixture's log-mels were computed where MKL ran its SSE FFT kernels. On AVX-512 CPUs
# MKL's FFT rounds differently: torchaudio's own MelSpectrogram then differs from the stored
# log-mels by 1.3e-3 in near-silent bands (a float64 STFT differs as much), which moves
# embeddings by up to 2.8e-3. A child process pinned to the SSE kernels removes that
# CPU-dependent rounding, so the tolerances test this implementation and nothing else.
_FIXTURE_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    from numpy.testing import assert_allclose
    from skaudiocluster.transformers.byola import BYOLAEmbedder
    from skaudiocluster.transformers._byola_net import LogMelFrontend, padded_waveforms

    ref = np.load(sys.argv[1])
    waves = np.split(ref["wav16k_concat"], np.cumsum(ref["len_16k"])[:-1])
    emb = BYOLAEmbedder(sys.argv[2], unit_sec=1.0).fit(waves)
    assert_allclose([emb.mean_, emb.std_], ref["norm_stats"], rtol=1e-6)
    assert_allclose(emb.transform(waves), ref["emb_unit1s"], rtol=1e-4, atol=1e-3)
    padded = [np.pad(w, ((16000 - len(w)) // 2, 16000 - len(w) - (16000 - len(w)) // 2))
              for w in waves]
    lms = LogMelFrontend()(padded_waveforms(padded)[0]).numpy()
    assert_allclose(lms, ref["lms_unit1s_raw"], atol=1e-3)
    full = BYOLAEmbedder(sys.argv[2], norm_stats=tuple(ref["norm_stats"])).fit(waves)
    assert_allclose(full.transform(waves), ref["emb_full"], rtol=1e-4, atol=1e-3)
""")


def test_reproduces_official_embeddings(shared_dir, byola_d512_weights):
    ref_path = _fixture_path(shared_dir)
    env = dict(os.environ, MKL_ENABLE_INSTRUCTIONS="SSE4_2", OMP_NUM_THREADS="2")
    run = subprocess.run(
        [sys.executable, "-c", _FIXTURE_CHECK, str(ref_path), str(byola_d512_weights)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr


def test_encoder_reproduces_official_embeddings_from_fixture_log_mels(
    reference, byola_d512_weights
):
    ref, waves = reference
    emb = BYOLAEmbedder(byola_d512_weights, norm_stats=tuple(ref["norm_stats"])).fit(waves)
    lms = (torch.from_numpy(ref["lms_unit1s_raw"]) - emb.mean_) / emb.std_
    with torch.inference_mode():
        out = emb.module_(lms.unsqueeze(1)).numpy()
    assert_allclose(out, ref["emb_unit1s"], rtol=1e-4, atol=1e-3)


def test_matches_official_embeddings_up_to_fft_rounding(reference, byola_d512_weights):
    # in this process MKL may use any FFT kernels; see the comment above _FIXTURE_CHECK
    ref, waves = reference
    emb = BYOLAEmbedder(byola_d512_weights, norm_stats=tuple(ref["norm_stats"])).fit(waves)
    assert_allclose(emb.transform(waves), ref["emb_full"], rtol=1e-4, atol=5e-3)
    emb.set_params(unit_sec=1.0)
    assert_allclose(emb.transform(waves), ref["emb_unit1s"], rtol=1e-4, atol=5e-3)


def test_module_keys_match_official_checkpoint(byola_d512_weights):
    state = torch.load(byola_d512_weights, weights_only=True)
    emb = BYOLAEmbedder(byola_d512_weights).fit(_clips(lengths=(3000,)))
    assert list(emb.module_.state_dict()) == list(state)
    for key, value in state.items():
        assert_array_equal(emb.module_.state_dict()[key].numpy(), value.numpy())


def test_embedding_does_not_depend_on_batch_mates(random_embedder):
    clips = _clips(seed=1, lengths=(1500, 4000, 4100, 7000, 16000, 23456))
    together = random_embedder.set_params(batch_size=6).transform(clips)
    alone = np.concatenate([random_embedder.transform([clip]) for clip in clips])
    reversed_ = random_embedder.set_params(batch_size=4).transform(clips[::-1])[::-1]
    assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
    assert_allclose(reversed_, alone, rtol=1e-5, atol=1e-5)


def test_unit_sec_pads_and_crops_centred(random_embedder):
    est = clone(random_embedder).set_params(unit_sec=0.5).fit(_clips())
    long, short = _clips(seed=2, lengths=(12000, 5000))
    cropped, padded = est.transform([long, short])
    est.set_params(unit_sec=None)
    assert_allclose(cropped, est.transform([long[2000:10000]])[0], rtol=1e-5, atol=1e-5)
    assert_allclose(padded, est.transform([np.pad(short, (1500, 1500))])[0], rtol=1e-5, atol=1e-5)


def test_resamples_in_memory_input(random_embedder):
    clip = _clips(seed=3, lengths=(8000,))[0]
    est = clone(random_embedder).set_params(sample_rate=8000).fit(_clips())
    out = est.transform([clip])
    assert out.shape == (1, 512) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert not np.allclose(out, random_embedder.transform([clip]))


def test_learned_norm_stats_are_population_stats_of_valid_frames():
    clips = _clips()
    est = BYOLAEmbedder(weights=None, batch_size=2).fit(clips)
    from skaudiocluster.transformers._byola_net import LogMelFrontend, padded_waveforms

    values = np.concatenate(
        [LogMelFrontend()(padded_waveforms([clip])[0]).numpy().ravel() for clip in clips]
    ).astype(np.float64)
    assert_allclose([est.mean_, est.std_], [values.mean(), values.std()], rtol=1e-6)


def test_fixed_norm_stats_are_used():
    est = BYOLAEmbedder(weights=None, norm_stats=(-5.5, 5.0)).fit(_clips())
    assert (est.mean_, est.std_) == (-5.5, 5.0)
    with pytest.raises(ValueError, match="norm_stats"):
        BYOLAEmbedder(weights=None, norm_stats=(1.0, 0.0)).fit(_clips())


def test_clone_and_params():
    est = BYOLAEmbedder(weights=None, unit_sec=1.0, batch_size=8)
    params = est.get_params()
    assert params["unit_sec"] == 1.0 and params["batch_size"] == 8 and params["weights"] is None
    twin = clone(est).set_params(batch_size=3)
    assert twin.batch_size == 3 and est.batch_size == 8
    assert not hasattr(twin, "module_")


def test_pickle_round_trip_gives_identical_embeddings(random_embedder):
    clips = _clips(seed=4)
    loaded = pickle.loads(pickle.dumps(random_embedder))
    assert_array_equal(loaded.transform(clips), random_embedder.transform(clips))


def test_with_module_is_a_new_fitted_embedder_of_the_given_network(random_embedder):
    trained = copy.deepcopy(random_embedder.module_).train()
    with torch.no_grad():
        next(trained.parameters()).mul_(2.0)
    new = random_embedder.with_module(trained)
    assert new.module_ is trained and not trained.training
    assert new.get_params() == random_embedder.get_params() and new.mean_ == random_embedder.mean_
    assert not np.allclose(new.transform(_clips()), random_embedder.transform(_clips()))
    again = random_embedder.with_module(copy.deepcopy(random_embedder.module_))
    assert_array_equal(again.transform(_clips()), random_embedder.transform(_clips()))


def test_random_state_repeats_random_init():
    clips = _clips()
    first = BYOLAEmbedder(weights=None, random_state=7).fit_transform(clips)
    assert_array_equal(first, BYOLAEmbedder(weights=None, random_state=7).fit_transform(clips))
    assert not np.allclose(first, BYOLAEmbedder(weights=None, random_state=8).fit_transform(clips))


def test_log_mel_feeds_module_differentiably(random_embedder):
    waves = torch.from_numpy(np.stack(_clips(seed=5, lengths=(8000, 8000))))
    module = random_embedder.module_
    out = module(*random_embedder.log_mel(waves))
    out.sum().backward()
    assert module.features[0].weight.grad is not None
    module.zero_grad(set_to_none=True)
    assert_allclose(
        out.detach().numpy(), random_embedder.transform(list(waves.numpy())), rtol=1e-4, atol=1e-4
    )


def test_bad_checkpoint_raises_clear_error(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        BYOLAEmbedder(weights=garbage).fit(_clips())
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="no BYOL-A encoder tensors"):
        BYOLAEmbedder(weights=wrong).fit(_clips())
    partial = tmp_path / "partial.pth"
    torch.save({"fc.0.weight": torch.zeros(512, 512)}, partial)
    with pytest.raises(ValueError, match="does not fit the BYOL-A v1 encoder: missing key"):
        BYOLAEmbedder(weights=partial).fit(_clips())


def test_d_must_match_checkpoint(byola_d512_weights):
    with pytest.raises(ValueError, match="d=1024"):
        BYOLAEmbedder(weights=byola_d512_weights, d=1024).fit(_clips())


def test_training_checkpoint_prefixes_are_stripped(tmp_path, byola_d512_weights):
    state = torch.load(byola_d512_weights, weights_only=True)
    wrapped = tmp_path / "train.pth"
    torch.save({"state_dict": {f"online_encoder.net.{k}": v for k, v in state.items()}}, wrapped)
    clips = _clips()
    assert_array_equal(
        BYOLAEmbedder(wrapped).fit_transform(clips),
        BYOLAEmbedder(byola_d512_weights).fit_transform(clips),
    )


def test_unit_sec_shorter_than_encoder_minimum_is_rejected():
    with pytest.raises(ValueError, match="70 ms"):
        BYOLAEmbedder(weights=None, unit_sec=0.05).fit(_clips())


def test_feature_names_out(random_embedder):
    names = random_embedder.get_feature_names_out()
    assert len(names) == 512 and names[0] == "byolaembedder0"


def _kmeans_nmi(X, labels, k):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    predicted = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(X)
    return normalized_mutual_info_score(labels, predicted)


@pytest.mark.slow
def test_fsdd_speakers_cluster_better_than_log_mel_statistics(
    fsdd_byola_d512, fsdd_dir, record_property
):
    from skaudiocluster.datasets import load_fsdd
    from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

    X, speaker, digit = fsdd_byola_d512["X"], fsdd_byola_d512["speaker"], fsdd_byola_d512["digit"]
    assert X.shape == (3000, 512) and X.dtype == np.float32
    byola_speaker = _kmeans_nmi(X, speaker, 6)
    paths, _ = load_fsdd(fsdd_dir, target="speaker")
    spectrogram_speaker = _kmeans_nmi(SpectrogramTransformer().fit_transform(paths), speaker, 6)
    byola_digit = _kmeans_nmi(X, digit, 10)
    record_property("byola_speaker_nmi", byola_speaker)
    record_property("spectrogram_speaker_nmi", spectrogram_speaker)
    record_property("byola_digit_nmi", byola_digit)
    print(
        f"speaker NMI: BYOL-A {byola_speaker:.3f}, log-mel mean+std {spectrogram_speaker:.3f}; "
        f"digit NMI: BYOL-A {byola_digit:.3f}"
    )
    assert byola_speaker >= 0.80
    assert byola_speaker > spectrogram_speaker


def test_pretraining_is_seeded_checkpointed_and_changes_the_encoder(tmp_path):
    clips = _clips(seed=6, lengths=(8000, 12000, 20000, 6000))
    params = dict(weights=None, pretrain_max_epochs=1, pretrain_batch_size=2, random_state=0)
    rng_state = torch.random.get_rng_state()
    first = BYOLAEmbedder(checkpoint_dir=tmp_path, **params).fit(clips)
    assert torch.equal(torch.random.get_rng_state(), rng_state), "global torch RNG was touched"
    untrained = BYOLAEmbedder(weights=None, random_state=0).fit(clips)
    assert [epoch["epoch"] for epoch in first.pretrain_history_] == [1]
    assert all(np.isfinite(epoch["train_loss"]) for epoch in first.pretrain_history_)
    assert "batches" not in first.pretrain_history_[0]
    assert not first.module_.training
    assert not np.allclose(first.transform(clips), untrained.transform(clips))
    torch.manual_seed(123)  # the user's global stream must not matter either
    again = BYOLAEmbedder(**params).fit(clips)
    assert_array_equal(again.transform(clips), first.transform(clips))
    # the skorch checkpoint holds the online branch; its encoder loads as weights
    reloaded = BYOLAEmbedder(
        weights=tmp_path / "byola_params.pt", norm_stats=(first.mean_, first.std_)
    ).fit(clips)
    assert_array_equal(reloaded.transform(clips), first.transform(clips))


def test_pretrain_budget_is_steps_rounded_up_to_epochs_capped_by_epochs():
    clips = _clips()  # 5 clips, batches of 2: 2 steps an epoch
    params = dict(weights=None, pretrain_batch_size=2, random_state=0)
    est = BYOLAEmbedder(**params, pretrain_max_steps=3, pretrain_max_epochs=None).fit(clips)
    assert len(est.pretrain_history_) == 2
    est = BYOLAEmbedder(**params, pretrain_max_steps=30, pretrain_max_epochs=1).fit(clips)
    assert len(est.pretrain_history_) == 1
    assert len(BYOLAEmbedder(**params, pretrain_max_steps=30).fit(clips).pretrain_history_) == 0


def _pretrain_args(**overrides):
    rng = torch.Generator().manual_seed(0)
    log_mels = [torch.randn(64, frames, generator=rng) for frames in (40, 120, 96, 200)]
    args = dict(
        floor=-3.0,
        epochs=1,
        batch_size=2,
        lr=1e-3,
        ema_decay=0.99,
        checkpoint_dir=None,
        device=torch.device("cpu"),
        seed=0,
        verbose=0,
    )
    return log_mels, {**args, **overrides}


@pytest.mark.parametrize("ema_decay", [0.0, 1.0])
def test_pretrain_trains_the_given_encoder_with_an_ema_target(monkeypatch, ema_decay):
    nets = []
    history = _byola_pretrain.epoch_history
    monkeypatch.setattr(
        _byola_pretrain, "epoch_history", lambda fitted: nets.extend(fitted) or history(fitted)
    )
    with forked_rng(0, torch.device("cpu")):
        encoder = AudioNTT2020(16)
    initial = {key: value.clone() for key, value in encoder.state_dict().items()}
    log_mels, args = _pretrain_args(ema_decay=ema_decay)
    with forked_rng(0, torch.device("cpu")):
        rows = _byola_pretrain.pretrain(encoder, log_mels, **args)
    assert [row["epoch"] for row in rows] == [1] and np.isfinite(rows[0]["train_loss"])
    online, target = nets[0].module_, nets[0].target_
    assert target.predictor is None
    assert_array_equal(encoder.fc[0].weight.detach(), online.encoder.fc[0].weight.detach())
    assert not torch.equal(encoder.fc[0].weight, initial["fc.0.weight"])
    # decay 0: the target follows the online branch; decay 1: it keeps the initial weights
    reference = online.encoder.fc[0].weight if ema_decay == 0.0 else initial["fc.0.weight"]
    assert_allclose(target.encoder.fc[0].weight.detach(), reference.detach(), atol=1e-7)


def test_pretrain_repeats_with_the_same_seed():
    def run(seed):
        with forked_rng(0, torch.device("cpu")):
            encoder = AudioNTT2020(16)
        log_mels, args = _pretrain_args(seed=seed)
        with forked_rng(seed, torch.device("cpu")):
            _byola_pretrain.pretrain(encoder, log_mels, **args)
        return encoder.fc[3].weight.detach()

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_interrupted_pretraining_leaves_the_embedder_unfitted(monkeypatch):
    def interrupt(self, online, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(_byola_pretrain.BYOLLoss, "forward", interrupt)
    est = BYOLAEmbedder(weights=None, pretrain_max_epochs=2, pretrain_batch_size=2, random_state=0)
    with pytest.raises(KeyboardInterrupt):
        est.fit(_clips())
    assert not hasattr(est, "module_") and not hasattr(est, "mean_")


def test_transform_stays_on_the_fitted_device_and_pickles_to_cpu(random_embedder):
    est = clone(random_embedder).set_params(device="cpu").fit(_clips())
    clips = _clips(seed=7)
    expected = est.transform(clips)
    # the device parameter is read by fit only: changing it afterwards moves nothing
    est.set_params(device="cuda:0")
    assert_array_equal(est.transform(clips), expected)
    assert est.device_ == torch.device("cpu")
    assert {p.device for p in est.module_.parameters()} == {est.device_}
    est.device_ = torch.device("cuda", 0)  # as after a fit on a GPU
    state = est.__getstate__()
    assert state["device_"] == torch.device("cpu")
    assert {p.device.type for p in state["module_"].parameters()} == {"cpu"}


def test_augmentations_keep_shape_and_stay_finite():
    from skaudiocluster.transformers._byola_pretrain import (
        TRAIN_FRAMES,
        BYOLAViews,
        random_linear_fader,
        random_resize_crop,
    )

    rng = np.random.default_rng(0)
    x = torch.randn(1, 64, TRAIN_FRAMES)
    assert random_resize_crop(x, rng).shape == x.shape
    ramp = random_linear_fader(torch.zeros(1, 64, TRAIN_FRAMES), rng)
    assert torch.allclose(ramp[0, 0], ramp[0, -1]) and ramp.abs().max() <= 1.0
    steps = ramp[0, 0].diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-6)
    views = BYOLAViews([torch.randn(64, 50), torch.randn(64, 300)], floor=-2.0, seed=0)
    batch, _ = BYOLAViews.collate([views[0], views[1]])
    assert batch.shape == (2, 2, 1, 64, TRAIN_FRAMES) and torch.isfinite(batch).all()
    assert abs(float(batch.mean())) < 1e-5 and abs(float(batch.std()) - 1) < 1e-4
    assert len(views.memory) == 2


@pytest.mark.slow
def test_fsdd_pretraining_from_random_init_lowers_loss_and_lifts_speaker_nmi(
    fsdd_dir, record_property
):
    from skaudiocluster.datasets import load_fsdd

    paths, speaker = load_fsdd(fsdd_dir, target="speaker")
    _, digit = load_fsdd(fsdd_dir, target="digit")
    subset = np.sort(np.random.default_rng(0).choice(len(paths), 300, replace=False))
    clips, speaker, digit = [paths[i] for i in subset], speaker[subset], digit[subset]
    untrained = BYOLAEmbedder(weights=None, random_state=0).fit_transform(clips)
    est = BYOLAEmbedder(
        weights=None, random_state=0, pretrain_max_epochs=2, pretrain_batch_size=64, lr=3e-4
    ).fit(clips)
    trained = est.transform(clips)
    losses = [epoch["train_loss"] for epoch in est.pretrain_history_]
    scores = {
        "speaker_nmi_untrained": _kmeans_nmi(untrained, speaker, 6),
        "speaker_nmi_trained": _kmeans_nmi(trained, speaker, 6),
        "digit_nmi_untrained": _kmeans_nmi(untrained, digit, 10),
        "digit_nmi_trained": _kmeans_nmi(trained, digit, 10),
    }
    for name, value in scores.items():
        record_property(name, value)
    print(f"BYOL loss per epoch {losses}; {scores}")
    assert losses[-1] < losses[0]
    assert scores["speaker_nmi_trained"] > scores["speaker_nmi_untrained"]


# --- inputs that used to give silent garbage ---------------------------------------------


def test_fit_on_silent_clips_names_the_cause():
    silent = [np.zeros(8000, dtype=np.float32), np.zeros(16000, dtype=np.float32)]
    with pytest.warns(UserWarning, match="2 training clips have standard deviation 0: .*silent"):
        floored = BYOLAEmbedder(weights=None, random_state=0).fit(silent)
    assert floored.std_ == 1.0
    assert np.isfinite(floored.transform(silent)).all()
    fixed = BYOLAEmbedder(weights=None, norm_stats=(-5.0, 2.0), random_state=0).fit(silent)
    assert np.isfinite(fixed.transform(silent)).all()


def test_silent_clips_among_sounding_ones_embed_finitely(random_embedder):
    clips = [np.zeros(8000, dtype=np.float32), *_clips()]
    assert np.isfinite(BYOLAEmbedder(weights=None, random_state=0).fit_transform(clips)).all()


def test_checkpoint_with_nan_is_refused_naming_file_and_tensor(tmp_path):
    state = AudioNTT2020(512).state_dict()
    state["fc.0.weight"] = torch.full_like(state["fc.0.weight"], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match=r"nan\.pth' is unusable: tensor 'fc\.0\.weight'"):
        BYOLAEmbedder(weights=tmp_path / "nan.pth").fit(_clips())


def test_absurd_amplitude_is_refused_naming_the_clip(random_embedder):
    clips = _clips()
    clips[3] = clips[3] * 1e31
    with pytest.raises(ValueError, match="clip 3 has a sample of absolute value"):
        random_embedder.transform(clips)


def test_non_finite_embeddings_name_the_clip(tmp_path):
    embedder = BYOLAEmbedder(weights=None, random_state=0).fit(_clips())
    with torch.no_grad():
        embedder.module_.fc[3].bias[0] = float("nan")
    path = tmp_path / "first.wav"
    soundfile.write(path, _clips()[0], 16000)
    with pytest.raises(ValueError, match=r"NaN or infinite output for clip 0 \(file '.*first"):
        embedder.transform([path, *_clips()[1:]])


def test_loudest_accepted_samples_give_finite_embeddings():
    # 2**31 is check_audio's limit: the log-mel must not overflow below it
    loud = [np.clip(clip * 10, -1, 1) * 2.0**31 for clip in _clips()]
    assert np.isfinite(BYOLAEmbedder(weights=None, random_state=0).fit_transform(loud)).all()
