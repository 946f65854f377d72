"""How surely each sample sits in its cluster, read from the space the clusterer saw.

A trained network's softmax says little about its mistakes: heads trained to
confident, balanced assignments put nearly every row at probability 1, wrong
ones included. The geometry of the clusters does not saturate that way: a sample
near its own cluster's centre and far from every other one is typical, a sample
between two centres is a likely mistake, whichever algorithm drew the boundary.

:func:`fit_centroid_confidence` takes features and any labels (the network's,
k-means', Ward's) and returns a :class:`CentroidConfidence`: the cluster centres
(means of each cluster's rows) and one distance scale, the mean squared distance
of a row to its own centre. The confidence of a row in its cluster ``c`` is the
soft assignment ``softmax_k(-||x - centre_k||^2 / scale)`` at ``k = c``: near 1
only where the row is much closer to its centre than to any other at the
clusters' own spread, below 1/2 where another centre is closer than its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from sklearn.utils import check_array, gen_batches

__all__ = ["CentroidConfidence", "centroid_confidence", "fit_centroid_confidence"]

# Rows per distance block: an n x K float64 table is made this many rows at a time.
BLOCK_ROWS = 65_536
# Relative size of a coordinate's rounding error after a mean (sqrt of float64's epsilon).
ROUNDING = 1.5e-8


@dataclass
class CentroidConfidence:
    """Cluster centres and the distance scale of their soft assignment.

    Attributes
    ----------
    classes : ndarray of shape (n_clusters,)
        The label of each centre (the labels that had rows when fitted).
    centers : ndarray of shape (n_clusters, n_features)
        Mean of each cluster's rows.
    scale : float
        Mean squared distance of a row to its own centre.
    """

    classes: np.ndarray
    centers: np.ndarray
    scale: float

    def __call__(self, X, labels) -> np.ndarray:
        """Confidence of each row of ``X`` in the cluster ``labels`` gives it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        labels : array-like of shape (n_samples,)
            A label without a centre (no row had it when fitted) gets 0.

        Returns
        -------
        ndarray of shape (n_samples,), float64 in [0, 1]
        """
        X = check_array(X, dtype=np.float64)
        labels = np.asarray(labels)
        sorter = np.argsort(self.classes)
        position = np.searchsorted(self.classes, labels, sorter=sorter)
        position = np.minimum(position, len(self.classes) - 1)
        own = sorter[position]
        known = self.classes[own] == labels
        confidence = np.zeros(len(X))
        for rows in gen_batches(len(X), BLOCK_ROWS):
            # cdist subtracts before squaring: exact where the |x|^2 - 2 x.c + |c|^2 form
            # cancels to rounding noise (rows far from the origin, close to a centre)
            logits = -cdist(X[rows], self.centers, "sqeuclidean") / self.scale
            own_logit = logits[np.arange(len(logits)), own[rows]]
            confidence[rows] = np.exp(own_logit - logsumexp(logits, axis=1))
        confidence[~known] = 0.0
        return confidence


def fit_centroid_confidence(X, labels) -> CentroidConfidence:
    """Centres of the clusters ``labels`` draws on ``X``, and their distance scale.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The features the clusterer saw (after its own scaling or reduction).
    labels : array-like of shape (n_samples,)
        Any labels; each distinct value is a cluster.

    Returns
    -------
    CentroidConfidence

    Examples
    --------
    >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0], [1.1, 0.5]])
    >>> scorer = fit_centroid_confidence(X, [0, 0, 1, 1, 0])
    >>> scorer.centers.round(2)
    array([[0.37, 0.5 ],
           [2.  , 0.5 ]])
    >>> scorer(X, [0, 0, 1, 1, 0]).round(3)
    array([1.   , 1.   , 0.999, 0.999, 0.68 ])
    """
    X = check_array(X, dtype=np.float64)
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    if len(inverse) != len(X):
        raise ValueError(f"labels has {len(inverse)} entries for {len(X)} rows of X")
    counts = np.bincount(inverse, minlength=len(classes))
    centers = np.zeros((len(classes), X.shape[1]))
    np.add.at(centers, inverse, X)
    centers /= counts[:, None]
    spread = float(np.mean(np.sum((X - centers[inverse]) ** 2, axis=1)))
    # Distances below the rounding error of the coordinates are no spread: identical
    # rows get equal soft assignments, not ones decided by the last bits of a mean.
    rounding = X.shape[1] * (ROUNDING * float(np.max(np.abs(X), initial=0.0))) ** 2
    return CentroidConfidence(
        classes=classes, centers=centers, scale=max(spread, rounding, np.finfo(float).tiny)
    )


def centroid_confidence(X, labels) -> np.ndarray:
    """Confidence of each sample in its cluster: its soft assignment to the cluster centres.

    Works for the labels of any clusterer, on the features it clustered. The
    centres are the means of each cluster's rows; a row's confidence is
    ``softmax_k(-||x - centre_k||^2 / s)`` at its own cluster, with ``s`` the
    mean squared distance of the rows to their own centre. Unlike a trained
    network's softmax, it does not saturate at 1: it ranks the likely mistakes
    (rows between two centres) last.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The features the clusterer saw (after its own scaling or reduction).
    labels : array-like of shape (n_samples,)
        The clusters; each distinct value is one.

    Returns
    -------
    confidence : ndarray of shape (n_samples,), float64 in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.cluster import centroid_confidence
    >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0], [1.2, 0.5]])
    >>> centroid_confidence(X, [0, 0, 1, 1, 0]).round(3)  # the last row: nearer the other centre
    array([1.   , 1.   , 0.999, 0.999, 0.5  ])
    """
    scorer = fit_centroid_confidence(X, labels)
    return scorer(X, labels)
