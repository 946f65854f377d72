"""SPICEClusterer: pseudo-labelling rules on hand-built inputs, estimator contract, FSDD quality."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.utils.estimator_checks import parametrize_with_checks

from skaudiocluster.cluster import SPICEClusterer
from skaudiocluster.cluster._spice_labels import (
    IGNORE,
    double_softmax_cross_entropy,
    fixmatch_loss,
    flatten_selection,
    neighbour_agreement,
    reliable_labels,
    select_prototype_samples,
)
from skaudiocluster.cluster.spice import _affine_preprocessing, embedding_view
from skaudiocluster.transformers.byola import BYOLAEmbedder


def _tiny(**params) -> SPICEClusterer:
    defaults = dict(
        n_clusters=3,
        n_heads=2,
        hidden_dim=16,
        n_components=8,
        max_epochs=2,
        n_repeats=2,
        semi_max_epochs=2,
        n_neighbors=10,
        device="cpu",
        random_state=0,
    )
    return SPICEClusterer(**{**defaults, **params})


# --- prototype pseudo-labels -------------------------------------------------------------


def test_prototype_is_mean_of_top_confident_and_selects_its_nearest():
    # Cluster 0's two most confident samples are 0 and 1: prototype (1, 1)/sqrt(2)
    # direction, whose nearest samples are 4 and 5 (on the diagonal), not 0 and 1.
    features = torch.nn.functional.normalize(
        torch.tensor(
            [
                [1.0, 0.0],
                [0.0, 1.0],
                [-1.0, 0.1],
                [-1.0, -0.1],
                [1.0, 1.0],
                [1.0, 0.9],
                [-0.9, 0.0],
                [-1.0, 0.0],
            ]
        ),
        dim=1,
    )
    p0 = torch.tensor([0.99, 0.98, 0.1, 0.1, 0.5, 0.5, 0.2, 0.2])
    proba = torch.stack([p0, 1 - p0], dim=1)
    selected = select_prototype_samples(proba, features, center_ratio=0.5)
    # m = floor(0.5 * 8 / 2) = 2 confident samples per prototype, n = 8 / 2 = 4 selected.
    assert selected.shape == (2, 4)
    assert set(selected[0, :2].tolist()) == {4, 5}
    # Cluster 1's prototype averages samples 2 and 3 and points to (-1, 0).
    assert set(selected[1].tolist()) == {2, 3, 6, 7}
    assert set(selected[0].tolist()) == {0, 1, 4, 5}


def test_selection_per_head_and_balanced():
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(60, 5, generator=gen), dim=1)
    proba = torch.randn(3, 60, 4, generator=gen).softmax(dim=-1)
    selected = select_prototype_samples(proba, features)
    assert selected.shape == (3, 4, 15)
    assert int(selected.max()) < 60
    for head in range(3):
        alone = select_prototype_samples(proba[head], features)
        assert torch.equal(alone, selected[head])
        for cluster in range(4):
            top = proba[head, :, cluster].topk(7).indices
            similarity = features @ features[top].mean(dim=0)
            chosen = selected[head, cluster]
            rest = torch.ones(60, dtype=torch.bool)
            rest[chosen] = False
            assert similarity[chosen].min() >= similarity[rest].max()
    indices, labels = flatten_selection(selected)
    assert indices.shape == labels.shape == (3, 60)
    assert torch.equal(torch.bincount(labels[1]), torch.full((4,), 15))


def test_selection_never_empty_when_clusters_outnumber_samples():
    features = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    selected = select_prototype_samples(torch.rand(5, 4).softmax(dim=1), features)
    assert selected.shape == (4, 1)


# --- losses --------------------------------------------------------------------------------


def test_double_softmax_bounds_and_uniform_value():
    k = 10
    logits = torch.randn(3, 50, k) * 20
    target = torch.randint(0, k, (3, 50))
    loss = double_softmax_cross_entropy(logits, target)
    assert loss.shape == (3,)
    assert torch.all(loss >= math.log(1 + (k - 1) / math.e) - 1e-5)
    assert torch.all(loss <= math.log(k - 1 + math.e) + 1e-5)
    uniform = double_softmax_cross_entropy(torch.zeros(2, 4, k), torch.zeros(4, dtype=torch.long))
    assert torch.allclose(uniform, torch.full((2,), math.log(k)))


def test_cross_entropy_ignores_unlabelled_and_plain_option():
    logits = torch.randn(2, 6, 3)
    target = torch.tensor([[0, 1, IGNORE, 2, IGNORE, 0], [IGNORE] * 6])
    loss = double_softmax_cross_entropy(logits, target, double_softmax=False)
    keep = target[0] != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[0][keep], target[0][keep])
    assert torch.isclose(loss[0], expected)
    assert loss[1] == 0


def test_fixmatch_mask():
    labelled, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    weak, strong = torch.randn(8, 3), torch.randn(8, 3)
    supervised = torch.nn.functional.cross_entropy(labelled, labels)
    assert torch.isclose(fixmatch_loss(labelled, labels, weak, strong, threshold=1.0), supervised)
    everything = supervised + torch.nn.functional.cross_entropy(strong, weak.argmax(dim=1))
    assert torch.isclose(fixmatch_loss(labelled, labels, weak, strong, threshold=0.0), everything)


# --- reliable labels ---------------------------------------------------------------------


def _two_groups(n=20, seed=0):
    rng = np.random.RandomState(seed)
    features = np.vstack([rng.normal([8, 0], 1, (n, 2)), rng.normal([0, 8], 1, (n, 2))])
    proba = np.repeat([[0.999, 0.001], [0.001, 0.999]], n, axis=0)
    return features, proba


def test_reliability_rule_drops_inconsistent_and_unconfident_samples():
    features, proba = _two_groups()
    proba[0] = [0.001, 0.999]  # labelled 1 among cluster-0 neighbours
    proba[1] = [0.98, 0.02]  # consistent but not confident enough
    agreement = neighbour_agreement(features, proba.argmax(axis=1), 10)
    assert agreement[0] <= 0.1 and np.median(agreement) == 1.0
    mask = reliable_labels(
        features, proba, n_neighbors=10, min_per_cluster=1, random_state=np.random.RandomState(0)
    )
    assert not mask[0] and not mask[1]
    # Balanced: cluster 0 has 18 reliable samples, so cluster 1 keeps 18 of its 19.
    assert mask[:20].sum() == mask[20:].sum() == 18


def test_reliable_guard_tops_up_a_cluster_without_reliable_samples():
    features, proba = _two_groups()
    proba[20:] = [0.3, 0.7]  # cluster 1 is never confident
    with pytest.warns(UserWarning, match=r"cluster\(s\) \[1\]"):
        mask = reliable_labels(
            features,
            proba,
            n_neighbors=10,
            min_per_cluster=5,
            random_state=np.random.RandomState(0),
        )
    assert mask[20:].sum() == 5
    assert mask[:20].sum() == 5  # balanced to the guaranteed size


def test_reliable_guard_with_an_unpredicted_cluster_and_tiny_clusters():
    features, proba = _two_groups(n=3)
    proba = np.hstack([proba, np.zeros((6, 1))])  # cluster 2 predicted for no sample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mask = reliable_labels(
            features,
            proba,
            n_neighbors=100,
            min_per_cluster=10,
            random_state=np.random.RandomState(0),
        )
    assert mask.sum() == 6  # everything available, no crash, no empty set


# --- views -------------------------------------------------------------------------------


def test_embedding_view_unit_rows_and_seeded():
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    first = embedding_view(x, noise=0.5, dropout=0.3, generator=torch.Generator().manual_seed(1))
    again = embedding_view(x, noise=0.5, dropout=0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    assert torch.allclose(first.norm(dim=1), torch.ones(16))
    assert not torch.allclose(first, x)
    assert torch.allclose(embedding_view(x, noise=0, dropout=0, generator=None), x)


# --- estimator -----------------------------------------------------------------------------


@parametrize_with_checks([_tiny(max_epochs=1, n_repeats=1, semi_max_epochs=1)])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=240, centers=3, n_features=16, cluster_std=2.0, random_state=0)
    return X.astype(np.float32), y


def test_fit_attributes_and_shapes(blobs):
    X, y = blobs
    spice = _tiny().fit(X)
    assert spice.labels_.shape == (240,)
    assert spice.labels_reliable_.dtype == bool and spice.labels_reliable_.any()
    proba = spice.predict_proba(X[:7])
    assert proba.shape == (7, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(spice.predict(X), spice.labels_)
    assert spice.head_losses_.shape == (2,)
    assert spice.best_head_ == int(np.argmin(spice.head_losses_))
    assert len(spice.history_["self"]) == 2 and len(spice.history_["semi"]) == 2
    assert isinstance(spice.module_, torch.nn.Module)


def test_without_stage_three_keeps_self_labels(blobs):
    X, _ = blobs
    spice = _tiny(semi_max_epochs=0).fit(X)
    np.testing.assert_array_equal(spice.labels_, spice.self_labels_)
    assert "semi" not in spice.history_


def test_exact_repeat_and_pickle(blobs):
    X, _ = blobs
    first = _tiny().fit(X)
    second = _tiny().fit(X)
    np.testing.assert_array_equal(first.labels_, second.labels_)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    np.testing.assert_array_equal(first.labels_reliable_, second.labels_reliable_)
    restored = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(restored.predict_proba(X), first.predict_proba(X))


def test_rejects_too_few_samples():
    with pytest.raises(ValueError, match="n_samples=5"):
        _tiny().fit(np.random.RandomState(0).normal(size=(5, 4)))


# --- joint encoder mode --------------------------------------------------------------------


def test_affine_preprocessing_matches_the_pipeline(blobs):
    X, _ = blobs
    for n_components in (5, None):
        spice = _tiny(n_components=n_components)
        pipeline = spice._make_preprocessor(X, 0).fit(X)
        weight, bias = _affine_preprocessing(pipeline)
        mapped = torch.nn.functional.normalize(torch.as_tensor(X) @ weight + bias, dim=1)
        np.testing.assert_allclose(mapped.numpy(), pipeline.transform(X), atol=1e-5)


def test_joint_encoder_mode_end_to_end():
    rng = np.random.RandomState(0)
    t = np.arange(3200) / 16000
    clips = [
        np.sin(2 * np.pi * f * t[: rng.randint(2000, 3200)]) * 0.3 + 0.01 * rng.randn(1)
        for f in [220.0] * 12 + [1800.0] * 12
    ]
    encoder = BYOLAEmbedder(weights=None, random_state=0, device="cpu")
    spice = _tiny(
        encoder=encoder,
        n_clusters=2,
        n_components=4,
        joint_max_epochs=1,
        joint_batch_size=4,
        unlabelled_ratio=2,
        encoder_lr=1e-3,
    )
    spice.set_params(encoder__batch_size=8)
    assert spice.get_params()["encoder__batch_size"] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spice.fit(clips)
    assert spice.encoder_.batch_size == 8 and spice.encoder.batch_size == 8
    assert not hasattr(spice.encoder, "module_")  # the given encoder is cloned, not fitted
    assert len(spice.history_["joint"]) == 1
    before = BYOLAEmbedder(weights=None, random_state=0, device="cpu").fit(clips).module_
    after = spice.encoder_.module_
    assert not torch.equal(before.fc[0].weight, after.fc[0].weight)
    np.testing.assert_array_equal(spice.predict(clips), spice.labels_)
    assert spice.predict_proba(clips[:3]).shape == (3, 2)


# --- real data (slow) ----------------------------------------------------------------------


def _scores(y, labels) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from skaudiocluster.metrics import hungarian_accuracy

    return {
        "nmi": normalized_mutual_info_score(y, labels),
        "acc": hungarian_accuracy(y, labels),
        "ari": adjusted_rand_score(y, labels),
    }


# The prototype's reduced budget (algorithms.md defaults are 30 epochs x 8 repeats).
_FSDD_BUDGET = dict(max_epochs=10, n_repeats=4, semi_max_epochs=50)


@pytest.mark.slow
def test_fsdd_speaker_beats_kmeans(fsdd_byola_d512):
    from sklearn.cluster import KMeans

    X, y = fsdd_byola_d512["X"], fsdd_byola_d512["speaker"]
    kmeans, spice_self, spice = [], [], []
    for seed in range(3):
        kmeans.append(_scores(y, KMeans(6, n_init=10, random_state=seed).fit_predict(X))["nmi"])
        est = SPICEClusterer(6, random_state=seed, device="cpu", **_FSDD_BUDGET).fit(X)
        reliable = est.labels_reliable_
        spice_self.append(_scores(y, est.self_labels_)["nmi"])
        spice.append(_scores(y, est.labels_))
        purity = _scores(y[reliable], est.self_labels_[reliable])["acc"]
        print(
            f"seed {seed}: KMeans NMI {kmeans[-1]:.3f}  SPICE-Self NMI {spice_self[-1]:.3f}  "
            f"SPICE NMI {spice[-1]['nmi']:.3f} acc {spice[-1]['acc']:.3f} "
            f"ARI {spice[-1]['ari']:.3f}  reliable {reliable.sum()} at purity {purity:.3f}"
        )
    nmi = [score["nmi"] for score in spice]
    assert np.mean(spice_self) >= np.mean(kmeans) + 0.02
    assert np.mean(nmi) >= np.mean(kmeans) + 0.06
    assert all(value > max(kmeans) for value in nmi)


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
        **_FSDD_BUDGET,
    ).fit(clips)
    joint_losses = [epoch["train_loss"] for epoch in spice.history_["joint"]]
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
