"""Cosine k-nearest neighbours (skaudiocluster.cluster._neighbors) against brute force."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skaudiocluster.cluster._neighbors import cosine_knn, umap_knn


def brute_force_similarities(X: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows, in float64."""
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    return unit @ unit.T


def test_neighbours_are_the_brute_force_ones_in_order():
    X = np.random.default_rng(14).normal(size=(200, 7))
    similarities = brute_force_similarities(X)
    np.fill_diagonal(similarities, -np.inf)
    ranked = np.argsort(-similarities, axis=1)[:, :7]
    expected = ranked[:, :6]
    # float32 could only swap neighbours whose similarities (nearly) tie: this draw has none
    gaps = np.diff(-np.take_along_axis(similarities, ranked, axis=1), axis=1)
    assert gaps.min() > 5e-5

    indices, sims = cosine_knn(X, 6, chunk_size=64)

    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(similarities, expected, axis=1), atol=1e-6)
    assert indices.dtype == np.int64 and sims.dtype == np.float32


@given(
    n_samples=st.integers(2, 40),
    n_features=st.integers(1, 6),
    n_neighbors=st.integers(1, 50),
    chunk_size=st.integers(1, 50),
    include_self=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_any_shape_gives_optimal_distinct_neighbours(
    n_samples, n_features, n_neighbors, chunk_size, include_self, seed
):
    X = np.random.default_rng(seed).normal(size=(n_samples, n_features))
    similarities = brute_force_similarities(X)
    k = min(n_neighbors, n_samples if include_self else n_samples - 1)

    indices, sims = cosine_knn(X, n_neighbors, include_self=include_self, chunk_size=chunk_size)

    assert indices.shape == sims.shape == (n_samples, k)
    assert all(len(set(row)) == k for row in indices)
    rows = np.arange(n_samples)[:, None]
    if include_self:
        np.testing.assert_array_equal(indices[:, 0], np.arange(n_samples))
        np.testing.assert_allclose(sims[:, 0], 1.0)
        indices, sims = indices[:, 1:], sims[:, 1:]
    others = similarities.copy()
    np.fill_diagonal(others, -np.inf)  # a row met again after the first place fails below
    # the similarities are those of the rows returned, and the best there are, in order
    np.testing.assert_allclose(sims, others[rows, indices], atol=1e-5)
    np.testing.assert_allclose(sims, -np.sort(-others, axis=1)[:, : sims.shape[1]], atol=1e-5)


def test_duplicates_never_make_a_row_its_own_neighbour():
    X = np.random.default_rng(1).normal(size=(20, 4))
    X = np.vstack([X, X])  # every row ties with its copy and with itself
    indices, sims = cosine_knn(X, 3)
    assert not np.any(indices == np.arange(40)[:, None])
    copies = (np.arange(40) + 20) % 40
    np.testing.assert_array_equal(indices[:, 0], copies)
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-6)


