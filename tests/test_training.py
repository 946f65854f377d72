"""skaudiocluster._training: the interrupt-safe net, the loss guard, EMA, progress, history."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.history import History

from skaudiocluster._training import (
    EMA,
    NonFiniteLossError,
    StopOnNonFiniteLoss,
    TrainingNet,
    TrainingProgress,
    epoch_history,
    progress_callbacks,
)

X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(16, 2)
Y = X.sum(axis=1, keepdims=True)


def _net(cls=TrainingNet, module=None, **params) -> NeuralNet:
    if module is None:
        module = torch.nn.Linear
        params = {"module__in_features": 2, "module__out_features": 1, **params}
    defaults = dict(
        module=module,
        criterion=torch.nn.MSELoss,
        optimizer=torch.optim.SGD,
        lr=0.1,
        batch_size=4,
        max_epochs=3,
        train_split=None,
        verbose=0,
    )
    return cls(**{**defaults, **params})


class Recorder(Callback):
    """Interrupts at a chosen batch (optional) and records that training ended."""

    def __init__(self, interrupt_at=None):
        self.interrupt_at = interrupt_at

    def on_train_begin(self, net, **kwargs):
        self.batches_, self.ended_ = 0, False

    def on_batch_end(self, net, training=False, **kwargs):
        self.batches_ += 1
        if self.batches_ == self.interrupt_at:
            raise KeyboardInterrupt

    def on_train_end(self, net, **kwargs):
        self.ended_ = True


# --- TrainingNet ---------------------------------------------------------------------------


def test_plain_skorch_net_swallows_keyboard_interrupt():
    # Why TrainingNet exists: skorch returns the half-trained net as if fit had finished.
    recorder = Recorder(interrupt_at=2)
    net = _net(NeuralNet, callbacks=[recorder]).fit(X, Y)
    assert recorder.ended_ and recorder.batches_ == 2 and len(net.history) == 1


def test_training_net_reraises_keyboard_interrupt_after_on_train_end():
    recorder = Recorder(interrupt_at=6)  # in the second epoch (4 batches per epoch)
    net = _net(callbacks=[recorder])
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, Y)
    assert recorder.ended_ and recorder.batches_ == 6 and len(net.history) == 2


def test_training_net_partial_fit_reraises_too():
    net = _net(callbacks=[Recorder(interrupt_at=1)]).initialize()
    with pytest.raises(KeyboardInterrupt):
        net.partial_fit(X, Y)


def test_training_net_fits_normally_after_an_interrupt():
    recorder = Recorder(interrupt_at=1)
    net = _net(callbacks=[recorder])
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, Y)
    recorder.interrupt_at = None
    assert net.fit(X, Y) is net
    assert recorder.ended_ and recorder.batches_ == 12 and len(net.history) == 3


def test_training_net_trains_like_neural_net():
    plain = _net(NeuralNet, max_epochs=5)
    ours = _net(max_epochs=5)
    for net in (plain, ours):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net.fit(X, Y)
    assert np.array_equal(plain.predict(X), ours.predict(X))
    assert plain.history[:, "train_loss"] == ours.history[:, "train_loss"]


# --- StopOnNonFiniteLoss -------------------------------------------------------------------


class LossAfter(torch.nn.Module):
    """MSE that turns into ``value`` from the ``at``-th call on."""

    def __init__(self, at: int, value: float):
        super().__init__()
        self.at, self.value, self.calls = at, value, 0

    def forward(self, y_pred, y_true):
        self.calls += 1
        loss = torch.nn.functional.mse_loss(y_pred, y_true)
        return loss * self.value if self.calls >= self.at else loss


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_stop_on_non_finite_loss_names_the_estimator_and_the_epoch(value):
    # batch_size=16: one batch per epoch, so the 3rd loss is epoch 3's.
    net = _net(
        criterion=LossAfter,
        criterion__at=3,
        criterion__value=value,
        batch_size=16,
        max_epochs=5,
        callbacks=[("non_finite_loss", StopOnNonFiniteLoss("TEMIClusterer"))],
    )
    with pytest.raises(NonFiniteLossError, match=r"^TEMIClusterer: .* at epoch 3;"):
        net.fit(X, Y)
    assert issubclass(NonFiniteLossError, FloatingPointError)


def test_stop_on_non_finite_loss_checks_validation_losses():
    class NaNOnValidation(torch.nn.Module):
        def forward(self, y_pred, y_true):
            loss = torch.nn.functional.mse_loss(y_pred, y_true)
            return loss if torch.is_grad_enabled() else loss * math.nan

    net = _net(
        criterion=NaNOnValidation,
        train_split=_split,
        callbacks=[("non_finite_loss", StopOnNonFiniteLoss("SPICE"))],
    )
    with pytest.raises(NonFiniteLossError, match="SPICE"):
        net.fit(X, Y)


def _split(dataset, y=None):
    from torch.utils.data import Subset

    return Subset(dataset, range(12)), Subset(dataset, range(12, 16))


def test_stop_on_non_finite_loss_lets_finite_training_finish():
    net = _net(callbacks=[("non_finite_loss", StopOnNonFiniteLoss("x"))]).fit(X, Y)
    assert len(net.history) == 3


# --- EMA -----------------------------------------------------------------------------------


class OnlineTarget(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.online = torch.nn.Linear(2, 1)
        self.target = torch.nn.Linear(2, 1)
        with torch.no_grad():
            for p in self.target.parameters():
                p.fill_(1.0)
                p.requires_grad_(False)

    def forward(self, x):
        return self.online(x)


class Snapshots(Callback):
    """Target before each step, online and target after the step and the EMA update."""

    def on_train_begin(self, net, **kwargs):
        self.rows_ = []

    def on_batch_begin(self, net, training=False, **kwargs):
        self.before_ = _flat(net.module_.target)

    def on_batch_end(self, net, training=False, **kwargs):
        self.rows_.append((self.before_, _flat(net.module_.online), _flat(net.module_.target)))


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _fit_ema(ema: EMA, **params) -> NeuralNet:
    params = {"max_epochs": 2, **params}
    net = _net(module=OnlineTarget, callbacks=[("ema", ema), ("snapshots", Snapshots())], **params)
    return net.fit(X, Y)


def _online(net):
    return net.module_.online


def _target(net):
    return net.module_.target


def test_ema_constant_decay_is_the_exact_moving_average():
    net = _fit_ema(EMA(_online, _target, 0.9))
    rows = dict(net.callbacks_)["snapshots"].rows_
    assert len(rows) == 8
    for before, online, after in rows:
        torch.testing.assert_close(after, 0.9 * before + 0.1 * online)
    assert not torch.equal(rows[0][0], rows[-1][2])  # the target did move


def test_ema_cosine_decay_follows_the_schedule_step_by_step():
    ema = EMA(_online, _target, 0.5, total_steps=8, final_decay=1.0)
    net = _fit_ema(ema)
    rows = dict(net.callbacks_)["snapshots"].rows_
    for step, (before, online, after) in enumerate(rows):
        m = 1.0 - 0.5 * (math.cos(math.pi * step / 7) + 1) / 2
        torch.testing.assert_close(after, m * before + (1 - m) * online)
    torch.testing.assert_close(rows[-1][2], rows[-1][0])  # decay 1 at the last step
    assert ema.step_ == 8


def test_ema_schedule_end_points_midpoint_and_clip():
    ema = EMA(None, None, 0.9, total_steps=11, final_decay=1.0)
    assert ema.decay_at(0) == pytest.approx(0.9)
    assert ema.decay_at(5) == pytest.approx(0.95)
    assert ema.decay_at(10) == ema.decay_at(50) == pytest.approx(1.0)
    values = [ema.decay_at(step) for step in range(11)]
    assert values == sorted(values)
    assert EMA(None, None, 0.99).decay_at(1000) == 0.99


def test_ema_counts_training_steps_only_and_restarts_with_each_fit():
    ema = EMA(_online, _target, 0.5, total_steps=100, final_decay=1.0)
    net = _fit_ema(ema, train_split=_split)  # 3 training + 1 validation batch per epoch
    assert ema.step_ == 6
    net.fit(X, Y)
    assert ema.step_ == 6


# --- progress ------------------------------------------------------------------------------


def test_progress_callbacks_are_off_when_quiet():
    assert progress_callbacks(0) == []


@pytest.mark.parametrize("batches_per_epoch", ["auto", 7])
def test_progress_callbacks_give_one_labelled_bar(batches_per_epoch):
    [(name, bar)] = progress_callbacks(2, batches_per_epoch=batches_per_epoch, desc="SPICE-Self")
    assert name == "progress" and isinstance(bar, TrainingProgress)
    assert (bar.desc, bar.batches_per_epoch) == ("SPICE-Self", batches_per_epoch)


class BarTotals(Callback):
    """Records the progress bar's count at the end of every epoch, and whether it closed."""

    def on_train_begin(self, net, **kwargs):
        self.counts_ = []

    def on_epoch_end(self, net, **kwargs):
        bar = dict(net.callbacks_)["progress"].bar_
        self.counts_.append((bar.n, bar.total, bar.desc))


