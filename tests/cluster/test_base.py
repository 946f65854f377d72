"""skaudiocluster.cluster._base: the preprocessor, hidden_dims, and the base through a subclass."""

from __future__ import annotations

import copy
import pickle
import re
from numbers import Integral

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from sklearn.utils._param_validation import HasMethods, Interval, InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from skaudiocluster import _torch
from skaudiocluster._torch import batched_forward, draw_seed, to_numpy
from skaudiocluster.cluster import centroid_confidence
from skaudiocluster.cluster._base import BaseDeepClusterer, check_hidden_dims, make_preprocessor


class SoftKMeans(BaseDeepClusterer):
    """The smallest deep clusterer: Lloyd steps in torch, centres drawn from torch's RNG."""

    _parameter_constraints = {
        **BaseDeepClusterer._parameter_constraints,
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        n_clusters=3,
        *,
        hidden_dims=(4,),
        preprocessing="standardize",
        n_components=None,
        device="cpu",
        random_state=None,
        n_threads=1,
        verbose=0,
    ):
        self.n_clusters = n_clusters
        self.hidden_dims = hidden_dims
        self.preprocessing = preprocessing
        self.n_components = n_components
        self.device = device
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    def _min_samples(self):
        return max(2, self.n_clusters)

    def _fit_features(self, features, X, random_state):
        self.seen_ = {
            "dtype": features.dtype,
            "contiguous": features.flags.c_contiguous,
            "threads": torch.get_num_threads(),
            "X": X,
            "seed": draw_seed(random_state),  # a child seed, as a stream of the fit takes it
        }
        data = torch.from_numpy(features)
        # Global RNG on purpose: the base forks it, so this draw depends on the seed alone.
        centers = data[torch.randperm(len(data))[: self.n_clusters]]
        for _ in range(10):
            labels = torch.cdist(data, centers).argmin(dim=1)
            centers = torch.stack(
                [
                    data[labels == k].mean(0) if (labels == k).any() else centers[k]
                    for k in range(self.n_clusters)
                ]
            )
        self.centers_ = centers
        return features

    def _proba(self, features):
        self.proba_threads_ = torch.get_num_threads()
        scores = batched_forward(
            lambda x: (-torch.cdist(x, self.centers_.to(x.device))).softmax(dim=1),
            features,
            device=self.device_,
            batch_size=7,
        )
        return to_numpy(scores)


class Failing(SoftKMeans):
    """Fails half way through training, after setting a learned attribute."""

    error = KeyboardInterrupt

    def _fit_features(self, features, X, random_state):
        self.centers_ = torch.zeros(self.n_clusters, features.shape[1])
        raise self.error


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=60, centers=3, n_features=5, random_state=0)
    return X, y


# --- make_preprocessor ---------------------------------------------------------------------


def _steps(pipeline):
    return [type(step) for _, step in pipeline.steps]


@pytest.mark.parametrize(
    "preprocessing, last", [("l2", Normalizer), ("standardize", StandardScaler)]
)
def test_make_preprocessor_projects_wide_inputs_then_applies_the_option(preprocessing, last):
    pipeline = make_preprocessor(preprocessing, 4, (50, 10), seed=3)
    assert _steps(pipeline) == [StandardScaler, PCA, last]
    assert pipeline[1].n_components == 4 and pipeline[1].random_state == 3


@pytest.mark.parametrize("n_features", [3, 4])
def test_make_preprocessor_standardises_but_skips_pca_unless_wider(n_features):
    assert _steps(make_preprocessor("l2", 4, (50, n_features), seed=0)) == [
        StandardScaler,
        Normalizer,
    ]
    # "standardize" after the scaler would scale twice: one scaler only
    assert _steps(make_preprocessor("standardize", 4, (50, n_features), seed=0)) == [StandardScaler]


def test_make_preprocessor_without_n_components_never_projects():
    assert _steps(make_preprocessor("standardize", None, (50, 1000), seed=0)) == [StandardScaler]


def test_make_preprocessor_none_is_pca_only_or_the_identity():
    assert _steps(make_preprocessor(None, 4, (50, 10), seed=0)) == [StandardScaler, PCA]
    identity = make_preprocessor(None, None, (50, 10), seed=0)
    assert _steps(identity) == [FunctionTransformer]
    X = np.arange(12.0).reshape(4, 3)
    assert_array_equal(identity.fit_transform(X), X)


