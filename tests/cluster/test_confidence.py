"""skaudiocluster.cluster._confidence: the centroid confidence of any labels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose
from sklearn.datasets import make_blobs
from sklearn.metrics import roc_auc_score

from skaudiocluster.cluster import centroid_confidence
from skaudiocluster.cluster._confidence import fit_centroid_confidence


@st.composite
def features_and_labels(draw):
    n_samples = draw(st.integers(2, 40))
    n_features = draw(st.integers(1, 6))
    X = draw(
        arrays(
            np.float64,
            (n_samples, n_features),
            # on a 1e-3 grid: scaled by 0.01 and shifted by 50, distinct values stay far apart
            # (values 1e-11 apart merge, and no function of them can stay the same)
            elements=st.floats(-100, 100, allow_nan=False, allow_infinity=False).map(
                lambda value: round(value, 3)
            ),
        )
    )
    labels = draw(arrays(np.int64, n_samples, elements=st.integers(0, 4)))
    return X, labels


@settings(max_examples=60, deadline=None)
@given(features_and_labels())
def test_confidence_is_a_probability_of_each_row(data):
    X, labels = data
    confidence = centroid_confidence(X, labels)
    assert confidence.shape == (len(X),)
    assert np.all((confidence >= 0) & (confidence <= 1))
    if len(np.unique(labels)) == 1:
        assert_allclose(confidence, 1.0)


@settings(max_examples=40, deadline=None)
@given(features_and_labels(), st.sampled_from(["names", "shift"]))
def test_confidence_does_not_depend_on_what_the_labels_are_called(data, renaming):
    X, labels = data
    renamed = np.array([f"c{v}" for v in labels]) if renaming == "names" else labels * 7 - 3
    assert_allclose(centroid_confidence(X, renamed), centroid_confidence(X, labels))


@settings(max_examples=40, deadline=None)
@given(features_and_labels(), st.floats(0.01, 100), st.floats(-50, 50))
def test_confidence_does_not_depend_on_the_unit_or_origin(data, factor, offset):
    X, labels = data
    assert_allclose(
        centroid_confidence(X * factor + offset, labels),
        centroid_confidence(X, labels),
        atol=1e-6,
    )


def test_a_row_halfway_between_two_centres_gets_one_half():
    X = np.array([[-1.0, 0.0], [-1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.5]])
    assert centroid_confidence(X[:4], [0, 0, 1, 1]) == pytest.approx([0.5 + 0.5 * np.tanh(8)] * 4)
    scorer = fit_centroid_confidence(X[:4], [0, 0, 1, 1])
    assert scorer(X[4:], [0])[0] == pytest.approx(0.5)
    assert scorer(X[4:], [1])[0] == pytest.approx(0.5)


def test_moving_a_row_towards_another_centre_lowers_its_confidence():
    X, y = make_blobs(200, centers=[[0, 0], [4, 0]], cluster_std=1.0, random_state=0)
    scorer = fit_centroid_confidence(X, y)
    path = np.column_stack([np.linspace(0, 4, 9), np.zeros(9)])
    confidence = scorer(path, np.zeros(9, dtype=int))
    assert np.all(np.diff(confidence) < 0)
    assert confidence[0] > 0.9 > 0.1 > confidence[-1]


def test_a_label_without_a_centre_gets_zero():
    scorer = fit_centroid_confidence(np.eye(3), [0, 1, 2])
    assert scorer(np.eye(3), [0, 5, 2]).tolist()[1] == 0.0


def test_labels_must_match_the_rows():
    with pytest.raises(ValueError, match="3 entries for 2 rows"):
        centroid_confidence(np.zeros((2, 2)), [0, 1, 1])


def test_mislabelled_rows_rank_lowest_and_most_rows_do_not_saturate():
    X, y = make_blobs(600, centers=6, n_features=32, cluster_std=4.0, random_state=0)
    rng = np.random.default_rng(0)
    wrong = rng.random(len(y)) < 0.1
    labels = np.where(wrong, (y + rng.integers(1, 6, len(y))) % 6, y)
    confidence = centroid_confidence(X, labels)
    assert roc_auc_score(~wrong, confidence) > 0.95
    assert np.mean(confidence >= 0.99) < 0.5


def test_rows_are_scored_in_blocks_as_a_whole(monkeypatch):
    from skaudiocluster.cluster import _confidence

    X, y = make_blobs(50, centers=3, random_state=0)
    whole = centroid_confidence(X, y)
    monkeypatch.setattr(_confidence, "BLOCK_ROWS", 7)
    assert_allclose(centroid_confidence(X, y), whole)
