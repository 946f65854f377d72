"""skaudiocluster.transformers._base: the embedders' contract, through a tiny subclass."""

from __future__ import annotations

import copy
import pickle
from numbers import Integral

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

# tests/ is on sys.path (pytest's default prepend import mode), as for conftest
from test_common import _RAW_AUDIO

from skaudiocluster import audio
from skaudiocluster.transformers._base import BaseAudioEmbedder


class RandomProjection(BaseAudioEmbedder):
    """Mean-pooled random projections of 8-sample frames, at 8 kHz; the weights from torch's RNG."""

    model_sample_rate = 8000
    min_samples = 8
    _transient = ("_cache",)

    _parameter_constraints = {
        **BaseAudioEmbedder._parameter_constraints,
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_features=3,
        *,
        sample_rate=8000,
        batch_size=4,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.n_features = n_features
        self.sample_rate = sample_rate
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_clips(self, X):
        clips = super()._check_clips(X)
        return [np.pad(c, (0, max(0, self.min_samples - len(c)))) for c in clips]

    def _fit_clips(self, clips, seed):
        self.seen_ = {"seed": seed, "device": self.device_, "n_decoded": len(clips)}
        # global RNG on purpose: the base forks and seeds it
        self.weights_ = torch.randn(self.min_samples, self.n_features)
        self._cache = object()  # state left out of pickles

    def _transform_clips(self, clips):
        rows = []
        for clip in clips:
            frames = clip[: len(clip) // 8 * 8].reshape(-1, 8)
            rows.append((torch.from_numpy(frames) @ self.weights_).mean(0).numpy())
        return np.stack(rows).astype(np.float32)


class Failing(RandomProjection):
    error = KeyboardInterrupt

    def _fit_clips(self, clips, seed):
        self.weights_ = torch.zeros(8, self.n_features)
        raise self.error


def _clips(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [0.1 * rng.standard_normal(int(rng.integers(20, 200))) for _ in range(n)]


@parametrize_with_checks(
    [RandomProjection(random_state=0)],
    expected_failed_checks=lambda est: _RAW_AUDIO,
    xfail_strict=True,
)
def test_minimal_subclass_passes_the_estimator_checks(estimator, check):
    check(estimator)


def test_tags_say_float32_raw_audio():
    tags = RandomProjection().__sklearn_tags__()
    assert tags.input_tags.two_d_array
    assert tags.transformer_tags.preserves_dtype == ["float32"]


def test_fit_seeds_from_random_state_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    a = RandomProjection(random_state=0).fit(_clips())
    b = RandomProjection(random_state=0).fit(_clips())
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.weights_, b.weights_)
    assert a.seen_["seed"] == b.seen_["seed"]
    assert a.seen_["device"] == a.device_ == torch.device("cpu")
    assert a.n_clips_ == 4


def test_fit_transform_decodes_once_and_equals_fit_then_transform(monkeypatch):
    calls = []
    check_audio = audio.check_audio

    def counting(X, **kwargs):
        calls.append(kwargs)
        return check_audio(X, **kwargs)

    monkeypatch.setattr("skaudiocluster.transformers._base.check_audio", counting)
    est = RandomProjection(random_state=0)
    out = est.fit_transform(_clips())
    assert calls == [{"sample_rate": 8000, "target_rate": 8000}]
    assert out.dtype == np.float32 and out.shape == (4, 3)
    assert_array_equal(out, clone(est).fit(_clips()).transform(_clips()))


def test_clips_are_resampled_to_the_model_rate():
    est = RandomProjection(sample_rate=16000).fit(_clips())
    assert [len(c) for c in est.waveforms([np.zeros(160), np.zeros(4)])] == [80, 8]


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_failed_fit_leaves_it_unfitted_or_keeps_the_previous_fit(error):
    est = Failing(random_state=0)
    est.error = error
    with pytest.raises(error):
        est.fit(_clips())
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    fitted = RandomProjection(random_state=0).fit(_clips())
    weights = fitted.weights_
    fitted.__class__ = Failing
    fitted.error = error
    with pytest.raises(error):
        fitted.fit(_clips(seed=1))
    assert fitted.weights_ is weights and fitted.n_clips_ == 4


def test_non_finite_output_names_the_clip():
    est = RandomProjection(random_state=0).fit(_clips())
    est.weights_[0, 0] = float("nan")
    with pytest.raises(ValueError, match="RandomProjection.*clip"):
        est.transform(_clips())


def test_parameters_are_validated_in_fit():
    with pytest.raises(InvalidParameterError, match="batch_size"):
        RandomProjection(batch_size=0).fit(_clips())
    with pytest.raises(InvalidParameterError, match="sample_rate"):
        RandomProjection(sample_rate=0).fit_transform(_clips())


def test_pickle_drops_transient_attributes_and_moves_devices_to_the_cpu():
    est = RandomProjection(random_state=0).fit(_clips())
    est.device_ = torch.device("meta")
    state = est.__getstate__()
    assert "_cache" not in state and state["device_"] == torch.device("cpu")
    est.device_ = torch.device("cpu")
    loaded = pickle.loads(pickle.dumps(est))
    assert_array_equal(loaded.transform(_clips()), est.transform(_clips()))


def test_log_mel_is_declared_but_not_every_embedder_trains_as_an_encoder():
    est = RandomProjection(random_state=0).fit(_clips())
    assert est.model_sample_rate == 8000 and est.min_samples == 8
    with pytest.raises(NotImplementedError, match="RandomProjection cannot be trained"):
        est.log_mel(torch.zeros(1, 8))


def test_model_sample_rate_defaults_to_sample_rate():
    class AtInputRate(RandomProjection):
        model_sample_rate = BaseAudioEmbedder.model_sample_rate

    assert AtInputRate(sample_rate=12000).model_sample_rate == 12000


def test_row15_deepcopy_keeps_the_device_and_drops_transients():
    est = RandomProjection(random_state=0).fit(_clips())
    est.device_ = torch.device("cuda")  # no GPU here: a CUDA device_ stands in for a GPU fit
    est.weights_ = est.weights_.to("meta")
    copied = copy.deepcopy(est)
    assert copied.device_ == torch.device("cuda") and copied.weights_.device.type == "meta"
    assert copied.weights_ is not est.weights_ and not hasattr(copied, "_cache")
