"""benchmarks/bench_scale.py: its data, exact reference, recall and the per-job subprocesses."""

import numpy as np
import pytest

TINY = {"temi": {"n_heads": 2}, "spice": {"n_heads": 2, "n_repeats": 1}, "deepdpm": {}}


def test_mixture_is_seeded_float32_and_clustered(bench_scale):
    X = bench_scale.mixture(1000, n_features=8)
    assert X.dtype == np.float32 and X.shape == (1000, 8)
    np.testing.assert_array_equal(X, bench_scale.mixture(1000, n_features=8))
    assert not np.array_equal(X, bench_scale.mixture(1000, seed=1, n_features=8))


def test_exact_reference_is_cosine_knn_and_recall_counts_overlap(bench_scale):
    from skaudiocluster.cluster._neighbors import cosine_knn

    X = bench_scale.mixture(600, n_features=16)
    expected, _ = cosine_knn(X, 5, method="exact")
    rows = np.array([0, 7, 599])
    found = bench_scale.exact_neighbours(X.copy(), rows, 5, chunk=2)
    assert bench_scale.recall_at_k(found, expected[rows]) == 1.0
    half = expected[rows].copy()
    half[:, :2] = [-1, -2]
    assert bench_scale.recall_at_k(half, expected[rows]) == pytest.approx(0.6)


@pytest.mark.parametrize("method", ["temi", "spice", "deepdpm"])
def test_a_fit_reports_epochs_time_and_rss(bench_scale, method):
    result = bench_scale.run_fit(method, 300, 1, n_features=16, **TINY[method])
    assert result["epochs"] == 1 and result["epoch s"] > 0
    assert result["fit s"] >= result["epoch s"] and result["peak rss GB"] > 0


def test_knn_job_runs_in_its_own_process(bench_scale):
    result = bench_scale.in_subprocess("knn", 1, 2000)
    assert result["method"] == "exact" and result["recall"] == 1.0
    assert result["n"] == 2000 and result["knn s"] > 0


def test_ratio_per_method(bench_scale):
    rows = [
        {"method": "temi", "n": 10, "epoch s": 2.0},
        {"method": "temi", "n": 100, "epoch s": 10.0},
        {"method": "spice", "n": 100, "epoch s": 1.0},
    ]
    assert bench_scale.ratio(rows, "epoch s", 10, 100) == {"temi": 5.0}
