"""benchmarks/bench_confidence.py: the scores of a fit and the table."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs


def test_classical_fits_score_their_centroid_confidence_only(bench_confidence):
    X, y = make_blobs(120, centers=3, n_features=8, cluster_std=3.0, random_state=0)
    scores = bench_confidence.run_one("kmeans", X, y, seed=0)
    assert scores["k"] == 3 and 0.5 <= scores["acc"] <= 1
    assert 0 <= scores["centroid_saturated"] <= 1
    assert np.isnan(scores["softmax_auroc"]) and np.isnan(scores["softmax_saturated"])


def test_score_counts_saturated_rows_and_ranks_mistakes(bench_confidence):
    y = np.array(["a"] * 4 + ["b"] * 4)
    fitted = {
        "labels": np.array([0, 0, 0, 1, 1, 1, 1, 1]),
        "centroid": np.array([0.9, 0.8, 0.7, 0.1, 0.95, 0.99, 0.6, 0.7]),
        "softmax": np.ones(8),
    }
    scores = bench_confidence.score(y, fitted)
    assert scores["acc"] == pytest.approx(7 / 8)
    assert scores["centroid_auroc"] == 1.0 and scores["centroid_saturated"] == 1 / 8
    assert scores["softmax_auroc"] == 0.5 and scores["softmax_saturated"] == 1.0


def test_markdown_has_one_row_per_set_and_method(bench_confidence):
    run = {"acc": 0.9, "k": 6, "centroid_auroc": 0.8, "centroid_saturated": 0.1}
    runs = [
        {
            "set": "bengalese-finch",
            "method": "temi",
            "seed": 0,
            **run,
            "softmax_auroc": 0.6,
            "softmax_saturated": 1.0,
        },
        {
            "set": "fsdd-speaker",
            "method": "kmeans",
            "seed": 0,
            **run,
            "softmax_auroc": np.nan,
            "softmax_saturated": np.nan,
        },
    ]
    rows = bench_confidence.markdown(runs).splitlines()[2:]
    assert rows[0].startswith("| fsdd-speaker | kmeans | 0.900 ± 0.000")
    assert rows[0].endswith("|  |  |")
    assert rows[1].startswith("| bengalese-finch | temi |")
