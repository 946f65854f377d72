"""PaSSTEmbedder: equivalence with hear21passt 0.0.26 (stored fixture) and the estimator contract.

The reference outputs in ``reference/passt_reference.npz`` were computed by
hear21passt with a weight set defined by a NumPy-only rule from each parameter
name (see ``reference/README.md`` in the shared folder); the same weights are
rebuilt here and loaded strictly, so the checkpoint key names are checked too.
"""

import pickle

import numpy as np
import pytest
import torch
from _passt_checkpoint import net_shapes, write_checkpoint, write_one_block_checkpoint
from sklearn.base import clone
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline

from skaudiocluster import PaSSTEmbedder
from skaudiocluster.transformers._passt_frontend import PaSSTFrontend
from skaudiocluster.transformers._passt_net import PaSSTConfig, PaSSTNet, config_from_state_dict

# fit only checks X (PaSST learns nothing from data): one short clip will do
FIT_CLIPS = [np.zeros(3200, dtype=np.float32)]


def reference_signal(n_samples: int) -> np.ndarray:
    """440 Hz tone plus a chirp from 100 Hz rising 390 Hz/s, at 32 kHz (the fixture's input)."""
    t = np.arange(n_samples) / 32000
    x = 0.25 * np.sin(2 * np.pi * 440 * t) + 0.25 * np.sin(2 * np.pi * (100 * t + 195 * t**2))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def reference(shared_dir):
    path = shared_dir / "reference" / "passt_reference.npz"
    assert path.is_file(), f"missing shared file {path}"
    return dict(np.load(path))


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("passt") / "passt-frozen.pt")


