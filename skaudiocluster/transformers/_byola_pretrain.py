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
from collections import deque

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, Checkpoint, LRScheduler
from torch import nn
from torch.nn import functional as F

from skaudiocluster._torch import make_generator
from skaudiocluster._training import StopOnNonFiniteLoss, progress_callbacks
from skaudiocluster.transformers._byola_net import LOG_EPS, AudioNTT2020

TRAIN_FRAMES = 96  # unit_sec 0.95 of the official training: the "64x96" of the weight names
PROJECTION_HIDDEN, PROJECTION_SIZE = 4096, 256
MIXUP_RATIO, MIXUP_MEMORY = 0.4, 2048
VIRTUAL_CROP_SCALE, FREQ_SCALE, TIME_SCALE = (1.0, 1.5), (0.6, 1.5), (0.6, 1.5)
FADER_GAIN = 1.0


def mlp(in_features: int) -> nn.Sequential:
    """BYOL projector / predictor: Linear, BatchNorm1d, ReLU, Linear."""
    return nn.Sequential(
        nn.Linear(in_features, PROJECTION_HIDDEN), nn.BatchNorm1d(PROJECTION_HIDDEN),
        nn.ReLU(inplace=True), nn.Linear(PROJECTION_HIDDEN, PROJECTION_SIZE),
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


class EMATarget(Callback):
    """After every optimizer step: ``target <- decay * target + (1 - decay) * online``."""

    def __init__(self, decay: float = 0.99):
        self.decay = decay

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if not training:
            return
        online = dict(net.module_.named_parameters())
        with torch.no_grad():
            for name, param in net.target_.named_parameters():
                param.lerp_(online[name], 1.0 - self.decay)


class BYOLANet(NeuralNet):
    """skorch net whose ``module_`` is the online branch and ``target_`` its EMA copy.

    ``module`` is the :class:`BYOLBranch` to train. ``X`` is a :class:`BYOLAViews`
    dataset; batches are view pairs, already batch-normalised by its ``collate``.
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


def pretrain(embedder, clips: list[np.ndarray], *, device: torch.device, seed: int) -> list:
    """Train ``embedder.module_`` in place with BYOL-A on ``clips``; return the epoch history.

    ``embedder`` is a :class:`~skaudiocluster.transformers.byola.BYOLAEmbedder` whose
    ``module_``, ``mean_`` and ``std_`` are set.
    """
    log_mels = [None] * len(clips)
    for index, lms, lengths in embedder._log_mel_batches(clips, torch.device("cpu"), "log-mel"):
        for row, clip_index in enumerate(index):
            log_mels[clip_index] = (lms[row, :, : lengths[row]].clone() - embedder.mean_) / (
                embedder.std_)
    floor = (np.log(LOG_EPS) - embedder.mean_) / embedder.std_
    views = BYOLAViews(log_mels, floor, seed)
    batch_size = min(embedder.pretrain_batch_size, len(clips))
    callbacks = [
        ("ema", EMATarget(embedder.ema_decay)),
        ("lr_schedule", LRScheduler(torch.optim.lr_scheduler.CosineAnnealingLR,
                                    T_max=embedder.pretrain_epochs)),
        ("finite_loss", StopOnNonFiniteLoss("BYOLAEmbedder pretraining")),
        *progress_callbacks(embedder.verbose),
    ]
    if embedder.checkpoint_dir is not None:
        callbacks.append(("checkpoint", Checkpoint(
            monitor=None, dirname=str(embedder.checkpoint_dir), f_params="byola_params.pt",
            f_optimizer=None, f_criterion=None, f_history="byola_history.json",
        )))
    embedder.module_.train()
    net = BYOLANet(
        BYOLBranch(copy.deepcopy(embedder.module_)),
        criterion=BYOLLoss,
        optimizer=torch.optim.Adam,
        lr=embedder.lr,
        max_epochs=embedder.pretrain_epochs,
        batch_size=batch_size,
        iterator_train__shuffle=True,
        iterator_train__drop_last=True,
        iterator_train__collate_fn=BYOLAViews.collate,
        iterator_train__generator=make_generator(seed),
        train_split=None,
        callbacks=callbacks,
        device=device,
        verbose=0,
    )
    net.fit(views, y=None)
    embedder.module_.load_state_dict(net.module_.encoder.state_dict())
    return [{key: value for key, value in epoch.items() if key != "batches"}
            for epoch in net.history]
