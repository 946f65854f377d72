"""Is a number of clusters plausible? A silhouette check of k-means partitions around it.

A clusterer that infers K (DeepDPM) answers with the K its model prefers; where
the model does not fit the data (classes that are not Gaussian), that K can be
far from the structure the data show. :func:`check_n_clusters` scores k-means
partitions of the same features for K around the found one, and says whether
another K separates them clearly better.

The rule, and why each part holds on any data:

* The silhouette of a k-means partition depends on K even where there are no
  clusters: on one Gaussian of many dimensions it falls as K grows, so taken
  alone it favours few clusters. Each K is therefore scored by the silhouette
  of the data less that of a structureless reference, one Gaussian of the
  data's mean and covariance (rescaled to the rows' norm when the rows share
  one, as L2-normalised features do), clustered the same way: what is left is
  separation the data have and one Gaussian has not (the gap statistic's
  reasoning, with the silhouette for the dispersion). A single cluster scores
  0 on both.
* Scores are means over ``N_REPEATS`` replicates. Each draws at most
  ``MAX_ROWS`` rows (and as many reference rows), fits k-means on a random
  half and scores the labels it gives all of them; the spread between
  replicates is how much a score moves with the rows, the reference draw and
  the k-means start (the check's noise).
* A K is plausible unless the best candidate leads it by more than both
  ``NOISE_SDS`` (2) standard deviations of the replicates' leads (not chance)
  and ``RELATIVE_MARGIN`` (a tenth) of the best's silhouette. The silhouette
  is a ratio of distances, so a relative margin means the same in any space;
  on structureless data (Gaussian, uniform, points on a sphere; 6 to 32
  dimensions, 2,000 rows) the best of ten candidates led a given K by at most
  0.08 of it.
* The found K is implausible only if no plausible K lies within 1 of it
  (``MIN_K_DISTANCE``): neighbouring K differ by one split or merge, and a
  score curve is flat around its maximum, so no score separates them
  reliably. The suggestion is the plausible K nearest the found one, the
  most conservative correction. Plausible K reaching the edge of the range
  are reported as "K or more", as the scores may go on beyond it.

The reference is a Gaussian, so data that are structureless but far from
Gaussian in few dimensions (a uniform square, a ring) can look structured.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
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
        Mean silhouette of the k-means partition of the data at each candidate.
    reference_scores : tuple of float
        The same on the structureless reference (one Gaussian of the data's
        mean and covariance).
    excess_sd : tuple of float
        Standard deviation over the replicates of ``scores - reference_scores``.
    best : int
        The candidate of the largest excess ``scores - reference_scores``.
    plausible : tuple of int
        The K (candidates, and 1 when ``n_clusters`` is 1) whose excess is not
        clearly below the best's.
    suggested : int
        The plausible K nearest ``n_clusters`` (itself when it is plausible).
    warn : bool
        Whether ``suggested`` is at least 2 away from ``n_clusters``: neither
        ``n_clusters`` nor a neighbour separates the features as well as ``best``.
    n_rows : int
        Rows scored per replicate.

    Examples
    --------
    >>> check = KCheck(3, (2, 3, 4), (0.2, 0.5, 0.3), (0.1,) * 3, (0,) * 3, 3, (3,), 3, False, 300)
    >>> check.excess_of(3)
    0.4
    """

    n_clusters: int
    candidates: tuple[int, ...]
    scores: tuple[float, ...]
    reference_scores: tuple[float, ...]
    excess_sd: tuple[float, ...]
    best: int
    plausible: tuple[int, ...]
    suggested: int
    warn: bool
    n_rows: int

    def score_of(self, k: int) -> float | None:
        """The data's mean silhouette at ``k`` (0 for one cluster), None if not scored."""
        if k == 1:
            return 0.0
        return self.scores[self.candidates.index(k)] if k in self.candidates else None

    def excess_of(self, k: int) -> float | None:
        """The mean silhouette at ``k`` less the reference's (0 for one cluster)."""
        if k == 1:
            return 0.0
        if k not in self.candidates:
            return None
        j = self.candidates.index(k)
        return round(self.scores[j] - self.reference_scores[j], 12)

    def finding(self) -> str:
        """The found K against the best and the plausible K, with their scores, as a clause.

        Examples
        --------
        >>> scores, reference = (0.3, 0.4, 0.5, 0.4), (0.2, 0.2, 0.1, 0.1)
        >>> check = KCheck(2, (2, 3, 4, 5), scores, reference, (0,) * 4, 4, (4, 5), 4, True, 400)
        >>> print(check.finding())
        k-means partitions ... clearly worse at K=2 than at K=4 (...: K 4-5 or more; ...)
        """
        found, best = self.n_clusters, self.best
        return (
            f"k-means partitions of the features separate clearly worse at K={found} than at "
            f"K={best} (silhouette less that of one Gaussian of their mean and covariance: "
            f"{self.excess_of(found):.3f} against {self.excess_of(best):.3f}; silhouette "
            f"{self.score_of(found):.3f} against {self.score_of(best):.3f}; as good as K={best} "
            f"within the noise: K {self._plausible_text()}; K {self.candidates[0]}-"
            f"{self.candidates[-1]} scored on {self.n_rows} rows)"
        )

    def _plausible_text(self) -> str:
        runs: list[list[int]] = []
        for k in self.plausible:
            if runs and k == runs[-1][-1] + 1:
                runs[-1].append(k)
            else:
                runs.append([k])
        text = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
        if self.plausible[-1] == self.candidates[-1]:
            text += " or more"
        elif self.plausible[0] == self.candidates[0] > 2:
            text = "up to " + text
        return text

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
        >>> scores, reference = (0.3, 0.4, 0.5, 0.4), (0.2, 0.2, 0.1, 0.1)
        >>> check = KCheck(2, (2, 3, 4, 5), scores, reference, (0,) * 4, 4, (4, 5), 4, True, 400)
        >>> print(check.message("DeepDPMClusterer").split(" (")[0])
        DeepDPMClusterer found 2 clusters, but k-means partitions ... worse at K=2 than at K=4
        """
        more = self.suggested > self.n_clusters
        return (
            f"{owner} found {self.n_clusters} cluster{'s' * (self.n_clusters != 1)}, but "
            f"{self.finding()}. If {self.suggested} or {'more' if more else 'fewer'} clusters "
            f"are plausible, give n_clusters to a clusterer that takes it (TEMIClusterer, "
            f"SPICEClusterer, KMeans), or start {owner} nearer (n_clusters_init) or favour "
            f"{'more' if more else 'fewer'} clusters (a {'larger' if more else 'smaller'} "
            f"alpha). check_k=False skips this check."
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
    ``n_clusters + 6`` by their silhouette less that of one Gaussian of the
    data's mean and covariance clustered the same way (mean over 5 replicates
    on at most 2,000 rows, k-means fitted on a random half of them). A K is
    plausible unless the best K leads it by more than the replicate noise and
    a tenth of the best's silhouette; ``n_clusters`` is flagged when no K
    within 1 of it is plausible (the module's docstring says why).

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
    >>> X, _ = make_blobs(n_samples=600, centers=6, n_features=8, random_state=0)
    >>> check = check_n_clusters(X, 3, random_state=0)
    >>> check.best, check.plausible, check.warn
    (6, (6,), True)
    >>> check_n_clusters(X, 6, random_state=0).warn
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
    scores, reference = np.empty((N_REPEATS, len(ks))), np.empty((N_REPEATS, len(ks)))
    with warnings.catch_warnings():
        # duplicated rows: fewer distinct clusters than asked is a low score, not news
        warnings.simplefilter("ignore", ConvergenceWarning)
        for repeat in range(N_REPEATS):
            sample = X[rng.permutation(len(X))[:n_rows]]
            scores[repeat] = _silhouettes(sample, ks, n_fit, rng)
            reference[repeat] = _silhouettes(_gaussian_like(sample, rng), ks, n_fit, rng)
    excess = scores - reference
    best = int(np.argmax(excess.mean(axis=0)))
    floor = RELATIVE_MARGIN * max(float(scores[:, best].mean()), 0.0)

    def as_good_as_best(column: np.ndarray) -> bool:
        leads = excess[:, best] - column
        return bool(leads.mean() <= max(NOISE_SDS * leads.std(ddof=1), floor))

    plausible = [k for j, k in enumerate(ks) if as_good_as_best(excess[:, j])]
    if n_clusters == 1 and as_good_as_best(np.zeros(N_REPEATS)):
        plausible.insert(0, 1)
    # the plausible K nearest the found one, toward the best on a tie (the best is plausible)
    nearest = min(plausible, key=lambda k: (abs(k - n_clusters), abs(k - ks[best])))
    warn = abs(nearest - n_clusters) >= MIN_K_DISTANCE and floor > 0
    return KCheck(
        n_clusters=int(n_clusters),
        candidates=tuple(ks),
        scores=tuple(float(s) for s in scores.mean(axis=0)),
        reference_scores=tuple(float(s) for s in reference.mean(axis=0)),
        excess_sd=tuple(float(s) for s in excess.std(axis=0, ddof=1)),
        best=int(ks[best]),
        plausible=tuple(plausible),
        suggested=int(nearest),
        warn=bool(warn),
        n_rows=n_rows,
    )


def silhouette(distances: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of ``labels`` given all pairwise ``distances``.

    :func:`sklearn.metrics.silhouette_score` with ``metric="precomputed"``
    (a row alone in its cluster scores 0), its cluster sums of distances taken
    by one matrix product, in the dtype of ``distances``; 0 below two clusters.

    Examples
    --------
    >>> from sklearn.metrics import pairwise_distances, silhouette_score
    >>> X = np.random.default_rng(0).normal(size=(60, 3))
    >>> labels = np.arange(60) % 4
    >>> D = pairwise_distances(X)
    >>> expected = silhouette_score(D, labels, metric="precomputed")
    >>> bool(np.isclose(silhouette(D, labels), expected, rtol=0, atol=1e-12))
    True
    """
    clusters, labels = np.unique(labels, return_inverse=True)
    if len(clusters) < 2:
        return 0.0
    rows = np.arange(len(labels))
    members = np.zeros((len(labels), len(clusters)), dtype=distances.dtype)
    members[rows, labels] = 1
    sizes = members.sum(axis=0)
    sums = distances @ members
    own = sizes[labels]
    within = sums[rows, labels] / np.maximum(own - 1, 1)
    between = sums / sizes
    between[rows, labels] = np.inf
    nearest = between.min(axis=1)
    ratio = (nearest - within) / np.maximum(np.maximum(within, nearest), np.finfo(sums.dtype).tiny)
    return float(np.where(own > 1, ratio, 0).mean())


def _silhouettes(sample: np.ndarray, ks, n_fit: int, rng: np.random.RandomState) -> list[float]:
    """Silhouette of ``sample`` labelled by k-means fitted on its first ``n_fit`` rows, per K."""
    squared = np.einsum("ij,ij->i", sample, sample)
    distances = squared[:, None] + squared[None, :] - 2 * sample @ sample.T
    distances = np.sqrt(np.maximum(distances, 0)).astype(np.float32)  # one product per K below
    np.fill_diagonal(distances, 0)
    scores = []
    for k in ks:
        kmeans = KMeans(k, n_init=KMEANS_N_INIT, random_state=rng.randint(2**31 - 1))
        scores.append(silhouette(distances, kmeans.fit(sample[:n_fit]).predict(sample)))
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
