"""SPICEClusterer and its nets: views, criteria, iterators, joint stage, estimator, FSDD quality."""

from __future__ import annotations

import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from skorch.callbacks import Callback

from skaudiocluster.augment import strong_augmentation, weak_augmentation
from skaudiocluster.cluster import SPICEClusterer
from skaudiocluster.cluster._base import make_preprocessor
from skaudiocluster.cluster._heads import MultiHead
from skaudiocluster.cluster._spice_joint import (
    ClipDataset,
    ClipViews,
    JointNetwork,
    affine_preprocessing,
)
from skaudiocluster.cluster._spice_labels import (
    IGNORE,
    double_softmax_cross_entropy,
    fixmatch_loss,
)
from skaudiocluster.cluster._spice_net import (
    DoubleSoftmaxLoss,
    EmbeddingViews,
    FixMatchBatches,
    FixMatchLoss,
    FixMatchNet,
    PrototypeBatches,
    SPICESelfNet,
    embedding_view,
    fixmatch_batches_per_epoch,
    prototype_batches_per_epoch,
)
from skaudiocluster.transformers.byola import BYOLAEmbedder

# Reached at the defaults over seeds 0-2 (bench_quality figures minus a small margin).
FSDD_SPEAKER_NMI = 0.91  # 0.919 +- 0.002
BENGALESE_NMI = 0.965  # 0.975 +- 0.001

# The guard of reliable_labels warns with this message when a cluster is topped up.
TOP_UP = "reliable pseudo-labels"


def _tiny(**params) -> SPICEClusterer:
    defaults = dict(
        n_clusters=3,
        n_heads=2,
        hidden_dims=(16,),
        n_components=8,
        max_steps=8,
        n_repeats=2,
        semi_max_steps=60,
        n_neighbors=10,
        device="cpu",
        random_state=0,
    )
    return SPICEClusterer(**{**defaults, **params})


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clips(n_per_tone: int = 12, seed: int = 0) -> list[np.ndarray]:
    """Short synthetic clips: two tones, random lengths (125-200 ms at 16 kHz)."""
    rng = np.random.RandomState(seed)
    t = np.arange(3200) / 16000
    return [
        np.sin(2 * np.pi * f * t[: rng.randint(2000, 3200)]) * 0.3 + 0.01 * rng.randn(1)
        for f in [220.0] * n_per_tone + [1800.0] * n_per_tone
    ]


# --- views and criteria --------------------------------------------------------------------


def test_embedding_view_keeps_row_norms_and_is_seeded():
    x = torch.nn.functional.normalize(torch.randn(16, 8, generator=_gen()), dim=1)
    first = embedding_view(x, noise=0.5, dropout=0.3, generator=_gen(1))
    again = embedding_view(x, noise=0.5, dropout=0.3, generator=_gen(1))
    assert torch.equal(first, again)
    assert torch.allclose(first.norm(dim=1), torch.ones(16))
    assert not torch.allclose(first, x)
    assert torch.allclose(embedding_view(x, noise=0, dropout=0, generator=None), x)
    # Rows that are not unit length (preprocessing="standardize") keep their norm.
    scaled = x * torch.arange(1.0, 17.0)[:, None]
    view = embedding_view(scaled, noise=0.5, dropout=0.3, generator=_gen(1))
    assert torch.allclose(view.norm(dim=1), torch.arange(1.0, 17.0))
    assert torch.allclose(view / view.norm(dim=1, keepdim=True), first, atol=1e-6)


def test_double_softmax_criterion_is_the_mean_of_the_heads_losses():
    logits = torch.randn(3, 10, 4, generator=_gen())
    target = torch.randint(0, 4, (10, 3), generator=_gen(1))
    target[:4, 1] = IGNORE
    expected = double_softmax_cross_entropy(logits, target.T).mean()
    assert torch.isclose(DoubleSoftmaxLoss()(logits, target), expected)
    plain = double_softmax_cross_entropy(logits, target.T, double_softmax=False).mean()
    assert torch.isclose(DoubleSoftmaxLoss(double_softmax=False)(logits, target), plain)
    assert not torch.isclose(plain, expected)


