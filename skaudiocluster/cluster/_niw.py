"""Normal-Inverse-Wishart algebra for DeepDPM: prior, sufficient statistics, MAP, evidence.

Everything works from per-component sufficient statistics ``(n, s, q)`` = (total
weight, weighted sum of points, weighted sum of outer products ``x x^T``; for
diagonal covariances ``q`` holds the weighted sums of squares ``x * x``). Statistics
add up across batches, so an epoch's M-step costs one pass, linear in N, and
never stores the points or their responsibilities.

A diagonal model is the product of ``D`` independent one-dimensional NIW models
(Normal-Inverse-Gamma per feature) that share ``kappa`` and ``nu``.

All functions take and return float64 torch tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

JITTER = 1e-5


@dataclass(frozen=True)
class NIWPrior:
    """A Normal-Inverse-Wishart prior ``NIW(m, kappa, Psi, nu)``.

    Parameters
    ----------
    mean : tensor of shape (D,)
        Prior mean ``m`` of the component means.
    psi : tensor of shape (D, D), or (D,) for a diagonal model
        Prior scale matrix ``Psi`` (its diagonal for a diagonal model).
    kappa : float
        Pseudo-count of the prior on the means.
    nu : float
        Degrees of freedom; at least ``D + 1`` (full) or ``2`` (diagonal) so
        that the prior mean of the covariance, ``Psi / (nu - D - 1)``, exists.
    """

    mean: torch.Tensor
    psi: torch.Tensor
    kappa: float
    nu: float

    @property
    def diagonal(self) -> bool:
        return self.psi.dim() == 1

    @property
    def dim(self) -> int:
        """Dimension of one Wishart factor: ``D`` (full) or 1 (diagonal)."""
        return 1 if self.diagonal else self.mean.shape[0]


def prior_from_data(
    X: torch.Tensor, *, kappa: float, nu: float | None, sigma_scale: float, diagonal: bool
) -> NIWPrior:
    """The data-driven NIW prior used by DeepDPM.

    ``m`` is the data mean (the paper's ``data_mean`` choice). ``nu`` defaults to
    ``D + 2`` (full) or 3 (diagonal); larger values make the prior more confident.
    ``Psi`` is chosen so that the prior mean of a cluster covariance,
    ``Psi / (nu - D - 1)``, is ``sigma_scale * v * I`` with ``v`` the mean
    per-feature variance of ``X``: a fraction of the data's spread, whatever
    ``nu``, the dimension and the scale of ``X`` (the official default
    ``0.005 * I`` assumes L2-normalised rows of about ten dimensions). With the
    default ``nu`` this is ``Psi = sigma_scale * v * I``. ``kappa`` is taken as given.

    Examples
    --------
    >>> import torch
    >>> prior = prior_from_data(torch.randn(100, 3, dtype=torch.float64), kappa=1e-4,
    ...                         nu=None, sigma_scale=0.1, diagonal=False)
    >>> prior.nu, tuple(prior.psi.shape)
    (5.0, (3, 3))
    """
    X = X.to(torch.float64)
    n_features = X.shape[1]
    dim = 1 if diagonal else n_features
    nu = float(dim + 2 if nu is None else nu)
    if nu <= dim + 1:
        raise ValueError(f"the NIW degrees of freedom nu={nu} must exceed {dim + 1} here")
    variance = X.var(dim=0, unbiased=False).mean().clamp_min(1e-12)
    scale = float(sigma_scale) * variance * (nu - dim - 1)
    ones = torch.ones(n_features, dtype=torch.float64, device=X.device)
    psi = scale * ones if diagonal else torch.diag(scale * ones)
    return NIWPrior(mean=X.mean(dim=0), psi=psi, kappa=float(kappa), nu=nu)


def sufficient_stats(
    X: torch.Tensor, weights: torch.Tensor, *, diagonal: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted statistics ``(n, s, q)`` of ``X`` (N, D) for each column of ``weights`` (N, K).

    Examples
    --------
    >>> import torch
    >>> X = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    >>> n, s, q = sufficient_stats(X, torch.ones(2, 1, dtype=torch.float64), diagonal=True)
    >>> n.tolist(), s.tolist(), q.tolist()
    ([2.0], [[4.0]], [[10.0]])
    """
    X = X.to(torch.float64)
    weights = weights.to(torch.float64)
    counts = weights.sum(dim=0)
    sums = weights.T @ X
    if diagonal:
        squares = weights.T @ (X * X)
    else:
        squares = torch.einsum("nk,nd,ne->kde", weights, X, X)
    return counts, sums, squares


def _centred(
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], prior: NIWPrior
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample mean, scatter about it, and the prior-mean term of the NIW posterior."""
    counts, sums, squares = stats
    n = counts.clamp_min(1e-12)
    sample_mean = torch.where(counts[:, None] > 0, sums / n[:, None], prior.mean)
    offset = sample_mean - prior.mean
    shrink = prior.kappa * counts / (prior.kappa + counts)
    if prior.diagonal:
        scatter = squares - counts[:, None] * sample_mean**2
        prior_term = shrink[:, None] * offset**2
    else:
        scatter = squares - counts[:, None, None] * torch.einsum(
            "kd,ke->kde", sample_mean, sample_mean
        )
        prior_term = shrink[:, None, None] * torch.einsum("kd,ke->kde", offset, offset)
    return counts, sample_mean, scatter, prior_term


def posterior_scale(
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], prior: NIWPrior
) -> torch.Tensor:
    """``Psi* = Psi + S + kappa n / (kappa + n) (xbar - m)(xbar - m)^T`` per component."""
    _, _, scatter, prior_term = _centred(stats, prior)
    psi = prior.psi + scatter + prior_term
    if prior.diagonal:
        return psi.clamp_min(JITTER)
    return 0.5 * (psi + psi.transpose(-1, -2))


def map_estimates(
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], prior: NIWPrior
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP means and covariances of each component under the NIW prior.

    Means are the posterior means ``(n xbar + kappa m) / (n + kappa)``; covariances
    are DeepDPM's ``Psi* / (nu + n + D + 2)``, positive definite by construction
    (``Psi`` is), with a jitter added if rounding says otherwise. An empty
    component (``n = 0``) gets the prior's ``m`` and ``Psi / (nu + D + 2)``.

    Examples
    --------
    >>> import torch
    >>> prior = NIWPrior(torch.zeros(1, dtype=torch.float64),
    ...                  torch.ones(1, dtype=torch.float64), kappa=1.0, nu=3.0)
    >>> stats = (torch.tensor([2.0]), torch.tensor([[4.0]]), torch.tensor([[10.0]]))
    >>> means, covs = map_estimates([s.double() for s in stats], prior)
    >>> round(means.item(), 4), round(covs.item(), 4)
    (1.3333, 0.7083)
    """
    counts, sums, _ = stats
    means = (sums + prior.kappa * prior.mean) / (counts[:, None] + prior.kappa)
    psi = posterior_scale(stats, prior)
    denominator = prior.nu + counts + prior.dim + 2
    if prior.diagonal:
        return means, psi / denominator[:, None]
    covariances = psi / denominator[:, None, None]
    return means, make_positive_definite(covariances)


def make_positive_definite(covariances: torch.Tensor) -> torch.Tensor:
    """Add ``1e-5 I`` to the matrices whose Cholesky factorisation fails."""
    _, info = torch.linalg.cholesky_ex(covariances)
    if bool((info > 0).any()):
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
        covariances = covariances + JITTER * eye * (info > 0)[:, None, None]
    return covariances


def mixture_weights(counts: torch.Tensor, smoothing: float) -> torch.Tensor:
    """DeepDPM's Dirichlet-smoothed weights ``(n_k / N + a) / (1 + K a)``."""
    fractions = counts / counts.sum().clamp_min(1e-12)
    return (fractions + smoothing) / (1.0 + counts.shape[0] * smoothing)


def log_marginal_likelihood(
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], prior: NIWPrior
) -> torch.Tensor:
    """Log evidence ``log p(X_k)`` of each component's (hard-assigned) points under the prior.

    ``-(n d / 2) log pi + log G_d(nu*/2) - log G_d(nu/2) + (nu/2) log|Psi|
    - (nu*/2) log|Psi*| + (d/2)(log kappa - log kappa*)``, summed over the ``D``
    features for a diagonal model (``d = 1``), with ``kappa* = kappa + n``,
    ``nu* = nu + n`` and the scatter taken about the sample mean (the exact
    evidence; the official code centres it on the model mean instead).
    Zero for an empty component.
    """
    counts = stats[0]
    psi_post = posterior_scale(stats, prior)
    d = prior.dim
    nu_post = prior.nu + counts
    kappa_post = prior.kappa + counts

    def multigammaln(a: torch.Tensor) -> torch.Tensor:
        return torch.special.multigammaln(a, d) if d > 1 else torch.lgamma(a)

    if prior.diagonal:
        logdet_prior = torch.log(prior.psi)
        logdet_post = torch.log(psi_post)
        per_dim = 0.5 * prior.nu * logdet_prior - 0.5 * nu_post[:, None] * logdet_post
        det_term = per_dim.sum(dim=1)
        n_factors = prior.mean.shape[0]
    else:
        det_term = 0.5 * prior.nu * torch.logdet(prior.psi) - 0.5 * nu_post * torch.logdet(psi_post)
        n_factors = 1
    nu_prior = torch.full_like(nu_post, prior.nu)
    log_evidence = (
        -0.5 * counts * prior.mean.shape[0] * math.log(math.pi)
        + n_factors * (multigammaln(0.5 * nu_post) - multigammaln(0.5 * nu_prior))
        + det_term
        + 0.5 * prior.mean.shape[0] * (math.log(prior.kappa) - torch.log(kappa_post))
    )
    return torch.where(counts > 0, log_evidence, torch.zeros_like(log_evidence))


