import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from skaudiocluster.cluster._dpm_mixture import DPMixture, smoothed_kl, sub_cluster_loss
from skaudiocluster.cluster._niw import prior_from_data, sufficient_stats


def _blobs(diagonal=False, n=300):
    X, y = make_blobs(n_samples=n, centers=3, cluster_std=0.5, random_state=0)
    X = torch.tensor(X, dtype=torch.float64)
    prior = prior_from_data(X, kappa=1e-4, nu=None, sigma_scale=0.05, diagonal=diagonal)
    return X, torch.as_tensor(y), prior


def _mixture_on(X, labels, prior, slots, max_clusters=6):
    mixture = DPMixture(prior, max_clusters=max_clusters, weight_smoothing=0.1)
    one_hot = torch.nn.functional.one_hot(labels, len(slots)).double()
    mixture.set_clusters(torch.as_tensor(slots), sufficient_stats(X, one_hot, diagonal=False))
    return mixture


def _logits_for(slots, labels, max_clusters=6, scale=20.0):
    """Masked net logits that put each point in ``slots[labels]``."""
    logits = torch.full((len(labels), max_clusters), -torch.inf, dtype=torch.float64)
    logits[:, slots] = 0.0
    logits[torch.arange(len(labels)), torch.as_tensor(slots)[labels]] = scale
    return logits


def test_e_step_recovers_the_clusters_it_was_set_from():
    X, y, prior = _blobs()
    mixture = _mixture_on(X, y, prior, [1, 3, 4])
    assert mixture.index.tolist() == [1, 3, 4] and mixture.n_clusters == 3
    resp = mixture.e_step(X)
    assert resp.shape == (300, 3)
    torch.testing.assert_close(resp.sum(1), torch.ones(300, dtype=torch.float64))
    assert (resp.argmax(1) == y).all()
    np.testing.assert_allclose(mixture.weights[mixture.index].sum().item(), 1.0)


def test_batched_statistics_add_up_to_the_whole_epoch():
    X, y, prior = _blobs()
    slots = [0, 2, 5]
    logits = _logits_for(slots, y)
    sub_logits = torch.stack([X[:, 0], -X[:, 0]], dim=1)
    whole = _mixture_on(X, y, prior, slots)
    whole.accumulate(X, logits, sub_logits, soft=True)
    batched = _mixture_on(X, y, prior, slots)
    for part in torch.split(torch.arange(300), 64):
        batched.accumulate(X[part], logits[part], sub_logits[part], soft=True)
    for name in ("soft", "hard", "sub_soft", "sub_hard"):
        for a, b in zip(getattr(whole, name), getattr(batched, name)):
            torch.testing.assert_close(a, b)
    # hard statistics count each point once, in the slot its logits pick
    expected = sufficient_stats(X, torch.nn.functional.one_hot(y, 3).double(), diagonal=False)
    for got, want in zip(whole.hard, expected):
        torch.testing.assert_close(got[slots], want)
    assert whole.hard[0][[1, 3, 4]].sum().item() == 0.0


def test_statistics_are_only_gathered_when_asked():
    X, y, prior = _blobs()
    mixture = _mixture_on(X, y, prior, [0, 1, 2])
    mixture.accumulate(X, _logits_for([0, 1, 2], y), None, soft=False)
    assert mixture.hard[0].sum().item() == 300
    assert mixture.soft[0].sum().item() == 0 and mixture.sub_hard[0].sum().item() == 0
    mixture.reset_stats()
    assert mixture.hard[0].sum().item() == 0


def test_m_step_moves_the_components_to_the_soft_statistics():
    X, y, prior = _blobs()
    wrong = torch.roll(y, 7)  # a poor start
    mixture = _mixture_on(X, wrong, prior, [0, 1, 2])
    mixture.accumulate(X, _logits_for([0, 1, 2], y), None, soft=True)
    mixture.m_step()
    for k in range(3):
        torch.testing.assert_close(mixture.means[k], X[y == k].mean(0), atol=1e-3, rtol=0)
    assert (mixture.e_step(X).argmax(1) == y).all()


def test_sub_clusters_exist_only_once_seeded():
    X, y, prior = _blobs()
    mixture = _mixture_on(X, y, prior, [0, 1, 2])
    assert not mixture.has_sub_clusters
    mixture.seed_sub_clusters(mixture.index[:0])
    assert not mixture.has_sub_clusters
    mixture.seed_sub_clusters(mixture.index)
    assert mixture.has_sub_clusters
    # the two seeds of a cluster straddle its mean
    torch.testing.assert_close(mixture.sub_means[:3].mean(1), mixture.means[:3])
    assert ((mixture.sub_means[:3, 0] - mixture.sub_means[:3, 1]).norm(dim=1) > 0.1).all()


