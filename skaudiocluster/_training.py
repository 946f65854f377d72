"""skorch plumbing shared by the embedders and the clusterers: net, loss guard, EMA, progress."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.history import History
from torch.optim.swa_utils import get_ema_multi_avg_fn


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class TrainingNet(NeuralNet):
    """A :class:`skorch.NeuralNet` whose ``fit`` lets ``KeyboardInterrupt`` through.

    skorch ends training quietly on Ctrl-C and returns the half-trained net;
    an estimator would then look fitted. Here the interrupt still runs the
    ``on_train_end`` callbacks (progress bars close) and is then re-raised.
    """

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt as exc:
            self.interrupt_ = exc
            raise

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        self.interrupt_ = None
        super().partial_fit(X, y, classes=classes, **fit_params)
        interrupt, self.interrupt_ = self.interrupt_, None
        if interrupt is not None:
            raise interrupt
        return self


class StopOnNonFiniteLoss(Callback):
    """Raise :class:`NonFiniteLossError` as soon as a batch loss is NaN or infinite.

    Parameters
    ----------
    name : str
        Who is training, for the message (e.g. ``"TEMIClusterer"``).
    """

    def __init__(self, name: str = "training"):
        self.name = name

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        loss = net.history[-1, "batches", -1].get("train_loss" if training else "valid_loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"{self.name}: the loss became {loss} at epoch {len(net.history)}; "
                "lower the learning rate or standardise the input features"
            )


def ema_update_(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * online``, parameter by parameter, in place.

    The package's one exponential moving average of weights (TEMI's teacher,
    SPICE-Semi's evaluation model, BYOL-A's target branch): torch's own
    (:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`). Parameters are matched by
    name, so ``target`` may hold a subset of ``online``'s (BYOL's target has no
    predictor); buffers are left to ``target``.

    Examples
    --------
    >>> target, online = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    >>> _ = target.weight.data.fill_(0.0), online.weight.data.fill_(1.0)
    >>> ema_update_(target, online, 0.75)
    >>> target.weight.item()
    0.25
    """
    online_params = dict(online.named_parameters())
    names = [name for name, _ in target.named_parameters()]
    target_params = dict(target.named_parameters())
    get_ema_multi_avg_fn(decay)(
        [target_params[name] for name in names], [online_params[name] for name in names], None
    )


class EMA(Callback):
    """After every optimizer step, :func:`ema_update_` of ``target`` towards ``online``.

    The decay follows a cosine schedule from ``decay`` to ``final_decay`` over
    ``total_steps`` (DINO, TEMI); ``final_decay=None`` keeps it constant (BYOL).

    Parameters
    ----------
    online : callable
        ``online(net)`` returns the trained module.
    target : callable
        ``target(net)`` returns its moving-average copy (same parameter names).
    decay : float
    total_steps : int or None, default=None
        Steps of the cosine schedule (needed with ``final_decay``).
    final_decay : float or None, default=None

    Examples
    --------
    >>> EMA(None, None, 0.996, total_steps=101, final_decay=1.0).decay_at(100)
    1.0
    """

    def __init__(
        self,
        online: Callable,
        target: Callable,
        decay: float,
        *,
        total_steps: int | None = None,
        final_decay: float | None = None,
    ):
        self.online = online
        self.target = target
        self.decay = decay
        self.total_steps = total_steps
        self.final_decay = final_decay

    def decay_at(self, step: int) -> float:
        if self.final_decay is None:
            return self.decay
        progress = min(step / max(self.total_steps - 1, 1), 1.0)
        span = self.final_decay - self.decay
        return self.final_decay - span * (math.cos(math.pi * progress) + 1) / 2

    def on_train_begin(self, net, **kwargs):
        self.step_ = 0

    def on_batch_end(self, net, training=False, **kwargs):
        if not training:
            return
        ema_update_(self.target(net), self.online(net), self.decay_at(self.step_))
        self.step_ += 1


def optimizer_steps(nets: Iterable[NeuralNet]) -> int:
    """Optimizer steps the training loops of ``nets`` took: their training batches.

    What ``n_iter_`` counts on every deep clusterer (all stages of a fit summed).
    """
    return sum(len(row["batches"]) for net in nets for row in net.history)


