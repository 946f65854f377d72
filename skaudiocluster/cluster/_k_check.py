"""Is a number of clusters plausible? A silhouette check of k-means partitions around it.

A clusterer that infers K (DeepDPM) answers with the K its model prefers; where
the model does not fit the data (classes that are not Gaussian), that K can be
far from the structure the data show. :func:`check_n_clusters` scores k-means
partitions of the same features for K around the found one by their
silhouette, and says whether another K separates them clearly better.

The rule, and why each part holds on any data:

* Scores are mean silhouettes over ``N_REPEATS`` replicates. Each replicate
  draws at most ``MAX_ROWS`` rows, fits k-means on a random half of them and
  scores the labels it gives all of them; the spread between replicates is how
  much a score moves with the rows and the k-means start (the check's noise).
* The suggested K is the best-scoring candidate. The found K is implausible
  only if the suggested K is at least ``MIN_K_DISTANCE`` (2) away: neighbouring
  K differ by one split or merge, and a silhouette curve is flat around its
  maximum, so no score separates them reliably.
* The silhouette has a trend of its own with K: on structureless data of many
  dimensions it falls as K grows (fewer clusters look better), in two it can
  rise. So the same change of K is scored on a structureless reference, one
  Gaussian of each replicate's mean and covariance (rescaled to the rows' norm
  when the rows share one, as L2-normalised features do), and a gain the
  reference shows too is subtracted. A trend against the suggestion is not
  counted as evidence for it.
* What is left must exceed both ``NOISE_SDS`` (2) standard deviations of the
  replicates' gains (not chance) and ``RELATIVE_MARGIN`` (a tenth) of the
  suggested K's score. The silhouette is a ratio of distances, so a relative
  margin means the same in any space; and on structureless data (Gaussian,
  uniform, points on a sphere, 6 to 32 dimensions) the best of the ten
  candidates beats a given K by up to about a tenth, so less says nothing.
* One cluster separates nothing: its score is taken as 0, on the data and on
  the reference, so a single cluster is implausible when the data separate
  clearly better than one Gaussian of their mean and covariance does.

The silhouette favours fewer, well separated clusters and under-states K where
classes overlap, so of the two directions a warning that K is too small is the
more trustworthy.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import pairwise_distances, silhouette_score
from sklearn.utils import check_random_state

MAX_ROWS = 2000
N_REPEATS = 5
# Candidates run from K - BELOW to K + ABOVE, with at least ROWS_PER_CLUSTER rows per
# cluster in the half of the rows k-means is fitted on.
BELOW = 3
ABOVE = 6
ROWS_PER_CLUSTER = 10
MIN_K_DISTANCE = 2
NOISE_SDS = 2.0
RELATIVE_MARGIN = 0.1
KMEANS_N_INIT = 3
# Rows whose norms differ by at most this fraction of their mean lie on a sphere.
SAME_NORM = 1e-4


class KCheckWarning(UserWarning):
    """A clusterer's number of clusters disagrees with the structure of its features.

    Raised by :class:`~skaudiocluster.DeepDPMClusterer` when it finds a single
    cluster, or when k-means partitions of the features it clustered separate
    clearly better at another K (``check_n_clusters``).

    Examples
    --------
    >>> from skaudiocluster.cluster import KCheckWarning
    >>> issubclass(KCheckWarning, UserWarning)
    True
    """


@dataclasses.dataclass(frozen=True)
class KCheck:
    """The outcome of :func:`check_n_clusters`.

    Attributes
    ----------
    n_clusters : int
        The K checked (the clusterer's).
    candidates : tuple of int
        The K scored, in increasing order.
    scores : tuple of float
        Mean silhouette of the k-means partition at each candidate.
    score_sd : tuple of float
        Its standard deviation over the replicates.
    suggested : int
        The best-scoring candidate.
    warn : bool
        Whether ``suggested`` separates the features clearly better than
        ``n_clusters`` (the module's rule).
    n_rows : int
        Rows scored per replicate.
    reference_gain : float or None
        Mean silhouette gain from ``n_clusters`` to ``suggested`` on the
        structureless reference (one Gaussian of the data's mean and
        covariance); None when the two were not compared.

    Examples
    --------
    >>> check = KCheck(3, (2, 3, 4), (0.2, 0.5, 0.3), (0.01, 0.01, 0.01), 3, False, 300)
    >>> check.score_of(3)
    0.5
    """

    n_clusters: int
    candidates: tuple[int, ...]
    scores: tuple[float, ...]
    score_sd: tuple[float, ...]
    suggested: int
    warn: bool
    n_rows: int
    reference_gain: float | None = None

    def score_of(self, k: int) -> float | None:
        """The mean silhouette at ``k``, or None if ``k`` was not scored."""
        return self.scores[self.candidates.index(k)] if k in self.candidates else None

    def finding(self) -> str:
        """The suggested K and the scores behind it, as a clause.

        Examples
        --------
        >>> check = KCheck(2, (2, 3, 4, 5), (0.3, 0.4, 0.5, 0.4), (0.01,) * 4, 4, True, 400)
        >>> print(check.finding())
        k-means partitions ... at K=4 (mean silhouette 0.500 against 0.300 at K=2; K 2-5 ...)
        """
        best = self.score_of(self.suggested)
        found = self.score_of(self.n_clusters)
        if found is not None:
            against = f" against {found:.3f} at K={self.n_clusters}"
        elif self.reference_gain is not None:
            against = (
                f" against {self.reference_gain:.3f} for one Gaussian of their mean and covariance"
            )
        else:
            against = ""
        return (
            f"k-means partitions of the features separate clearly better at K={self.suggested} "
            f"(mean silhouette {best:.3f}{against}; K {self.candidates[0]}-"
            f"{self.candidates[-1]} scored on {self.n_rows} rows)"
        )

    def message(self, owner: str) -> str:
        """What a warning says: the found K, the suggested K, their scores and what to do.

        Parameters
        ----------
        owner : str
            The clusterer's name, e.g. ``"DeepDPMClusterer"``.

        Returns
        -------
        message : str

        Examples
        --------
        >>> check = KCheck(2, (2, 3, 4, 5), (0.3, 0.4, 0.5, 0.4), (0.01,) * 4, 4, True, 400)
        >>> print(check.message("DeepDPMClusterer").split(" (")[0])
        DeepDPMClusterer found 2 clusters, but k-means partitions ... clearly better at K=4
        """
        more = self.suggested > self.n_clusters
        return (
            f"{owner} found {self.n_clusters} cluster{'s' * (self.n_clusters != 1)}, but "
            f"{self.finding()}. If about "
            f"{self.suggested} clusters are plausible, give n_clusters to a clusterer that "
            f"takes it (TEMIClusterer, SPICEClusterer, KMeans), or start {owner} nearer to it "
            f"(n_clusters_init) or favour {'more' if more else 'fewer'} clusters (a "
            f"{'larger' if more else 'smaller'} alpha). check_k=False skips this check."
        )


def candidate_ks(n_clusters: int, k_max: int) -> range:
    """The K scored around ``n_clusters``: ``K - 3`` (at least 2) to ``K + 6``, at most ``k_max``.

    Examples
    --------
    >>> candidate_ks(7, 100), candidate_ks(1, 100), candidate_ks(10, 12)
    (range(4, 14), range(2, 8), range(7, 13))
    """
    return range(max(2, n_clusters - BELOW), min(n_clusters + ABOVE, k_max) + 1)


def check_n_clusters(
    X: np.ndarray,
    n_clusters: int,
    *,
    random_state: int | np.random.RandomState | None = None,
) -> KCheck | None:
    """Whether k-means partitions of ``X`` separate clearly better at another K.

    Scores k-means partitions for K from ``n_clusters - 3`` to
    ``n_clusters + 6`` by their silhouette (mean over 5 replicates on at most
    2,000 rows, k-means fitted on a random half of them), and calls
    ``n_clusters`` implausible when the best K is at least 2 away and beats it
    by more than the same change of K gains on one Gaussian of the data's mean
    and covariance, by more than the replicate noise and a tenth of its score
    (the module's docstring says why). A single cluster scores 0.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The features the clusterer saw (after its preprocessing).
    n_clusters : int
        The K to check.
    random_state : int, RandomState instance or None, default=None
        Seeds the row draws, the reference and k-means; an int leaves NumPy's
        global state alone.

    Returns
    -------
    check : KCheck or None
        None when ``X`` is too small to score ``n_clusters`` against a K at
        least 2 away (k-means is fitted on half the rows, 10 rows per cluster).

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(n_samples=600, centers=8, cluster_std=0.5, random_state=0)
    >>> check = check_n_clusters(X, 3, random_state=0)
    >>> check.suggested, check.warn
    (8, True)
    >>> check_n_clusters(X, 8, random_state=0).warn
    False
    """
    X = np.asarray(X, dtype=np.float64)
    rng = check_random_state(random_state)
    n_rows = min(len(X), MAX_ROWS)
    n_fit = n_rows // 2
    n_distinct = len(np.unique(X, axis=0)) if len(X) <= MAX_ROWS else n_rows
    ks = list(candidate_ks(n_clusters, min(n_fit // ROWS_PER_CLUSTER, n_distinct)))
    if (n_clusters > 1 and n_clusters not in ks) or not any(
        abs(k - n_clusters) >= MIN_K_DISTANCE for k in ks
    ):
        return None
    samples = [X[rng.permutation(len(X))[:n_rows]] for _ in range(N_REPEATS)]
    with warnings.catch_warnings():
        # duplicated rows: fewer distinct clusters than asked is a low score, not news
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = np.array([_silhouettes(sample, ks, n_fit, rng) for sample in samples])
        mean = scores.mean(axis=0)
        best = int(np.argmax(mean))
        warn, reference_gain = False, None
        if abs(ks[best] - n_clusters) >= MIN_K_DISTANCE and mean[best] > 0:
            pair = [ks[best], n_clusters] if n_clusters > 1 else [ks[best]]
            reference = np.array(
                [_silhouettes(_gaussian_like(sample, rng), pair, n_fit, rng) for sample in samples]
            )
            found = scores[:, ks.index(n_clusters)] if n_clusters > 1 else 0.0
            reference_found = reference[:, 1] if n_clusters > 1 else 0.0
            reference_gain = float((reference[:, 0] - reference_found).mean())
            # a trend that favours the suggestion is discounted; one against it is no evidence
            gains = scores[:, best] - found - max(reference_gain, 0.0)
            margin = max(NOISE_SDS * gains.std(ddof=1), RELATIVE_MARGIN * mean[best])
            warn = bool(gains.mean() > margin)
    return KCheck(
        n_clusters=int(n_clusters),
        candidates=tuple(ks),
        scores=tuple(float(s) for s in mean),
        score_sd=tuple(float(s) for s in scores.std(axis=0, ddof=1)),
        suggested=int(ks[best]),
        warn=warn,
        n_rows=n_rows,
        reference_gain=reference_gain,
    )


def _silhouettes(sample: np.ndarray, ks, n_fit: int, rng: np.random.RandomState) -> list[float]:
    """Silhouette of ``sample`` labelled by k-means fitted on its first ``n_fit`` rows, per K."""
    distances = pairwise_distances(sample)
    scores = []
    for k in ks:
        kmeans = KMeans(k, n_init=KMEANS_N_INIT, random_state=rng.randint(2**31 - 1))
        labels = kmeans.fit(sample[:n_fit]).predict(sample)
        if len(np.unique(labels)) < 2:
            scores.append(0.0)
        else:
            scores.append(float(silhouette_score(distances, labels, metric="precomputed")))
    return scores


def _gaussian_like(sample: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """As many rows as ``sample`` from one Gaussian of its mean and covariance.

    If the rows of ``sample`` share one norm (L2-normalised features), so do the
    reference's: the Gaussian's rows are rescaled to it.
    """
    mean = sample.mean(axis=0)
    _, singular, axes = np.linalg.svd(sample - mean, full_matrices=False)
    # covariance axes.T @ diag(singular**2 / (n - 1)) @ axes, whatever its rank
    scale = (singular / np.sqrt(len(sample) - 1))[:, None] * axes
    reference = mean + rng.standard_normal((len(sample), len(singular))) @ scale
    norms = np.linalg.norm(sample, axis=1)
    if np.ptp(norms) <= SAME_NORM * norms.mean():
        lengths = np.linalg.norm(reference, axis=1, keepdims=True)
        reference *= norms.mean() / np.maximum(lengths, np.finfo(float).tiny)
    return reference
