"""Clustering scores: Hungarian accuracy and scorers usable by ``GridSearchCV``.

Supervised scorers compare predicted clusters with true labels (NMI, ARI,
Hungarian accuracy); unsupervised scorers judge the partition of the features
the clusterer saw (silhouette, Calinski-Harabasz) and ignore ``y``. All of them
are ``scorer(estimator, X, y)`` callables, so they go straight into
``GridSearchCV(scoring=...)``, alone, as the dict :data:`CLUSTERING_SCORERS`, or
as :class:`ClusteringScores`, which predicts once and returns several scores.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    normalized_mutual_info_score,
    roc_auc_score,
    silhouette_score,
)
from sklearn.pipeline import Pipeline

__all__ = [
    "hungarian_accuracy",
    "hungarian_mapping",
    "matched_confusion_matrix",
    "confidence_auroc",
    "ClusteringScorer",
    "ClusteringScores",
    "CLUSTERING_SCORERS",
    "get_clustering_scorer",
    "TransductiveSplit",
]


def _encode(labels) -> tuple[np.ndarray, list]:
    """Integer codes for labels of any hashable type, and the distinct labels in order."""
    values: dict[Hashable, int] = {}
    codes = np.fromiter((values.setdefault(label, len(values)) for label in labels), dtype=np.int64)
    return codes, list(values)


def _contingency(y_true, y_pred) -> tuple[np.ndarray, list, list]:
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred have different lengths: {len(y_true)} and {len(y_pred)}"
        )
    if len(y_true) == 0:
        raise ValueError("y_true and y_pred are empty")
    true_codes, classes = _encode(y_true)
    pred_codes, clusters = _encode(y_pred)
    counts = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(counts, (true_codes, pred_codes), 1)
    return counts, classes, clusters


def hungarian_mapping(y_true: Sequence, y_pred: Sequence) -> dict:
    """Best one-to-one matching of clusters to classes, as ``{cluster: class}``.

    The matching maximises the number of samples whose cluster is mapped to
    their class (``scipy.optimize.linear_sum_assignment``). When there are more
    clusters than classes, the surplus clusters are absent from the mapping.
    """
    counts, classes, clusters = _contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {clusters[c]: classes[r] for r, c in zip(rows, cols)}


def hungarian_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Clustering accuracy under the best one-to-one matching of clusters to classes.

    Parameters
    ----------
    y_true : sequence of hashable, length n_samples
        True labels, of any hashable type.
    y_pred : sequence of hashable, length n_samples
        Cluster labels, of any hashable type. The number of clusters may differ
        from the number of classes: samples in a cluster left unmatched count
        as errors.

    Returns
    -------
    accuracy : float in [0, 1]

    Examples
    --------
    >>> from skaudiocluster.metrics import hungarian_accuracy
    >>> hungarian_accuracy(["a", "a", "b", "b"], [1, 1, 0, 0])
    1.0
    >>> hungarian_accuracy(["a", "a", "b", "b"], [0, 1, 2, 2])
    0.75
    """
    counts, _, _ = _contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def matched_confusion_matrix(y_true: Sequence, y_pred: Sequence) -> tuple[np.ndarray, list, list]:
    """Confusion matrix with clusters reordered to face their matched classes.

    Returns
    -------
    matrix : ndarray of shape (n_classes, n_clusters)
        ``matrix[i, j]`` counts samples of class ``classes[i]`` in cluster
        ``clusters[j]``. Matched clusters come first, in class order, so a good
        clustering has a heavy diagonal; unmatched clusters follow.
    classes : list
        Classes in order of first appearance in ``y_true``.
    clusters : list
        Clusters in column order.
    """
    counts, classes, clusters = _contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    matched = [c for _, c in sorted(zip(rows, cols))]
    order = matched + [c for c in range(len(clusters)) if c not in set(matched)]
    return counts[:, order], classes, [clusters[c] for c in order]


