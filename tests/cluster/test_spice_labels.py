"""SPICE's labelling rules on hand-built inputs: prototypes, losses, reliable labels."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from skaudiocluster.cluster._spice_labels import (
    IGNORE,
    double_softmax_cross_entropy,
    fixmatch_loss,
    flatten_selection,
    neighbour_agreement,
    reliable_labels,
    select_prototype_samples,
)

# --- prototype pseudo-labels -------------------------------------------------------------


def test_prototype_is_mean_of_top_confident_and_selects_its_nearest():
    # Cluster 0's two most confident samples are 0 and 1: prototype (1, 1)/sqrt(2)
    # direction, whose nearest samples are 4 and 5 (on the diagonal), not 0 and 1.
    features = torch.nn.functional.normalize(
        torch.tensor(
            [
                [1.0, 0.0],
                [0.0, 1.0],
                [-1.0, 0.1],
                [-1.0, -0.1],
                [1.0, 1.0],
                [1.0, 0.9],
                [-0.9, 0.0],
                [-1.0, 0.0],
            ]
        ),
        dim=1,
    )
    p0 = torch.tensor([0.99, 0.98, 0.1, 0.1, 0.5, 0.5, 0.2, 0.2])
    proba = torch.stack([p0, 1 - p0], dim=1)
    selected = select_prototype_samples(proba, features, center_ratio=0.5)
    # m = floor(0.5 * 8 / 2) = 2 confident samples per prototype, n = 8 / 2 = 4 selected.
    assert selected.shape == (2, 4)
    assert set(selected[0, :2].tolist()) == {4, 5}
    # Cluster 1's prototype averages samples 2 and 3 and points to (-1, 0).
    assert set(selected[1].tolist()) == {2, 3, 6, 7}
    assert set(selected[0].tolist()) == {0, 1, 4, 5}


def test_selection_per_head_and_balanced():
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(60, 5, generator=gen), dim=1)
    proba = torch.randn(3, 60, 4, generator=gen).softmax(dim=-1)
    selected = select_prototype_samples(proba, features)
    assert selected.shape == (3, 4, 15)
    assert int(selected.max()) < 60
    for head in range(3):
        alone = select_prototype_samples(proba[head], features)
        assert torch.equal(alone, selected[head])
        for cluster in range(4):
            top = proba[head, :, cluster].topk(7).indices
            similarity = features @ features[top].mean(dim=0)
            chosen = selected[head, cluster]
            rest = torch.ones(60, dtype=torch.bool)
            rest[chosen] = False
            assert similarity[chosen].min() >= similarity[rest].max()
    indices, labels = flatten_selection(selected)
    assert indices.shape == labels.shape == (3, 60)
    assert torch.equal(torch.bincount(labels[1]), torch.full((4,), 15))


def test_selection_never_empty_when_clusters_outnumber_samples():
    features = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    selected = select_prototype_samples(torch.rand(5, 4).softmax(dim=1), features)
    assert selected.shape == (4, 1)


# --- losses --------------------------------------------------------------------------------


def test_double_softmax_bounds_and_uniform_value():
    k = 10
    logits = torch.randn(3, 50, k) * 20
    target = torch.randint(0, k, (3, 50))
    loss = double_softmax_cross_entropy(logits, target)
    assert loss.shape == (3,)
    assert torch.all(loss >= math.log(1 + (k - 1) / math.e) - 1e-5)
    assert torch.all(loss <= math.log(k - 1 + math.e) + 1e-5)
    uniform = double_softmax_cross_entropy(torch.zeros(2, 4, k), torch.zeros(4, dtype=torch.long))
    assert torch.allclose(uniform, torch.full((2,), math.log(k)))


def test_cross_entropy_ignores_unlabelled_and_plain_option():
    logits = torch.randn(2, 6, 3)
    target = torch.tensor([[0, 1, IGNORE, 2, IGNORE, 0], [IGNORE] * 6])
    loss = double_softmax_cross_entropy(logits, target, double_softmax=False)
    keep = target[0] != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[0][keep], target[0][keep])
    assert torch.isclose(loss[0], expected)
    assert loss[1] == 0


def test_fixmatch_mask():
    labelled, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    weak, strong = torch.randn(8, 3), torch.randn(8, 3)
    supervised = torch.nn.functional.cross_entropy(labelled, labels)
    assert torch.isclose(fixmatch_loss(labelled, labels, weak, strong, threshold=1.0), supervised)
    everything = supervised + torch.nn.functional.cross_entropy(strong, weak.argmax(dim=1))
    assert torch.isclose(fixmatch_loss(labelled, labels, weak, strong, threshold=0.0), everything)


def test_fixmatch_unlabelled_weight_scales_only_the_consistency_term():
    labelled, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    weak, strong = torch.randn(8, 3), torch.randn(8, 3)
    supervised = fixmatch_loss(labelled, labels, weak, strong, threshold=0.0, unlabelled_weight=0)
    once = fixmatch_loss(labelled, labels, weak, strong, threshold=0.0, unlabelled_weight=1.0)
    twice = fixmatch_loss(labelled, labels, weak, strong, threshold=0.0, unlabelled_weight=2.0)
    assert torch.isclose(twice - supervised, 2 * (once - supervised))
    assert torch.isclose(supervised, torch.nn.functional.cross_entropy(labelled, labels))


# --- reliable labels ---------------------------------------------------------------------


def _two_groups(n=20, seed=0):
    rng = np.random.RandomState(seed)
    features = np.vstack([rng.normal([8, 0], 1, (n, 2)), rng.normal([0, 8], 1, (n, 2))])
    proba = np.repeat([[0.999, 0.001], [0.001, 0.999]], n, axis=0)
    return features, proba


def test_reliability_rule_drops_inconsistent_and_unconfident_samples():
    features, proba = _two_groups()
    proba[0] = [0.001, 0.999]  # labelled 1 among cluster-0 neighbours
    proba[1] = [0.98, 0.02]  # consistent but not confident enough
    agreement = neighbour_agreement(features, proba.argmax(axis=1), 10)
    assert agreement[0] <= 0.1 and np.median(agreement) == 1.0
    mask = reliable_labels(features, proba, n_neighbors=10, min_per_cluster=1)
    assert not mask[0] and not mask[1]
    # Nothing discarded to balance: cluster 0 keeps its 18 reliable samples, cluster 1 its 20.
    assert mask[:20].sum() == 18 and mask[20:].sum() == 20


def test_reliable_guard_tops_up_a_cluster_without_reliable_samples():
    features, proba = _two_groups()
    proba[20:] = [0.3, 0.7]  # cluster 1 is never confident
    with pytest.warns(UserWarning, match=r"cluster\(s\) \[1\]"):
        mask = reliable_labels(
            features,
            proba,
            n_neighbors=10,
            min_per_cluster=5,
        )
    assert mask[20:].sum() == 5
    # The weak cluster no longer cuts the other one down to the guaranteed size.
    assert mask[:20].sum() == 20


def test_reliable_guard_with_an_unpredicted_cluster_and_tiny_clusters():
    features, proba = _two_groups(n=3)
    proba = np.hstack([proba, np.zeros((6, 1))])  # cluster 2 predicted for no sample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mask = reliable_labels(
            features,
            proba,
            n_neighbors=100,
            min_per_cluster=10,
        )
    assert mask.sum() == 6  # everything available, no crash, no empty set
