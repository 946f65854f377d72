"""SPICE's numerical core: prototype pseudo-labels, double-softmax loss, reliable labels.

Plain functions on arrays and tensors so each rule can be tested on its own; the skorch
nets of :mod:`skaudiocluster.cluster._spice_net` wire them into training.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.nn import functional as F

from skaudiocluster.cluster._neighbors import cosine_knn

IGNORE = -100


def select_prototype_samples(
    proba: torch.Tensor,
    features: torch.Tensor,
    *,
    center_ratio: float = 0.5,
    select_ratio: float = 1.0,
) -> torch.Tensor:
    """SPICE-Self's prototype pseudo-labelling of one labelling chunk, for every head at once.

    For each head and cluster ``c``, the ``m = floor(center_ratio * M / K)`` samples with
    the highest probability of ``c`` are averaged into a prototype; the
    ``n = floor(select_ratio * M / K)`` samples most similar to that prototype (inner
    product with the L2-normalised ``features``) receive the pseudo-label ``c``. A sample
    may be selected by several clusters, as in the paper.

    Parameters
    ----------
    proba : tensor of shape (n_heads, M, K) or (M, K)
        Cluster probabilities of the labelling chunk (weak views).
    features : tensor of shape (M, D)
        The clean, L2-normalised embeddings of the same samples.
    center_ratio : float, default=0.5
    select_ratio : float, default=1.0

    Returns
    -------
    selected : tensor of shape (n_heads, K, n) or (K, n), int64
        ``selected[h, c]`` are the batch indices that head ``h`` labels ``c``, most
        similar first.

    Examples
    --------
    >>> import torch
    >>> proba = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    >>> features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.2, 0.8], [0.0, 1.0]])
    >>> select_prototype_samples(proba, features).tolist()
    [[0, 1], [3, 2]]
    """
    single = proba.dim() == 2
    if single:
        proba = proba.unsqueeze(0)
    _, n_samples, n_clusters = proba.shape
    n_center = max(1, int(center_ratio * n_samples / n_clusters))
    n_select = max(1, min(n_samples, int(select_ratio * n_samples / n_clusters)))
    top = proba.topk(n_center, dim=1).indices  # (H, m, K)
    prototypes = features[top].mean(dim=1)  # (H, K, D)
    similarity = prototypes @ features.T  # (H, K, M)
    selected = similarity.topk(n_select, dim=2).indices
    return selected[0] if single else selected


def flatten_selection(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn ``(..., K, n)`` selected indices into ``(..., K * n)`` indices and labels."""
    *lead, n_clusters, n_select = selected.shape
    labels = torch.arange(n_clusters, device=selected.device).repeat_interleave(n_select)
    return selected.reshape(*lead, -1), labels.expand(*lead, -1)