def confidence_auroc(y_true: Sequence, y_pred: Sequence, confidence: Sequence) -> float:
    """How well a per-sample confidence ranks the clustering's mistakes, as a ROC AUC.

    A sample is right when its cluster is matched to its class by
    :func:`hungarian_mapping` (samples of unmatched clusters are wrong). The
    score is the probability that a random right sample has a higher confidence
    than a random wrong one: 1 when every mistake ranks below every right
    sample, 0.5 for a confidence that says nothing (or is the same for all).

    Parameters
    ----------
    y_true : sequence of hashable, length n_samples
    y_pred : sequence of hashable, length n_samples
    confidence : sequence of float, length n_samples
        Higher means surer (e.g. ``TEMIClusterer().confidence_``).

    Returns
    -------
    auroc : float in [0, 1], or NaN when every sample is right or every one wrong

    Examples
    --------
    >>> from skaudiocluster.metrics import confidence_auroc
    >>> confidence_auroc(["a", "a", "b", "b"], [0, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    1.0
    """
    mapping = hungarian_mapping(y_true, y_pred)
    right = [mapping.get(cluster, _UNMATCHED) == label for label, cluster in zip(y_true, y_pred)]
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(confidence) != len(right):
        raise ValueError(f"confidence has {len(confidence)} values for {len(right)} samples")
    if all(right) or not any(right):
        return float("nan")
    return float(roc_auc_score(right, confidence))


# Class of the samples in a cluster that no class was matched to: equal to no label.
_UNMATCHED = object()


def _encoded_score(func: Callable) -> Callable[[Sequence, Sequence], float]:
    def score(y_true, y_pred) -> float:
        return float(func(_encode(y_true)[0], _encode(y_pred)[0]))

    score.__name__ = func.__name__
    return score


def _cluster_labels(estimator, X) -> np.ndarray:
    """Cluster labels of X: ``predict`` when the estimator has one, else ``labels_``.

    ``labels_`` is only meaningful when X is the data the estimator was fitted
    on (transductive scoring with :class:`TransductiveSplit`).
    """
    if hasattr(estimator, "predict"):
        return np.asarray(estimator.predict(X))
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    labels = getattr(final, "labels_", None)
    if labels is None or len(labels) != len(X):
        raise TypeError(
            f"{type(final).__name__} has no predict method; it can only be scored "
            "transductively (cv=TransductiveSplit()), on the data it was fitted on"
        )
    return np.asarray(labels)


def _features_seen(estimator, X) -> np.ndarray:
    """X as the final step of a pipeline sees it."""
    if isinstance(estimator, Pipeline) and len(estimator) > 1:
        return np.asarray(estimator[:-1].transform(X))
    return np.asarray(X)


class ClusteringScorer:
    """A ``scorer(estimator, X, y)`` callable for clustering estimators and pipelines.

    Parameters
    ----------
    score_func : callable
        ``score_func(y_true, labels)`` for supervised scores, or
        ``score_func(features, labels)`` when ``unsupervised=True``. Higher is better.
    unsupervised : bool, default=False
        Score the partition of the features the final step saw (a pipeline's
        last-but-one output) instead of comparing with ``y``.
    name : str, default=None
        Shown in ``repr``.

    Notes
    -----
    Labels come from ``predict`` (held-out scoring); estimators without it,
    such as ``AgglomerativeClustering``, are scored with ``labels_`` and so
    only with :class:`TransductiveSplit`. Unsupervised scores need at least two
    clusters and fewer clusters than samples; a degenerate partition gets the
    score's worst value (-1 for silhouette, 0 for Calinski-Harabasz).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.cluster import KMeans
    >>> from skaudiocluster.metrics import CLUSTERING_SCORERS
    >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2))]
    >>> y = np.r_[np.zeros(5), np.ones(5)]
    >>> km = KMeans(2, n_init=2, random_state=0).fit(X)
    >>> CLUSTERING_SCORERS["hungarian_accuracy"](km, X, y)
    1.0
    """

    def __init__(
        self,
        score_func: Callable,
        *,
        unsupervised: bool = False,
        worst: float = 0.0,
        name: str | None = None,
    ):
        self.score_func = score_func
        self.unsupervised = unsupervised
        self.worst = worst
        self.name = name or getattr(score_func, "__name__", "score")

    def __call__(self, estimator, X, y=None) -> float:
        return self.score_labels(estimator, X, y, _cluster_labels(estimator, X))

    def score_labels(self, estimator, X, y, labels: np.ndarray) -> float:
        """The score of ``labels``, cluster labels the estimator already gave X."""
        if not self.unsupervised:
            if y is None:
                raise ValueError(f"the {self.name} scorer needs true labels y")
            return float(self.score_func(y, labels))
        if not 2 <= len(np.unique(labels)) < len(labels):
            return self.worst
        return float(self.score_func(_features_seen(estimator, X), labels))

    def __repr__(self) -> str:
        return f"ClusteringScorer({self.name})"


