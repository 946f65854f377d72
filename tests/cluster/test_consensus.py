"""Tests of the label-free head consensus helpers."""

import numpy as np
import pytest

from skaudiocluster.cluster._consensus import (
    coassociation_partition,
    consensus_partition,
    head_agreement,
)


def _one_hot(labels, n_clusters):
    return np.eye(n_clusters)[np.asarray(labels)]


def _random_probs(rng, shape):
    """Softmax of standard normal logits: head probabilities of ``shape``."""
    logits = rng.normal(size=shape)
    return np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)


def test_agreement_ignores_cluster_numbering_and_ranks_outlier_head_last():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    permuted = np.array([2, 0, 1])[truth]
    noise = rng.integers(0, 3, 300)
    heads = np.stack([_one_hot(truth, 3), _one_hot(permuted, 3), _one_hot(noise, 3)])
    agreement = head_agreement(heads)
    assert agreement[0] == pytest.approx(agreement[1])
    assert agreement[2] < 0.1 < 0.4 < agreement[0]


def test_agreement_of_single_head_is_one():
    assert head_agreement(_one_hot([0, 1, 1], 2)[None]).tolist() == [1.0]


def test_consensus_recovers_majority_partition_from_noisy_heads():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(4), 50)
    heads = []
    for _ in range(7):
        labels = truth.copy()
        flip = rng.random(len(truth)) < 0.25  # each head mislabels a different quarter
        labels[flip] = rng.integers(0, 4, flip.sum())
        heads.append(_one_hot(rng.permutation(4)[labels], 4))
    consensus = consensus_partition(np.stack(heads), 4, random_state=0)
    from sklearn.metrics import adjusted_rand_score

    per_head = [adjusted_rand_score(truth, h.argmax(1)) for h in heads]
    assert adjusted_rand_score(truth, consensus.labels) > max(per_head) + 0.1


def test_consensus_proba_matches_labels_and_sums_to_one():
    rng = np.random.default_rng(2)
    probs = _random_probs(rng, (3, 60, 5))
    consensus = consensus_partition(probs, 4, random_state=0)
    proba = consensus.predict_proba(probs)
    assert proba.shape == (60, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(proba.argmax(axis=1), consensus.labels)
    assert consensus.temperature > 0


def test_large_inputs_fit_on_a_subset_and_assign_every_row():
    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(3), 100)
    heads = np.stack([_one_hot(rng.permutation(3)[truth], 3) for _ in range(4)])
    heads = heads + rng.uniform(0, 0.05, heads.shape)
    full = consensus_partition(heads, 3, random_state=0)
    subset = consensus_partition(heads, 3, max_samples=30, random_state=0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(full.labels, subset.labels) == 1.0
    assert len(subset.labels) == 300
    np.testing.assert_array_equal(subset.predict_proba(heads).argmax(axis=1), subset.labels)
    assert subset.temperature == pytest.approx(full.temperature, rel=0.2)


def test_coassociation_merges_the_pieces_of_each_class_that_heads_cut_differently():
    # Every head cuts each of 3 classes in two at its own place: no head has the
    # classes, but the pieces of a class always share more heads than two classes do.
    rng = np.random.default_rng(4)
    truth = np.repeat(np.arange(3), 40)
    heads = []
    for _ in range(6):
        cut = rng.random(len(truth)) < 0.5
        heads.append(_one_hot(rng.permutation(6)[2 * truth + cut], 6))
    consensus = coassociation_partition(np.stack(heads), 3, random_state=0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, consensus.labels) == 1.0
    assert consensus.tables.shape == (6, 3, 6)
    np.testing.assert_allclose(consensus.tables.sum(axis=2), 1.0)


def test_coassociation_proba_is_the_mean_co_association_with_each_cluster():
    rng = np.random.default_rng(5)
    probs = _random_probs(rng, (4, 80, 6))
    consensus = coassociation_partition(probs, 3, random_state=0)
    proba = consensus.predict_proba(probs)
    assert proba.shape == (80, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(proba.argmax(axis=1), consensus.labels)
    # by hand for one row: mean over heads of sum_l p_h(l) * share of the cluster in l
    affinity = np.mean([probs[h, 0] @ consensus.tables[h].T for h in range(4)], axis=0)
    np.testing.assert_allclose(proba[0], affinity / affinity.sum())


def test_coassociation_links_a_subset_of_large_inputs_and_assigns_every_row():
    rng = np.random.default_rng(6)
    truth = np.repeat(np.arange(3), 200)
    heads = np.stack(
        [_one_hot(rng.permutation(6)[2 * truth + (rng.random(600) < 0.5)], 6) for _ in range(5)]
    )
    consensus = coassociation_partition(heads, 3, max_samples=90, random_state=0)
    from sklearn.metrics import adjusted_rand_score

    assert consensus.labels.shape == (600,)
    assert adjusted_rand_score(truth, consensus.labels) == 1.0
