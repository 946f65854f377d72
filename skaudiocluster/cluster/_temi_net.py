"""The skorch side of TEMI: neighbour pairs, student/teacher module, criterion, net, callbacks.

:class:`~skaudiocluster.cluster.temi.TEMIClusterer` builds a :class:`TEMINet`
around a :class:`TEMIModule` and fits it on :class:`NeighborPairs`. One step
computes student and teacher logits of both views, moves the EMA cluster prior
of each head, and backpropagates the mean over heads of the per-head loss; the
per-head losses leave the step in its result dict, and :class:`HeadLossHistory`
records their epoch means. The teacher follows the student through the shared
:class:`~skaudiocluster._training.EMA` callback, and the last layer is frozen
during the first epoch with skorch's :class:`~skorch.callbacks.Freezer` /
:class:`~skorch.callbacks.Unfreezer`.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import torch
from skorch.callbacks import Callback, Freezer, LRScheduler, Unfreezer
from torch import nn
from torch.nn import functional as F

from skaudiocluster._torch import make_generator, to_numpy
from skaudiocluster._training import (
    EMA,
    StopOnNonFiniteLoss,
    TrainingNet,
    progress_callbacks,
)
from skaudiocluster.cluster._base import training_epochs
from skaudiocluster.cluster._heads import MultiHead
from skaudiocluster.cluster._temi_loss import temi_loss, updated_prior

# DINO's trick kept by TEMI: the last layer gets no update during the first epoch.
FREEZE_LAST_LAYER_EPOCHS = 1
# Learnable parameters of the student's last layer, as TEMINet names them.
LAST_LAYER = "student.last_layer.*"
# The learning rate decays along a cosine to this fraction of its peak.
FINAL_LR_RATIO = 0.1
# max_steps="auto": at least this many optimizer steps, and at least this many epochs.
AUTO_STEPS = 4000
AUTO_EPOCHS = 20


class NeighborPairs(torch.utils.data.Dataset):
    """Pairs ``(x_i, x_j)`` with ``j`` drawn uniformly from the neighbours of ``i``.

    The partner is re-drawn every time ``i`` is visited. ``__getitems__`` serves a
    whole batch at once (the :class:`~torch.utils.data.DataLoader` uses it).

    Parameters
    ----------
    features : tensor of shape (n_samples, n_features)
    neighbors : tensor of shape (n_samples, n_neighbors), int64
        Neighbour table without the anchors themselves.
    seed : int
        Seed of the generator drawing the partners.

    Examples
    --------
    >>> import torch
    >>> pairs = NeighborPairs(torch.eye(3), torch.tensor([[1], [2], [0]]), seed=0)
    >>> anchors, partners = pairs.__getitems__([0, 2])
    >>> partners
    tensor([[0., 1., 0.],
            [1., 0., 0.]])
    """

    def __init__(self, features: torch.Tensor, neighbors: torch.Tensor, seed: int):
        self.features = features
        self.neighbors = neighbors
        self.generator = make_generator(seed)

    def __len__(self) -> int:
        return len(self.features)

    def partners(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices of one random neighbour of each anchor in ``indices``."""
        choice = torch.randint(self.neighbors.shape[1], (len(indices),), generator=self.generator)
        return self.neighbors[indices, choice]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return self.features[indices], self.features[self.partners(indices)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        anchor, partner = self.__getitems__([index])
        return anchor[0], partner[0]


def keep_batch(batch):
    """``collate_fn`` for :class:`NeighborPairs`, whose ``__getitems__`` already batches."""
    return batch


class TEMIModule(nn.Module):
    """Student heads, their EMA teacher copy and the EMA cluster prior of each head.

    Parameters
    ----------
    heads : MultiHead
        The student heads; the teacher starts as an exact copy of them.

    Examples
    --------
    >>> import torch
    >>> module = TEMIModule(MultiHead(8, n_clusters=3, n_heads=2, hidden_dims=(16,)))
    >>> module(torch.randn(4, 8)).shape
    torch.Size([2, 4, 3])
    """

    def __init__(self, heads: MultiHead):
        super().__init__()
        self.student = heads
        self.teacher = copy.deepcopy(heads).requires_grad_(False)
        prior = torch.full((heads.n_heads, heads.n_clusters), 1.0 / heads.n_clusters)
        self.register_buffer("prior", prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``(n_heads, batch, n_clusters)``: what prediction uses."""
        return self.teacher(x)

    def teacher_probs(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """Teacher probabilities ``(n_heads, batch, n_clusters)`` at ``temperature``."""
        return F.softmax(self(x) / temperature, dim=-1)


class TEMICriterion(nn.Module):
    """Per-head TEMI loss (:func:`~skaudiocluster.cluster._temi_loss.temi_loss`) as a module.

    Parameters
    ----------
    beta : float, default=0.6
    student_temperature : float, default=0.1
    teacher_temperature : float, default=0.1
    prior_momentum : float, default=0.9

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(2, 5, 3)
    >>> TEMICriterion()(logits, logits, logits, logits, torch.full((2, 3), 1 / 3))
    tensor([-0.2930, -0.2930])
    """

    def __init__(
        self,
        beta: float = 0.6,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.1,
        prior_momentum: float = 0.9,
    ):
        super().__init__()
        self.beta = beta
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.prior_momentum = prior_momentum

    def updated_prior(
        self, prior: torch.Tensor, teacher_a: torch.Tensor, teacher_b: torch.Tensor
    ) -> torch.Tensor:
        """The EMA prior after a batch whose teacher logits are ``teacher_a``, ``teacher_b``."""
        return updated_prior(
            prior,
            F.softmax(teacher_a / self.teacher_temperature, dim=-1),
            F.softmax(teacher_b / self.teacher_temperature, dim=-1),
            self.prior_momentum,
        )

    def forward(self, student_a, student_b, teacher_a, teacher_b, prior) -> torch.Tensor:
        return temi_loss(
            student_a,
            student_b,
            teacher_a,
            teacher_b,
            prior,
            beta=self.beta,
            student_temperature=self.student_temperature,
            teacher_temperature=self.teacher_temperature,
        )


class TEMINet(TrainingNet):
    """skorch net training :class:`TEMIModule` on batches of :class:`NeighborPairs`.

    One training step: student and teacher logits of both views, the EMA prior
    update (in the module's ``prior`` buffer), the per-head loss, backward on
    its mean over heads. The step returns the per-head losses as
    ``head_losses`` (skorch hands them to the callbacks' ``on_batch_end``).
    Only student parameters are optimised; the teacher follows them through an
    :class:`~skaudiocluster._training.EMA` callback.
    """

    def get_all_learnable_params(self):
        yield from self.module_.student.named_parameters(prefix="student")

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        anchors, partners = (view.to(self.device) for view in batch)
        both = torch.cat([anchors, partners])
        student = self.module_.student(both)
        with torch.no_grad():
            teacher = self.module_.teacher(both)
        y_pred = (*student.chunk(2, dim=1), *teacher.chunk(2, dim=1))
        prior = self.module_.prior
        with torch.no_grad():
            prior.copy_(self.criterion_.updated_prior(prior, *y_pred[2:]))
        head_losses = self.head_losses(y_pred)
        loss = head_losses.mean()
        loss.backward()
        return {"loss": loss, "y_pred": student, "head_losses": head_losses.detach()}

    def head_losses(self, y_pred) -> torch.Tensor:
        """Loss of each head, shape ``(n_heads,)``, for ``y_pred = (s_a, s_b, t_a, t_b)``."""
        return self.criterion_(*y_pred, self.module_.prior)

    def get_loss(self, y_pred, y_true=None, X=None, training=False):
        return self.head_losses(y_pred).mean()


class HeadLossHistory(Callback):
    """Record each head's epoch-mean training loss as ``head_losses`` in the epoch history.

    It collects the ``head_losses`` that :meth:`TEMINet.train_step_single`
    returns for every batch of the epoch.
    """

    def on_epoch_begin(self, net, **kwargs):
        self.batch_losses_ = []

    def on_batch_end(self, net, training=False, head_losses=None, **kwargs):
        if training and head_losses is not None:
            self.batch_losses_.append(to_numpy(head_losses).tolist())

    def on_epoch_end(self, net, **kwargs):
        losses = np.asarray(self.batch_losses_, dtype=np.float64)
        net.history.record("head_losses", losses.mean(axis=0).tolist())


def student(net: TEMINet) -> nn.Module:
    """The heads a :class:`TEMINet` trains (the EMA's online network)."""
    return net.module_.student


def teacher(net: TEMINet) -> nn.Module:
    """The EMA copy of the student heads (the EMA's target network)."""
    return net.module_.teacher


def training_callbacks(
    *,
    ema_decay: float,
    total_steps: int,
    warmup_steps: int,
    name: str,
    verbose: int = 0,
    batches_per_epoch: int | str = "auto",
) -> list[tuple[str, Callback]]:
    """The callbacks of a TEMI training run, for ``TEMINet(callbacks=...)``.

    Teacher EMA (cosine decay from ``ema_decay`` to 1 over
    ``total_steps``), last layer frozen for the first
    :data:`FREEZE_LAST_LAYER_EPOCHS` epochs, per-batch learning-rate schedule
    (:func:`warmup_cosine`), per-head loss history, non-finite loss guard and,
    when ``verbose``, a progress bar.

    Examples
    --------
    >>> callbacks = training_callbacks(ema_decay=0.996, total_steps=100, warmup_steps=10,
    ...                                name="TEMIClusterer")
    >>> [key for key, _ in callbacks][:3]
    ['teacher_ema', 'freeze_last_layer', 'unfreeze_last_layer']
    """
    schedule = partial(
        warmup_cosine,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        final_ratio=FINAL_LR_RATIO,
    )
    return [
        (
            "teacher_ema",
            EMA(student, teacher, ema_decay, total_steps=total_steps, final_decay=1.0),
        ),
        # skorch counts epochs from 1 and applies these at the start of epoch ``at``.
        ("freeze_last_layer", Freezer(LAST_LAYER, at=1)),
        ("unfreeze_last_layer", Unfreezer(LAST_LAYER, at=FREEZE_LAST_LAYER_EPOCHS + 1)),
        (
            "lr_schedule",
            LRScheduler(torch.optim.lr_scheduler.LambdaLR, lr_lambda=schedule, step_every="batch"),
        ),
        ("head_losses", HeadLossHistory()),
        ("non_finite_loss", StopOnNonFiniteLoss(name)),
        *progress_callbacks(verbose, batches_per_epoch, desc=name),
    ]


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``final_ratio``.

    Examples
    --------
    >>> warmup_cosine(0, warmup_steps=10, total_steps=100, final_ratio=0.1)
    0.1
    >>> warmup_cosine(100, warmup_steps=10, total_steps=100, final_ratio=0.1)
    0.1
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return final_ratio + (1 - final_ratio) * (math.cos(math.pi * progress) + 1) / 2


def training_budget(
    n_samples: int, batch_size: int | str, max_steps: int | str | None, max_epochs: int | None
) -> tuple[int, int, int]:
    """Mini-batch size, steps per epoch and epochs of a TEMI fit.

    ``batch_size="auto"`` is ``min(256, max(32, n_samples // 8))``, and a batch
    is never larger than ``n_samples``. An epoch is ``n_samples // batch_size``
    steps (the last partial batch is dropped). The epochs follow
    :func:`~skaudiocluster.cluster._base.training_epochs`, with ``max_steps="auto"``
    meaning ``max(AUTO_STEPS, AUTO_EPOCHS * steps_per_epoch)``: a small collection
    is seen for many epochs until it has had 4,000 optimizer steps, while a large
    one still gets 20 passes.

    Examples
    --------
    >>> training_budget(3000, "auto", "auto", None), training_budget(100_000, 256, "auto", None)
    ((256, 11, 364), (256, 390, 20))
    >>> training_budget(100, "auto", 4000, 100)
    (32, 3, 100)
    """
    if batch_size == "auto":
        batch_size = min(256, max(32, n_samples // 8))
    batch_size = min(batch_size, n_samples)
    steps_per_epoch = n_samples // batch_size
    if max_steps == "auto":
        max_steps = max(AUTO_STEPS, AUTO_EPOCHS * steps_per_epoch)
    return batch_size, steps_per_epoch, training_epochs(max_steps, max_epochs, steps_per_epoch)


def make_net(est, n_features: int, seed: int, n_epochs: int, steps_per_epoch: int) -> TEMINet:
    """The :class:`TEMINet` a fitting :class:`~skaudiocluster.cluster.TEMIClusterer` trains
    for ``n_epochs`` epochs of ``steps_per_epoch`` steps, its batches shuffled from ``seed``.

    Reads ``est``'s parameters and the sizes its ``fit`` has set (``n_head_clusters_``,
    ``batch_size_``, ``device_``).
    """
    total_steps = n_epochs * steps_per_epoch
    heads = MultiHead(
        n_features,
        est.n_head_clusters_,
        est.n_heads,
        tuple(est.hidden_dims),
        est.bottleneck_dim,
        cosine_last_layer=True,
    )
    callbacks = training_callbacks(
        ema_decay=est.ema_decay,
        total_steps=total_steps,
        warmup_steps=max(int(est.warmup * total_steps), 1),
        name=type(est).__name__,
        verbose=est.verbose,
        batches_per_epoch=steps_per_epoch,
    )
    no_decay = {"weight_decay": 0.0}
    return TEMINet(
        TEMIModule(heads),
        criterion=TEMICriterion,
        criterion__beta=est.beta,
        criterion__student_temperature=est.student_temperature,
        criterion__teacher_temperature=est.teacher_temperature,
        criterion__prior_momentum=est.prior_momentum,
        optimizer=torch.optim.AdamW,
        optimizer__weight_decay=est.weight_decay,
        optimizer__param_groups=[("*bias", no_decay), ("*magnitude", no_decay)],
        lr=est.lr,
        max_epochs=n_epochs,
        batch_size=est.batch_size_,
        iterator_train__shuffle=True,
        iterator_train__drop_last=True,
        iterator_train__collate_fn=keep_batch,
        iterator_train__generator=make_generator(seed),
        train_split=None,
        callbacks=callbacks,
        device=est.device_,
        verbose=0,
    )