@pytest.mark.parametrize("batches_per_epoch", ["auto", 4])
def test_one_bar_over_every_step_of_the_run(batches_per_epoch, capsys):
    # skorch's ProgressBar restarted an unlabelled bar every epoch, with no total of the run.
    totals = BarTotals()
    callbacks = [*progress_callbacks(1, batches_per_epoch, desc="stage one"), totals]
    _net(callbacks=callbacks, max_epochs=3).fit(X, Y)  # 16 rows, 4 per batch
    assert totals.counts_ == [(4, 12, "stage one"), (8, 12, "stage one"), (12, 12, "stage one")]
    err = capsys.readouterr().err
    assert err.count("0/12") == 1 and "stage one" in err  # one bar, labelled, with the total
    assert capsys.readouterr().out == ""


def test_the_bar_closes_when_training_is_interrupted():
    [(_, bar)] = progress_callbacks(1)
    with pytest.raises(KeyboardInterrupt):
        _net(callbacks=[("progress", bar), Recorder(interrupt_at=6)]).fit(X, Y)
    assert bar.bar_ is None


def test_a_fitted_nets_bar_pickles():
    import pickle

    net = _net(callbacks=progress_callbacks(1)).fit(X, Y)
    copy = pickle.loads(pickle.dumps(net))
    assert "bar_" not in vars(dict(copy.callbacks_)["progress"])


