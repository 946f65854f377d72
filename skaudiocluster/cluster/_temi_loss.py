"""TEMI's loss: teacher-ensemble-weighted beta pointwise mutual information.

Plain functions on tensors of logits shaped ``(n_heads, batch, n_clusters)`` so each
piece can be tested alone (Adaloglou et al., BMVC 2023; ``algorithms.md`` §1.3).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def teacher_weight(teacher_a: torch.Tensor, teacher_b: torch.Tensor) -> torch.Tensor:
    """Pair weight ``w(a, b) = mean_h sum_c q_t^h(c|a) q_t^h(c|b)``, detached, in [0, 1].

    Parameters
    ----------
    teacher_a, teacher_b : tensor of shape (n_heads, batch, n_clusters)
        Teacher probabilities of the two views.

    Returns
    -------
    tensor of shape (batch,)

    Examples
    --------
    >>> import torch
    >>> uniform = torch.full((2, 3, 4), 0.25)
    >>> teacher_weight(uniform, uniform)
    tensor([0.2500, 0.2500, 0.2500])
    """
    return (teacher_a * teacher_b).sum(dim=-1).mean(dim=0).detach()


def updated_prior(
    prior: torch.Tensor, teacher_a: torch.Tensor, teacher_b: torch.Tensor, momentum: float
) -> torch.Tensor:
    """EMA of the cluster prior over the teacher probabilities of both views.

    ``prior <- momentum * prior + (1 - momentum) * batch mean of q_t`` per head,
    without gradient; rows stay on the probability simplex.

    Parameters
    ----------
    prior : tensor of shape (n_heads, n_clusters)
    teacher_a, teacher_b : tensor of shape (n_heads, batch, n_clusters)
    momentum : float in [0, 1]

    Returns
    -------
    tensor of shape (n_heads, n_clusters)

    Examples
    --------
    >>> import torch
    >>> prior = torch.full((1, 2), 0.5)
    >>> one_hot = torch.tensor([[[1.0, 0.0]]])
    >>> updated_prior(prior, one_hot, one_hot, momentum=0.9)
    tensor([[0.5500, 0.4500]])
    """
    batch_mean = torch.cat([teacher_a, teacher_b], dim=1).mean(dim=1).detach()
    return momentum * prior + (1.0 - momentum) * batch_mean


def beta_pmi(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    prior: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``log sum_c (q_s(c|a) q_t(c|b))^beta / prior(c)`` per head and pair, in log space.

    Parameters
    ----------
    student_log_probs, teacher_log_probs : tensor of shape (n_heads, batch, n_clusters)
    prior : tensor of shape (n_heads, n_clusters)
    beta : float

    Returns
    -------
    tensor of shape (n_heads, batch)

    Examples
    --------
    >>> import math, torch
    >>> log_uniform = torch.full((1, 1, 4), math.log(0.25))
    >>> round(beta_pmi(log_uniform, log_uniform, torch.full((1, 4), 0.25), 1.0).item(), 6)
    0.0
    """
    joint = beta * (student_log_probs + teacher_log_probs) - torch.log(prior).unsqueeze(1)
    return torch.logsumexp(joint, dim=-1)


def temi_loss(
    student_a: torch.Tensor,
    student_b: torch.Tensor,
    teacher_a: torch.Tensor,
    teacher_b: torch.Tensor,
    prior: torch.Tensor,
    *,
    beta: float = 0.6,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.1,
) -> torch.Tensor:
    """Per-head TEMI loss of a batch of pairs ``(a, b)``, symmetrised over the two views.

    ``L_h = mean_batch 1/2 [-w pmi_beta^h(a, b) - w pmi_beta^h(b, a)]`` with the
    student on the first argument of the pmi and the teacher on the second, and
    ``w`` the teacher-ensemble weight (:func:`teacher_weight`). Gradients reach the
    student logits only.

    Parameters
    ----------
    student_a, student_b, teacher_a, teacher_b : tensor of shape (n_heads, batch, n_clusters)
        Logits of the student and teacher heads for the two views.
    prior : tensor of shape (n_heads, n_clusters)
        Cluster prior per head (already updated with this batch).
    beta : float, default=0.6
    student_temperature, teacher_temperature : float, default=0.1

    Returns
    -------
    tensor of shape (n_heads,)

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(2, 5, 3)
    >>> prior = torch.full((2, 3), 1 / 3)
    >>> temi_loss(logits, logits, logits, logits, prior)  # -(1/K) (2 - 2 beta) log K
    tensor([-0.2930, -0.2930])
    """
    log_s_a = F.log_softmax(student_a / student_temperature, dim=-1)
    log_s_b = F.log_softmax(student_b / student_temperature, dim=-1)
    log_t_a = F.log_softmax(teacher_a.detach() / teacher_temperature, dim=-1)
    log_t_b = F.log_softmax(teacher_b.detach() / teacher_temperature, dim=-1)
    weight = teacher_weight(log_t_a.exp(), log_t_b.exp())
    pmi = beta_pmi(log_s_a, log_t_b, prior, beta) + beta_pmi(log_s_b, log_t_a, prior, beta)
    return -(0.5 * weight * pmi).mean(dim=1)
