import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from skaudiocluster.cluster._niw import (
    NIWPrior,
    covariance_factor,
    gaussian_log_density,
    log_marginal_likelihood,
    log_split_ratio,
    map_estimates,
    mixture_weights,
    prior_from_data,
    sufficient_stats,
)


def _prior(n_features, *, diagonal, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n_features, n_features))
    psi = A @ A.T / n_features + 0.5 * np.eye(n_features)
    psi = np.diag(psi) if diagonal else psi
    nu = 3.5 if diagonal else n_features + 2.5
    return NIWPrior(
        mean=torch.tensor(rng.normal(size=n_features)),
        psi=torch.tensor(psi),
        kappa=0.7,
        nu=nu,
    )


def _stats(X, diagonal):
    X = torch.as_tensor(X, dtype=torch.float64)
    return sufficient_stats(X, torch.ones(len(X), 1, dtype=torch.float64), diagonal=diagonal)


def _sequential_log_evidence(X, m, kappa, psi, nu):
    """log p(X) by the chain rule over NIW posterior predictives (multivariate t)."""
    d = X.shape[1]
    total = 0.0
    for i, x in enumerate(X):
        df = nu - d + 1
        shape = psi * (kappa + 1) / (kappa * df)
        total += scipy_stats.multivariate_t(loc=m, shape=shape, df=df).logpdf(x)
        m_new = (kappa * m + x) / (kappa + 1)
        psi = psi + kappa / (kappa + 1) * np.outer(x - m, x - m)
        m, kappa, nu = m_new, kappa + 1, nu + 1
        del i
    return total


def test_prior_from_data_follows_data_statistics():
    X = torch.randn(500, 4, dtype=torch.float64) * 3 + 1
    prior = prior_from_data(X, kappa=1e-4, nu=None, sigma_scale=0.1, diagonal=False)
    assert prior.nu == 6
    torch.testing.assert_close(prior.mean, X.mean(0))
    expected = 0.1 * X.var(0, unbiased=False).mean()
    torch.testing.assert_close(prior.psi, expected * torch.eye(4, dtype=torch.float64))
    diag = prior_from_data(X, kappa=1e-4, nu=None, sigma_scale=0.1, diagonal=True)
    assert diag.nu == 3 and diag.psi.shape == (4,)
    with pytest.raises(ValueError, match="nu"):
        prior_from_data(X, kappa=1e-4, nu=5.0, sigma_scale=0.1, diagonal=False)
    # a larger nu keeps the prior mean covariance Psi / (nu - D - 1) where it was
    strong = prior_from_data(X, kappa=1e-4, nu=25.0, sigma_scale=0.1, diagonal=False)
    torch.testing.assert_close(strong.psi / (25.0 - 4 - 1), prior.psi)


def test_sufficient_stats_match_weighted_sums():
    X = torch.randn(50, 3, dtype=torch.float64)
    W = torch.rand(50, 2, dtype=torch.float64)
    n, s, q = sufficient_stats(X, W, diagonal=False)
    torch.testing.assert_close(n, W.sum(0))
    torch.testing.assert_close(s[1], (W[:, 1:] * X).sum(0))
    torch.testing.assert_close(q[0], (W[:, 0, None, None] * X[:, :, None] * X[:, None]).sum(0))
    _, _, q_diag = sufficient_stats(X, W, diagonal=True)
    torch.testing.assert_close(q_diag, torch.diagonal(q, dim1=-2, dim2=-1))


def test_map_estimates_match_closed_form():
    prior = _prior(3, diagonal=False)
    X = np.random.default_rng(1).normal(size=(40, 3)) * 2
    means, covs = map_estimates(_stats(X, False), prior)
    m, psi, kappa, nu = prior.mean.numpy(), prior.psi.numpy(), prior.kappa, prior.nu
    n, xbar = len(X), X.mean(0)
    scatter = (X - xbar).T @ (X - xbar)
    expected_mean = (n * xbar + kappa * m) / (n + kappa)
    psi_post = psi + scatter + kappa * n / (kappa + n) * np.outer(xbar - m, xbar - m)
    np.testing.assert_allclose(means[0].numpy(), expected_mean)
    np.testing.assert_allclose(covs[0].numpy(), psi_post / (nu + n + 3 + 2))
    # the mean lies between the sample mean and the prior mean
    t = (means[0].numpy() - m) / (xbar - m)
    assert np.allclose(t, t[0]) and 0 < t[0] < 1