class Batches:
    """A training iterator of its own, as DeepDPM's: skorch cannot count its batches."""

    def __init__(self, dataset, **kwargs):
        self.dataset = dataset

    def __iter__(self):
        for start in range(0, len(self.dataset), 8):
            yield self.dataset[slice(start, start + 8)]


def _custom_iterator_net(batches_per_epoch):
    return _net(
        iterator_train=Batches,
        batch_size=None,
        callbacks=progress_callbacks(1, batches_per_epoch=batches_per_epoch),
        max_epochs=2,
    )


def test_progress_bar_needs_the_batch_count_of_a_custom_iterator():
    # DeepDPM(verbose=1) crashed so: "auto" divides by the iterator's batch_size, None.
    with pytest.raises(TypeError):
        _custom_iterator_net("auto").fit(torch.from_numpy(X), torch.from_numpy(Y))
    net = _custom_iterator_net(2).fit(torch.from_numpy(X), torch.from_numpy(Y))
    assert len(net.history) == 2 and len(net.history[-1, "batches"]) == 2


# --- epoch_history -------------------------------------------------------------------------


def _history(losses: list[float]) -> History:
    history = History()
    for epoch, loss in enumerate(losses, start=1):
        history.new_epoch()
        history.record("epoch", epoch)
        history.record("train_loss", loss)
        history.record("dur", 0.1)
        history.new_batch()
        history.record_batch("train_loss", loss)
    return history


class Fitted:
    def __init__(self, history):
        self.history = history


def test_epoch_history_drops_batches_and_counts_epochs_on():
    nets = [Fitted(_history([3.0, 2.0])), Fitted(_history([1.5, 1.0, 0.5]))]
    history = epoch_history(nets, stage=["self", "semi"])
    assert isinstance(history, History) and len(history) == 5
    assert history[:, "epoch"] == [1, 2, 3, 4, 5]
    assert history[:, "train_loss"] == [3.0, 2.0, 1.5, 1.0, 0.5]
    assert history[:, "stage"] == ["self", "self", "semi", "semi", "semi"]
    assert all("batches" not in row for row in history)
    assert set(history[0]) == {"epoch", "train_loss", "dur", "stage"}


def test_epoch_history_keeps_the_algorithms_keys_and_leaves_the_nets_alone():
    source = _history([1.0])
    source.record("head_loss", 0.25)
    history = epoch_history([Fitted(source)])
    assert history[0] == {"epoch": 1, "train_loss": 1.0, "dur": 0.1, "head_loss": 0.25}
    assert "batches" in source[0]


def test_epoch_history_of_real_nets_has_skorchs_keys():
    history = epoch_history([_net(max_epochs=2).fit(X, Y), _net(max_epochs=1).fit(X, Y)])
    assert history[:, "epoch"] == [1, 2, 3]
    assert all({"epoch", "train_loss", "dur"} <= set(row) for row in history)