def test_self_comes_first_when_included_even_against_a_duplicate():
    X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    indices, _ = cosine_knn(X, 2, include_self=True)
    np.testing.assert_array_equal(indices[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(indices[:2, 1], [1, 0])


def test_chunking_does_not_change_the_result():
    X = np.random.default_rng(2).normal(size=(101, 5)).astype(np.float32)
    whole = cosine_knn(X, 8, chunk_size=1000)
    for chunk_size in (1, 7, 100):
        chunked = cosine_knn(X, 8, chunk_size=chunk_size)
        np.testing.assert_array_equal(chunked[0], whole[0])
        np.testing.assert_allclose(chunked[1], whole[1], atol=1e-6)


def test_scale_of_the_rows_does_not_matter():
    X = np.random.default_rng(3).normal(size=(50, 4))
    scaled = X * np.random.default_rng(4).uniform(0.01, 100, size=(50, 1))
    np.testing.assert_array_equal(cosine_knn(scaled, 5)[0], cosine_knn(X, 5)[0])


def test_one_sample_has_no_neighbours():
    with pytest.raises(ValueError, match="among 1 sample"):
        cosine_knn(np.ones((1, 3)), 2)


def test_read_only_input_gives_no_warning():
    X = np.random.default_rng(0).normal(size=(20, 4))
    X.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        indices, _ = cosine_knn(X, 3)
    assert indices.shape == (20, 3)


def clustered(n_samples: int, n_features: int = 16, n_centres: int = 20, seed: int = 0):
    """Rows scattered around a few random centres: neighbourhoods an index can find."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, n_features))
    return centres[rng.integers(0, n_centres, n_samples)] + 0.7 * rng.normal(
        size=(n_samples, n_features)
    )


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(np.intersect1d(a, b)) / exact.shape[1] for a, b in zip(found, exact)])
    )


@pytest.fixture(scope="module")
def sample():
    X = clustered(4000)
    return X, cosine_knn(X, 10)


@pytest.mark.extras("scale")
def test_approximate_neighbours_are_mostly_the_exact_ones(sample):
    X, (exact, exact_sims) = sample
    indices, sims = cosine_knn(X, 10, method="ivf")
    assert indices.shape == sims.shape == (4000, 10)
    assert indices.dtype == np.int64 and sims.dtype == np.float32
    assert not np.any(indices == np.arange(4000)[:, None])
    assert all(len(set(row)) == 10 for row in indices[:200])
    # chance is 10 / 3999; a missed neighbour is replaced by a near-tie
    assert recall(indices, exact) > 0.9
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(
        sims[:50, 3], np.sum(unit[:50] * unit[indices[:50, 3]], 1), atol=1e-5
    )


@pytest.mark.extras("scale")
def test_approximate_search_puts_self_first_when_included(sample):
    X, _ = sample
    indices, sims = cosine_knn(X, 5, include_self=True, method="ivf")
    assert indices.shape == (4000, 5)
    np.testing.assert_array_equal(indices[:, 0], np.arange(4000))
    np.testing.assert_allclose(sims[:, 0], 1.0)
    assert not np.any(indices[:, 1:] == np.arange(4000)[:, None])


@pytest.mark.extras("scale")
def test_ivf_with_short_lists_still_fills_every_row():
    # 400 rows make 10 lists of ~40: 39 neighbours may need more lists than are probed
    X = clustered(400, n_centres=3, seed=5)
    indices, _ = cosine_knn(X, 39, method="ivf")
    assert indices.min() >= 0
    assert all(len(set(row)) == 39 for row in indices)


@pytest.mark.extras("scale")
def test_auto_is_exact_up_to_the_threshold(monkeypatch):
    from skaudiocluster.cluster import _neighbors

    assert _neighbors.resolve_method("auto", _neighbors.EXACT_MAX_SAMPLES) == "exact"
    assert _neighbors.resolve_method("auto", _neighbors.EXACT_MAX_SAMPLES + 1) == "ivf"
    monkeypatch.setattr(_neighbors, "_has_faiss", lambda: False)
    with pytest.warns(UserWarning, match="faiss is not installed"):
        assert _neighbors.resolve_method("auto", 10**6) == "exact"
    with pytest.raises(ImportError, match=r"skaudiocluster\[scale\]"):
        cosine_knn(np.ones((10, 2)), 2, method="ivf")


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be"):
        cosine_knn(np.ones((10, 2)), 2, method="hnsw")


@pytest.mark.extras("scale")
def test_ivf_never_makes_a_row_its_own_neighbour_among_duplicates():
    X = clustered(500, seed=3)
    X = np.vstack([X, X])  # every row ties with its copy
    indices, sims = cosine_knn(X, 4, method="ivf")
    assert not np.any(indices == np.arange(1000)[:, None])
    assert np.mean(indices == ((np.arange(1000) + 500) % 1000)[:, None]) > 0.2  # copy is found
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


@pytest.mark.slow  # numba compiles UMAP in every new process: 20-60 s
def test_umap_neighbours_stay_in_their_blob_exclude_self_and_repeat():
    from sklearn.datasets import make_blobs

    X, y = make_blobs(300, n_features=16, centers=4, random_state=0)
    indices = umap_knn(X, 10, random_state=0)
    assert indices.shape == (300, 10) and indices.dtype == np.int64
    assert not (indices == np.arange(300)[:, None]).any()
    assert (y[indices] == y[:, None]).mean() >= 0.99
    np.testing.assert_array_equal(indices, umap_knn(X, 10, random_state=0))
    with pytest.raises(ValueError, match="at least 4 samples"):
        umap_knn(X[:3], 2)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize(
    "method", ["exact", pytest.param("ivf", marks=pytest.mark.extras("scale"))]
)
def test_row12_features_scaled_by_1e30_or_1e_30_give_the_same_neighbours(scale, method):
    # float32 squares of 1e30 overflow to inf and of 1e-30 underflow to 0
    X = clustered(600, n_features=16)
    indices, sims = cosine_knn(X, 8, method=method)
    for dtype in (np.float64, np.float32):
        scaled_indices, scaled_sims = cosine_knn((X * scale).astype(dtype), 8, method=method)
        assert np.all(np.isfinite(scaled_sims))
        np.testing.assert_allclose(scaled_sims, sims, atol=1e-5)
        assert np.mean(scaled_indices == indices) > 0.99
