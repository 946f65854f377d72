import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skaudiocluster.metrics import (
    CLUSTERING_SCORERS,
    ClusteringScores,
    TransductiveSplit,
    confidence_auroc,
    get_clustering_scorer,
    hungarian_accuracy,
    hungarian_mapping,
    matched_confusion_matrix,
)

labels = st.lists(st.integers(0, 4), min_size=1, max_size=30)


@st.composite
def label_pairs(draw):
    y_true = draw(labels)
    y_pred = draw(st.lists(st.integers(0, 5), min_size=len(y_true), max_size=len(y_true)))
    return y_true, y_pred


def brute_force_accuracy(y_true, y_pred):
    classes, clusters = sorted(set(y_true)), sorted(set(y_pred))
    best = 0
    pad = [None] * max(0, len(classes) - len(clusters))
    for assignment in itertools.permutations(clusters + pad, len(classes)):
        mapping = {c: k for k, c in zip(classes, assignment) if c is not None}
        best = max(best, sum(mapping.get(p) == t for t, p in zip(y_true, y_pred)))
    return best / len(y_true)


@given(label_pairs(), st.permutations(range(6)))
def test_invariant_to_relabelling_predictions(pair, permutation):
    y_true, y_pred = pair
    renamed = [f"cluster-{permutation[p]}" for p in y_pred]
    assert hungarian_accuracy(y_true, y_pred) == hungarian_accuracy(y_true, renamed)


@given(labels)
def test_identical_partitions_score_one(y):
    assert hungarian_accuracy(y, y) == 1.0
    assert hungarian_accuracy(y, [("any", v) for v in y]) == 1.0


@settings(max_examples=60)
@given(label_pairs())
def test_matches_brute_force_and_stays_in_bounds(pair):
    y_true, y_pred = pair
    value = hungarian_accuracy(y_true, y_pred)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(brute_force_accuracy(y_true, y_pred))


def test_more_clusters_than_classes_counts_unmatched_as_errors():
    assert hungarian_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == 0.5
    assert hungarian_accuracy(["x"] * 4, [0, 0, 0, 1]) == 0.75
    assert hungarian_mapping(["x", "x", "y"], [5, 5, 7]) == {5: "x", 7: "y"}


def test_matched_confusion_matrix_puts_matches_on_the_diagonal():
    matrix, classes, clusters = matched_confusion_matrix(["a", "a", "b", "c"], [2, 2, 0, 9])
    assert classes == ["a", "b", "c"] and clusters == [2, 0, 9]
    np.testing.assert_array_equal(matrix, np.eye(3) * [2, 1, 1])


def test_length_mismatch_and_empty_inputs_raise():
    with pytest.raises(ValueError, match="different lengths"):
        hungarian_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        hungarian_accuracy([], [])
    with pytest.raises(ValueError, match="unknown clustering scorer"):
        get_clustering_scorer("purity")


def test_clustering_scores_predict_once_and_agree_with_single_scorers():
    X, y = make_blobs(60, centers=3, random_state=0)
    km = KMeans(3, n_init=3, random_state=0).fit(X)
    calls = []
    original = km.predict
    km.predict = lambda X: calls.append(1) or original(X)
    scores = ClusteringScores()(km, X, y)
    assert len(calls) == 1 and set(scores) == set(CLUSTERING_SCORERS)
    for name, scorer in CLUSTERING_SCORERS.items():
        assert scores[name] == pytest.approx(scorer(km, X, y))


def test_unsupervised_scorers_use_the_features_the_clusterer_saw():
    X, _ = make_blobs(60, centers=3, random_state=0)
    pipe = make_pipeline(StandardScaler(), KMeans(3, n_init=3, random_state=0)).fit(X)
    seen = pipe[:-1].transform(X)
    from sklearn.metrics import silhouette_score

    score = CLUSTERING_SCORERS["silhouette"](pipe, X)
    assert score == pytest.approx(silhouette_score(seen, pipe.predict(X)))
    one_cluster = KMeans(1, n_init=1).fit(X)
    assert CLUSTERING_SCORERS["silhouette"](one_cluster, X) == -1.0
    assert CLUSTERING_SCORERS["calinski_harabasz"](one_cluster, X) == 0.0