def test_fixmatch_criterion_splits_labelled_weak_and_strong_views():
    logits = torch.randn(2 + 2 * 5, 3, generator=_gen()) * 4
    labels = torch.tensor([2, 0])
    criterion = FixMatchLoss(threshold=0.5, unlabelled_weight=0.7)
    expected = fixmatch_loss(
        logits[:2], labels, logits[2:7], logits[7:], threshold=0.5, unlabelled_weight=0.7
    )
    assert torch.isclose(criterion(logits, labels), expected)
    swapped = fixmatch_loss(
        logits[:2], labels, logits[7:], logits[2:7], threshold=0.5, unlabelled_weight=0.7
    )
    assert not torch.isclose(criterion(logits, labels), swapped)


# --- iterators -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples, labelling_size", [(100, 5000), (250, 60)])
def test_prototype_batches_shapes_labels_and_count(n_samples, labelling_size):
    # 16 features: a strong view (dropout 0.4) practically never drops every coordinate.
    features = torch.nn.functional.normalize(torch.randn(n_samples, 16, generator=_gen()), dim=1)
    heads = MultiHead(16, n_clusters=4, n_heads=3, hidden_dims=(8,))
    batches = PrototypeBatches(
        features,
        module=heads,
        device=torch.device("cpu"),
        labelling_size=labelling_size,
        batch_size=16,
        n_repeats=2,
        center_ratio=0.5,
        weak_view={"noise": 0.2, "dropout": 0.1},
        strong_view={"noise": 0.6, "dropout": 0.4},
        generator=_gen(),
    )
    seen = list(batches)
    expected = prototype_batches_per_epoch(
        n_samples, 4, labelling_size=labelling_size, batch_size=16, n_repeats=2
    )
    assert len(seen) == expected
    for x, y in seen:
        assert x.shape[1:] == (3, 16) and y.shape == (len(x), 3)
        assert int(y.min()) >= 0 and int(y.max()) < 4
        assert torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:2]))
    # Every head's labels are balanced over a labelling chunk: n_repeats passes of M / K each.
    labels = torch.cat([y for _, y in seen])
    per_cluster = torch.stack([torch.bincount(labels[:, h], minlength=4) for h in range(3)])
    assert bool((per_cluster == per_cluster[0, 0]).all())


def test_fixmatch_batches_label_only_targets_and_cover_every_sample():
    n_samples = 50
    targets = np.full(n_samples, IGNORE)
    labelled = np.array([3, 7, 11, 20, 41])
    targets[labelled] = [0, 1, 2, 1, 0]
    calls = []

    def views(data, picked, unlabelled, generator):
        calls.append((picked, unlabelled))
        return torch.as_tensor(data)[torch.cat([picked, unlabelled, unlabelled])]

    data = np.arange(n_samples, dtype=np.float32)[:, None]
    batches = FixMatchBatches(
        data, targets, views=views, batch_size=4, unlabelled_ratio=3, generator=_gen()
    )
    seen = list(batches)
    assert len(seen) == fixmatch_batches_per_epoch(n_samples, batch_size=4, unlabelled_ratio=3)
    for (inputs, labels), (picked, unlabelled) in zip(seen, calls):
        assert len(picked) == 4 and set(picked.tolist()) <= set(labelled.tolist())
        np.testing.assert_array_equal(labels.numpy(), targets[picked.numpy()])
        assert len(inputs) == 4 + 2 * len(unlabelled)
    every = torch.cat([unlabelled for _, unlabelled in calls])
    # Full unlabelled batches of 12; the last one of the pass wraps into the next round.
    assert len(every) == 12 * len(seen) and set(every.tolist()) == set(range(n_samples))
    with pytest.raises(ValueError, match="at least one labelled"):
        next(
            iter(
                FixMatchBatches(
                    data,
                    np.full(n_samples, IGNORE),
                    views=views,
                    batch_size=4,
                    unlabelled_ratio=3,
                    generator=_gen(),
                )
            )
        )


