"""The network, the timing views and the loss of :class:`~skaudiocluster.cluster.TemporalClusterer`.

A clip's content view is a short sequence of frames (``(n_frames, d)``). The
encoder convolves along time and pools over it, so a sound matters wherever it
falls; the views re-read each clip's own sequence with another start, span and
tempo and with frames masked, so the heads learn that those do not change the
cluster. Neither is visible to k-means or UMAP, which compare frame ``t`` with
frame ``t`` only.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TemporalModule", "scan_loss", "timing_views"]


class TemporalModule(nn.Module):
    """Frames ``(B, T, d)`` -> per-network cluster logits ``(n_heads, B, n_clusters)``.

    ``n_heads`` independent networks, run as one (grouped convolutions, batched
    matrix products): each has two 3-frame convolutions along time, the mean
    and the maximum over time (so an event counts wherever it is), a hidden
    layer and a linear head. Independent weights, not heads on one trunk: runs
    of one network from different initialisations settle on different
    partitions, and their consensus is steadier than any one of them.
    """

    def __init__(self, n_features: int, hidden: int, n_clusters: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.convolutions = nn.Sequential(
            nn.Conv1d(n_heads * n_features, n_heads * hidden, 3, padding=1, groups=n_heads),
            nn.ReLU(),
            nn.Conv1d(n_heads * hidden, n_heads * hidden, 3, padding=1, groups=n_heads),
            nn.ReLU(),
        )
        self.hidden = _BatchedLinear(n_heads, 2 * hidden, hidden)
        self.head = _BatchedLinear(n_heads, hidden, n_clusters)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """Hidden features ``(n_heads, B, hidden)`` of frames ``(B, T, d)``."""
        batch, n_frames, _ = frames.shape
        x = self.convolutions(frames.transpose(1, 2).repeat(1, self.n_heads, 1))
        x = x.view(batch, self.n_heads, -1, n_frames)
        pooled = torch.cat([x.mean(dim=3), x.amax(dim=3)], dim=2).transpose(0, 1)
        return torch.relu(self.hidden(pooled))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(frames))


class _BatchedLinear(nn.Module):
    """One linear layer per network: ``(n_heads, B, n_in)`` -> ``(n_heads, B, n_out)``."""

    def __init__(self, n_heads: int, n_in: int, n_out: int):
        super().__init__()
        bound = n_in**-0.5  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n_heads, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_heads, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def timing_views(
    frames: torch.Tensor,
    generator: torch.Generator,
    *,
    span: tuple[float, float] = (0.7, 0.95),
    warp: tuple[float, float] = (0.8, 1.25),
    mask_prob: float = 0.1,
) -> torch.Tensor:
    """Each sequence re-read over a random span, at a random tempo curve, with frames masked.

    A random ``span`` fraction of the sequence (random start) is read back to
    ``T`` frames through the time map ``u -> u ** w`` (``w`` log-uniform in
    ``warp``: the view slows down then speeds up, or the reverse), by linear
    interpolation; each frame is then zeroed (the clip's mean, after the content
    view's centring and standardisation) with probability ``mask_prob``.

    Parameters
    ----------
    frames : torch.Tensor of shape (B, T, d)
    generator : torch.Generator
        Draws every random choice (on ``frames``' device).

    Returns
    -------
    views : torch.Tensor of shape (B, T, d)
    """
    batch, n_frames, _ = frames.shape
    device = frames.device
    if n_frames < 2:  # nothing to re-time
        span, warp = (1.0, 1.0), (1.0, 1.0)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

    length = uniform(*span, batch, 1)
    start = uniform(0.0, 1.0, batch, 1) * (1 - length)
    exponent = torch.exp(uniform(*torch.log(torch.tensor(warp)).tolist(), batch, 1))
    grid = torch.linspace(0.0, 1.0, n_frames, device=device).expand(batch, -1)
    position = (start + length * grid**exponent) * (n_frames - 1)
    low = position.floor().clamp(0, max(n_frames - 2, 0)).long()
    weight = (position - low).unsqueeze(-1)
    gather = lambda index: frames.gather(1, index.unsqueeze(-1).expand_as(frames))  # noqa: E731
    views = (1 - weight) * gather(low) + weight * gather((low + 1).clamp(max=n_frames - 1))
    keep = uniform(0.0, 1.0, batch, n_frames, 1) >= mask_prob
    return views * keep


def scan_loss(
    anchor: torch.Tensor, positives: list[torch.Tensor], entropy_weight: float
) -> torch.Tensor:
    """SCAN's clustering loss, summed over heads (Van Gansbeke et al., ECCV 2020).

    ``-log <p(anchor), p(positive)>`` averaged over the batch for each positive
    (its views and its neighbours), minus ``entropy_weight`` times the entropy of
    the batch's mean assignment (which keeps every cluster in use).

    Parameters
    ----------
    anchor : torch.Tensor of shape (n_heads, B, K)
        Logits of the clips.
    positives : list of torch.Tensor of shape (n_heads, B, K)
        Logits of what each clip must agree with.
    entropy_weight : float

    Returns
    -------
    loss : torch.Tensor, scalar
    """
    p = anchor.softmax(dim=-1)
    loss = anchor.new_zeros(())
    for positive in positives:
        agreement = (p * positive.softmax(dim=-1)).sum(dim=-1)
        loss = loss - torch.log(agreement.clamp_min(1e-8)).mean(dim=1).sum()
    mean = p.mean(dim=1)
    entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum(dim=-1)
    return loss - entropy_weight * entropy.sum()