def test_grid_search_held_out_and_transductive():
    X, y = make_blobs(120, centers=4, cluster_std=0.8, random_state=1)
    pipe = make_pipeline(StandardScaler(), KMeans(n_init=3, random_state=0))
    grid = {"kmeans__n_clusters": [2, 4, 6]}
    held_out = GridSearchCV(
        pipe,
        grid,
        scoring=CLUSTERING_SCORERS,
        refit="nmi",
        cv=KFold(3, shuffle=True, random_state=0),
    ).fit(X, y)
    assert held_out.best_params_ == {"kmeans__n_clusters": 4}
    assert set(CLUSTERING_SCORERS) <= {
        k[len("mean_test_") :] for k in held_out.cv_results_ if k.startswith("mean_test_")
    }
    # Agglomerative clustering has no predict: only the transductive form can score it.
    agglo = make_pipeline(StandardScaler(), AgglomerativeClustering())
    transductive = GridSearchCV(
        agglo,
        {"agglomerativeclustering__n_clusters": [2, 4, 6]},
        scoring=CLUSTERING_SCORERS["nmi"],
        cv=TransductiveSplit(),
    ).fit(X, y)
    assert transductive.best_params_ == {"agglomerativeclustering__n_clusters": 4}
    assert transductive.best_score_ > 0.8
    with pytest.raises(TypeError, match="transductively"):
        CLUSTERING_SCORERS["nmi"](transductive.best_estimator_, X[:10], y[:10])


@pytest.mark.slow
def test_grid_search_over_an_audio_pipeline_on_fsdd(fsdd_dir, tmp_path):
    from sklearn.pipeline import Pipeline

    from skaudiocluster.datasets import load_fsdd
    from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

    paths, speaker = load_fsdd(fsdd_dir, target="speaker")
    paths, speaker = paths[::10], speaker[::10]  # 300 clips, every speaker and digit
    pipe = Pipeline(
        [
            ("logmel", SpectrogramTransformer()),
            ("scale", StandardScaler()),
            ("kmeans", KMeans(n_init=5, random_state=0)),
        ],
        memory=str(tmp_path),  # embeddings are computed once per training set
    )
    grid = {"kmeans__n_clusters": [2, 6, 12]}
    scores = ClusteringScores()  # predicts (embeds) once for all the scores
    held_out = GridSearchCV(
        pipe, grid, scoring=scores, refit="nmi", cv=KFold(3, shuffle=True, random_state=0)
    ).fit(paths, speaker)
    transductive = GridSearchCV(
        pipe, grid, scoring=scores, refit="nmi", cv=TransductiveSplit()
    ).fit(paths, speaker)
    for search in (held_out, transductive):
        nmi = search.cv_results_["mean_test_nmi"]
        print(type(search.cv).__name__, dict(zip(grid["kmeans__n_clusters"], nmi.round(3))))
        assert search.best_params_["kmeans__n_clusters"] in (6, 12)
        assert search.best_score_ > 0.5
        assert np.all(search.cv_results_["mean_test_hungarian_accuracy"] <= 1)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=2, max_size=40),
    st.permutations(range(5)),
)
def test_confidence_auroc_ranks_the_matched_samples(pairs, permutation):
    y_true, y_pred = map(list, zip(*pairs))
    mapping = hungarian_mapping(y_true, y_pred)
    right = np.array([mapping.get(c) == t for t, c in zip(y_true, y_pred)])
    auroc = confidence_auroc(y_true, y_pred, right.astype(float))
    renamed = confidence_auroc(y_true, [permutation[c] for c in y_pred], right.astype(float))
    if right.all() or not right.any():
        assert np.isnan(auroc) and np.isnan(renamed)
    else:
        assert auroc == renamed == 1.0
        assert confidence_auroc(y_true, y_pred, -right.astype(float)) == 0.0
        assert confidence_auroc(y_true, y_pred, np.ones(len(right))) == 0.5


def test_confidence_auroc_counts_unmatched_clusters_as_mistakes():
    # cluster 2 has no class left to match: its sample is wrong
    assert confidence_auroc(["a", "a", "b"], [0, 2, 1], [0.9, 0.1, 0.8]) == 1.0
    with pytest.raises(ValueError, match="2 values for 3 samples"):
        confidence_auroc(["a", "a", "b"], [0, 2, 1], [0.9, 0.1])