def test_fixmatch_batches_draw_labelled_samples_evenly_over_clusters():
    # Cluster 0 has 2 reliable samples, cluster 1 has 40: batches are still half and half.
    targets = np.full(100, IGNORE)
    targets[:2], targets[10:50] = 0, 1
    batches = FixMatchBatches(
        np.zeros((100, 1), np.float32),
        targets,
        views=lambda data, picked, unlabelled, gen: torch.zeros(len(picked)),
        batch_size=8,
        unlabelled_ratio=2,
        generator=_gen(),
        n_steps=25,  # more steps than one pass over the data (7)
    )
    labels = torch.stack([y for _, y in batches])
    assert labels.shape == (25, 8)
    assert (labels == 0).sum(dim=1).tolist() == [4] * 25


def test_nets_draw_new_shuffles_and_views_every_epoch(blobs):
    X, _ = blobs
    features = torch.nn.functional.normalize(torch.as_tensor(X[:60]), dim=1)
    self_net = SPICESelfNet(
        MultiHead,
        module__in_features=16,
        module__n_clusters=3,
        module__n_heads=2,
        criterion=DoubleSoftmaxLoss,
        batch_size=16,
        labelling_size=60,
        n_repeats=1,
        weak_view={"noise": 0.2, "dropout": 0.1},
        strong_view={"noise": 0.6, "dropout": 0.4},
        train_split=None,
        seed=0,
    ).initialize()
    dataset = self_net.get_dataset(features.numpy())
    first, second = (next(iter(self_net.get_iterator(dataset, training=True))) for _ in range(2))
    assert not torch.equal(first[0], second[0])  # same heads, but a new draw
    targets = np.where(np.arange(60) % 2, np.arange(60) % 3, IGNORE)
    semi_net = FixMatchNet(
        MultiHead,
        module__in_features=16,
        module__n_clusters=3,
        criterion=FixMatchLoss,
        batch_size=8,
        views=EmbeddingViews({"noise": 0.2, "dropout": 0.1}, {"noise": 0.6, "dropout": 0.4}),
        train_split=None,
        seed=0,
    ).initialize()
    dataset = semi_net.get_dataset(features.numpy(), targets)
    first, second = (next(iter(semi_net.get_iterator(dataset, training=True))) for _ in range(2))
    assert not torch.equal(first[0], second[0])
    # ... and a refit starts the stream again: fits repeat exactly.
    again = semi_net.initialize()
    assert torch.equal(next(iter(again.get_iterator(dataset, training=True)))[0], first[0])


class _Params(Callback):
    def on_train_begin(self, net, **kwargs):
        self.seen = [[p.detach().clone() for p in net.module_.parameters()]]

    def on_batch_end(self, net, **kwargs):
        self.seen.append([p.detach().clone() for p in net.module_.parameters()])


def test_fixmatch_net_keeps_the_ema_of_its_weights(blobs):
    X, y = blobs
    targets = np.where(np.arange(len(y)) % 4 == 0, y, IGNORE)
    params = _Params()
    net = FixMatchNet(
        MultiHead,
        module__in_features=16,
        module__n_clusters=3,
        criterion=FixMatchLoss,
        batch_size=8,
        views=EmbeddingViews({"noise": 0.2, "dropout": 0.1}, {"noise": 0.6, "dropout": 0.4}),
        steps_per_epoch=6,
        max_epochs=2,
        ema_decay=0.9,
        train_split=None,
        callbacks=[("params", params)],
        seed=0,
    ).fit(X, targets)
    assert len(params.seen) == 13  # the initial weights and 12 steps
    expected = params.seen[0]
    for live in params.seen[1:]:
        expected = [0.9 * e + 0.1 * p for e, p in zip(expected, live)]
    for ema, value, live in zip(net.ema_module_.parameters(), expected, net.module_.parameters()):
        assert torch.allclose(ema, value, atol=1e-6) and not torch.allclose(ema, live)
    assert net.set_params(ema_decay=0.0).initialize().ema_module_ is None


def test_stages_are_budgeted_in_steps_whatever_n_samples(blobs):
    X, _ = blobs
    self_steps, semi_steps = [], []
    for n_samples in (30, 240):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
            spice = _tiny(max_steps=40, semi_max_steps=120).fit(X[:n_samples])
        counts = {stage: [] for stage in ("self", "semi")}
        for row in spice.history_:
            counts[row["stage"]].append(row["train_batch_count"])
        self_steps.append(sum(counts["self"]))
        semi_steps.append(counts["semi"])
    # SPICE-Self: 2 steps per epoch at 30 samples (20 epochs), 4 at 240 (10 epochs).
    assert self_steps == [40, 40]
    assert semi_steps == [[40, 40, 40], [40, 40, 40]]