def test_map_covariances_are_positive_definite_even_when_degenerate():
    prior = _prior(4, diagonal=False)
    X = np.zeros((10, 4))
    X[:, 0] = np.arange(10)  # rank-one scatter
    stats = [torch.cat([a, b]) for a, b in zip(_stats(X, False), _stats(X[:0], False))]
    means, covs = map_estimates(stats, prior)
    assert torch.linalg.eigvalsh(covs).min() > 0
    torch.testing.assert_close(covs, covs.transpose(1, 2))
    # an empty component falls back to the prior
    torch.testing.assert_close(means[1], prior.mean)
    torch.testing.assert_close(covs[1], prior.psi / (prior.nu + 4 + 2))


@pytest.mark.parametrize("n_points", [1, 7])
def test_marginal_likelihood_matches_sequential_predictives(n_points):
    prior = _prior(3, diagonal=False)
    X = np.random.default_rng(2).normal(size=(n_points, 3))
    expected = _sequential_log_evidence(
        X, prior.mean.numpy(), prior.kappa, prior.psi.numpy(), prior.nu
    )
    got = log_marginal_likelihood(_stats(X, False), prior)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_diagonal_marginal_likelihood_is_a_product_of_1d_models():
    prior = _prior(3, diagonal=True)
    X = np.random.default_rng(3).normal(size=(9, 3))
    expected = sum(
        _sequential_log_evidence(
            X[:, [d]],
            prior.mean.numpy()[[d]],
            prior.kappa,
            prior.psi.numpy()[[d]][:, None],
            prior.nu,
        )
        for d in range(3)
    )
    got = log_marginal_likelihood(_stats(X, True), prior)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert log_marginal_likelihood(_stats(X[:0], True), prior).item() == 0.0


def test_split_ratio_prefers_splitting_two_separated_groups():
    prior = prior_from_data(
        torch.randn(10, 2, dtype=torch.float64) * 5,
        kappa=1e-4,
        nu=None,
        sigma_scale=0.05,
        diagonal=False,
    )
    rng = np.random.default_rng(0)
    left, right = rng.normal(size=(60, 2)) - 6, rng.normal(size=(60, 2)) + 6
    one = rng.normal(size=(120, 2))

    def log_h(a, b):
        whole = _stats(np.vstack([a, b]), False)
        sub = [torch.cat(p) for p in zip(_stats(a, False), _stats(b, False))]
        return log_split_ratio(
            10.0,
            whole[0],
            log_marginal_likelihood(whole, prior),
            sub[0][None],
            log_marginal_likelihood(sub, prior)[None],
        ).item()

    assert log_h(left, right) > 10
    assert log_h(one[one[:, 0] < 0], one[one[:, 0] >= 0]) < 0


def test_split_ratio_formula():
    got = log_split_ratio(
        10.0,
        torch.tensor([12.0]),
        torch.tensor([-30.0]),
        torch.tensor([[5.0, 7.0]]),
        torch.tensor([[-10.0, -11.0]]),
    )
    expected = math.log(10) + math.lgamma(5) - 10 + math.lgamma(7) - 11 - math.lgamma(12) + 30
    assert got.item() == pytest.approx(expected)


def test_mixture_weights_are_smoothed_simplex():
    weights = mixture_weights(torch.tensor([100.0, 0.0, 900.0], dtype=torch.float64), 0.1)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights.min().item() == pytest.approx(0.1 / 1.3)


@pytest.mark.parametrize("diagonal", [False, True])
def test_gaussian_log_density_matches_scipy(diagonal):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(5, 3))
    means = rng.normal(size=(2, 3))
    if diagonal:
        covs = rng.uniform(0.5, 2, size=(2, 3))
        dense = [np.diag(c) for c in covs]
    else:
        A = rng.normal(size=(2, 3, 3))
        covs = A @ A.transpose(0, 2, 1) + np.eye(3)
        dense = list(covs)
    factor = covariance_factor(torch.tensor(covs))
    got = gaussian_log_density(torch.tensor(X), torch.tensor(means), factor).numpy()
    expected = np.stack(
        [scipy_stats.multivariate_normal(m, c).logpdf(X) for m, c in zip(means, dense)], axis=1
    )
    np.testing.assert_allclose(got, expected, rtol=1e-10)
