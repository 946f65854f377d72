"""skorch plumbing of SPICE on embeddings: SPICE-Self's heads and SPICE-Semi's FixMatch net.

:class:`SPICESelfNet` fits on the preprocessed features; its iterator labels each
labelling chunk with the current heads (:func:`~skaudiocluster.cluster._spice_labels.
select_prototype_samples`) and its criterion is :class:`DoubleSoftmaxLoss`.
:class:`FixMatchNet` fits on data with pseudo-labels as ``y`` (``IGNORE`` for the
unreliable samples); its criterion is :class:`FixMatchLoss` and a ``views`` callable
turns data rows into the stacked weak / strong views of a step (embedding views here,
clip views in :mod:`skaudiocluster.cluster._spice_joint`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from skorch.callbacks import Callback
from skorch.utils import to_tensor
from torch import nn
from torch.nn import functional as F

from skaudiocluster._torch import batched_forward, make_generator
from skaudiocluster._training import TrainingNet, ema_update_
from skaudiocluster.cluster._spice_labels import (
    IGNORE,
    double_softmax_cross_entropy,
    fixmatch_loss,
    flatten_selection,
    select_prototype_samples,
)


def embedding_view(
    x: torch.Tensor, *, noise: float, dropout: float, generator: torch.Generator | None
) -> torch.Tensor:
    """A randomly perturbed copy of embeddings; every row keeps its norm (unit rows stay unit).

    Gaussian noise of expected norm ``noise`` times the row's norm is added, a fraction
    ``dropout`` of the coordinates is zeroed (inverted scaling), and each row is scaled
    back to its original norm.

    Examples
    --------
    >>> import torch
    >>> x = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    >>> view = embedding_view(x, noise=0.2, dropout=0.1, generator=torch.Generator())
    >>> torch.allclose(view.norm(dim=1), torch.ones(4))
    True
    """
    norm = x.norm(dim=-1, keepdim=True)
    out = x
    if noise:
        scale = norm * (noise / x.shape[-1] ** 0.5)
        out = out + scale * torch.randn(x.shape, generator=generator).to(x.device)
    if dropout:
        keep = torch.rand(x.shape, generator=generator).to(x.device) >= dropout
        out = out * keep / (1.0 - dropout)
    return F.normalize(out, dim=-1) * norm


class DoubleSoftmaxLoss(nn.Module):
    """SPICE-Self's criterion: mean over heads of each head's double-softmax cross-entropy.

    Takes the heads' logits ``(n_heads, batch, K)`` and the labels ``(batch, n_heads)``
    (head ``h``'s labels in column ``h``; ``IGNORE`` entries do not count).

    Examples
    --------
    >>> import math, torch
    >>> loss = DoubleSoftmaxLoss()(torch.zeros(2, 4, 10), torch.zeros(4, 2).long())
    >>> round(loss.item(), 4) == round(math.log(10), 4)
    True
    """

    def __init__(self, double_softmax: bool = True):
        super().__init__()
        self.double_softmax = double_softmax

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = double_softmax_cross_entropy(logits, target.T, double_softmax=self.double_softmax)
        return losses.mean()


class FixMatchLoss(nn.Module):
    """SPICE-Semi's criterion: FixMatch on one batch of labelled, weak and strong views.

    The logits ``(n_labelled + 2 * n_unlabelled, K)`` hold the labelled samples' weak
    views, then the unlabelled samples' weak views, then their strong views; ``target``
    holds the ``n_labelled`` labels (see
    :func:`~skaudiocluster.cluster._spice_labels.fixmatch_loss`).

    Examples
    --------
    >>> import torch
    >>> loss = FixMatchLoss(threshold=0.95)(torch.zeros(6, 3), torch.tensor([0, 1]))
    >>> round(loss.item(), 4)  # log(3): the unlabelled views are below the threshold
    1.0986
    """

    def __init__(self, threshold: float = 0.95, unlabelled_weight: float = 1.0):
        super().__init__()
        self.threshold = threshold
        self.unlabelled_weight = unlabelled_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_labelled = len(target)
        weak, strong = logits[n_labelled:].chunk(2)
        return fixmatch_loss(
            logits[:n_labelled],
            target,
            weak,
            strong,
            threshold=self.threshold,
            unlabelled_weight=self.unlabelled_weight,
        )


# --- SPICE-Self ----------------------------------------------------------------------------


def prototype_batches_per_epoch(
    n_samples: int, n_clusters: int, *, labelling_size: int, batch_size: int, n_repeats: int
) -> int:
    """Training steps of one SPICE-Self epoch (what :class:`PrototypeBatches` yields).

    Examples
    --------
    >>> prototype_batches_per_epoch(1000, 4, labelling_size=500, batch_size=128, n_repeats=2)
    16
    """
    big = min(labelling_size, n_samples)
    n_select = max(1, min(big, big // n_clusters))
    return n_samples // big * n_repeats * math.ceil(n_clusters * n_select / batch_size)


class PrototypeBatches:
    """SPICE-Self's training batches for one epoch, labelled by the current heads.

    Shuffled labelling chunks of ``labelling_size`` samples are scored by every head of
    ``module`` on weak views; each head's prototype pseudo-labels are then replayed
    ``n_repeats`` times in shuffled mini-batches of strong views. Yields ``(x, y)``
    with ``x`` of shape ``(batch, n_heads, D)`` (head ``h`` trains on ``x[:, h]``) and
    ``y`` of shape ``(batch, n_heads)``; the batch axis comes first so that skorch
    counts samples, not heads.

    Parameters
    ----------
    features : tensor of shape (n_samples, D)
        Clean preprocessed embeddings (CPU).
    module : nn.Module
        The heads being trained, ``(batch, D) -> (n_heads, batch, K)`` logits.
    device : torch.device
        Where ``module`` lives.
    labelling_size, batch_size, n_repeats : int
    center_ratio : float
    weak_view, strong_view : dict
        ``noise`` and ``dropout`` of :func:`embedding_view`.
    generator : torch.Generator
        Draws the shuffles and the views.
    """

    def __init__(
        self,
        features: torch.Tensor,
        *,
        module: nn.Module,
        device: torch.device,
        labelling_size: int,
        batch_size: int,
        n_repeats: int,
        center_ratio: float,
        weak_view: dict,
        strong_view: dict,
        generator: torch.Generator,
    ):
        self.features = features
        self.module = module
        self.device = device
        self.labelling_size = labelling_size
        self.batch_size = batch_size
        self.n_repeats = n_repeats
        self.center_ratio = center_ratio
        self.weak_view = weak_view
        self.strong_view = strong_view
        self.generator = generator

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        features, gen = self.features, self.generator
        n_samples = len(features)
        big = min(self.labelling_size, n_samples)
        order = torch.randperm(n_samples, generator=gen)
        for start in range(0, n_samples - big + 1, big):
            clean = features[order[start : start + big]]
            weak = embedding_view(clean, **self.weak_view, generator=gen)
            with torch.no_grad():
                self.module.eval()
                proba = self.module(weak.to(self.device)).softmax(dim=-1).cpu()
            selected = select_prototype_samples(
                proba, clean, center_ratio=self.center_ratio, select_ratio=1.0
            )
            indices, labels = flatten_selection(selected)  # (H, L)
            n_heads, length = indices.shape
            for _ in range(self.n_repeats):
                shuffle = torch.argsort(torch.rand(n_heads, length, generator=gen), dim=1)
                for low in range(0, length, self.batch_size):
                    cols = shuffle[:, low : low + self.batch_size]
                    x = embedding_view(
                        clean[indices.gather(1, cols)], **self.strong_view, generator=gen
                    )
                    yield x.transpose(0, 1), labels.gather(1, cols).T


class SPICESelfNet(TrainingNet):
    """skorch net training SPICE-Self's cluster heads on prototype pseudo-labels.

    ``fit(features)`` takes the preprocessed embeddings (no ``y``: the labels are made
    by the heads during training); the criterion is :class:`DoubleSoftmaxLoss`.

    Parameters
    ----------
    labelling_size, n_repeats : int
    center_ratio : float
    weak_view, strong_view : dict
        ``noise`` and ``dropout`` of :func:`embedding_view`.
    seed : int
        Seeds the batches and views: one generator per fit, drawn on across epochs.
    """

    def __init__(
        self,
        *args,
        labelling_size: int = 5000,
        n_repeats: int = 8,
        center_ratio: float = 0.5,
        weak_view: dict | None = None,
        strong_view: dict | None = None,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.labelling_size = labelling_size
        self.n_repeats = n_repeats
        self.center_ratio = center_ratio
        self.weak_view = weak_view
        self.strong_view = strong_view
        self.seed = seed

    def get_iterator(self, dataset, training=False):
        if not training:
            return super().get_iterator(dataset, training=training)
        return PrototypeBatches(
            torch.as_tensor(dataset.X),
            module=self.module_,
            device=self.device,
            labelling_size=self.labelling_size,
            batch_size=self.batch_size,
            n_repeats=self.n_repeats,
            center_ratio=self.center_ratio,
            weak_view=self.weak_view,
            strong_view=self.strong_view,
            generator=self.generator_,
        )

    def initialize(self):
        super().initialize()
        self.generator_ = make_generator(self.seed)
        return self

    def infer(self, x, **fit_params):
        # Batches arrive as (batch, n_heads, D): head h trains on its own samples.
        return self.module_(x.to(self.device).transpose(0, 1))


def head_losses(
    module: nn.Module,
    features: torch.Tensor,
    *,
    center_ratio: float,
    double_softmax: bool,
    device: torch.device,
) -> np.ndarray:
    """Each head's loss on its own prototype pseudo-labels of the whole set (clean views).

    SPICE-Self keeps the head with the lowest value: a label-free selection rule.
    """
    module.eval()
    logits = batched_forward(module, features, device=device, dim=1)  # (H, N, K)
    selected = select_prototype_samples(logits.softmax(dim=-1), features, center_ratio=center_ratio)
    indices, labels = flatten_selection(selected)
    own = logits.gather(1, indices.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    losses = double_softmax_cross_entropy(own, labels, double_softmax=double_softmax)
    return losses.numpy()


class RecordHeadLosses(Callback):
    """Record every head's label-free selection loss (:func:`head_losses`) after each epoch.

    The values go to the history as ``head_losses`` (one list per epoch). As in SPICE's
    official code, the best (epoch, head) pair over the whole run is remembered: after
    fitting, ``best_loss_``, ``best_epoch_`` (1-based), ``best_head_`` and
    ``best_state_`` (a copy of the module's state dict at that epoch) describe the head
    with the lowest loss seen.
    """

    def __init__(self, *, center_ratio: float = 0.5, double_softmax: bool = True):
        self.center_ratio = center_ratio
        self.double_softmax = double_softmax

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.best_loss_ = math.inf
        self.best_epoch_ = self.best_head_ = None
        self.best_state_ = None

    def on_epoch_end(self, net, dataset_train=None, **kwargs):
        losses = head_losses(
            net.module_,
            torch.as_tensor(dataset_train.X),
            center_ratio=self.center_ratio,
            double_softmax=self.double_softmax,
            device=net.device,
        )
        net.history.record("head_losses", losses.tolist())
        head = int(np.argmin(losses))
        if losses[head] < self.best_loss_:
            self.best_loss_ = float(losses[head])
            self.best_epoch_, self.best_head_ = len(net.history), head
            self.best_state_ = {
                name: value.detach().clone() for name, value in net.module_.state_dict().items()
            }


# --- SPICE-Semi ----------------------------------------------------------------------------


def fixmatch_batches_per_epoch(n_samples: int, *, batch_size: int, unlabelled_ratio: int) -> int:
    """Training steps of one FixMatch epoch (a pass over all samples as unlabelled data).

    Examples
    --------
    >>> fixmatch_batches_per_epoch(1000, batch_size=64, unlabelled_ratio=7)
    3
    """
    return math.ceil(n_samples / (batch_size * unlabelled_ratio))


class EmbeddingViews:
    """FixMatch inputs from embedding rows: weak labelled, weak and strong unlabelled views.

    ``views(data, labelled, unlabelled, generator)`` stacks, in that order, the weak
    views of ``data[labelled]`` and the weak and strong views of ``data[unlabelled]``
    (:func:`embedding_view`) into one ``(n_labelled + 2 * n_unlabelled, D)`` tensor.

    Parameters
    ----------
    weak, strong : dict
        ``noise`` and ``dropout`` of :func:`embedding_view`.

    Examples
    --------
    >>> import numpy as np, torch
    >>> views = EmbeddingViews({"noise": 0.2, "dropout": 0.1}, {"noise": 0.6, "dropout": 0.4})
    >>> data = np.eye(5, dtype=np.float32)
    >>> views(data, torch.tensor([0, 1]), torch.tensor([2, 3, 4]), torch.Generator()).shape
    torch.Size([8, 5])
    """

    def __init__(self, weak: dict, strong: dict):
        self.weak = weak
        self.strong = strong

    def __call__(self, data, labelled, unlabelled, generator) -> torch.Tensor:
        data = torch.as_tensor(data)
        groups = [(labelled, self.weak), (unlabelled, self.weak), (unlabelled, self.strong)]
        return torch.cat(
            [embedding_view(data[index], **view, generator=generator) for index, view in groups]
        )


class FixMatchBatches:
    """FixMatch batches for one epoch: all samples unlabelled, the labelled ones also labelled.

    Each step takes ``unlabelled_ratio * batch_size`` unlabelled samples (shuffled rounds
    over the whole set) and ``batch_size`` labelled ones, drawn evenly over the
    clusters of the targets (slot ``j`` of a batch goes to the ``j``-th cluster of a
    shuffled cycle; within a cluster, its samples come in shuffled rounds), and yields
    ``(views(data, labelled, unlabelled, generator), labels)``. Balanced sampling
    replaces SPICE's balancing by discarding reliable samples.

    Parameters
    ----------
    data : array, tensor or sequence
        What ``views`` indexes (embeddings, clips).
    targets : array of shape (n_samples,), int
        Pseudo-labels, ``IGNORE`` for samples used as unlabelled data only.
    views : callable
        See :class:`EmbeddingViews`.
    batch_size, unlabelled_ratio : int
    generator : torch.Generator
    n_steps : int or None, default=None
        Steps of the epoch; ``None`` is one pass over the samples as unlabelled data
        (:func:`fixmatch_batches_per_epoch`).
    """

    def __init__(
        self,
        data,
        targets,
        *,
        views: Callable,
        batch_size: int,
        unlabelled_ratio: int,
        generator: torch.Generator,
        n_steps: int | None = None,
    ):
        self.data = data
        self.targets = targets
        self.views = views
        self.batch_size = batch_size
        self.unlabelled_ratio = unlabelled_ratio
        self.generator = generator
        self.n_steps = n_steps

    def __iter__(self):
        gen = self.generator
        targets = torch.as_tensor(np.asarray(self.targets), dtype=torch.long)
        if not (targets != IGNORE).any():
            raise ValueError("FixMatch needs at least one labelled sample (target != IGNORE)")
        n_samples = len(targets)
        unlabelled_batch = min(self.batch_size * self.unlabelled_ratio, n_samples)
        n_steps = self.n_steps
        if n_steps is None:
            n_steps = math.ceil(n_samples / unlabelled_batch)
        unlabelled = _cycling_batches(n_samples, unlabelled_batch, gen)
        labelled = _balanced_batches(targets, self.batch_size, gen)
        for _ in range(n_steps):
            picked = next(labelled)
            inputs = self.views(self.data, picked, next(unlabelled), gen)
            yield inputs, targets[picked]


def _cycling_batches(n_items: int, batch_size: int, generator: torch.Generator):
    """Endless batches of indices below ``n_items``, each item once per shuffled round."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n_items, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def _balanced_batches(targets: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless batches of labelled indices (``targets != IGNORE``), even over the clusters.

    The clusters come in shuffled cycles, one per slot, so every cluster fills
    ``batch_size / n_clusters`` slots of a batch on average whatever its size; each
    cluster's samples come in their own shuffled rounds.
    """
    clusters = torch.unique(targets[targets != IGNORE])
    members = [torch.nonzero(targets == c).flatten() for c in clusters]
    streams = [_cycling_batches(len(m), 1, generator) for m in members]
    slots = _cycling_batches(len(clusters), batch_size, generator)
    while True:
        yield torch.cat([members[c][next(streams[c])] for c in next(slots).tolist()])


class FixMatchNet(TrainingNet):
    """skorch net for SPICE-Semi: reliable pseudo-labels plus FixMatch consistency.

    ``fit(X, y)`` takes the data and the pseudo-labels (``IGNORE`` where unreliable),
    or a Dataset with ``X`` and ``y`` attributes; the criterion is
    :class:`FixMatchLoss`. One forward pass covers all views of a step, as in
    FixMatch, so batch statistics see them all. The module maps a batch (a tensor, or
    a tuple of tensors passed as positional arguments) to ``(1, batch, K)`` logits.

    Parameters
    ----------
    views : callable
        Makes a step's input from ``(data, labelled, unlabelled, generator)``
        (:class:`EmbeddingViews`, :class:`~skaudiocluster.cluster._spice_joint.ClipViews`).
    unlabelled_ratio : int
        Unlabelled samples per labelled one in each step.
    steps_per_epoch : int or None, default=None
        Optimiser steps per epoch; ``None`` is one pass over the samples as unlabelled data.
    ema_decay : float, default=0.0
        When positive, ``ema_module_`` holds an exponential moving average of the
        module's parameters (:func:`~skaudiocluster._training.ema_update_` after every
        step; the heads have no buffers), FixMatch's
        evaluation model. ``0`` keeps no average (``ema_module_`` is ``None``).
    seed : int
        Seeds the batches and views: one generator per fit, drawn on across epochs.
    """

    def __init__(
        self,
        *args,
        views: Callable | None = None,
        unlabelled_ratio: int = 7,
        steps_per_epoch: int | None = None,
        ema_decay: float = 0.0,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.views = views
        self.unlabelled_ratio = unlabelled_ratio
        self.steps_per_epoch = steps_per_epoch
        self.ema_decay = ema_decay
        self.seed = seed

    def initialize(self):
        super().initialize()
        self.generator_ = make_generator(self.seed)
        return self

    def initialize_module(self):
        super().initialize_module()
        self.ema_module_ = None
        if self.ema_decay:
            self.ema_module_ = copy.deepcopy(self.module_).eval().requires_grad_(False)
        return self

    def get_iterator(self, dataset, training=False):
        if not training:
            return super().get_iterator(dataset, training=training)
        return FixMatchBatches(
            dataset.X,
            dataset.y,
            views=self.views,
            batch_size=self.batch_size,
            unlabelled_ratio=self.unlabelled_ratio,
            generator=self.generator_,
            n_steps=self.steps_per_epoch,
        )

    def train_step(self, batch, **fit_params):
        step = super().train_step(batch, **fit_params)
        if self.ema_module_ is not None:
            ema_update_(self.ema_module_, self.module_, self.ema_decay)
        return step

    def infer(self, x, **fit_params):
        x = to_tensor(x, device=self.device)
        out = self.module_(*x) if isinstance(x, (tuple, list)) else self.module_(x)
        return out[0]
