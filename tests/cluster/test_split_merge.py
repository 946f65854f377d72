import numpy as np
import torch

from skaudiocluster.cluster._niw import prior_from_data, sufficient_stats
from skaudiocluster.cluster._split_merge import merge_pairs, principal_halves, split_decisions


def _one_hot(labels, n):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), n).double()


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[-8.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    X = np.vstack([rng.normal(size=(80, 2)) + c for c in centres])
    truth = np.repeat(np.arange(3), 80)
    X = torch.tensor(X)
    prior = prior_from_data(X, kappa=1e-4, nu=None, sigma_scale=0.05, diagonal=False)
    return X, truth, prior


def test_splits_two_merged_groups_and_keeps_true_clusters():
    X, truth, prior = _setup()
    clusters = np.where(truth == 2, 1, 0)  # cluster 0 holds two true groups
    sub = np.where(truth == 2, 2 + (X[:, 0].numpy() > 0), (truth == 1).astype(int))
    accept, log_ratio = split_decisions(
        sufficient_stats(X, _one_hot(clusters, 2), diagonal=False),
        sufficient_stats(X, _one_hot(sub, 4), diagonal=False),
        prior,
        10.0,
        np.random.default_rng(0),
    )
    assert accept.tolist() == [True, False]
    assert log_ratio[0] > 0 > log_ratio[1]


def test_split_skips_small_clusters_and_sub_clusters():
    X, truth, prior = _setup()
    sub = np.zeros(len(X), dtype=int)
    sub[:5] = 1  # a sub-cluster of 5 points is too small
    accept, log_ratio = split_decisions(
        sufficient_stats(X, torch.ones(len(X), 1).double(), diagonal=False),
        sufficient_stats(X, _one_hot(sub, 2), diagonal=False),
        prior,
        1e9,
        np.random.default_rng(0),
    )
    assert not accept[0] and log_ratio[0] == -np.inf


def test_merges_only_halves_of_one_group_each_once():
    X, truth, prior = _setup()
    # four clusters: true 0 cut in two halves, true 1, true 2
    labels = np.where(truth == 0, (X[:, 1].numpy() > 0).astype(int), truth + 1)
    stats = sufficient_stats(X, _one_hot(labels, 4), diagonal=False)
    means = stats[1] / stats[0][:, None]
    pairs = merge_pairs(means, stats, prior, 10.0, np.random.default_rng(0))
    assert len(pairs) == 1 and set(pairs[0]) == {0, 1}
    assert (
        merge_pairs(means[:1], [s[:1] for s in stats], prior, 10.0, np.random.default_rng(0)) == []
    )


def test_principal_halves_are_positive_definite_and_centred():
    A = torch.randn(3, 4, 4, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) + 0.1 * torch.eye(4, dtype=torch.float64)
    means = torch.randn(3, 4, dtype=torch.float64)
    sub_means, sub_covs = principal_halves(means, covs)
    torch.testing.assert_close(sub_means.mean(dim=1), means)
    assert torch.linalg.eigvalsh(sub_covs.reshape(-1, 4, 4)).min() > 0
    diag_means, diag_covs = principal_halves(means, torch.ones(3, 4, dtype=torch.float64))
    assert diag_covs.shape == (3, 2, 4) and (diag_covs > 0).all()
