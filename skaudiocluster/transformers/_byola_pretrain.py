"""BYOL-A self-supervised training of the ``AudioNTT2020`` encoder, as a skorch ``NeuralNet``.

Two augmented views of each clip's normalised log-mel go through an online network
(encoder, projector, predictor) and a target network (encoder, projector), whose
weights are an exponential moving average of the online ones; the loss pulls the
online prediction of one view towards the target projection of the other. The
augmentations are BYOL-A's, in the log-mel domain: mixup with a memory of past
inputs, random resize crop and random linear fader. Defaults follow the official
``config.yaml`` (96-frame crops, projector 4096 -> 256, EMA 0.99, Adam 3e-4).
"""

from __future__ import annotations

import copy
import os
from collections import deque

import numpy as np
import torch
from skorch.callbacks import Checkpoint, LRScheduler
from skorch.history import History
from torch import nn
from torch.nn import functional as F

from skaudiocluster._torch import make_generator
from skaudiocluster._training import (
    EMA,
    StopOnNonFiniteLoss,
    TrainingNet,
    epoch_history,
    progress_callbacks,
)
from skaudiocluster.transformers._byola_net import LOG_EPS, AudioNTT2020

TRAIN_FRAMES = 96  # unit_sec 0.95 of the official training: the "64x96" of the weight names
PROJECTION_HIDDEN, PROJECTION_SIZE = 4096, 256
MIXUP_RATIO, MIXUP_MEMORY = 0.4, 2048
VIRTUAL_CROP_SCALE, FREQ_SCALE, TIME_SCALE = (1.0, 1.5), (0.6, 1.5), (0.6, 1.5)
FADER_GAIN = 1.0