def log_split_ratio(
    alpha: float,
    counts: torch.Tensor,
    log_evidence: torch.Tensor,
    sub_counts: torch.Tensor,
    sub_log_evidence: torch.Tensor,
) -> torch.Tensor:
    """``log H_s`` of splitting each component into its two sub-components.

    ``log alpha + log G(n1) + log f(X1) + log G(n2) + log f(X2) - log G(n) - log f(X)``;
    ``counts`` and ``log_evidence`` have shape (K,), the sub arrays (K, 2). The
    merge ratio of two components into one is ``1 / H_s`` (its negative in logs).
    """
    return (
        math.log(alpha)
        + (torch.lgamma(sub_counts) + sub_log_evidence).sum(dim=1)
        - torch.lgamma(counts)
        - log_evidence
    )


def covariance_factor(covariances: torch.Tensor) -> torch.Tensor:
    """Cholesky factors of full covariances (variances pass through), computed once per epoch."""
    return covariances if covariances.dim() == 2 else torch.linalg.cholesky(covariances)


def gaussian_log_density(
    X: torch.Tensor, means: torch.Tensor, factor: torch.Tensor
) -> torch.Tensor:
    """``log N(x_i; mu_k, Sigma_k)`` as an (N, K) array.

    ``factor`` is :func:`covariance_factor` of the covariances: lower Cholesky
    factors (K, D, D), or the variances (K, D) of a diagonal model.

    Examples
    --------
    >>> import torch
    >>> X = torch.zeros(1, 2, dtype=torch.float64)
    >>> factor = covariance_factor(torch.eye(2, dtype=torch.float64)[None])
    >>> round(gaussian_log_density(X, torch.zeros(1, 2, dtype=torch.float64), factor).item(), 4)
    -1.8379
    """
    X = X.to(means.dtype)
    constant = X.shape[1] * math.log(2 * math.pi)
    diff = X[None, :, :] - means[:, None, :]
    if factor.dim() == 2:
        mahalanobis = (diff**2 / factor[:, None, :]).sum(-1)
        logdet = torch.log(factor).sum(-1)
    else:
        solved = torch.linalg.solve_triangular(factor, diff.transpose(1, 2), upper=False)
        mahalanobis = (solved**2).sum(1)
        logdet = 2 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
    return (-0.5 * (constant + logdet[:, None] + mahalanobis)).T
