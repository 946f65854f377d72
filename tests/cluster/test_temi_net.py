"""TEMI's skorch side (skaudiocluster.cluster._temi_net): pairs, step, EMA, freezing, budget."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from skaudiocluster._torch import forked_rng
from skaudiocluster._training import EMA
from skaudiocluster.cluster._heads import MultiHead
from skaudiocluster.cluster._neighbors import cosine_knn
from skaudiocluster.cluster._temi_loss import updated_prior
from skaudiocluster.cluster._temi_net import (
    NeighborPairs,
    TEMICriterion,
    TEMIModule,
    TEMINet,
    keep_batch,
    training_budget,
    training_callbacks,
    warmup_cosine,
)

N_SAMPLES, N_FEATURES, N_CLUSTERS, N_HEADS = 32, 6, 3, 2
EMA_DECAY = 0.9


class BatchSpy(Callback):
    """Keeps what skorch hands to ``on_batch_end`` after each training step."""

    def on_train_begin(self, net, **kwargs):
        self.steps_ = []

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.steps_.append(kwargs)


def make_module(seed: int = 0) -> TEMIModule:
    with forked_rng(seed, torch.device("cpu")):
        heads = MultiHead(
            N_FEATURES, N_CLUSTERS, N_HEADS, (8,), bottleneck_dim=4, cosine_last_layer=True
        )
        return TEMIModule(heads)


def make_net(module: TEMIModule, *, batch_size: int, max_epochs: int, spy=None) -> TEMINet:
    steps = max_epochs * (N_SAMPLES // batch_size)
    callbacks = training_callbacks(
        ema_decay=EMA_DECAY, total_steps=steps, warmup_steps=1, name="test"
    )
    return TEMINet(
        module,
        criterion=TEMICriterion,
        optimizer=torch.optim.AdamW,
        lr=1e-2,
        max_epochs=max_epochs,
        batch_size=batch_size,
        iterator_train__shuffle=True,
        iterator_train__drop_last=True,
        iterator_train__collate_fn=keep_batch,
        train_split=None,
        callbacks=[*callbacks, *([("spy", spy)] if spy else [])],
        verbose=0,
    )


@pytest.fixture(scope="module")
def data():
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(N_SAMPLES, N_FEATURES)))
    X = X.float()
    neighbors = torch.from_numpy(cosine_knn(X.numpy(), 1)[0])  # one partner: pairs are fixed
    return X, neighbors


@pytest.fixture(scope="module")
def one_step(data):
    """A net trained for exactly one step (one epoch of one full batch), and its start."""
    X, neighbors = data
    module = make_module()
    start = copy.deepcopy(module)
    spy = BatchSpy()
    net = make_net(module, batch_size=N_SAMPLES, max_epochs=1, spy=spy)
    net.fit(NeighborPairs(X, neighbors, seed=0), None)
    return net, start, spy


def test_neighbor_sampler_never_returns_the_anchor():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    X[30:] = X[:30]  # exact duplicates tie with the anchor itself
    neighbors, _ = cosine_knn(X, 4)
    pairs = NeighborPairs(torch.from_numpy(X), torch.from_numpy(neighbors), seed=0)
    anchors = torch.arange(60).repeat(50)
    partners = pairs.partners(anchors).numpy()
    assert np.all(partners != anchors.numpy())
    assert all(p in neighbors[a] for a, p in zip(anchors.numpy(), partners, strict=True))
    assert len(set(partners[anchors.numpy() == 0])) == 4  # every neighbour gets drawn


def test_neighbor_pairs_serve_rows_of_the_features():
    X = torch.arange(12.0).view(6, 2)
    neighbors = torch.tensor([[1], [2], [3], [4], [5], [0]])
    pairs = NeighborPairs(X, neighbors, seed=0)
    anchors, partners = pairs.__getitems__([5, 0, 3])
    torch.testing.assert_close(anchors, X[[5, 0, 3]])
    torch.testing.assert_close(partners, X[[0, 1, 4]])
    anchor, partner = pairs[2]
    torch.testing.assert_close(anchor, X[2])
    torch.testing.assert_close(partner, X[3])
    assert len(pairs) == 6


def test_one_step_moves_the_prior_with_the_teacher_probabilities_of_both_views(one_step, data):
    net, start, _ = one_step
    X, neighbors = data
    criterion = TEMICriterion()
    with torch.no_grad():
        teacher_a, teacher_b = start.teacher(X), start.teacher(X[neighbors[:, 0]])
    expected = updated_prior(
        start.prior,
        (teacher_a / criterion.teacher_temperature).softmax(-1),
        (teacher_b / criterion.teacher_temperature).softmax(-1),
        criterion.prior_momentum,
    )
    torch.testing.assert_close(net.module_.prior, expected)


def test_step_returns_the_head_losses_it_averages(one_step, data):
    net, start, spy = one_step
    X, neighbors = data
    (step,) = spy.steps_
    with torch.no_grad():
        views = [start.student(X), start.student(X[neighbors[:, 0]])]
        views += [start.teacher(X), start.teacher(X[neighbors[:, 0]])]
        expected = TEMICriterion()(*views, net.module_.prior)  # the prior after the update
    torch.testing.assert_close(step["head_losses"], expected)
    assert not step["head_losses"].requires_grad
    torch.testing.assert_close(step["loss"].detach(), expected.mean())
    np.testing.assert_allclose(net.history[-1, "head_losses"], expected.numpy(), rtol=1e-6)


def test_get_loss_neither_moves_the_prior_nor_writes_history(one_step, data):
    net, _, _ = one_step
    X, neighbors = data
    prior, history = net.module_.prior.clone(), copy.deepcopy(net.history.to_list())
    with torch.no_grad():
        y_pred = [net.module_.student(X), net.module_.student(X[neighbors[:, 0]])]
        y_pred += [net.module_.teacher(X), net.module_.teacher(X[neighbors[:, 0]])]
    first = net.get_loss(y_pred, training=True)
    second = net.get_loss(y_pred, training=True)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(net.module_.prior, prior)
    assert net.history.to_list() == history


def test_teacher_follows_the_student_by_ema(one_step):
    net, start, _ = one_step
    m = EMA_DECAY  # the cosine schedule starts at the initial decay
    trained = dict(net.module_.student.named_parameters())
    teacher = dict(net.module_.teacher.named_parameters())
    moved = 0.0
    for name, initial in start.student.named_parameters():
        torch.testing.assert_close(teacher[name], m * initial + (1 - m) * trained[name])
        moved = max(moved, float((trained[name] - initial).detach().abs().max()))
    assert moved > 1e-3
    assert all(not p.requires_grad for p in net.module_.teacher.parameters())


def test_teacher_ema_decay_rises_from_its_start_to_one():
    (ema,) = [
        cb
        for _, cb in training_callbacks(
            ema_decay=0.996, total_steps=101, warmup_steps=1, name="test"
        )
        if isinstance(cb, EMA)
    ]
    decays = [ema.decay_at(step) for step in range(101)]
    assert decays[0] == pytest.approx(0.996)
    assert decays[-1] == pytest.approx(1.0)
    assert np.all(np.diff(decays) >= 0)


def test_last_layer_is_frozen_for_the_first_epoch_only(data):
    X, neighbors = data
    module = make_module()
    start = copy.deepcopy(module)
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_end(self, net, **kwargs):
            snapshots.append(copy.deepcopy(net.module_.student.state_dict()))

    net = make_net(module, batch_size=8, max_epochs=2, spy=Snapshot())
    net.fit(NeighborPairs(X, neighbors, seed=0), None)

    initial = start.student.state_dict()
    for name in ("last_layer.direction", "last_layer.magnitude"):
        torch.testing.assert_close(snapshots[0][name], initial[name])
        assert not torch.equal(snapshots[1][name], initial[name])
    assert not torch.equal(snapshots[0]["body.0.weight"], initial["body.0.weight"])


def test_epoch_head_losses_are_the_mean_of_the_batches(data):
    X, neighbors = data
    spy = BatchSpy()
    net = make_net(make_module(1), batch_size=8, max_epochs=2, spy=spy)
    net.fit(NeighborPairs(X, neighbors, seed=1), None)
    per_batch = np.array([step["head_losses"].numpy() for step in spy.steps_])
    assert per_batch.shape == (8, N_HEADS)
    for epoch in range(2):
        expected = per_batch[4 * epoch : 4 * epoch + 4].mean(axis=0)
        np.testing.assert_allclose(net.history[epoch, "head_losses"], expected, rtol=1e-6)
        # skorch's train_loss (mean of the batch losses) is the mean over heads
        assert net.history[epoch, "train_loss"] == pytest.approx(expected.mean(), rel=1e-5)


def test_only_student_parameters_are_learnable():
    net = make_net(make_module(), batch_size=8, max_epochs=1).initialize()
    names = [name for name, _ in net.get_all_learnable_params()]
    assert names and all(name.startswith("student.") for name in names)
    assert {"student.last_layer.direction", "student.last_layer.magnitude"} <= set(names)


def test_warmup_rises_linearly_then_decays_to_the_final_ratio():
    factors = [
        warmup_cosine(step, warmup_steps=10, total_steps=100, final_ratio=0.1)
        for step in range(101)
    ]
    np.testing.assert_allclose(factors[:10], np.arange(1, 11) / 10)
    assert factors[10] == pytest.approx(1.0)
    assert np.all(np.diff(factors[10:]) <= 0)
    assert factors[55] == pytest.approx(0.55)  # half way down the cosine
    assert factors[-1] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("n_samples", "batch_size", "max_steps", "max_epochs", "epochs"),
    [
        (3000, 256, "auto", None, 364),  # 4,000 steps: 364 epochs of 11
        (100_000, 256, "auto", None, 20),  # 20 passes: 7,800 steps
        (1_000_000, 256, "auto", None, 20),
        (3000, 256, 8000, None, 728),
        (3000, 256, 8000, 100, 100),  # the epoch cap
        (3000, 256, None, 7, 7),
    ],
)
def test_training_budget_gives_small_and_large_collections_enough_steps(
    n_samples, batch_size, max_steps, max_epochs, epochs
):
    spe = n_samples // batch_size
    assert training_budget(n_samples, batch_size, max_steps, max_epochs) == (
        batch_size,
        spe,
        epochs,
    )