def double_softmax_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, double_softmax: bool = True
) -> torch.Tensor:
    """Cross-entropy per head, with SPICE's softmax-of-probabilities by default.

    SPICE's heads end in a softmax and their output is fed to a cross-entropy as if it
    were logits, so the loss of each sample lies in ``[log(1 + (K-1)/e), log(K - 1 + e)]``
    and gradients stay small.

    Parameters
    ----------
    logits : tensor of shape (n_heads, batch, K)
    target : tensor of shape (n_heads, batch) or (batch,), int64
        Labels; entries equal to -100 are ignored.
    double_softmax : bool, default=True
        ``False`` gives the plain cross-entropy of ``logits``.

    Returns
    -------
    loss : tensor of shape (n_heads,)
        Mean loss over each head's labelled samples (0 for a head without any).

    Examples
    --------
    >>> import math, torch
    >>> loss = double_softmax_cross_entropy(torch.zeros(1, 4, 10), torch.zeros(1, 4).long())
    >>> round(loss.item(), 4) == round(math.log(10), 4)
    True
    """
    n_heads, batch, n_clusters = logits.shape
    target = target.expand(n_heads, batch)
    scores = logits.softmax(dim=-1) if double_softmax else logits
    losses = F.cross_entropy(
        scores.reshape(-1, n_clusters), target.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(n_heads, batch)
    counts = (target != IGNORE).sum(dim=1).clamp(min=1)
    return losses.sum(dim=1) / counts


def neighbour_agreement(
    features: np.ndarray,
    labels: np.ndarray,
    n_neighbors: int,
    *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Fraction of each sample's ``n_neighbors`` cosine neighbours (self included) with its label.

    Uses :func:`~skaudiocluster.cluster._neighbors.cosine_knn`, so memory is O(N * k).

    Examples
    --------
    >>> import numpy as np
    >>> features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> neighbour_agreement(features, np.array([0, 0, 1, 0]), 2).tolist()
    [1.0, 1.0, 0.5, 0.5]
    """
    indices, _ = cosine_knn(features, n_neighbors, include_self=True, device=device)
    return (labels[indices] == labels[:, None]).mean(axis=1)


def reliable_labels(
    features: np.ndarray,
    proba: np.ndarray,
    *,
    n_neighbors: int = 100,
    min_agreement: float = 0.9,
    min_confidence: float = 0.99,
    min_per_cluster: int = 10,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """SPICE's reliable pseudo-labels, every reliable sample kept, with a guard for collapse.

    A sample is reliable when its predicted cluster is shared by at least
    ``min_agreement`` of its ``n_neighbors`` nearest neighbours (cosine, self included)
    and its confidence exceeds ``min_confidence``.

    Departure from SPICE: SPICE balances the clusters by cutting every cluster's reliable
    set to the size of the smallest one, so one weak cluster starves all the others (and
    an empty one empties the whole set). Here every reliable sample is kept and the
    balance is restored when sampling (:class:`~skaudiocluster.cluster._spice_net.
    FixMatchBatches` draws every labelled batch evenly over the clusters).

    Guard: any predicted cluster with fewer than ``min_per_cluster`` reliable samples is
    topped up with its own most consistent members (highest neighbour agreement, then
    confidence), and a ``UserWarning`` names those clusters. Clusters that the head
    predicts for no sample at all cannot be topped up and are left out. The result is
    therefore never empty; a topped-up set is as noisy as the head's own labels.

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
    proba : ndarray of shape (n_samples, n_clusters)
    n_neighbors : int, default=100
        Clipped to ``n_samples``.
    min_agreement : float, default=0.9
    min_confidence : float, default=0.99
    min_per_cluster : int, default=10
    device : torch device, default="cpu"

    Returns
    -------
    mask : ndarray of shape (n_samples,), bool
        The samples whose predicted label is kept as a training target.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> features = np.vstack([rng.normal([5, 0], 1, (20, 2)), rng.normal([0, 5], 1, (20, 2))])
    >>> proba = np.repeat([[1.0, 0.0], [0.0, 1.0]], 20, axis=0)
    >>> mask = reliable_labels(features, proba, n_neighbors=5)
    >>> int(mask[:20].sum()), int(mask[20:].sum())
    (20, 20)
    """
    labels = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    n_neighbors = min(n_neighbors, len(labels))
    agreement = neighbour_agreement(features, labels, n_neighbors, device=device)
    reliable = (agreement >= min_agreement) & (confidence > min_confidence)

    present = np.unique(labels)
    counts = {c: int(reliable[labels == c].sum()) for c in present}
    short = [c for c in present if counts[c] < min_per_cluster]
    if short:
        warnings.warn(
            f"reliable pseudo-labels: cluster(s) {[int(c) for c in short]} have fewer than "
            f"{min_per_cluster} reliable samples ({[counts[c] for c in short]}); topping "
            "them up with their most consistent members",
            UserWarning,
            stacklevel=2,
        )
        for c in short:
            members = np.flatnonzero(labels == c)
            order = np.lexsort((-confidence[members], -agreement[members]))
            reliable[members[order[:min_per_cluster]]] = True

    return reliable


def fixmatch_loss(
    labelled_logits: torch.Tensor,
    labels: torch.Tensor,
    weak_logits: torch.Tensor,
    strong_logits: torch.Tensor,
    *,
    threshold: float = 0.95,
    unlabelled_weight: float = 1.0,
) -> torch.Tensor:
    """FixMatch objective of SPICE-Semi.

    Cross-entropy on the labelled samples plus ``unlabelled_weight`` times the mean, over
    unlabelled samples, of the cross-entropy of the strong view against the hard
    prediction on the weak view, counted only where that prediction's probability is at
    least ``threshold`` (the weak predictions are not back-propagated).

    Examples
    --------
    >>> import torch
    >>> labelled, labels = torch.zeros(2, 3), torch.tensor([0, 1])
    >>> unsure = torch.zeros(4, 3)  # 1/3 confidence: below the threshold
    >>> float(fixmatch_loss(labelled, labels, unsure, torch.randn(4, 3)))  # log(3)
    1.0986...
    """
    supervised = F.cross_entropy(labelled_logits, labels)
    confidence, pseudo = weak_logits.detach().softmax(dim=-1).max(dim=-1)
    mask = (confidence >= threshold).to(strong_logits.dtype)
    unsupervised = (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
    return supervised + unlabelled_weight * unsupervised