def test_collapsed_sub_clusters_are_reseeded():
    X, y, prior = _blobs()
    mixture = _mixture_on(X, y, prior, [0, 1, 2])
    mixture.seed_sub_clusters(mixture.index)
    # every point of cluster 0 in its first sub-cluster; clusters 1 and 2 cut at their means
    centres = torch.stack([X[y == k].mean(0) for k in range(3)])
    side = torch.sign(X[:, 0] - centres[y, 0])
    side[y == 0] = 1.0
    sub_logits = torch.stack([30.0 * side, -30.0 * side], dim=1)
    mixture.accumulate(X, _logits_for([0, 1, 2], y), sub_logits, soft=True)
    assert mixture.sub_m_step().tolist() == [0]
    seeded = mixture.sub_means[0].clone()
    mixture.seed_sub_clusters(torch.tensor([0]))
    torch.testing.assert_close(mixture.sub_means[0], seeded)


def test_split_and_merge_keep_weights_on_the_simplex():
    X, _, prior = _blobs()
    labels = torch.arange(300) % 2
    mixture = _mixture_on(X, labels, prior, [0, 1])
    mixture.seed_sub_clusters(mixture.index)
    sub_means = mixture.sub_means[0].clone()
    mixture.split(0, 4)
    assert mixture.index.tolist() == [0, 1, 4]
    torch.testing.assert_close(mixture.means[[0, 4]], sub_means)
    assert mixture.weights[mixture.index].sum().item() == pytest.approx(1.0)
    mixture.accumulate(X, _logits_for([0, 1, 4], labels), None, soft=True)
    mixture.merge(1, 4)
    assert mixture.index.tolist() == [0, 1]
    assert mixture.weights[mixture.index].sum().item() == pytest.approx(1.0)
    assert torch.linalg.eigvalsh(mixture.covariances[mixture.index]).min() > 0


def test_deactivate_renormalises_the_weights():
    X, y, prior = _blobs()
    mixture = _mixture_on(X, y, prior, [0, 1, 2])
    kept = mixture.weights[[0, 2]].clone()
    mixture.deactivate(torch.tensor([1]))
    assert mixture.index.tolist() == [0, 2]
    torch.testing.assert_close(mixture.weights[[0, 2]], kept / kept.sum())
    assert mixture.e_step(X).shape == (300, 2)


def test_diagonal_mixture_keeps_variances():
    X, y, prior = _blobs(diagonal=True)
    mixture = DPMixture(prior, max_clusters=4, weight_smoothing=0.1)
    one_hot = torch.nn.functional.one_hot(y, 3).double()
    mixture.set_clusters(torch.arange(3), sufficient_stats(X, one_hot, diagonal=True))
    assert mixture.covariances.shape == (4, 2)
    assert (mixture.e_step(X).argmax(1) == y).all()


def test_smoothed_kl_is_zero_only_at_the_target():
    target = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert smoothed_kl(target, target.log()).item() == pytest.approx(0.0, abs=1e-7)
    assert smoothed_kl(target, target.flip(1).log()).item() > 0.5
    # smoothing keeps hard targets and hard predictions finite
    hard = torch.tensor([[1.0, 0.0]])
    assert np.isfinite(smoothed_kl(hard, torch.tensor([[-torch.inf, 0.0]])).item())


def test_sub_cluster_loss_is_the_expected_squared_distance():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    means = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]]).expand(2, 2, 2)
    # confident, correct sub-assignments cost ~0; swapped ones 4 per point
    right = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert sub_cluster_loss(x, right, means).item() == pytest.approx(0.0, abs=1e-6)
    assert sub_cluster_loss(x, right.flip(1), means).item() == pytest.approx(4.0, rel=1e-6)


def test_count_once_rescales_repeated_draws_to_the_collection():
    # a small collection's epoch draws the same points several times; the statistics
    # must weigh each point once, so counts sum to N and the M-step's means are unchanged
    X, y, prior = _blobs(n=90)
    mixture = _mixture_on(X, y, prior, [0, 2, 4])
    logits = _logits_for([0, 2, 4], y)
    for _ in range(3):
        mixture.accumulate(X, logits, soft=True)
    assert mixture.hard[0].sum().item() == pytest.approx(270)
    means = mixture.soft[1] / mixture.soft[0].clamp_min(1e-12)[:, None]
    mixture.count_once(len(X))
    assert mixture.hard[0].sum().item() == pytest.approx(90)
    assert mixture.soft[0].sum().item() == pytest.approx(90)
    torch.testing.assert_close(mixture.soft[1] / mixture.soft[0].clamp_min(1e-12)[:, None], means)
    mixture.count_once(len(X))  # idempotent within an epoch
    assert mixture.hard[0].sum().item() == pytest.approx(90)
    mixture.reset_stats()
    assert mixture.n_drawn == 0