def test_epoch_caps_bound_the_step_budgets_and_n_iter_counts_every_step(blobs):
    X, _ = blobs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        spice = _tiny(max_steps=40, max_epochs=3, semi_max_steps=1000, semi_max_epochs=2).fit(X)
        epochs_only = _tiny(max_steps=None, max_epochs=3, semi_max_steps=None, semi_max_epochs=2)
        losses = epochs_only.fit(X).history_[:, "train_loss"]
    assert losses == spice.history_[:, "train_loss"]  # the same caps bind
    assert spice.history_[:, "stage"] == ["self"] * 3 + ["semi"] * 2
    one_pass = fixmatch_batches_per_epoch(240, batch_size=64, unlabelled_ratio=7)
    assert spice.history_[:, "train_batch_count"][3:] == [one_pass] * 2
    assert spice.n_iter_ == sum(spice.history_[:, "train_batch_count"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        assert _tiny(semi_max_epochs=0).fit(X).history_[:, "stage"] == ["self"] * 2
    with pytest.raises(ValueError, match="cannot both be None"):
        _tiny(max_steps=None).fit(X)


def test_embedding_views_stack_weak_labelled_weak_and_strong_unlabelled():
    data = torch.nn.functional.normalize(torch.randn(10, 4, generator=_gen()), dim=1)
    views = EmbeddingViews({"noise": 0.0, "dropout": 0.0}, {"noise": 1.0, "dropout": 0.5})
    out = views(data, torch.tensor([1, 2]), torch.tensor([5, 6, 7]), _gen())
    assert out.shape == (8, 4)
    assert torch.allclose(out[:5], data[[1, 2, 5, 6, 7]])  # weak views without noise
    assert not torch.allclose(out[5:], data[[5, 6, 7]])


# --- joint stage ---------------------------------------------------------------------------


@pytest.mark.parametrize("preprocessing", ["l2", "standardize", None])
@pytest.mark.parametrize("n_components", [5, None])
def test_affine_preprocessing_matches_every_fitted_pipeline(preprocessing, n_components):
    X = np.random.RandomState(0).normal(size=(60, 12)) * np.arange(1, 13) + 3
    pipeline = make_preprocessor(preprocessing, n_components, X.shape, seed=0).fit(X)
    weight, bias, normalize = affine_preprocessing(pipeline)
    mapped = torch.as_tensor(X, dtype=torch.float32) @ weight + bias
    if normalize:
        mapped = torch.nn.functional.normalize(mapped, dim=1)
    assert normalize == (preprocessing == "l2")
    np.testing.assert_allclose(mapped.numpy(), pipeline.transform(X), atol=2e-4)


def test_affine_preprocessing_whitened_pca_and_unsupported_steps():
    X = np.random.RandomState(1).normal(size=(40, 6)) @ np.random.RandomState(2).normal(size=(6, 6))
    pipeline = make_pipeline(StandardScaler(), PCA(3, whiten=True)).fit(X)
    weight, bias, normalize = affine_preprocessing(pipeline)
    assert not normalize
    np.testing.assert_allclose(
        (torch.as_tensor(X, dtype=torch.float32) @ weight + bias).numpy(),
        pipeline.transform(X),
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="final L2 Normalizer"):
        affine_preprocessing(make_pipeline(Normalizer(), StandardScaler()).fit(X))
    with pytest.raises(ValueError, match="final L2 Normalizer"):
        affine_preprocessing(make_pipeline(PCA(2), Normalizer(norm="l1")).fit(X))
    with pytest.raises(TypeError, match="no affine form"):
        affine_preprocessing(make_pipeline(FunctionTransformer(np.tanh), PCA(2)).fit(X))


@pytest.fixture(scope="module")
def clips():
    return _clips()


@pytest.fixture(scope="module")
def random_encoder(clips):
    return BYOLAEmbedder(weights=None, random_state=0, device="cpu").fit(clips)


def test_clip_views_make_log_mel_batches_in_order(random_encoder, clips):
    crop = {"max_samples": 2400, "min_samples": random_encoder.min_samples}
    views = ClipViews(
        weak_augmentation(**crop), strong_augmentation(**crop), random_encoder.log_mel
    )
    waves = random_encoder.waveforms(clips)
    labelled, unlabelled = torch.tensor([0, 13]), torch.tensor([2, 3, 20])
    lms, frames = views(waves, labelled, unlabelled, _gen())
    assert lms.shape[:3] == (8, 1, 64) and frames.shape == (8,)
    assert int(frames.max()) == lms.shape[-1] and int(frames.max()) <= 1 + 2400 // 160
    again, _ = views(waves, labelled, unlabelled, _gen())
    assert torch.equal(lms, again)
    # Weak and strong views of the same clip differ (strong ones add noise and fades).
    assert not torch.equal(lms[2:5], lms[5:8])
    dataset = ClipDataset(waves, np.zeros(len(waves), dtype=np.int64))
    assert len(dataset) == len(clips) and dataset.X is waves
    with pytest.raises(ValueError, match="targets"):
        ClipDataset(waves, np.zeros(3))


def test_joint_network_keeps_encoder_batch_norm_frozen(random_encoder, clips):
    encoder = random_encoder.module_
    embeddings = random_encoder.transform(clips)
    pipeline = make_preprocessor("l2", 8, embeddings.shape, seed=0).fit(embeddings)
    classifier = MultiHead(8, n_clusters=2, hidden_dims=(16,))
    try:
        network = JointNetwork(encoder, classifier, pipeline).train()
        norms = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and not any(m.training for m in norms)
        assert classifier.training and encoder.fc.training
        network.eval()
        lms, frames = random_encoder.log_mel(random_encoder.waveforms(clips[:4]))
        logits = network(lms, frames)
        expected = classifier(
            torch.as_tensor(pipeline.transform(embeddings[:4]), dtype=torch.float32)
        )
        np.testing.assert_allclose(logits.detach().numpy(), expected.detach().numpy(), atol=1e-4)
    finally:
        encoder.eval()


# --- estimator -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=240, centers=3, n_features=16, cluster_std=2.0, random_state=0)
    return X.astype(np.float32), y


def test_fit_attributes_and_shapes(blobs):
    X, y = blobs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        spice = _tiny().fit(X)
    assert spice.labels_.shape == (240,)
    assert spice.labels_reliable_.dtype == bool and spice.labels_reliable_.any()
    proba = spice.predict_proba(X[:7])
    assert proba.shape == (7, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(spice.predict(X), spice.labels_)
    np.testing.assert_array_equal(spice.predict(X[:1]), spice.labels_[:1])  # fewer than 2 * K
    assert spice.head_losses_.shape == (2,)
    assert spice.best_head_ == int(np.argmin(spice.head_losses_))
    assert spice.history_[:, "stage"] == ["self", "self", "semi", "semi"]
    assert spice.history_[:, "epoch"] == [1, 2, 3, 4]
    assert spice.history_[:, "train_batch_count"][2:] == [30, 30]  # 60 steps: 2 epochs of 30
    # The kept head is the best (epoch, head) pair of the run by the label-free loss.
    assert spice.best_epoch_ in (1, 2)
    assert spice.history_[spice.best_epoch_ - 1, "head_losses"] == list(spice.head_losses_)
    assert spice.head_losses_.min() == min(min(row) for row in spice.history_[:2, "head_losses"])
    assert isinstance(spice.module_, torch.nn.Module) and not spice.module_.training


def test_without_stage_three_keeps_self_labels(blobs):
    X, _ = blobs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        spice = _tiny(semi_max_steps=0).fit(X)
    np.testing.assert_array_equal(spice.labels_, spice.self_labels_)
    assert spice.history_[:, "stage"] == ["self", "self"]


def test_self_labels_are_the_consensus_of_the_heads(blobs):
    X, _ = blobs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        spice = _tiny(n_heads=3, semi_max_steps=0).fit(X)
    # Without stage 3 the consensus predicts: every head's probabilities side by side.
    np.testing.assert_array_equal(spice.self_labels_, spice.consensus_.labels)
    np.testing.assert_array_equal(spice.labels_, spice.consensus_.labels)
    np.testing.assert_array_equal(spice.predict(X), spice.labels_)
    proba = spice.predict_proba(X[:5])
    assert proba.shape == (5, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    # With stage 3 the fresh classifier predicts alone.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        staged = _tiny(n_heads=3).fit(X)
    assert staged.consensus_ is None
    np.testing.assert_array_equal(staged.predict(X), staged.labels_)


def test_best_head_selection_keeps_the_lowest_loss_head(blobs):
    X, _ = blobs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        spice = _tiny(n_heads=3, head_selection="best", semi_max_steps=0).fit(X)
        heads = _tiny(n_heads=3, semi_max_steps=0).fit(X)  # same seed, same heads
    assert spice.consensus_ is None and spice.best_head_ == heads.best_head_
    features = heads._preprocess(X)
    best = heads.module_(torch.as_tensor(features))[heads.best_head_].argmax(dim=1).numpy()
    np.testing.assert_array_equal(spice.labels_, best)
    np.testing.assert_array_equal(spice.self_labels_, best)


def test_exact_repeat_and_pickle(blobs):
    X, _ = blobs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        first, other = _tiny().fit(X), _tiny(random_state=1).fit(X)
        second = _tiny(device=torch.device("cpu")).fit(X)  # a torch.device is accepted too
    np.testing.assert_array_equal(first.labels_, second.labels_)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    np.testing.assert_array_equal(first.labels_reliable_, second.labels_reliable_)
    assert not np.array_equal(first.predict_proba(X), other.predict_proba(X))
    restored = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(restored.predict_proba(X), first.predict_proba(X))


def test_rejects_too_few_samples():
    with pytest.raises(ValueError, match="minimum of 6 is required"):
        _tiny().fit(np.random.RandomState(0).normal(size=(5, 4)))


@pytest.mark.parametrize("preprocessing", ["standardize", None])
def test_other_preprocessing_reaches_the_blobs(preprocessing):
    X, y = make_blobs(n_samples=600, centers=3, n_features=16, random_state=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        spice = _tiny(
            preprocessing=preprocessing, max_steps=200, n_repeats=4, semi_max_steps=0
        ).fit(X)
    assert type(spice.preprocessor_.steps[-1][1]) is not Normalizer
    assert adjusted_rand_score(y, spice.labels_) > 0.9


def test_stage_three_trains_on_reliable_samples_and_finds_the_blobs():
    # Well separated, 200 samples per blob: SPICE-Self becomes confident enough that
    # every cluster has reliable samples without the guard's top-up (an error here).
    X, y = make_blobs(n_samples=600, centers=3, n_features=16, cluster_std=1.0, random_state=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=TOP_UP, category=UserWarning)
        spice = _tiny(
            hidden_dims=(32,),
            n_components=64,
            max_steps=200,
            n_repeats=4,
            semi_max_steps=250,
            semi_batch_size=32,
            semi_lr=1e-2,
            unlabelled_ratio=2,
        ).fit(X)
    reliable = spice.labels_reliable_
    per_cluster = np.bincount(spice.self_labels_[reliable], minlength=3)
    assert per_cluster.min() >= spice.min_reliable
    # Every reliable sample is kept: none is discarded to balance the clusters.
    assert per_cluster.sum() > 0.8 * len(X)
    assert adjusted_rand_score(y[reliable], spice.self_labels_[reliable]) == 1.0
    # The fresh stage-3 classifier learns the reliable labels: its loss falls and it
    # reproduces them, confidently, on the whole set.
    semi = [row["train_loss"] for row in spice.history_ if row["stage"] == "semi"]
    assert len(semi) == 5 and semi[-1] < semi[0] / 4
    np.testing.assert_array_equal(spice.labels_[reliable], spice.self_labels_[reliable])
    assert adjusted_rand_score(y, spice.labels_) == 1.0
    assert spice.predict_proba(X).max(axis=1).min() > 0.9


def test_verbose_progress_bars_know_each_stage_length(blobs, capsys):
    X, _ = blobs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        spice = _tiny(max_steps=1, semi_max_steps=7, verbose=1).fit(X)
    err = capsys.readouterr().err
    totals = {int(total) for total in re.findall(r"\d+/(\d+) \[", err)}
    assert "SPICE-Self:" in err and "SPICE-Semi:" in err  # each bar names its stage
    self_steps = prototype_batches_per_epoch(
        240, 3, labelling_size=5000, batch_size=128, n_repeats=2
    )
    semi_steps = 7
    assert totals == {self_steps, semi_steps} and self_steps != semi_steps
    # ... and they are the steps the stages ran.
    assert spice.history_[:, "train_batch_count"] == [self_steps, semi_steps]


# --- joint encoder mode --------------------------------------------------------------------


def _joint(**params) -> SPICEClusterer:
    return _tiny(
        n_clusters=2,
        n_components=4,
        max_steps=4,  # two SPICE-Self epochs of 2 steps on 24 clips
        joint_max_epochs=1,
        joint_batch_size=4,
        unlabelled_ratio=2,
        encoder_lr=1e-3,
        **params,
    )


def test_joint_encoder_mode_end_to_end(clips):
    encoder = BYOLAEmbedder(weights=None, random_state=0, device="cpu")
    spice = _joint(encoder=encoder)
    spice.set_params(encoder__batch_size=8)
    assert spice.get_params()["encoder__batch_size"] == 8
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
        spice.fit(clips)
    assert spice.encoder_.batch_size == 8 and spice.encoder.batch_size == 8
    assert not hasattr(spice.encoder, "module_")  # the given encoder is cloned, not fitted
    assert spice.history_[:, "stage"] == ["self", "self", "semi", "semi", "joint"]
    before = BYOLAEmbedder(weights=None, random_state=0, device="cpu").fit(clips).module_
    after = spice.encoder_.module_
    assert not torch.equal(before.fc[0].weight, after.fc[0].weight)
    # Batch-norm statistics are frozen during the joint stage.
    assert torch.equal(before.features[1].running_mean, after.features[1].running_mean)
    assert not after.training and not spice.module_.training
    np.testing.assert_array_equal(spice.predict(clips), spice.labels_)
    assert spice.predict_proba(clips[:3]).shape == (3, 2)


def test_joint_encoder_mode_repeats_exactly_without_touching_the_global_rng(clips):
    def fit(random_state):
        spice = SPICEClusterer(
            2,
            encoder=BYOLAEmbedder(weights=None),
            n_heads=2,
            hidden_dims=(16,),
            n_components=4,
            max_steps=1,
            n_repeats=1,
            semi_max_steps=1,
            n_neighbors=5,
            joint_max_epochs=1,
            joint_batch_size=4,
            unlabelled_ratio=2,
            device="cpu",
            random_state=random_state,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=TOP_UP, category=UserWarning)
            return spice.fit(clips)

    state = torch.random.get_rng_state()
    first, second = fit(0), fit(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.encoder.random_state is None  # the parameter is left as given
    assert first.encoder_.random_state == second.encoder_.random_state is not None
    np.testing.assert_array_equal(first.labels_, second.labels_)
    np.testing.assert_array_equal(first.predict_proba(clips), second.predict_proba(clips))
    assert not np.array_equal(fit(1).predict_proba(clips), first.predict_proba(clips))


def test_joint_encoder_mode_needs_one_classifier(clips):
    encoder = BYOLAEmbedder(weights=None, random_state=0, device="cpu")
    with pytest.raises(ValueError, match='needs head_selection="best"'):
        _joint(encoder=encoder, semi_max_steps=0).fit(clips)


def test_joint_encoder_mode_rejects_too_few_clips(clips):
    with pytest.raises(ValueError, match="needs at least 4 clips, got 3"):
        _joint(encoder=BYOLAEmbedder(weights=None, random_state=0)).fit(clips[:3])


# --- real data (slow) ----------------------------------------------------------------------


def _scores(y, labels) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from skaudiocluster.metrics import hungarian_accuracy

    return {
        "nmi": normalized_mutual_info_score(y, labels),
        "acc": hungarian_accuracy(y, labels),
        "ari": adjusted_rand_score(y, labels),
    }


def _defaults_over_seeds(
    fit_seeds, check_confidence, X, y, n_clusters: int
) -> tuple[np.ndarray, float]:
    """NMI of SPICE at its defaults over seeds 0-2, and the mean NMI of KMeans (10 inits).

    Each fit's ``confidence_`` must rank its mistakes (``check_confidence``).
    """
    from sklearn.cluster import KMeans

    nmi, kmeans = [], []
    fits = fit_seeds(SPICEClusterer(n_clusters, device="cpu"), X)
    check_confidence(y, fits, "SPICE")
    for seed, est in enumerate(fits):
        km = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(X)
        kmeans.append(_scores(y, km)["nmi"])
        nmi.append(_scores(y, est.labels_)["nmi"])
        print(
            f"seed {seed}: KMeans NMI {kmeans[-1]:.3f}  SPICE-Self NMI "
            f"{_scores(y, est.self_labels_)['nmi']:.3f}  SPICE NMI {nmi[-1]:.3f}  "
            f"reliable {est.labels_reliable_.sum()}"
        )
    return np.array(nmi), float(np.mean(kmeans))


@pytest.mark.slow
def test_fsdd_speaker_at_defaults(fit_seeds, check_confidence, fsdd_byola_d512):
    # bench_quality, 3 seeds: KMeans 0.818, Ward 0.926, UMAP+KMeans 0.898.
    nmi, kmeans = _defaults_over_seeds(
        fit_seeds, check_confidence, fsdd_byola_d512["X"], fsdd_byola_d512["speaker"], 6
    )
    assert nmi.mean() >= FSDD_SPEAKER_NMI and nmi.std() <= 0.02
    assert nmi.min() >= kmeans + 0.05


@pytest.mark.slow
def test_bengalese_finch_at_defaults(fit_seeds, check_confidence, bengalese_byola_d512):
    # bench_quality, 3 seeds: KMeans 0.920, Ward 0.941, UMAP+KMeans 0.985.
    nmi, kmeans = _defaults_over_seeds(
        fit_seeds, check_confidence, bengalese_byola_d512["X"], bengalese_byola_d512["y"], 11
    )
    assert nmi.mean() >= BENGALESE_NMI and nmi.std() <= 0.02
    assert nmi.min() >= kmeans + 0.03


# A reduced budget for the joint stage's test (the encoder pass dominates).
_JOINT_BUDGET = dict(max_steps=600, semi_max_steps=300)


@pytest.mark.slow
def test_joint_encoder_on_fsdd_subset(fsdd_dir, byola_d512_weights, fsdd_byola_d512):
    from sklearn.cluster import KMeans

    from skaudiocluster.datasets import load_fsdd

    paths, speaker = load_fsdd(fsdd_dir, target="speaker")
    subset = np.random.RandomState(0).choice(len(paths), 1000, replace=False)
    clips = [paths[i] for i in subset]
    speaker, digit = speaker[subset], fsdd_byola_d512["digit"][subset]
    spice = SPICEClusterer(
        6,
        encoder=BYOLAEmbedder(weights=byola_d512_weights, device="cpu"),
        joint_max_epochs=1,
        random_state=0,
        device="cpu",
        **_JOINT_BUDGET,
    ).fit(clips)
    joint_losses = [row["train_loss"] for row in spice.history_ if row["stage"] == "joint"]
    kmeans = KMeans(6, n_init=10, random_state=0).fit_predict(fsdd_byola_d512["X"][subset])
    final, self_only = _scores(speaker, spice.labels_), _scores(speaker, spice.self_labels_)
    print(
        f"joint SPICE, 1,000 FSDD clips: speaker NMI {final['nmi']:.3f} acc {final['acc']:.3f} "
        f"ARI {final['ari']:.3f} (SPICE-Self {self_only['nmi']:.3f}, "
        f"KMeans {_scores(speaker, kmeans)['nmi']:.3f}); digit NMI "
        f"{_scores(digit, spice.labels_)['nmi']:.3f}; joint losses {np.round(joint_losses, 3)}"
    )
    assert len(joint_losses) == 1 and np.all(np.isfinite(joint_losses))
    assert final["nmi"] >= _scores(speaker, kmeans)["nmi"] + 0.02
    np.testing.assert_array_equal(spice.predict(clips[:40]), spice.labels_[:40])