CLUSTERING_SCORERS: dict[str, ClusteringScorer] = {
    "hungarian_accuracy": ClusteringScorer(hungarian_accuracy, name="hungarian_accuracy"),
    "nmi": ClusteringScorer(_encoded_score(normalized_mutual_info_score), name="nmi"),
    "ari": ClusteringScorer(_encoded_score(adjusted_rand_score), name="ari"),
    "silhouette": ClusteringScorer(
        silhouette_score, unsupervised=True, worst=-1.0, name="silhouette"
    ),
    "calinski_harabasz": ClusteringScorer(
        calinski_harabasz_score, unsupervised=True, worst=0.0, name="calinski_harabasz"
    ),
}
"""Scorers by name: ``GridSearchCV(scoring=CLUSTERING_SCORERS, refit="nmi")``."""


class ClusteringScores:
    """Several clustering scores from one prediction, as a dict (for ``GridSearchCV``).

    ``GridSearchCV(scoring=CLUSTERING_SCORERS)`` calls each scorer, and so the
    pipeline's ``predict`` (embedding included), once per metric. This callable
    predicts once and returns every score; use it with ``refit="<name>"``.

    Parameters
    ----------
    names : sequence of str, default=None
        Keys of :data:`CLUSTERING_SCORERS`; ``None`` means all of them, which
        requires ``y`` (for unlabelled data pass only unsupervised names).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.cluster import KMeans
    >>> from sklearn.model_selection import GridSearchCV
    >>> from skaudiocluster.metrics import ClusteringScores, TransductiveSplit
    >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2))] + np.arange(10)[:, None] * 0.01
    >>> y = np.r_[np.zeros(5), np.ones(5)]
    >>> search = GridSearchCV(KMeans(n_init=2, random_state=0), {"n_clusters": [2, 3]},
    ...                       scoring=ClusteringScores(["nmi", "silhouette"]), refit="nmi",
    ...                       cv=TransductiveSplit()).fit(X, y)
    >>> search.best_params_
    {'n_clusters': 2}
    """

    def __init__(self, names: Sequence[str] | None = None):
        self.names = names

    def __call__(self, estimator, X, y=None) -> dict[str, float]:
        names = list(CLUSTERING_SCORERS) if self.names is None else list(self.names)
        scorers = {name: get_clustering_scorer(name) for name in names}
        labels = _cluster_labels(estimator, X)
        return {name: s.score_labels(estimator, X, y, labels) for name, s in scorers.items()}

    def __repr__(self) -> str:
        return f"ClusteringScores({self.names!r})"


def get_clustering_scorer(name: str) -> ClusteringScorer:
    """The scorer called ``name`` in :data:`CLUSTERING_SCORERS`."""
    try:
        return CLUSTERING_SCORERS[name]
    except KeyError:
        raise ValueError(
            f"unknown clustering scorer {name!r}; choose from {sorted(CLUSTERING_SCORERS)}"
        ) from None


class TransductiveSplit:
    """Cross-validation "split" that fits and scores on all the data.

    Clustering is often judged on the very collection it partitions. Pass
    ``cv=TransductiveSplit()`` to ``GridSearchCV`` to fit each candidate on all
    samples and score it on the same samples; this also makes estimators
    without ``predict`` (``AgglomerativeClustering``, ``DBSCAN``) searchable.

    Parameters
    ----------
    n_repeats : int, default=1
        Number of identical splits; more than one only makes sense for
        estimators whose ``random_state`` is left to vary.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.metrics import TransductiveSplit
    >>> [(train.tolist(), test.tolist()) for train, test in TransductiveSplit().split(np.zeros(3))]
    [([0, 1, 2], [0, 1, 2])]
    """

    def __init__(self, n_repeats: int = 1):
        self.n_repeats = n_repeats

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        indices = np.arange(len(X))
        for _ in range(self.n_repeats):
            yield indices, indices

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_repeats

    def __repr__(self) -> str:
        return f"TransductiveSplit(n_repeats={self.n_repeats})"