def training_epochs(max_steps: int | None, max_epochs: int | None, steps_per_epoch: int) -> int:
    """Whole epochs a training run lasts under the budget ``max_steps`` / ``max_epochs``.

    The package's one budget convention: ``max_steps`` optimizer steps, rounded
    up to the end of the epoch they fall in (so every sample is seen alike), and
    at most ``max_epochs`` epochs; ``None`` leaves that bound out (one of the two
    must be set). ``n_iter_`` then counts the optimizer steps the fit took.

    Examples
    --------
    >>> training_epochs(1000, None, steps_per_epoch=30)
    34
    >>> training_epochs(1000, 5, steps_per_epoch=30), training_epochs(None, 5, 30)
    (5, 5)
    """
    if max_steps is None and max_epochs is None:
        raise ValueError("max_steps and max_epochs cannot both be None: set a training budget")
    bounds = [] if max_epochs is None else [max_epochs]
    if max_steps is not None:
        bounds.append(max(1, math.ceil(max_steps / max(steps_per_epoch, 1))))
    return min(bounds)


class TrainingProgress(Callback):
    """One progress bar over a whole training run, labelled, with its total and time left.

    The bar counts optimizer steps (training batches) over all ``max_epochs``
    epochs, and shows the epoch and the last training loss beside them; it
    writes to stderr and is removed when training ends (or is interrupted).

    Parameters
    ----------
    desc : str, default="training"
        Label of the bar: the training stage (e.g. ``"SPICE-Self"``).
    batches_per_epoch : int or "auto", default="auto"
        Training batches per epoch; ``"auto"`` takes the length of the net's
        training iterator, which a custom iterator may not have (a ``TypeError``).

    Examples
    --------
    >>> TrainingProgress("SPICE-Self", batches_per_epoch=8).desc
    'SPICE-Self'
    """

    def __init__(self, desc: str = "training", batches_per_epoch: int | str = "auto"):
        self.desc = desc
        self.batches_per_epoch = batches_per_epoch

    def on_train_begin(self, net, **kwargs):
        self.bar_ = None

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        if self.bar_ is not None:
            return
        from tqdm.auto import tqdm

        per_epoch = self.batches_per_epoch
        if per_epoch == "auto":
            per_epoch = len(net.get_iterator(dataset_train, training=True))
        self.bar_ = tqdm(total=per_epoch * net.max_epochs, desc=self.desc, unit="step", leave=False)

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.bar_.update()

    def on_epoch_end(self, net, **kwargs):
        postfix = {"epoch": f"{len(net.history)}/{net.max_epochs}"}
        loss = net.history[-1].get("train_loss")
        if loss is not None:
            postfix["loss"] = f"{float(loss):.4g}"
        self.bar_.set_postfix(postfix, refresh=False)

    def on_train_end(self, net, **kwargs):
        if getattr(self, "bar_", None) is not None:
            self.bar_.close()
        self.bar_ = None

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key != "bar_"}


def progress_callbacks(
    verbose: int, batches_per_epoch: int | str = "auto", desc: str = "training"
) -> list[tuple[str, Callback]]:
    """Callbacks for skorch's ``callbacks=``: one :class:`TrainingProgress` bar when ``verbose``.

    Pass ``batches_per_epoch`` when the training iterator has no length skorch
    can read (custom samplers and iterators), and the training stage as ``desc``.
    """
    return [("progress", TrainingProgress(desc, batches_per_epoch))] if verbose else []


def epoch_history(nets: Iterable[NeuralNet], **extra) -> History:
    """One :class:`skorch.History` of epoch rows (batches dropped) from the nets of a fit.

    Rows keep skorch's keys (``epoch``, ``train_loss``, ``dur``, ...) plus the
    algorithm's own; ``extra`` maps a key to one value per net (e.g.
    ``stage=["self", "semi"]``), written into every row of that net. ``epoch``
    counts on across nets.
    """
    history = History()
    for position, net in enumerate(nets):
        for row in net.history:
            history.append(
                {
                    **{key: value for key, value in row.items() if key != "batches"},
                    **{key: values[position] for key, values in extra.items()},
                    "epoch": len(history) + 1,
                }
            )
    return history
