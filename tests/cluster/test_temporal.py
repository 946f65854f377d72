"""TemporalClusterer: its views, its loss, the estimator, and the content view on real speech."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import normalized_mutual_info_score

from skaudiocluster import SpectrogramTransformer, TemporalClusterer
from skaudiocluster.cluster._temporal_net import TemporalModule, scan_loss, timing_views


def _sequences(n_per_class: int = 20, n_frames: int = 10, seed: int = 0) -> tuple:
    """Rising and falling 2-feature contours with random onsets: (rows, labels)."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for label, direction in enumerate((1.0, -1.0)):
        for _ in range(n_per_class):
            onset = rng.uniform(0, 0.3)
            t = np.clip((np.linspace(0, 1, n_frames) - onset) / (1 - onset), 0, 1)
            contour = direction * (2 * t - 1)
            frames = np.stack([contour, 0.5 * contour], axis=1) + rng.normal(
                scale=0.1, size=(n_frames, 2)
            )
            rows.append(frames.ravel())
            labels.append(label)
    return np.asarray(rows), np.asarray(labels)


def test_views_keep_the_shape_and_differ_from_the_clip():
    frames = torch.randn(8, 10, 3)
    views = timing_views(frames, torch.Generator().manual_seed(0))
    assert views.shape == frames.shape
    assert not torch.allclose(views, frames)


def test_views_of_a_constant_sequence_are_constant_or_masked():
    frames = torch.ones(4, 10, 2)
    views = timing_views(frames, torch.Generator().manual_seed(0))
    assert torch.all((views == 1) | (views == 0))


def test_view_without_crop_warp_or_mask_is_the_clip():
    frames = torch.randn(3, 10, 2)
    same = timing_views(
        frames, torch.Generator().manual_seed(0), span=(1, 1), warp=(1, 1), mask_prob=0
    )
    torch.testing.assert_close(same, frames, atol=1e-5, rtol=0)


def test_networks_are_independent():
    module = TemporalModule(n_features=2, hidden=4, n_clusters=3, n_heads=2)
    frames = torch.randn(5, 10, 2)
    logits = module(frames)
    assert logits.shape == (2, 5, 3)
    logits[0].sum().backward()
    second = module.head.weight.grad[1]
    assert torch.all(second == 0)  # the first network's output does not reach the second's


def test_scan_loss_prefers_agreeing_spread_assignments():
    confident = torch.eye(4).repeat(1, 1).unsqueeze(0) * 20
    agreeing = scan_loss(confident, [confident], entropy_weight=5.0)
    collapsed = torch.zeros(1, 4, 4)
    collapsed[..., 0] = 20
    assert agreeing < scan_loss(collapsed, [collapsed], entropy_weight=5.0)
    shuffled = confident[:, [1, 2, 3, 0]]
    assert agreeing < scan_loss(confident, [shuffled], entropy_weight=5.0)


def test_finds_rising_and_falling_contours_despite_their_onsets():
    X, y = _sequences()
    model = TemporalClusterer(2, n_frames=10, max_steps=150, random_state=0).fit(X)
    assert normalized_mutual_info_score(y, model.labels_) == 1.0
    assert model.n_iter_ == 150
    assert len(model.loss_curve_) == 150
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    assert model.predict_proba(X).shape == (len(X), 2)


def test_seeded_fits_repeat_and_pickles_round_trip():
    X, _ = _sequences(10)
    a = TemporalClusterer(2, max_steps=20, random_state=3).fit(X)
    b = clone(a).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    restored = pickle.loads(pickle.dumps(a))
    np.testing.assert_allclose(restored.predict_proba(X), a.predict_proba(X), atol=1e-6)


def test_rows_that_are_not_frame_sequences_are_refused():
    X, _ = _sequences(5)
    with pytest.raises(ValueError, match="not a multiple of n_frames=7"):
        TemporalClusterer(2, n_frames=7, max_steps=2).fit(X)


def test_default_frames_are_the_content_views():
    from skaudiocluster.transformers import CONTENT_FRAMES

    assert TemporalClusterer().n_frames == CONTENT_FRAMES


def test_has_no_pca_which_would_mix_the_frames():
    assert "n_components" not in TemporalClusterer().get_params()


# ---------------------------------------------------------------------------------------------
# The content view on real speech: the same clips group by word instead of by speaker.

SEEDS = (0, 1, 2)


def _umap_kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    from skaudiocluster.cluster._neighbors import umap_layout

    layout = umap_layout(StandardScaler().fit_transform(X), 10, random_state=seed)
    return KMeans(k, n_init=10, random_state=seed).fit_predict(layout)


@pytest.fixture(scope="module")
def fsdd_digits_content(fsdd_dir):
    from skaudiocluster import load_fsdd

    paths, digits = load_fsdd(fsdd_dir, target="digit")
    return SpectrogramTransformer(group_by="content").fit_transform(paths), digits


@pytest.fixture(scope="module")
def arabic_keywords_content(shared_dir):
    folder = shared_dir / "data/arabic_speech_commands"
    assert (folder / "labels.csv").exists(), f"missing shared file {folder / 'labels.csv'}"
    with open(folder / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = [str(folder / row["path"]) for row in rows]
    words = np.asarray([row["label"] for row in rows])
    return SpectrogramTransformer(group_by="content").fit_transform(paths), words


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, k, floor",
    [("fsdd_digits_content", 10, 0.50), ("arabic_keywords_content", 12, 0.62)],
    ids=["fsdd-digits", "arabic-keywords"],
)
def test_content_view_groups_spoken_words(request, data, k, floor):
    # the targets for content view + UMAP + k-means, mean of 3 seeds
    X, words = request.getfixturevalue(data)
    scores = [normalized_mutual_info_score(words, _umap_kmeans(X, k, s)) for s in SEEDS]
    print(f"{data}: content view + UMAP + k-means NMI {np.round(scores, 3)}")
    assert np.mean(scores) >= floor, scores


@pytest.mark.slow
def test_fsdd_content_view_no_longer_groups_by_speaker(fsdd_dir, fsdd_digits_content):
    from skaudiocluster import load_fsdd

    X, _ = fsdd_digits_content
    _, speakers = load_fsdd(fsdd_dir, target="speaker")
    score = normalized_mutual_info_score(speakers, _umap_kmeans(X, 6, 0))
    print(f"FSDD by speaker, content view + UMAP + k-means NMI {score:.3f}")
    assert score < 0.3  # the pooled view gives 0.9: the voice is removed


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, k, floor",
    [("fsdd_digits_content", 10, 0.50), ("arabic_keywords_content", 12, 0.70)],
    ids=["fsdd-digits", "arabic-keywords"],
)
def test_temporal_clusterer_on_the_content_view(request, data, k, floor):
    # floors under the measured means (docs/benchmark.rst, "The content view")
    X, words = request.getfixturevalue(data)
    scores = [
        normalized_mutual_info_score(words, TemporalClusterer(k, random_state=s).fit_predict(X))
        for s in SEEDS
    ]
    print(f"{data}: TemporalClusterer NMI {np.round(scores, 3)}")
    assert np.mean(scores) >= floor, scores