@pytest.mark.parametrize("n_samples", [3, 7])
def test_make_preprocessor_clips_n_components_to_n_samples(n_samples):
    X = np.random.default_rng(0).normal(size=(n_samples, 20))
    pipeline = make_preprocessor("l2", 10, X.shape, seed=0)
    assert pipeline[1].n_components == n_samples
    assert pipeline.fit_transform(X).shape == (n_samples, n_samples)


def test_make_preprocessor_outputs(blobs):
    X = blobs[0] * [1, 10, 100, 1000, 1]
    l2 = make_preprocessor("l2", 3, X.shape, seed=0).fit_transform(X)
    assert l2.shape == (60, 3)
    assert_allclose(np.linalg.norm(l2, axis=1), 1)
    standard = make_preprocessor("standardize", None, X.shape, seed=0).fit_transform(X)
    assert_allclose(standard.mean(axis=0), 0, atol=1e-12)
    assert_allclose(standard.std(axis=0), 1)


# --- check_hidden_dims ---------------------------------------------------------------------


@pytest.mark.parametrize("dims", [(128, 64), [8], (np.int64(3),)])
def test_check_hidden_dims_returns_a_tuple_of_ints(dims):
    checked = check_hidden_dims(dims)
    assert checked == tuple(int(d) for d in dims)
    assert type(checked) is tuple and all(type(d) is int for d in checked)


@pytest.mark.parametrize(
    "dims, message",
    [
        ((), "must be a non-empty tuple of ints, got ()"),
        ([], "must be a non-empty tuple of ints, got []"),
        ((64, 1.5), "must be a non-empty tuple of ints, got (64, 1.5)"),
        ((64.0,), "must be a non-empty tuple of ints, got (64.0,)"),
        ((True,), "must be a non-empty tuple of ints, got (True,)"),
        ("64", "must be a non-empty tuple of ints, got '64'"),
        (("64",), "must be a non-empty tuple of ints, got ('64',)"),
        (64, "must be a non-empty tuple of ints, got 64"),
        ((0,), "must hold positive widths, got (0,)"),
        ((32, -1), "must hold positive widths, got (32, -1)"),
    ],
)
def test_check_hidden_dims_says_what_is_wrong(dims, message):
    with pytest.raises(ValueError, match="^" + re.escape("hidden_dims " + message) + "$"):
        check_hidden_dims(dims)


# --- the base, through SoftKMeans ----------------------------------------------------------


@parametrize_with_checks([SoftKMeans(random_state=0)], xfail_strict=True)
def test_minimal_subclass_passes_the_estimator_checks(estimator, check):
    check(estimator)


def test_predict_is_the_argmax_of_predict_proba_and_labels_are_the_training_predictions(blobs):
    X, y = blobs
    est = SoftKMeans(random_state=0).fit(X)
    proba = est.predict_proba(X)
    assert proba.dtype == np.float32 and proba.shape == (60, 3)
    assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert_array_equal(est.predict(X), proba.argmax(axis=1))
    assert_array_equal(est.labels_, est.predict(X))
    assert_array_equal(est.fit_predict(X), est.labels_)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "auto"])