@pytest.fixture(scope="module")
def frozen_embedder(frozen_checkpoint):
    return PaSSTEmbedder(weights=frozen_checkpoint, output="both").fit(FIT_CLIPS)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A one-block stride-16 PaSST: fast, and exercises reading the shape off a checkpoint."""
    return write_one_block_checkpoint(tmp_path_factory.mktemp("passt") / "passt-s16-depth1.pt")


def test_state_dict_has_the_official_keys_and_shapes(reference):
    with torch.device("meta"):
        state = PaSSTNet().state_dict()
    assert list(state) == list(reference["seed0_param_keys"])
    assert state["time_new_pos_embed"].shape == (1, 768, 1, 99)
    assert state["freq_new_pos_embed"].shape == (1, 768, 12, 1)
    assert state["head.1.weight"].shape == (527, 768)
    assert sum(value.numel() for value in state.values()) == 86_153_758


def test_frontend_matches_reference(reference):
    with torch.inference_mode():
        mel = PaSSTFrontend()(torch.from_numpy(reference["input_clip10"])[None])[0].numpy()
    assert mel.shape == (128, 1000)
    np.testing.assert_allclose(mel, reference["frozen_mel10"], rtol=0, atol=2e-3)


def test_reference_signal_is_the_fixture_input(reference):
    np.testing.assert_allclose(reference_signal(320000), reference["input_clip10"], atol=1e-7)


def test_scene_embedding_3s_matches_reference(frozen_embedder, reference):
    # 3 s: 29 patch columns, so only the first 29 time positional embeddings are used.
    scene = frozen_embedder.transform([reference_signal(96000)])
    assert scene.shape == (1, 1295)
    np.testing.assert_allclose(scene[0], reference["frozen_scene3"], rtol=0, atol=1e-4)


def test_timestamp_embeddings_match_reference(frozen_embedder, reference):
    embeddings, times = frozen_embedder.timestamp_embeddings([reference_signal(96000)])
    assert embeddings[0].shape == (61, 1295)
    np.testing.assert_array_equal(times[0], reference["frozen_ts3_times_ms"])
    np.testing.assert_allclose(embeddings[0], reference["frozen_ts3"], rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [10, 12])
def test_scene_embedding_10s_and_12s_match_reference(frozen_embedder, reference, seconds):
    # 12 s is longer than the model's window: five 10 s windows (2.5 s hop) are averaged.
    scene = frozen_embedder.transform([reference_signal(seconds * 32000)])
    np.testing.assert_allclose(scene[0], reference[f"frozen_scene{seconds}"], rtol=0, atol=1e-4)


def test_embedding_option_selects_logits_features_or_both(small_checkpoint):
    clip = [reference_signal(16000)]
    both = PaSSTEmbedder(weights=small_checkpoint, output="both").fit(FIT_CLIPS).transform(clip)
    features = PaSSTEmbedder(weights=small_checkpoint).fit(FIT_CLIPS)
    assert features.get_feature_names_out()[0] == "passtembedder0"
    np.testing.assert_allclose(features.transform(clip), both[:, 527:], atol=1e-6)
    logits = features.set_params(output="logits").transform(clip)
    np.testing.assert_allclose(logits, both[:, :527], atol=1e-6)


def test_batches_of_mixed_lengths_equal_one_clip_at_a_time(small_checkpoint):
    rng = np.random.default_rng(0)
    # 3000 samples is shorter than one patch and gets zero-padded.
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (40000, 3000, 17000, 9000)]
    embedder = PaSSTEmbedder(weights=small_checkpoint, batch_size=2).fit(FIT_CLIPS)
    assert embedder.config_.stride == 16 and embedder.config_.depth == 1
    together = embedder.transform(clips)
    alone = np.vstack([embedder.set_params(batch_size=1).transform([c]) for c in clips])
    assert together.shape == (4, 768) and np.isfinite(together).all()
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


def test_resamples_in_memory_audio(small_checkpoint):
    clip = reference_signal(32000)
    embedder = PaSSTEmbedder(weights=small_checkpoint).fit(FIT_CLIPS)
    at_16k = embedder.set_params(sample_rate=16000).transform([clip[::2]])
    at_32k = embedder.set_params(sample_rate=32000).transform([clip])
    assert np.corrcoef(at_16k[0], at_32k[0])[0, 1] > 0.9


def test_config_is_read_from_checkpoint_shapes():
    for config in (
        PaSSTConfig(),
        PaSSTConfig(stride=16, n_time_positions=62),
        PaSSTConfig(depth=7),
    ):
        shapes = net_shapes(config)
        fake = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
        assert config_from_state_dict(fake) == config


def test_structured_patchout_only_in_training_mode():
    torch.manual_seed(0)
    net = PaSSTNet(PaSSTConfig(depth=1), patchout_time=8, patchout_freq=4)
    mel = torch.randn(2, 128, 200)
    with torch.no_grad():
        net.eval()
        evaluated = net(mel)[0]
        np.testing.assert_array_equal(evaluated, net(mel)[0])
        net.train()
        trained = net(mel)[0]
    assert not torch.allclose(evaluated, trained)


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    missing = tmp_path / "missing.pt"
    torch.save({"cls_token": torch.zeros(1, 1, 768)}, missing)
    with pytest.raises(ValueError, match="not a PaSST checkpoint"):
        PaSSTEmbedder(weights=missing).fit(FIT_CLIPS)
    shapes = net_shapes(PaSSTConfig(stride=16, depth=1, n_time_positions=62))
    broken = {key: torch.zeros(shape) for key, shape in shapes.items()}
    broken["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 768)
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(ValueError, match="does not fit PaSST"):
        PaSSTEmbedder(weights=path).fit(FIT_CLIPS)


def test_invalid_parameters_are_rejected_in_fit():
    with pytest.raises(ValueError, match="output"):
        PaSSTEmbedder(weights=None, output="tokens").fit(FIT_CLIPS)
    with pytest.raises(ValueError, match="batch_size"):
        PaSSTEmbedder(weights=None, batch_size=0).fit(FIT_CLIPS)


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first = PaSSTEmbedder(weights=None, random_state=0).fit(FIT_CLIPS)
    assert torch.equal(state, torch.random.get_rng_state()), "global torch RNG was touched"
    second = clone(first).fit(FIT_CLIPS)
    for (key, value), other in zip(
        first.module_.state_dict().items(), second.module_.state_dict().values(), strict=True
    ):
        assert torch.equal(value, other), key
    assert first.module_.cls_token.std() > 0.01


def test_failed_refit_keeps_the_previous_fit(small_checkpoint, tmp_path):
    embedder = PaSSTEmbedder(weights=small_checkpoint).fit(FIT_CLIPS)
    clip = [reference_signal(8000)]
    expected = embedder.transform(clip)
    broken = {
        key: torch.zeros(shape)
        for key, shape in net_shapes(PaSSTConfig(stride=16, depth=2, n_time_positions=62)).items()
    }
    del broken["blocks.1.mlp.fc2.bias"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="does not fit PaSST"):
        embedder.set_params(weights=tmp_path / "broken.pt").fit(FIT_CLIPS)
    assert embedder.config_.depth == 1
    np.testing.assert_array_equal(embedder.transform(clip), expected)


def test_transform_stays_on_the_fitted_device_and_pickles_to_cpu(small_checkpoint):
    embedder = PaSSTEmbedder(weights=small_checkpoint, device="cpu").fit(FIT_CLIPS)
    clip = [reference_signal(8000)]
    expected = embedder.transform(clip)
    # the device parameter is read by fit only: changing it afterwards moves nothing
    embedder.set_params(device="cuda:0")
    np.testing.assert_array_equal(embedder.transform(clip), expected)
    assert {p.device for p in embedder.module_.parameters()} == {embedder.device_}
    embedder.device_ = torch.device("cuda", 0)  # as after a fit on a GPU
    state = embedder.__getstate__()
    assert state["device_"] == torch.device("cpu")
    assert {p.device.type for p in state["module_"].parameters()} == {"cpu"}


def test_pickle_round_trip_and_clone(small_checkpoint):
    clips = [reference_signal(8000), reference_signal(20000)]
    embedder = PaSSTEmbedder(weights=small_checkpoint).fit(FIT_CLIPS)
    expected = embedder.transform(clips)
    again = pickle.loads(pickle.dumps(embedder))
    np.testing.assert_array_equal(expected, again.transform(clips))
    assert not hasattr(clone(embedder), "module_")
    assert clone(embedder).get_params() == embedder.get_params()


@pytest.mark.slow
def test_pipeline_runs_end_to_end_on_fsdd(fsdd_dir):
    paths = sorted(fsdd_dir.glob("*.wav"))[:60]
    pipeline = make_pipeline(
        PaSSTEmbedder(weights=None, random_state=0, batch_size=2),
        PCA(50),
        AgglomerativeClustering(10),
    )
    labels = pipeline.fit_predict(paths)
    assert labels.shape == (60,)
    assert len(np.unique(labels)) == 10
    assert pipeline[0].transform(paths[:3]).shape == (3, 768)


def _import_hear21passt():
    """hear21passt 0.0.26 (``pip install --no-deps``); timm is stubbed: it only downloads."""
    import sys
    import types

    for name in ("timm", "timm.models", "timm.models._hub"):
        sys.modules.setdefault(name, types.ModuleType(name))
    if not hasattr(sys.modules["timm.models._hub"], "download_cached_file"):
        sys.modules["timm.models._hub"].download_cached_file = None  # never called offline
    return pytest.importorskip("hear21passt.base")


@pytest.mark.slow
def test_live_cross_check_against_hear21passt(tmp_path):
    """Optional: runs only where hear21passt is installed (not a dependency, never in CI)."""
    base = _import_hear21passt()
    from hear21passt.models.passt import get_model
    from hear21passt.models.preprocess import AugmentMelSTFT

    torch.manual_seed(0)
    net = get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False)
    mel = AugmentMelSTFT(
        n_mels=128,
        sr=32000,
        win_length=800,
        hopsize=320,
        n_fft=1024,
        freqm=48,
        timem=192,
        fmin=0.0,
        fmax=None,
        fmin_aug_range=10,
        fmax_aug_range=2000,
    )
    model = base.PasstBasicWrapper(mel=mel, net=net).eval()
    torch.save(net.state_dict(), tmp_path / "seed0.pt")
    ours = PaSSTEmbedder(weights=tmp_path / "seed0.pt", output="both").fit(FIT_CLIPS)
    rng = np.random.default_rng(1)
    for shape in ((2, 40000), (1, 352000)):  # 1.25 s twice; 11 s, cut into 5 windows
        audio = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        with torch.no_grad():
            expected = model.get_scene_embeddings(torch.from_numpy(audio)).numpy()
        np.testing.assert_allclose(ours.transform(audio), expected, rtol=0, atol=1e-4)


# --- inputs that used to give silent garbage ---------------------------------------------


@pytest.mark.parametrize(
    "X, error, match",
    [
        ([], ValueError, "X is empty"),
        ([np.zeros(100), np.array([0.0, np.nan])], ValueError, "clip 1 contains NaN"),
        ([np.zeros(0)], ValueError, "clip 0 has zero length"),
        ("clip.wav", TypeError, "single path"),
        (None, TypeError, "collection of clips"),
        ([np.full(100, 1e30)], ValueError, "clip 0 has a sample of absolute value"),
    ],
)
def test_fit_validates_X(small_checkpoint, X, error, match):
    embedder = PaSSTEmbedder(weights=small_checkpoint)
    with pytest.raises(error, match=match):
        embedder.fit(X)
    assert not hasattr(embedder, "module_")


def test_fit_transform_equals_fit_then_transform(small_checkpoint):
    clips = [reference_signal(8000), reference_signal(12000)]
    embedder = PaSSTEmbedder(weights=small_checkpoint)
    np.testing.assert_array_equal(
        embedder.fit_transform(clips), clone(embedder).fit(clips).transform(clips)
    )


def test_non_finite_embeddings_name_the_clip(small_checkpoint):
    embedder = PaSSTEmbedder(weights=small_checkpoint).fit(FIT_CLIPS)
    with torch.no_grad():
        embedder.module_.norm.weight[0] = float("inf")
    clips = [reference_signal(8000)]
    with pytest.raises(ValueError, match="PaSSTEmbedder computed a NaN or infinite output for"):
        embedder.transform(clips)
    with pytest.raises(ValueError, match="NaN or infinite output for clip 0"):
        embedder.timestamp_embeddings(clips)
