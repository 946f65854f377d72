"""Label-free consensus of several cluster heads.

A multi-head clusterer (TEMI, SPICE) trains several heads whose partitions of
the same data differ from seed to seed and head to head. Instead of trusting one
head, :func:`consensus_partition` clusters the heads' concatenated soft
assignments with k-means: a sample's row is its probability vector under every
head, so two samples share a consensus cluster when most heads put them
together. :func:`head_agreement` scores each head by its mean NMI with the
others (a label-free measure of how typical a head's partition is).

When the heads over-cluster (more clusters per head than wanted),
:func:`coassociation_partition` merges their clusters instead: two samples are as
close as the fraction of heads that put them together (evidence accumulation,
Fred and Jain, IEEE TPAMI 2005), and average linkage on that co-association cuts
the samples into the wanted number of clusters.

The API is functions on arrays of head probabilities shaped
``(n_heads, n_samples, n_clusters)``:

* :func:`head_agreement` -> ``(n_heads,)`` mean pairwise NMI of each head;
* :func:`consensus_partition` -> a fitted :class:`Consensus` (centres, labels, temperature);
* :func:`coassociation_partition` -> a fitted :class:`CoAssociation` (per-head tables, labels);
* ``predict_proba`` of either -> soft assignments of new head probabilities.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.pairwise import euclidean_distances

__all__ = [
    "CoAssociation",
    "Consensus",
    "coassociation_partition",
    "consensus_partition",
    "head_agreement",
]

MAX_FIT_SAMPLES = 20_000
# Average linkage holds an m x m distance matrix (128 MB at 4,000 rows) and takes
# seconds there; above it the linkage runs on a random subset and every row is
# assigned by its co-association with the clusters found.
MAX_LINKAGE_SAMPLES = 4_000


def head_agreement(head_probs: np.ndarray) -> np.ndarray:
    """Mean NMI of each head's argmax partition with every other head's.

    Parameters
    ----------
    head_probs : ndarray of shape (n_heads, n_samples, n_clusters)

    Returns
    -------
    ndarray of shape (n_heads,)
        In [0, 1]; 1 for a single head.

    Examples
    --------
    >>> import numpy as np
    >>> one_hot = np.eye(2)[[0, 0, 1, 1]]
    >>> swapped, mixed = one_hot[:, ::-1], np.eye(2)[[0, 1, 0, 1]]
    >>> head_agreement(np.stack([one_hot, swapped, mixed])).round(2)
    array([0.5, 0.5, 0. ])
    """
    labels = np.asarray(head_probs).argmax(axis=2)
    n_heads = len(labels)
    if n_heads == 1:
        return np.ones(1)
    scores = np.zeros((n_heads, n_heads))
    for i in range(n_heads):
        for j in range(i + 1, n_heads):
            scores[i, j] = scores[j, i] = normalized_mutual_info_score(labels[i], labels[j])
    return scores.sum(axis=1) / (n_heads - 1)


@dataclass
class Consensus:
    """k-means centres of concatenated head probabilities, and how to assign new rows.

    Attributes
    ----------
    centres : ndarray of shape (n_clusters, n_heads * n_clusters)
    labels : ndarray of shape (n_samples,)
        Consensus cluster of each training sample (its nearest centre).
    temperature : float
        Mean squared distance of the training rows to their centres: the scale
        of the soft assignments of :meth:`predict_proba`.
    """

    centres: np.ndarray
    labels: np.ndarray
    temperature: float

    def predict_proba(self, head_probs: np.ndarray) -> np.ndarray:
        """``softmax(-||z - centre||^2 / temperature)`` of the concatenated rows ``z``.

        The argmax is the nearest centre, so on the training data it is ``labels``.

        Parameters
        ----------
        head_probs : ndarray of shape (n_heads, n_samples, n_clusters)

        Returns
        -------
        ndarray of shape (n_samples, n_clusters), rows summing to 1
        """
        distances = euclidean_distances(_concatenate(head_probs), self.centres, squared=True)
        logits = -distances / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        return proba / proba.sum(axis=1, keepdims=True)


def consensus_partition(
    head_probs: np.ndarray,
    n_clusters: int,
    *,
    n_init: int = 10,
    max_samples: int = MAX_FIT_SAMPLES,
    random_state: int = 0,
) -> Consensus:
    """k-means with ``n_clusters`` centres on every head's probabilities side by side.

    Heads need not number their clusters alike: k-means sees each head's
    probabilities as separate coordinates, so no matching is needed.

    Parameters
    ----------
    head_probs : ndarray of shape (n_heads, n_samples, n_clusters_of_heads)
    n_clusters : int
    n_init : int, default=10
        k-means restarts (the lowest inertia wins).
    max_samples : int, default=20_000
        Above this many samples, k-means is fitted on a random subset of this
        size and every sample goes to its nearest centre (on a million samples
        the ten restarts on all rows would take most of a fit).
    random_state : int, default=0

    Returns
    -------
    Consensus

    Examples
    --------
    >>> import numpy as np
    >>> one_hot = np.eye(2)[[0, 0, 1, 1]]
    >>> consensus = consensus_partition(np.stack([one_hot, one_hot[:, ::-1]]), 2)
    >>> len(set(consensus.labels[:2])), len(set(consensus.labels))
    (1, 2)
    >>> consensus.predict_proba(np.stack([one_hot, one_hot[:, ::-1]])).shape
    (4, 2)
    """
    rows = _concatenate(head_probs)
    fit_rows = rows[_fit_rows(len(rows), max_samples, random_state)]
    with warnings.catch_warnings():
        # Collapsed heads give duplicate rows; the caller reports collapse itself.
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters, n_init=n_init, random_state=random_state).fit(fit_rows)
    # Every row (fitted or not) goes to its nearest centre; the spread is the mean
    # squared distance to it.
    spread = float(-kmeans.score(rows) / len(rows))
    return Consensus(
        centres=kmeans.cluster_centers_, labels=kmeans.predict(rows), temperature=max(spread, 1e-6)
    )


@dataclass
class CoAssociation:
    """Clusters of the heads' co-association, and how to assign new rows to them.

    Attributes
    ----------
    tables : ndarray of shape (n_heads, n_clusters, n_head_clusters)
        ``tables[h, c, l]``: the fraction of cluster ``c``'s members that head ``h``
        puts in its cluster ``l``.
    labels : ndarray of shape (n_samples,)
        Cluster of each training sample (the argmax of :meth:`predict_proba`).
    """

    tables: np.ndarray
    labels: np.ndarray

    def predict_proba(self, head_probs: np.ndarray) -> np.ndarray:
        """Each row's expected co-association with a member of each cluster, normalised.

        The affinity of a row to cluster ``c`` is the mean over heads of the chance that
        the head puts the row and a random member of ``c`` in the same cluster (the row's
        head probabilities against ``tables``); the rows are normalised to sum to 1.

        Parameters
        ----------
        head_probs : ndarray of shape (n_heads, n_samples, n_head_clusters)

        Returns
        -------
        ndarray of shape (n_samples, n_clusters), rows summing to 1
        """
        head_probs = np.asarray(head_probs, dtype=np.float64)
        affinity = np.einsum("hnl,hcl->nc", head_probs, self.tables) / len(head_probs)
        affinity += 1e-12  # a row no cluster shares any head cluster with: uniform
        return affinity / affinity.sum(axis=1, keepdims=True)


def coassociation_partition(
    head_probs: np.ndarray,
    n_clusters: int,
    *,
    max_samples: int = MAX_LINKAGE_SAMPLES,
    random_state: int = 0,
) -> CoAssociation:
    """Average linkage on the fraction of heads that put two samples together.

    Each head votes by its argmax; the distance of two samples is one minus the
    fraction of heads that put them in the same cluster. Heads that over-cluster
    (more clusters than ``n_clusters``) split a class in different places, so the
    pieces of a class keep a high co-association and merge first, where k-means
    on the concatenated probabilities can merge the pieces of two classes.

    Parameters
    ----------
    head_probs : ndarray of shape (n_heads, n_samples, n_head_clusters)
    n_clusters : int
        At most ``n_samples``.
    max_samples : int, default=4_000
        Above this many samples (and ``n_clusters``) the linkage runs on a random
        subset of this size; every sample then goes to the cluster it is most
        co-associated with.
    random_state : int, default=0
        Seeds the subset.

    Returns
    -------
    CoAssociation

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.repeat([0, 1], 4)
    >>> halves = [[0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 1, 0, 2, 3, 3, 2]]  # each class cut in two
    >>> heads = np.eye(4)[halves]
    >>> consensus = coassociation_partition(heads, 2)
    >>> consensus.labels.tolist() in ([0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0])
    True
    """
    head_probs = np.asarray(head_probs, dtype=np.float64)
    n_heads, n_samples, n_head_clusters = head_probs.shape
    rows = _fit_rows(n_samples, max(max_samples, n_clusters), random_state)
    votes = head_probs[:, rows].argmax(axis=2)  # (n_heads, m)
    one_hot = np.eye(n_head_clusters, dtype=np.float32)[votes].transpose(1, 0, 2)
    one_hot = one_hot.reshape(len(rows), n_heads * n_head_clusters)
    # Counts of shared heads are small integers, so the diagonal is exactly 0 and no
    # distance is negative.
    distance = 1.0 - (one_hot @ one_hot.T) / n_heads
    linkage = AgglomerativeClustering(n_clusters, metric="precomputed", linkage="average")
    clusters = linkage.fit_predict(distance)
    tables = np.zeros((n_heads, n_clusters, n_head_clusters))
    np.add.at(tables, (np.arange(n_heads)[:, None], clusters, votes), 1.0)
    tables /= np.maximum(tables.sum(axis=2, keepdims=True), 1.0)
    consensus = CoAssociation(tables=tables, labels=np.empty(0, dtype=np.int64))
    consensus.labels = consensus.predict_proba(head_probs).argmax(axis=1)
    return consensus


def _fit_rows(n_samples: int, max_samples: int, random_state: int) -> np.ndarray:
    """All row indices, or a sorted random subset of ``max_samples`` of them."""
    if n_samples <= max_samples:
        return np.arange(n_samples)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_samples, max_samples, replace=False))


def _concatenate(head_probs: np.ndarray) -> np.ndarray:
    """``(n_heads, n, k)`` -> ``(n, n_heads * k)`` float64."""
    head_probs = np.asarray(head_probs, dtype=np.float64)
    n_heads, n_samples, n_clusters = head_probs.shape
    return head_probs.transpose(1, 0, 2).reshape(n_samples, n_heads * n_clusters)
