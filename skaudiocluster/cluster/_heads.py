"""Ensembles of MLP cluster heads evaluated as one batched network.

All heads of a :class:`MultiHead` share the input but have their own weights. Their
weights are stacked along a leading head axis, so one forward pass costs a few
batched matrix products instead of a Python loop over heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class HeadLinear(nn.Module):
    """``n_heads`` independent affine maps applied in one batched product.

    Parameters
    ----------
    n_heads : int
    in_features : int
    out_features : int
    bias : bool, default=True
    init_std : float or None, default=0.02
        Standard deviation of the truncated-normal weight init (biases start at
        zero). ``None`` uses :class:`torch.nn.Linear`'s default init.

    Examples
    --------
    >>> import torch
    >>> layer = HeadLinear(3, in_features=8, out_features=4)
    >>> layer(torch.zeros(5, 8)).shape
    torch.Size([3, 5, 4])
    """

    def __init__(
        self,
        n_heads: int,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        init_std: float | None = 0.02,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_heads, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n_heads, 1, out_features)) if bias else None
        _init_weight(self.weight, in_features, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, in)`` (shared) or ``(n_heads, batch, in)`` to ``(n_heads, batch, out)``."""
        if x.dim() == 2:
            n_heads, in_features, out_features = self.weight.shape
            flat = self.weight.transpose(0, 1).reshape(in_features, n_heads * out_features)
            out = (x @ flat).view(x.shape[0], n_heads, out_features).transpose(0, 1)
        else:
            out = torch.bmm(x, self.weight)
        return out if self.bias is None else out + self.bias


class HeadCosineLinear(nn.Module):
    """Bias-free weight-normalised last layer on L2-normalised features (DINO / TEMI).

    Each output unit's weight is ``magnitude * direction / ||direction||`` and the
    input rows are L2-normalised, so logits are scaled cosines. ``magnitude``
    starts at 1 and is trained.

    Parameters
    ----------
    n_heads : int
    in_features : int
    out_features : int
    init_std : float or None, default=0.02

    Examples
    --------
    >>> import torch
    >>> layer = HeadCosineLinear(2, in_features=8, out_features=3)
    >>> bool(layer(torch.randn(2, 5, 8)).abs().max() <= 1.0 + 1e-6)
    True
    """

    def __init__(
        self,
        n_heads: int,
        in_features: int,
        out_features: int,
        *,
        init_std: float | None = 0.02,
    ):
        super().__init__()
        self.direction = nn.Parameter(torch.empty(n_heads, in_features, out_features))
        self.magnitude = nn.Parameter(torch.ones(n_heads, 1, out_features))
        _init_weight(self.direction, in_features, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(n_heads, batch, in)`` to ``(n_heads, batch, out)`` cosine logits."""
        weight = F.normalize(self.direction, dim=1) * self.magnitude
        return torch.bmm(F.normalize(x, dim=-1), weight)


class MultiHead(nn.Module):
    """``n_heads`` independent MLP cluster heads on a shared input.

    Each head is ``[Linear -> activation] * len(hidden_dims)``,
    then an optional linear ``bottleneck_dim`` projection without activation, then
    the last layer to ``n_clusters`` logits: a plain linear layer, or with
    ``cosine_last_layer`` TEMI's (DINO's) L2-normalised features times a bias-free
    weight-normalised linear layer.

    Parameters
    ----------
    in_features : int
    n_clusters : int
    n_heads : int, default=1
    hidden_dims : sequence of int, default=(512,)
    bottleneck_dim : int or None, default=None
    cosine_last_layer : bool, default=False
    activation : {"gelu", "relu"}, default="gelu"
    init_std : float or None, default=0.02
        Truncated-normal std for weights; ``None`` for :class:`torch.nn.Linear`'s init.

    Attributes
    ----------
    last_layer : nn.Module
        The layer producing the logits (frozen early in TEMI's training).

    Examples
    --------
    >>> import torch
    >>> heads = MultiHead(16, n_clusters=4, n_heads=3, hidden_dims=(32,), bottleneck_dim=8,
    ...                   cosine_last_layer=True)
    >>> heads(torch.randn(10, 16)).shape
    torch.Size([3, 10, 4])
    """

    def __init__(
        self,
        in_features: int,
        n_clusters: int,
        n_heads: int = 1,
        hidden_dims: Sequence[int] = (512,),
        bottleneck_dim: int | None = None,
        *,
        cosine_last_layer: bool = False,
        activation: str = "gelu",
        init_std: float | None = 0.02,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_clusters = n_clusters
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_dims:
            layers.append(HeadLinear(n_heads, width, hidden, init_std=init_std))
            layers.append(ACTIVATIONS[activation]())
            width = hidden
        if bottleneck_dim is not None:
            layers.append(HeadLinear(n_heads, width, bottleneck_dim, init_std=init_std))
            width = bottleneck_dim
        self.body = nn.Sequential(*layers)
        if cosine_last_layer:
            self.last_layer = HeadCosineLinear(n_heads, width, n_clusters, init_std=init_std)
        else:
            self.last_layer = HeadLinear(n_heads, width, n_clusters, init_std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(n_heads, batch, n_clusters)`` for input ``(batch, in_features)``."""
        hidden = self.body(x)
        if hidden.dim() == 2:  # no hidden layer: broadcast the shared input to every head
            hidden = hidden.unsqueeze(0).expand(self.n_heads, -1, -1)
        return self.last_layer(hidden)


def copy_head(heads: MultiHead, index: int, **head_kwargs) -> MultiHead:
    """A one-head :class:`MultiHead` holding a copy of head ``index`` of ``heads``.

    ``head_kwargs`` are the architecture arguments ``heads`` was built with.
    """
    first = heads.body[0].weight
    single = MultiHead(first.shape[1], heads.n_clusters, n_heads=1, **head_kwargs)
    # Every parameter is stacked along a leading head axis.
    single.load_state_dict(
        {name: value[index : index + 1].clone() for name, value in heads.state_dict().items()}
    )
    return single.to(first.device)


def _init_weight(weight: torch.Tensor, fan_in: int, init_std: float | None) -> None:
    if init_std is None:
        bound = fan_in**-0.5
        nn.init.uniform_(weight, -bound, bound)
    else:
        nn.init.trunc_normal_(weight, std=init_std, a=-2 * init_std, b=2 * init_std)
