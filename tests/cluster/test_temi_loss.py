"""TEMI's loss (skaudiocluster.cluster._temi_loss): invariants of algorithms.md §1.9."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skaudiocluster.cluster._temi_loss import beta_pmi, teacher_weight, temi_loss, updated_prior


def random_logits(seed: int, n_heads: int = 3, batch: int = 7, n_clusters: int = 5):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n_heads, batch, n_clusters, generator=generator) for _ in range(4)]


def random_prior(seed: int, n_heads: int = 3, n_clusters: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_heads, n_clusters, generator=generator).softmax(dim=1)


@given(st.integers(0, 10_000), st.floats(0.1, 1.0))
@settings(max_examples=25, deadline=None)
def test_loss_is_symmetric_in_the_two_views(seed, beta):
    student_a, student_b, teacher_a, teacher_b = random_logits(seed)
    prior = random_prior(seed)
    forward = temi_loss(student_a, student_b, teacher_a, teacher_b, prior, beta=beta)
    swapped = temi_loss(student_b, student_a, teacher_b, teacher_a, prior, beta=beta)
    torch.testing.assert_close(forward, swapped)


@pytest.mark.parametrize("n_clusters", [2, 6, 10])
@pytest.mark.parametrize("beta", [0.3, 0.6, 1.0])
def test_uniform_inputs_give_the_closed_form(n_clusters, beta):
    logits = torch.zeros(2, 4, n_clusters)
    prior = torch.full((2, n_clusters), 1 / n_clusters)
    loss = temi_loss(logits, logits, logits, logits, prior, beta=beta)
    expected = -(1 / n_clusters) * (2 - 2 * beta) * math.log(n_clusters)
    torch.testing.assert_close(loss, torch.full((2,), expected))


@pytest.mark.parametrize("n_clusters", [2, 6, 10])
def test_identical_one_hot_views_give_minus_log_k(n_clusters):
    logits = torch.zeros(2, 3, n_clusters)
    logits[:, torch.arange(3), torch.arange(3) % n_clusters] = 100.0
    prior = torch.full((2, n_clusters), 1 / n_clusters)
    loss = temi_loss(logits, logits, logits, logits, prior, beta=0.6)
    torch.testing.assert_close(loss, torch.full((2,), -math.log(n_clusters)))


def test_loss_matches_a_direct_evaluation_of_the_formula():
    student_a, student_b, teacher_a, teacher_b = random_logits(5, n_heads=2, batch=4)
    prior = random_prior(5, n_heads=2)
    beta, tau_s, tau_t = 0.6, 0.2, 0.1
    s_a, s_b = (student_a / tau_s).softmax(-1), (student_b / tau_s).softmax(-1)
    t_a, t_b = (teacher_a / tau_t).softmax(-1), (teacher_b / tau_t).softmax(-1)
    expected = torch.zeros(2)
    for h in range(2):
        for i in range(4):
            w = sum((t_a[g, i] * t_b[g, i]).sum() for g in range(2)) / 2
            pmi_ab = torch.log(((s_a[h, i] * t_b[h, i]) ** beta / prior[h]).sum())
            pmi_ba = torch.log(((s_b[h, i] * t_a[h, i]) ** beta / prior[h]).sum())
            expected[h] += -0.5 * w * (pmi_ab + pmi_ba) / 4
    loss = temi_loss(
        student_a,
        student_b,
        teacher_a,
        teacher_b,
        prior,
        beta=beta,
        student_temperature=tau_s,
        teacher_temperature=tau_t,
    )
    torch.testing.assert_close(loss, expected)


def test_loss_is_invariant_to_permuting_clusters():
    student_a, student_b, teacher_a, teacher_b = random_logits(3)
    prior = random_prior(3)
    order = torch.tensor([4, 2, 0, 1, 3])
    permuted = [logits[..., order] for logits in (student_a, student_b, teacher_a, teacher_b)]
    torch.testing.assert_close(
        temi_loss(student_a, student_b, teacher_a, teacher_b, prior),
        temi_loss(*permuted, prior[:, order]),
    )


def test_beta_pmi_is_stable_for_saturated_probabilities():
    log_one_hot = torch.full((1, 1, 3), -1e4)
    log_one_hot[..., 0] = 0.0
    value = beta_pmi(log_one_hot, log_one_hot, torch.full((1, 3), 1 / 3), beta=0.6)
    torch.testing.assert_close(value, torch.tensor([[math.log(3)]]))


@given(st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_teacher_weight_is_a_detached_symmetric_probability(seed):
    _, _, teacher_a, teacher_b = random_logits(seed)
    probs_a = (teacher_a / 0.1).softmax(-1).requires_grad_()
    probs_b = (teacher_b / 0.1).softmax(-1)
    weight = teacher_weight(probs_a, probs_b)
    assert not weight.requires_grad
    assert torch.all((weight >= 0) & (weight <= 1))
    torch.testing.assert_close(weight, teacher_weight(probs_b, probs_a))


def test_teacher_weight_is_one_only_for_agreeing_one_hot_heads():
    one_hot = torch.eye(4)[[0, 1, 2]].expand(2, 3, 4)
    torch.testing.assert_close(teacher_weight(one_hot, one_hot), torch.ones(3))
    disagree = one_hot.clone()
    disagree[1] = torch.eye(4)[[1, 2, 3]]
    torch.testing.assert_close(teacher_weight(one_hot, disagree), torch.full((3,), 0.5))


@given(st.integers(0, 10_000), st.floats(0.0, 1.0))
@settings(max_examples=25, deadline=None)
def test_prior_stays_on_the_simplex(seed, momentum):
    prior = torch.full((3, 5), 0.2)
    for step in range(20):
        _, _, teacher_a, teacher_b = random_logits(seed + step)
        prior = updated_prior(prior, teacher_a.softmax(-1), teacher_b.softmax(-1), momentum)
    assert torch.all(prior >= 0)
    torch.testing.assert_close(prior.sum(dim=1), torch.ones(3), atol=1e-6, rtol=0)


def test_prior_with_zero_momentum_is_the_batch_mean():
    _, _, teacher_a, teacher_b = random_logits(0)
    probs_a, probs_b = teacher_a.softmax(-1), teacher_b.softmax(-1)
    prior = updated_prior(random_prior(0), probs_a, probs_b, momentum=0.0)
    torch.testing.assert_close(prior, torch.cat([probs_a, probs_b], dim=1).mean(dim=1))


def test_prior_with_full_momentum_does_not_move():
    _, _, teacher_a, teacher_b = random_logits(2)
    start = random_prior(2)
    prior = updated_prior(start, teacher_a.softmax(-1), teacher_b.softmax(-1), momentum=1.0)
    torch.testing.assert_close(prior, start)


def test_gradient_reaches_only_the_students():
    student_a, student_b, teacher_a, teacher_b = (
        logits.requires_grad_() for logits in random_logits(1)
    )
    temi_loss(student_a, student_b, teacher_a, teacher_b, random_prior(1)).sum().backward()
    assert student_a.grad.abs().sum() > 0 and student_b.grad.abs().sum() > 0
    assert teacher_a.grad is None and teacher_b.grad is None
