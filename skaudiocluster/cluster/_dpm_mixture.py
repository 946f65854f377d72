"""The Gaussian mixture behind DeepDPM: parameters, per-epoch statistics, E- and M-steps.

Components live in ``max_clusters`` fixed slots (the width of the network head);
``active`` marks the slots in use. Statistics of an epoch are accumulated batch by
batch (linear in N, no stored responsibilities) and turned into MAP parameters at
the epoch's end.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from skaudiocluster.cluster._niw import (
    NIWPrior,
    covariance_factor,
    gaussian_log_density,
    map_estimates,
    mixture_weights,
    sufficient_stats,
)
from skaudiocluster.cluster._split_merge import principal_halves

# Net outputs and E-step targets are smoothed like the official KL loss.
RESPONSIBILITY_EPS = 1e-5


def _empty_stats(n_slots: int, n_features: int, diagonal: bool, device) -> list[torch.Tensor]:
    shape = (n_slots, n_features) if diagonal else (n_slots, n_features, n_features)
    return [
        torch.zeros(n_slots, dtype=torch.float64, device=device),
        torch.zeros(n_slots, n_features, dtype=torch.float64, device=device),
        torch.zeros(shape, dtype=torch.float64, device=device),
    ]


def _add_stats(stats: list[torch.Tensor], slots: torch.Tensor, weights: torch.Tensor, x):
    """Add point ``i`` with weight ``weights[i]`` to the statistics of slot ``slots[i]``."""
    stats[0].index_add_(0, slots, weights)
    stats[1].index_add_(0, slots, weights[:, None] * x)
    if stats[2].dim() == 2:
        stats[2].index_add_(0, slots, weights[:, None] * x * x)
    else:
        stats[2].index_add_(0, slots, weights[:, None, None] * x[:, :, None] * x[:, None, :])


class DPMixture:
    """Mixture parameters and statistics over ``max_clusters`` slots.

    Parameters
    ----------
    prior : NIWPrior
    max_clusters : int
    weight_smoothing : float
        Dirichlet smoothing ``a`` of the mixture weights.
    active : bool tensor (max_clusters,) or None, default=None
        The mask of slots in use to work on, in place: the network head's
        (:class:`~skaudiocluster.cluster._deepdpm_net.DeepDPMModule`), so that
        the mask has one owner; ``None`` makes a mask of the mixture's own.

    Attributes
    ----------
    active : bool tensor (max_clusters,)
    means, covariances, weights : tensors over slots (inactive slots are unused)
    sub_means, sub_covariances : tensors (max_clusters, 2, ...) of the sub-clusters
    has_sub_clusters : bool
        Whether sub-clusters have been seeded (:meth:`seed_sub_clusters`); until
        then ``sub_means`` are placeholders and the sub-nets do not train.
    soft, hard, sub_soft, sub_hard : lists ``[n, s, q]`` of the current epoch's
        statistics (sub-cluster ``j`` of slot ``k`` at index ``2k + j``)
    """

    def __init__(
        self,
        prior: NIWPrior,
        max_clusters: int,
        weight_smoothing: float,
        active: torch.Tensor | None = None,
    ):
        self.prior = prior
        self.weight_smoothing = weight_smoothing
        device = prior.mean.device
        n_features = prior.mean.shape[0]
        cov_shape = (n_features,) if prior.diagonal else (n_features, n_features)
        if active is None:
            active = torch.zeros(max_clusters, dtype=torch.bool, device=device)
        self.active = active
        self.means = torch.zeros(max_clusters, n_features, dtype=torch.float64, device=device)
        self.covariances = prior.psi.expand(max_clusters, *cov_shape).clone()
        self.weights = torch.zeros(max_clusters, dtype=torch.float64, device=device)
        self.sub_means = self.means[:, None].repeat(1, 2, 1)
        self.sub_covariances = self.covariances[:, None].repeat(1, 2, *([1] * len(cov_shape)))
        self.has_sub_clusters = False
        self.reset_stats()

    @property
    def index(self) -> torch.Tensor:
        """Slots in use, in increasing order (the compact cluster order)."""
        return self.active.nonzero().flatten()

    @property
    def n_clusters(self) -> int:
        return int(self.active.sum())

    def reset_stats(self):
        n_slots, n_features = self.means.shape
        diagonal = self.prior.diagonal
        device = self.means.device
        self.soft = _empty_stats(n_slots, n_features, diagonal, device)
        self.hard = _empty_stats(n_slots, n_features, diagonal, device)
        self.sub_soft = _empty_stats(2 * n_slots, n_features, diagonal, device)
        self.sub_hard = _empty_stats(2 * n_slots, n_features, diagonal, device)
        self.n_drawn = 0
        self._factor = None

    def set_clusters(self, slots: torch.Tensor, stats: list[torch.Tensor]):
        """Activate ``slots`` with MAP parameters from (hard) statistics, e.g. K-means."""
        self.active[:] = False
        self.active[slots] = True
        self._m_step(slots, stats)

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(x; mu_k, Sigma_k)`` over the active slots, shape (B, K)."""
        index = self.index
        if self._factor is None:
            self._factor = covariance_factor(self.covariances[index])
        density = gaussian_log_density(x, self.means[index], self._factor)
        return density + torch.log(self.weights[index])

    def e_step(self, x: torch.Tensor) -> torch.Tensor:
        """Responsibilities of the active components for the points ``x``, shape (B, K)."""
        return torch.softmax(self.log_joint(x), dim=1)

    def accumulate(self, x, logits, sub_logits=None, *, soft: bool):
        """Add a batch to the epoch's statistics, using the networks' outputs.

        ``logits`` are the cluster net's (B, max_clusters) masked logits and
        ``sub_logits`` the (B, 2) sub-cluster logits of each point's cluster.
        Hard statistics are always gathered, soft ones when ``soft``, sub-cluster
        ones when ``sub_logits`` is given.
        """
        x = x.detach().to(torch.float64)
        self.n_drawn += len(x)
        index = self.index
        resp = torch.softmax(logits.detach()[:, index].to(torch.float64), dim=1)
        clusters = index[resp.argmax(dim=1)]
        ones = torch.ones(len(x), dtype=torch.float64, device=x.device)
        _add_stats(self.hard, clusters, ones, x)
        if soft:
            stats = sufficient_stats(x, resp, diagonal=self.prior.diagonal)
            for total, part in zip(self.soft, stats):
                total.index_add_(0, index, part)
        if sub_logits is not None:
            sub_resp = torch.softmax(sub_logits.detach().to(torch.float64), dim=1)
            for j in range(2):
                _add_stats(self.sub_soft, 2 * clusters + j, sub_resp[:, j], x)
            _add_stats(self.sub_hard, 2 * clusters + sub_resp.argmax(dim=1), ones, x)

    def count_once(self, n_samples: int):
        """Rescale the epoch's statistics to ``n_samples`` points: each point counted once.

        A small collection's epoch draws a minimum number of batches, so it sees
        points several times; counted as drawn, the M-step's balance against the
        prior and the split and merge tests would weigh the evidence as if the
        collection were that much larger.
        """
        if not self.n_drawn or self.n_drawn == n_samples:
            return
        factor = n_samples / self.n_drawn
        for stats in (self.soft, self.hard, self.sub_soft, self.sub_hard):
            for total in stats:
                total.mul_(factor)
        self.n_drawn = n_samples

    def m_step(self):
        """Update the active components from the epoch's soft statistics."""
        index = self.index
        self._m_step(index, [s[index] for s in self.soft])

    def _m_step(self, slots: torch.Tensor, stats: list[torch.Tensor]):
        self.means[slots], self.covariances[slots] = map_estimates(stats, self.prior)
        counts = torch.zeros_like(self.weights)
        counts[slots] = stats[0]
        self.weights[self.index] = mixture_weights(counts[self.index], self.weight_smoothing)
        self._factor = None

    def sub_m_step(self) -> torch.Tensor:
        """Update the sub-clusters of active slots; returns the slots whose sub-clusters
        collapsed (a side with under one point's weight) and were re-seeded."""
        index = self.index
        sub_index = torch.stack([2 * index, 2 * index + 1], dim=1).flatten()
        stats = [s[sub_index] for s in self.sub_soft]
        means, covariances = map_estimates(stats, self.prior)
        self.sub_means[index] = means.view(len(index), 2, -1)
        self.sub_covariances[index] = covariances.view(len(index), 2, *covariances.shape[1:])
        collapsed = index[(stats[0].view(len(index), 2) < 1.0).any(dim=1)]
        self.seed_sub_clusters(collapsed)
        return collapsed

    def seed_sub_clusters(self, slots: torch.Tensor):
        """Sub-clusters of ``slots`` from the halves along each cluster's principal axis."""
        if len(slots):
            means, covariances = principal_halves(self.means[slots], self.covariances[slots])
            self.sub_means[slots], self.sub_covariances[slots] = means, covariances
            self.has_sub_clusters = True

    def split(self, slot: int, new_slot: int):
        """Replace cluster ``slot`` by its two sub-clusters, in ``slot`` and ``new_slot``."""
        counts = self.sub_hard[0][2 * slot : 2 * slot + 2]
        fractions = (counts + 1.0) / (counts.sum() + 2.0)
        weight = self.weights[slot].clone()
        for j, target in enumerate((slot, new_slot)):
            self.means[target] = self.sub_means[slot, j]
            self.covariances[target] = self.sub_covariances[slot, j]
            self.weights[target] = weight * fractions[j]
        self.active[new_slot] = True
        self.seed_sub_clusters(torch.tensor([slot, new_slot], device=self.means.device))
        self._factor = None

    def merge(self, kept: int, removed: int):
        """Merge cluster ``removed`` into ``kept``; the two become ``kept``'s sub-clusters."""
        pair = torch.tensor([kept, removed], device=self.means.device)
        union = [s[pair].sum(dim=0, keepdim=True) for s in self.soft]
        self.sub_means[kept] = self.means[pair]
        self.sub_covariances[kept] = self.covariances[pair]
        means, covariances = map_estimates(union, self.prior)
        self.means[kept], self.covariances[kept] = means[0], covariances[0]
        self.weights[kept] = self.weights[pair].sum()
        self.active[removed] = False
        self._factor = None

    def deactivate(self, slots: torch.Tensor):
        """Drop ``slots`` (e.g. clusters no point selects); weights are renormalised."""
        self.active[slots] = False
        self.weights[self.index] = self.weights[self.index] / self.weights[self.index].sum()
        self._factor = None


def smoothed_kl(target: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """DeepDPM's cluster loss: batch-mean ``KL(target || probs)``, both eps-smoothed.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([[0.25, 0.75]])
    >>> float(smoothed_kl(p, p.log())) == 0.0
    True
    """
    n_clusters = target.shape[1]
    eps = RESPONSIBILITY_EPS

    def smooth(p):
        return (p + eps) / (1 + n_clusters * eps)

    target = smooth(target.to(log_probs.dtype))
    probs = smooth(log_probs.exp())
    return (target * (target.log() - probs.log())).sum(dim=1).mean()


def sub_cluster_loss(x: torch.Tensor, sub_logits: torch.Tensor, sub_means: torch.Tensor):
    """Isotropic sub-cluster loss ``mean_i sum_j r~_ij ||x_i - mu~_j||^2``.

    ``sub_means`` (B, 2, D) holds the sub-cluster means of each point's cluster.
    """
    distances = ((x[:, None, :] - sub_means.to(x.dtype)) ** 2).sum(dim=-1)
    return (F.softmax(sub_logits, dim=1) * distances).sum(dim=1).mean()