def mlp(in_features: int) -> nn.Sequential:
    """BYOL projector / predictor: Linear, BatchNorm1d, ReLU, Linear."""
    return nn.Sequential(
        nn.Linear(in_features, PROJECTION_HIDDEN),
        nn.BatchNorm1d(PROJECTION_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(PROJECTION_HIDDEN, PROJECTION_SIZE),
    )


class BYOLBranch(nn.Module):
    """Encoder, projector and (online branch only) predictor over a batch of view pairs."""

    def __init__(self, encoder: AudioNTT2020, predictor: bool = True):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(encoder.fc[3].out_features)
        self.predictor = mlp(PROJECTION_SIZE) if predictor else None

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """(B, 2, 1, F, T) view pairs -> (B, 2, 256); both views share one batch-norm batch."""
        batch = views.shape[0]
        out = self.projector(self.encoder(views.flatten(0, 1)))
        if self.predictor is not None:
            out = self.predictor(out)
        return out.unflatten(0, (batch, 2))


class BYOLLoss(nn.Module):
    """Symmetrised BYOL loss: ``2 - 2 cos(p(v1), z(v2)) + 2 - 2 cos(p(v2), z(v1))``, batch mean."""

    def forward(self, online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cosine = F.cosine_similarity(online, target.flip(1).detach(), dim=-1)
        return (2 - 2 * cosine).sum(dim=1).mean()


class BYOLANet(TrainingNet):
    """skorch net whose ``module_`` is the online branch and ``target_`` its moving average.

    ``module`` is the :class:`BYOLBranch` to train; the net builds ``target_``, a
    copy without predictor and without gradients, which the ``EMA`` callback
    updates. ``X`` is a :class:`BYOLAViews` dataset; batches are view pairs,
    already standardised by its ``collate``.
    """

    def initialize_module(self):
        super().initialize_module()
        target = copy.deepcopy(self.module_)
        target.predictor = None
        self.target_ = target.requires_grad_(False)
        return self

    def get_loss(self, y_pred, y_true, X=None, training=False):
        with torch.no_grad():
            target = self.target_(X.to(self.device))
        return self.criterion_(y_pred, target)


def _online(net: BYOLANet) -> nn.Module:
    return net.module_


def _target(net: BYOLANet) -> nn.Module:
    return net.target_


class BYOLAViews(torch.utils.data.Dataset):
    """Pairs of independently augmented ``TRAIN_FRAMES``-frame crops of normalised log-mels.

    Parameters
    ----------
    log_mels : list of Tensor (64, T_i)
        Normalised log-mel of each clip (CPU).
    floor : float
        The normalised value of silence (``log(eps)``), used to pad short clips.
    seed : int
        Seeds crops and augmentations; with ``num_workers=0`` a run repeats exactly.
    """

    def __init__(self, log_mels: list[torch.Tensor], floor: float, seed: int):
        self.log_mels = log_mels
        self.floor = floor
        self.rng = np.random.default_rng(seed)
        self.memory: deque[torch.Tensor] = deque(maxlen=MIXUP_MEMORY)

    def __len__(self) -> int:
        return len(self.log_mels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self._random_crop(self.log_mels[index]).unsqueeze(0)
        views = torch.stack([self._augment(x), self._augment(x)])
        self.memory.append(x)
        return views, 0

    @staticmethod
    def collate(items) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack view pairs and standardise the batch (BYOL-A's post-normalisation)."""
        views = torch.stack([views for views, _ in items])
        views = (views - views.mean()) / views.std().clamp_min(1e-6)
        return views, torch.zeros(len(items))

    def _random_crop(self, lms: torch.Tensor) -> torch.Tensor:
        frames = lms.shape[-1]
        if frames >= TRAIN_FRAMES:
            start = int(self.rng.integers(0, frames - TRAIN_FRAMES + 1))
            return lms[:, start : start + TRAIN_FRAMES]
        left = int(self.rng.integers(0, TRAIN_FRAMES - frames + 1))
        return F.pad(lms, (left, TRAIN_FRAMES - frames - left), value=self.floor)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return random_linear_fader(random_resize_crop(self._mixup(x), self.rng), self.rng)

    def _mixup(self, x: torch.Tensor) -> torch.Tensor:
        """Mix with a remembered input in the linear (exp) domain, weight ~ U(0, 0.4)."""
        if not self.memory:
            return x
        other = self.memory[int(self.rng.integers(len(self.memory)))]
        weight = MIXUP_RATIO * float(self.rng.random())
        return torch.log((1 - weight) * x.exp() + weight * other.exp() + LOG_EPS)


def random_resize_crop(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Crop a random box of a zero-padded canvas (1x freq, 1.5x time) and resize it back.

    Box height and width are the input's times U(0.6, 1.5), at most the canvas;
    the resize is bicubic, so pitch and tempo both stretch a little.
    """
    _, mels, frames = x.shape
    canvas_h, canvas_w = int(VIRTUAL_CROP_SCALE[0] * mels), int(VIRTUAL_CROP_SCALE[1] * frames)
    canvas = x.new_zeros((1, canvas_h, canvas_w))
    top, left = (canvas_h - mels) // 2, (canvas_w - frames) // 2
    canvas[:, top : top + mels, left : left + frames] = x
    height = int(np.clip(round(mels * rng.uniform(*FREQ_SCALE)), 1, canvas_h))
    width = int(np.clip(round(frames * rng.uniform(*TIME_SCALE)), 1, canvas_w))
    i = int(rng.integers(0, canvas_h - height + 1))
    j = int(rng.integers(0, canvas_w - width + 1))
    crop = canvas[:, i : i + height, j : j + width].unsqueeze(0)
    return F.interpolate(crop, size=(mels, frames), mode="bicubic", align_corners=True)[0]


def random_linear_fader(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Add a linear gain ramp over time (log domain) with ends drawn from U(-1, 1)."""
    head, tail = FADER_GAIN * (2 * rng.random(2) - 1)
    return x + torch.linspace(float(head), float(tail), x.shape[-1], dtype=x.dtype)


def pretrain(
    encoder: AudioNTT2020,
    log_mels: list[torch.Tensor],
    *,
    floor: float,
    epochs: int,
    batch_size: int,
    lr: float,
    ema_decay: float,
    checkpoint_dir: str | os.PathLike | None,
    device: torch.device,
    seed: int,
    verbose: int,
) -> History:
    """Train ``encoder`` with BYOL-A on ``log_mels``; its weights are replaced when training ends.

    Parameters
    ----------
    encoder : AudioNTT2020
        The encoder to train (its weights are copied into the online and target
        branches, and the trained online weights are loaded back at the end).
    log_mels : list of Tensor (64, T_i)
        Normalised log-mel of each clip, on the CPU.
    floor : float
        The normalised value of silence, ``(log(eps) - mean) / std``, that pads short clips.
    epochs : int
        Passes over the clips; the Adam learning rate is cosine-annealed to 0 over them.
    batch_size : int
        Clips per step (at most ``len(log_mels)``; a last incomplete batch is dropped).
    lr : float
        Adam learning rate.
    ema_decay : float
        Decay of the target branch's moving average.
    checkpoint_dir : str, path or None
        Where skorch's ``Checkpoint`` saves the online branch after every epoch
        (``byola_params.pt``, ``byola_history.json``); ``None`` saves nothing.
    device : torch.device
        Where to train.
    seed : int
        Seeds crops, augmentations and the batch order. Weight initialisation and
        dropout draw from torch's default generator: run this inside
        :func:`skaudiocluster._torch.forked_rng` to repeat and to leave it alone.
    verbose : int
        A progress bar per epoch when positive.

    Returns
    -------
    history : skorch History
        One row per epoch (``epoch``, ``train_loss``, ``dur``).
    """
    callbacks = [
        ("ema", EMA(_online, _target, ema_decay)),
        ("lr_schedule", LRScheduler(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs)),
        ("non_finite_loss", StopOnNonFiniteLoss("BYOLAEmbedder pretraining")),
        *progress_callbacks(verbose),
    ]
    if checkpoint_dir is not None:
        callbacks.append(
            (
                "checkpoint",
                Checkpoint(
                    monitor=None,
                    dirname=os.fspath(checkpoint_dir),
                    f_params="byola_params.pt",
                    f_optimizer=None,
                    f_criterion=None,
                    f_history="byola_history.json",
                ),
            )
        )
    net = BYOLANet(
        BYOLBranch(copy.deepcopy(encoder).train()),
        criterion=BYOLLoss,
        optimizer=torch.optim.Adam,
        lr=lr,
        max_epochs=epochs,
        batch_size=min(batch_size, len(log_mels)),
        iterator_train__shuffle=True,
        iterator_train__drop_last=True,
        iterator_train__collate_fn=BYOLAViews.collate,
        iterator_train__generator=make_generator(seed),
        train_split=None,
        callbacks=callbacks,
        device=device,
        verbose=0,
    )
    net.fit(BYOLAViews(log_mels, floor, seed), y=None)
    encoder.load_state_dict(net.module_.encoder.state_dict())
    return epoch_history([net])
