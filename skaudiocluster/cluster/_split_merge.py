"""DeepDPM's split and merge moves: Metropolis-Hastings decisions and sub-cluster seeds.

The functions work on compact arrays over the current K clusters and return
decisions; applying them to the networks and the mixture is the estimator's job.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from skaudiocluster.cluster._niw import NIWPrior, log_marginal_likelihood, log_split_ratio

MIN_SPLIT_SIZE = 5

Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _accept(log_ratio: float, rng: np.random.Generator) -> bool:
    """Metropolis-Hastings: accept with probability ``min(1, exp(log_ratio))``."""
    return log_ratio > 0 or math.log(max(rng.random(), 1e-300)) < log_ratio


def split_decisions(
    stats: Stats, sub_stats: Stats, prior: NIWPrior, alpha: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Which of the K clusters to split, and their log Hastings ratios.

    ``stats`` are the hard-assignment statistics of the K clusters and
    ``sub_stats`` those of their 2K sub-clusters (sub-cluster ``j`` of cluster
    ``k`` at index ``2k + j``). A cluster with fewer than 5 points, or a
    sub-cluster with 5 or fewer, is never split.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skaudiocluster.cluster._niw import prior_from_data, sufficient_stats
    >>> _ = torch.manual_seed(0)
    >>> X = torch.cat([torch.randn(50, 2) - 5, torch.randn(50, 2) + 5]).double()
    >>> prior = prior_from_data(X, kappa=1e-4, nu=None, sigma_scale=0.05, diagonal=False)
    >>> sub = torch.nn.functional.one_hot((X[:, 0] > 0).long(), 2).double()
    >>> accept, _ = split_decisions(sufficient_stats(X, sub.sum(1, keepdim=True), diagonal=False),
    ...                             sufficient_stats(X, sub, diagonal=False), prior, 10.0,
    ...                             np.random.default_rng(0))
    >>> accept.tolist()
    [True]
    """
    n_clusters = stats[0].shape[0]
    log_evidence = log_marginal_likelihood(stats, prior)
    sub_counts = sub_stats[0].reshape(n_clusters, 2)
    sub_log_evidence = log_marginal_likelihood(sub_stats, prior).reshape(n_clusters, 2)
    eligible = (stats[0] >= MIN_SPLIT_SIZE) & (sub_counts > MIN_SPLIT_SIZE).all(dim=1)
    log_ratio = log_split_ratio(
        alpha, stats[0].clamp_min(1.0), log_evidence, sub_counts.clamp_min(1.0), sub_log_evidence
    )
    log_ratio = torch.where(eligible, log_ratio, torch.full_like(log_ratio, -math.inf))
    log_ratio = log_ratio.cpu().numpy()
    accept = np.array([eligible[k].item() and _accept(r, rng) for k, r in enumerate(log_ratio)])
    return accept.astype(bool), log_ratio


def merge_pairs(
    means: torch.Tensor,
    stats: Stats,
    prior: NIWPrior,
    alpha: float,
    rng: np.random.Generator,
    n_neighbors: int = 3,
) -> list[tuple[int, int]]:
    """Accepted merges as ``(kept, removed)`` cluster pairs.

    Candidates are each cluster's nearest neighbours among the K cluster means
    (Euclidean, ``n_neighbors`` counting the cluster itself, as in the official
    code); pairs are tested in order with ratio ``1 / H_s`` and a cluster merges
    at most once per round. The member whose points have the larger evidence
    keeps its network unit.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skaudiocluster.cluster._niw import prior_from_data, sufficient_stats
    >>> _ = torch.manual_seed(0)
    >>> X = torch.randn(200, 2).double()
    >>> prior = prior_from_data(X, kappa=1e-4, nu=None, sigma_scale=0.05, diagonal=False)
    >>> halves = torch.nn.functional.one_hot((X[:, 0] > 0).long(), 2).double()
    >>> stats = sufficient_stats(X, halves, diagonal=False)
    >>> len(merge_pairs(stats[1] / stats[0][:, None], stats, prior, 10.0,
    ...                 np.random.default_rng(0)))
    1
    """
    n_clusters = means.shape[0]
    if n_clusters < 2:
        return []
    log_evidence = log_marginal_likelihood(stats, prior)
    distances = torch.cdist(means, means)
    neighbours = distances.argsort(dim=1)[:, : min(n_neighbors, n_clusters)].cpu().numpy()
    merged: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for first in range(n_clusters):
        for second in neighbours[first]:
            second = int(second)
            if second == first or first in merged or second in merged:
                continue
            pair = torch.tensor([first, second], device=means.device)
            union = tuple(s[pair].sum(dim=0, keepdim=True) for s in stats)
            log_ratio = -log_split_ratio(
                alpha,
                union[0].clamp_min(1.0),
                log_marginal_likelihood(union, prior),
                stats[0][pair][None].clamp_min(1.0),
                log_evidence[pair][None],
            ).item()
            if _accept(log_ratio, rng):
                merged.update((first, second))
                keep_first = log_evidence[first] >= log_evidence[second]
                pairs.append((first, second) if keep_first else (second, first))
    return pairs


def principal_halves(means: torch.Tensor, covariances: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Two sub-cluster Gaussians per cluster: the halves of each cut along its principal axis.

    For a Gaussian cut through its mean across the leading eigenvector ``v``
    (eigenvalue ``l``) the halves have means ``mu +/- sqrt(2 l / pi) v`` and
    variance ``l (1 - 2 / pi)`` along ``v``. This seeds new sub-clusters from the
    parameters alone, where the official code runs a 1-D 2-means on the points.
    Returns means (K, 2, D) and covariances (K, 2, D, D), or (K, 2, D) when the
    input covariances are diagonal (K, D).

    Examples
    --------
    >>> import torch
    >>> covariance = torch.diag(torch.tensor([4.0, 1.0]))[None]
    >>> sub_means, _ = principal_halves(torch.zeros(1, 2), covariance)
    >>> [round(abs(v), 3) for v in sub_means[0, :, 0].tolist()]  # 2 * sqrt(2 / pi)
    [1.596, 1.596]
    """
    shrink = 2.0 / math.pi
    if covariances.dim() == 2:
        top = covariances.argmax(dim=1)
        direction = torch.nn.functional.one_hot(top, means.shape[1]).to(means.dtype)
        variance = covariances.gather(1, top[:, None])
        sub_cov = covariances - shrink * variance * direction
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh(covariances)
        variance = eigenvalues[:, -1:]
        direction = eigenvectors[:, :, -1]
        sub_cov = covariances - shrink * variance[:, :, None] * torch.einsum(
            "kd,ke->kde", direction, direction
        )
    offset = torch.sqrt(shrink * variance) * direction
    sub_means = torch.stack([means - offset, means + offset], dim=1)
    return sub_means, torch.stack([sub_cov, sub_cov], dim=1)
