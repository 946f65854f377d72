import pickle
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from skaudiocluster.cluster import KCheckWarning
from skaudiocluster.cluster._k_check import KCheck, candidate_ks, check_n_clusters


@pytest.fixture(scope="module")
def six_blobs():
    return make_blobs(n_samples=600, centers=6, n_features=8, random_state=0)[0]


def test_an_obvious_under_split_is_flagged_with_the_right_k(six_blobs):
    check = check_n_clusters(six_blobs, 3, random_state=0)
    assert (check.best, check.plausible, check.suggested, check.warn) == (6, (6,), 6, True)
    assert check.candidates == tuple(range(2, 10))
    assert check.score_of(6) == max(check.scores) > check.score_of(3) * 1.1
    message = check.message("DeepDPMClusterer")
    for part in ("found 3 clusters", "worse at K=3 than at K=6", f"{check.score_of(6):.3f}"):
        assert part in message
    for advice in ("TEMIClusterer", "n_clusters_init", "larger alpha", "check_k=False"):
        assert advice in message


@pytest.mark.parametrize("k", [5, 6, 7])
def test_the_right_k_and_its_neighbours_pass(six_blobs, k):
    check = check_n_clusters(six_blobs, k, random_state=0)
    assert check.best == 6
    assert not check.warn


def test_a_k_next_to_a_plausible_one_passes():
    # 8 blobs in 2-D, two pairs close: 7 and 9 score within a tenth of 8, so 6 is one
    # step from a plausible K and passes, where 5 does not
    X = make_blobs(n_samples=600, centers=8, cluster_std=0.5, random_state=0)[0]
    six, five = check_n_clusters(X, 6, random_state=0), check_n_clusters(X, 5, random_state=0)
    assert six.best == five.best == 8
    assert (six.plausible, six.suggested, six.warn) == ((7, 8, 9), 7, False)
    assert (five.suggested, five.warn) == (7, True)


@pytest.mark.parametrize("n_features", [6, 32])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_structureless_data_never_warn(n_features, k):
    # the silhouette falls with K on one Gaussian blob (and on points of a sphere): the
    # reference has the same trend, so it suggests neither a smaller nor a larger K
    rng = np.random.default_rng(0)
    blob = rng.normal(size=(600, n_features))
    sphere = blob / np.linalg.norm(blob, axis=1, keepdims=True)
    for X in (blob, sphere):
        check = check_n_clusters(X, k, random_state=0)
        assert not check.warn
        assert abs(check.excess_of(check.best)) < 0.1 * max(check.scores)


def test_the_raw_silhouette_would_cry_wolf_where_the_reference_does_not():
    # anisotropic Gaussian: its silhouette is highest at K=2 (one cut along the long
    # axis), which says nothing of clusters; the reference falls the same way
    X = np.random.default_rng(0).normal(size=(1000, 8)) * [5, 3, 2, 1, 1, 1, 1, 1]
    check = check_n_clusters(X, 5, random_state=0)
    assert check.score_of(2) > 1.2 * check.score_of(5)
    assert not check.warn


def test_a_single_cluster_is_flagged_only_when_the_data_separate(six_blobs):
    check = check_n_clusters(six_blobs, 1, random_state=0)
    assert (check.best, check.suggested, check.warn) == (6, 6, True)
    assert check.candidates == tuple(range(2, 8)) and check.plausible == (6,)
    assert check.score_of(1) == check.excess_of(1) == 0
    assert "worse at K=1 than at K=6" in check.finding()
    blob = np.random.default_rng(0).normal(size=(600, 2))
    assert not check_n_clusters(blob, 1, random_state=0).warn


def test_too_few_rows_are_not_checked():
    X = np.random.default_rng(0).normal(size=(59, 2))
    assert candidate_ks(3, len(X) // 2 // 10) == range(2, 3)
    assert check_n_clusters(X, 3, random_state=0) is None  # no K two away from 3 to score
    assert check_n_clusters(X, 9, random_state=0) is None  # 9 itself cannot be scored


def test_duplicated_rows_are_scored_quietly():
    # six distinct rows: K stops at 6, and k-means' ConvergenceWarnings stay inside
    X = np.repeat(np.eye(6), 50, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = check_n_clusters(X, 2, random_state=0)
    assert check.candidates == (2, 3, 4, 5, 6)
    assert (check.best, check.suggested, check.warn) == (6, 6, True)
    assert check.score_of(6) == pytest.approx(1.0)


def test_seeded_checks_repeat_and_leave_numpy_alone(six_blobs):
    state = np.random.get_state()
    first = check_n_clusters(six_blobs, 4, random_state=1)
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    assert check_n_clusters(six_blobs, 4, random_state=1) == first
    assert pickle.loads(pickle.dumps(first)) == first


def test_checks_are_cheap_next_to_a_fit():
    import time

    X = make_blobs(n_samples=3000, centers=10, n_features=32, random_state=0)[0]
    start = time.perf_counter()
    check = check_n_clusters(X, 10, random_state=0)
    assert check.n_rows == 2000
    assert time.perf_counter() - start < 20  # a few seconds on one busy core


# --- DeepDPMClusterer ----------------------------------------------------------------------


def test_kcheck_is_a_plain_record():
    check = KCheck(2, (2, 3, 4), (0.1, 0.2, 0.3), (0.1,) * 3, (0.0,) * 3, 4, (4,), 4, True, 100)
    assert check.score_of(4) == 0.3 and check.score_of(9) is None
    assert check.excess_of(4) == 0.2 and check.excess_of(9) is None
    assert "within the noise: K 4 or more;" in check.finding()
    assert issubclass(KCheckWarning, UserWarning)


def test_silhouette_matches_scikit_learn():
    from sklearn.metrics import pairwise_distances, silhouette_score

    from skaudiocluster.cluster._k_check import silhouette

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    D = pairwise_distances(X)
    for n_labels in (2, 7, 60):  # 60: many clusters of one row, which score 0
        labels = rng.integers(0, n_labels, len(X))
        expected = silhouette_score(D, labels, metric="precomputed")
        assert silhouette(D, labels) == pytest.approx(expected, abs=1e-12)
        assert silhouette(D.astype(np.float32), labels) == pytest.approx(expected, abs=1e-5)
    assert silhouette(D, np.zeros(len(X))) == 0.0