def test_device_is_resolved_as_device_(device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    est = SoftKMeans(device=device, random_state=0).fit(np.eye(4))
    assert est.device_ == torch.device("cpu") and est.device is device


def test_invalid_device_is_a_value_error_and_leaves_it_unfitted():
    est = SoftKMeans(device="tpu")
    with pytest.raises(ValueError, match="not a valid torch device"):
        est.fit(np.eye(4))
    with pytest.raises(NotFittedError):
        check_is_fitted(est)


def test_inputs_are_validated_and_preprocessed_in_float64_and_trained_in_float32(blobs):
    X = blobs[0].astype(np.float32)
    est = SoftKMeans(preprocessing="l2", n_components=2, random_state=0).fit(X)
    assert est.preprocessor_[1].components_.dtype == np.float64  # float32 PCA would give float32
    assert est.seen_["dtype"] == np.float32 and est.seen_["contiguous"]
    assert est.seen_["X"] is X  # the raw input reaches _fit_features unchanged
    assert est.n_features_in_ == 5
    est.fit(X.tolist())
    assert est.preprocessor_[1].components_.dtype == np.float64


def test_predict_checks_the_number_of_features(blobs):
    est = SoftKMeans(random_state=0).fit(blobs[0])
    with pytest.raises(ValueError, match="5 features"):
        est.predict(blobs[0][:, :4])


def test_min_samples_is_enforced_in_fit_only(blobs):
    with pytest.raises(ValueError, match="minimum of 4 is required"):
        SoftKMeans(n_clusters=4).fit(blobs[0][:3])
    est = SoftKMeans(n_clusters=4, random_state=0).fit(blobs[0])
    assert est.predict(blobs[0][:1]).shape == (1,)


def test_hidden_dims_are_checked_in_fit(blobs):
    with pytest.raises(ValueError, match="positive widths"):
        SoftKMeans(hidden_dims=(0,)).fit(blobs[0])
    with pytest.raises(InvalidParameterError, match="hidden_dims"):
        SoftKMeans(hidden_dims=8).fit(blobs[0])


class Encoded(SoftKMeans):
    """A clusterer that owns an encoder, as SPICE does."""

    _parameter_constraints = {
        **SoftKMeans._parameter_constraints,
        "encoder": [HasMethods(["fit", "transform"])],
    }

    def __init__(
        self,
        encoder=None,
        n_clusters=3,
        *,
        hidden_dims=(4,),
        preprocessing="standardize",
        n_components=None,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            n_clusters,
            hidden_dims=hidden_dims,
            preprocessing=preprocessing,
            n_components=n_components,
            device=device,
            random_state=random_state,
            verbose=verbose,
        )
        self.encoder = encoder

    def _fit_encoder(self, X, random_state):
        self.encoder_ = clone(self.encoder).fit(X)

    def _embeddings(self, X, *, reset):
        return super()._embeddings(self.encoder_.transform(X), reset=reset)


def test_the_parameters_of_an_owned_encoder_are_validated(blobs):
    Encoded(StandardScaler(), random_state=0).fit(blobs[0])
    with pytest.raises(InvalidParameterError, match="'with_mean' parameter of StandardScaler"):
        Encoded(StandardScaler(with_mean="yes")).fit(blobs[0])


def test_fit_repeats_for_an_int_seed_and_leaves_the_global_rng_alone(blobs):
    X = blobs[0]
    before = torch.random.get_rng_state()
    a = SoftKMeans(random_state=1).fit(X)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = SoftKMeans(random_state=1).fit(X)
    assert torch.equal(a.centers_, b.centers_) and a.seen_["seed"] == b.seen_["seed"]
    seeds = {SoftKMeans(random_state=s).fit(X).seen_["seed"] for s in range(4)}
    assert len(seeds) == 4


def test_fit_and_predict_use_one_thread_and_restore_the_callers(blobs, two_threads):
    est = SoftKMeans(random_state=0).fit(blobs[0])
    assert est.seen_["threads"] == 1 and est.proba_threads_ == 1
    assert torch.get_num_threads() == 2
    est.predict(blobs[0])
    assert est.proba_threads_ == 1 and torch.get_num_threads() == 2


@pytest.mark.parametrize("n_threads, expected", [(None, 2), (3, 3)])
def test_n_threads_sets_the_threads_of_fit_and_predict(blobs, two_threads, n_threads, expected):
    est = SoftKMeans(n_threads=n_threads, random_state=0).fit(blobs[0])
    est.predict(blobs[0])
    assert est.seen_["threads"] == est.proba_threads_ == expected
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_fit_leaves_it_unfitted(blobs, error):
    est = Failing(random_state=0)
    est.error = error
    with pytest.raises(error):
        est.fit(blobs[0])
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    assert vars(est) == {**SoftKMeans(random_state=0).get_params(), "error": error}


def test_an_interrupted_refit_keeps_the_previous_fit(blobs):
    est = SoftKMeans(random_state=0).fit(blobs[0])
    fitted = dict(vars(est))
    est.__class__ = Failing
    with pytest.raises(KeyboardInterrupt):
        est.fit(blobs[0][:30])
    assert vars(est).keys() == fitted.keys()
    assert all(vars(est)[key] is value for key, value in fitted.items())


def test_getstate_moves_learned_tensors_to_the_cpu(blobs, monkeypatch):
    # No GPU here: a meta tensor and a CUDA device_ stand in for a GPU fit.
    monkeypatch.setattr(_torch, "_cpu_copy", lambda value: "copied to the cpu")
    est = SoftKMeans(random_state=0).fit(blobs[0])
    est.centers_ = torch.empty(3, 5, device="meta")
    est.device_ = torch.device("cuda")
    state = est.__getstate__()
    assert state["centers_"] == "copied to the cpu" and state["device_"] == torch.device("cpu")
    assert state["n_clusters"] == 3 and est.device_ == torch.device("cuda")


def test_confidence_is_the_centroid_confidence_of_the_labels_in_the_preprocessed_space(blobs):
    X, _ = blobs
    est = SoftKMeans(random_state=0).fit(X)
    features = est.preprocessor_.transform(X)
    assert_allclose(est.confidence_, centroid_confidence(features, est.labels_), rtol=1e-5)
    assert_allclose(est.predict_confidence(X), est.confidence_)
    assert_allclose(est.confidence_model_.centers, est.centers_.numpy(), atol=1e-5)
    outlier = X[:1] + 100 * (X[:1] - X.mean(0))
    assert est.predict_confidence(np.vstack([X[:1], outlier])).shape == (2,)


def test_unfitted_predict_confidence_raises(blobs):
    with pytest.raises(NotFittedError):
        SoftKMeans().predict_confidence(blobs[0])


def test_pickle_round_trip_predicts_the_same(blobs):
    est = SoftKMeans(random_state=0).fit(blobs[0])
    state = est.__getstate__()
    assert state["device_"] == torch.device("cpu") and state["centers_"].device.type == "cpu"
    again = pickle.loads(pickle.dumps(est))
    assert_array_equal(again.predict_proba(blobs[0]), est.predict_proba(blobs[0]))
    assert_array_equal(again.predict_confidence(blobs[0]), est.predict_confidence(blobs[0]))


def test_unfitted_predict_raises(blobs):
    with pytest.raises(NotFittedError):
        SoftKMeans().predict(blobs[0])


@pytest.mark.parametrize(
    ("preprocessing", "n_components"), [("l2", 4), ("standardize", 4), ("l2", None), (None, None)]
)
def test_preprocessing_in_row_chunks_matches_the_whole(monkeypatch, preprocessing, n_components):
    from skaudiocluster.cluster import _base

    X = np.random.default_rng(7).normal(size=(230, 9)) * np.arange(1, 10) + 3
    whole = make_preprocessor(preprocessing, n_components, X.shape, seed=0).fit(X)
    expected = whole.transform(X)
    monkeypatch.setattr(_base, "PREPROCESS_ROWS", 50)
    chunked = _base.fit_preprocessor(make_preprocessor(preprocessing, n_components, X.shape, 0), X)
    for step, reference in zip(chunked.steps, whole.steps):
        for attribute in ("mean_", "scale_", "components_"):
            if hasattr(reference[1], attribute):
                assert_allclose(
                    getattr(step[1], attribute), getattr(reference[1], attribute), atol=1e-10
                )
    out = _base.transform_rows(chunked, X, np.float32)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_row15_deepcopy_keeps_the_device_of_a_gpu_fit(blobs, monkeypatch):
    # No GPU here: a meta tensor and a CUDA device_ stand in for a GPU fit.
    monkeypatch.setattr(_torch, "_cpu_copy", lambda value: "copied to the cpu")
    est = SoftKMeans(random_state=0).fit(blobs[0])
    est.centers_ = torch.empty(3, 5, device="meta")
    est.device_ = torch.device("cuda")
    copied = copy.deepcopy(est)
    assert copied is not est and copied.device_ == torch.device("cuda")
    assert copied.centers_.device.type == "meta" and copied.centers_ is not est.centers_
    assert copied.preprocessor_ is not est.preprocessor_
    assert_allclose(copied.labels_, est.labels_)
    assert est.__getstate__()["device_"] == torch.device("cpu")  # pickling still moves
