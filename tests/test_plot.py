import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from skorch.history import History

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from skaudiocluster._training import epoch_history  # noqa: E402
from skaudiocluster.plot import (  # noqa: E402
    plot_cluster_map,
    plot_confusion_matrix,
    plot_history,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def assert_valid_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 50


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=90, centers=3, n_features=6, random_state=0)
    return X, y


def test_cluster_map_two_panels_png(blobs, tmp_path):
    X, y = blobs
    clusters = (y + 1) % 3
    fig = plot_cluster_map(X, clusters, y_true=np.array(["a", "b", "c"])[y], reducer=PCA(2))
    titles = [axis.get_title() for axis in fig.axes]
    assert titles == ["clusters (K=3)", "true labels"]
    # one scatter collection per distinct label, all points drawn
    assert [len(axis.collections) for axis in fig.axes] == [3, 3]
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(X)
    fig.savefig(tmp_path / "map.png")
    assert_valid_png(tmp_path / "map.png")


def test_cluster_map_uses_two_columns_as_is(blobs):
    X, y = blobs

    class Forbidden:
        def fit_transform(self, X):
            raise AssertionError("2-D input must not be reduced")

    fig = plot_cluster_map(X[:, :2], y, reducer=Forbidden())
    offsets = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(X[:, 0]))


def test_cluster_map_on_given_axes_and_errors(blobs):
    X, y = blobs
    fig, axes = plt.subplots(1, 2)
    assert plot_cluster_map(X, y, y, reducer=PCA(2), ax=axes) is fig
    with pytest.raises(ValueError, match="expected 2 axes"):
        plot_cluster_map(X, y, y, reducer=PCA(2), ax=axes[0])
    with pytest.raises(ValueError, match="one row per label"):
        plot_cluster_map(X, y[:-1])
    with pytest.raises(ValueError, match="y_true"):
        plot_cluster_map(X, y, y[:-1])


def test_cluster_map_default_is_pca_from_the_threshold(tmp_path, monkeypatch):
    from skaudiocluster import plot

    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    X, y = make_blobs(n_samples=plot.TSNE_BELOW, centers=3, n_features=6, random_state=0)
    fig = plot_cluster_map(X, y)
    points = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    order = np.concatenate([np.flatnonzero(y == label) for label in dict.fromkeys(y.tolist())])
    np.testing.assert_allclose(points, PCA(2, random_state=0).fit_transform(X)[order])
    fig.savefig(tmp_path / "pca.png")
    assert_valid_png(tmp_path / "pca.png")


def test_confusion_matrix_matches_and_counts(tmp_path):
    y_true = ["cat"] * 4 + ["dog"] * 4 + ["owl"] * 2
    y_pred = [5, 5, 5, 7] + [7, 7, 7, 7] + [9, 2]
    fig = plot_confusion_matrix(y_true, y_pred)
    axis = fig.axes[0]
    image = axis.get_images()[0].get_array()
    assert image.shape == (3, 4)
    assert image.sum() == len(y_true)
    # matched clusters face their classes: 5 -> cat, 7 -> dog, then owl's match
    assert [t.get_text() for t in axis.get_xticklabels()][:2] == ["5", "7"]
    assert np.trace(image) == 3 + 4 + 1
    assert axis.get_title() == "Hungarian accuracy 0.80"
    assert len(axis.texts) == 12
    fig.savefig(tmp_path / "confusion.png")
    assert_valid_png(tmp_path / "confusion.png")


def test_confusion_matrix_normalized_rows():
    fig = plot_confusion_matrix(
        [0, 0, 0, 1, 1, 2], [1, 1, 0, 0, 0, 2], normalize=True, annotate=False
    )
    image = np.asarray(fig.axes[0].get_images()[0].get_array())
    np.testing.assert_allclose(image.sum(axis=1), 1.0)
    assert not fig.axes[0].texts


def test_history_loss_and_k(tmp_path):
    history = History()
    for epoch in range(1, 7):
        history.new_epoch()
        history.record("epoch", epoch)
        history.record("train_loss", 2.0 / epoch)
        history.record("n_clusters", 3 + epoch // 2)
    fig = plot_history(history)
    loss_axis, k_axis = fig.axes
    assert (loss_axis.get_ylabel(), k_axis.get_ylabel()) == ("train_loss", "n_clusters")
    np.testing.assert_allclose(loss_axis.lines[0].get_ydata(), [2.0 / e for e in range(1, 7)])
    np.testing.assert_array_equal(k_axis.lines[0].get_ydata(), [3, 4, 4, 5, 5, 6])
    fig.savefig(tmp_path / "history.png")
    assert_valid_png(tmp_path / "history.png")


def _net_history(losses, **extra):
    history = History()
    for loss in losses:
        history.new_epoch()
        history.record("train_loss", loss)
        for key, value in extra.items():
            history.record(key, value)
        history.new_batch()
        history.record_batch("train_loss", loss)
    return SimpleNamespace(history=history)


def test_history_of_staged_estimator():
    # the one history_ shape of a multi-stage fit (SPICE): rows with a stage key, epochs counting on
    nets = [_net_history([1.0, 0.5]), _net_history([0.4, 0.3, 0.2], n_reliable=7)]

    class Fitted:
        history_ = epoch_history(nets, stage=["self", "semi"])

    fig = plot_history(Fitted(), keys=("train_loss", "n_reliable"))
    loss_axis, reliable_axis = fig.axes
    assert [line.get_label() for line in loss_axis.lines] == ["self", "semi"]
    np.testing.assert_array_equal(loss_axis.lines[0].get_xdata(), [1, 2])
    np.testing.assert_array_equal(loss_axis.lines[1].get_xdata(), [3, 4, 5])
    np.testing.assert_allclose(loss_axis.lines[1].get_ydata(), [0.4, 0.3, 0.2])
    # a stage that never records a key draws no line for it
    assert [line.get_label() for line in reliable_axis.lines] == ["semi"]
    assert loss_axis.get_legend() is not None


def test_history_stages_keep_order_of_first_appearance():
    rows = [{"stage": s, "train_loss": float(i)} for i, s in enumerate("bbaab")]
    (axis,) = plot_history(rows).axes
    assert [line.get_label() for line in axis.lines] == ["b", "a"]
    np.testing.assert_array_equal(axis.lines[0].get_xdata(), [1, 2, 5])
    np.testing.assert_array_equal(axis.lines[1].get_xdata(), [3, 4])


def test_history_errors():
    with pytest.raises(ValueError, match="records any of"):
        plot_history([{"dur": 1.0}])
    with pytest.raises(TypeError, match="history must be"):
        plot_history(3.0)
    # the old dict-of-histories form is gone: one history_ shape for every clusterer
    with pytest.raises(TypeError, match="history must be"):
        plot_history({"self": [{"train_loss": 1.0}]})


def test_missing_matplotlib_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"skaudiocluster\[plot\]"):
        plot_confusion_matrix([0, 1], [1, 0])


# --- layout: no text outside the figure ----------------------------------------------------


def _drawn_tick_labels(axis, limits):
    """Labels of the major ticks inside the view limits: matplotlib draws no others."""
    low, high = sorted(limits)
    margin = 1e-9 * max(high - low, 1.0)
    locations = axis.get_majorticklocs()
    for tick in axis.get_major_ticks(len(locations)):
        if low - margin <= tick.get_loc() <= high + margin:
            yield from (tick.label1, tick.label2)


def _texts(fig):
    """Every text artist a figure draws: titles, axis labels, tick labels, legends, cells."""
    for axis in fig.axes:
        yield from (axis.title, axis._left_title, axis._right_title)
        yield from (axis.xaxis.label, axis.yaxis.label)
        yield from (axis.xaxis.get_offset_text(), axis.yaxis.get_offset_text())
        yield from _drawn_tick_labels(axis.xaxis, axis.get_xlim())
        yield from _drawn_tick_labels(axis.yaxis, axis.get_ylim())
        yield from axis.texts
        legend = axis.get_legend()
        if legend is not None:
            yield legend.get_title()
            yield from legend.get_texts()
    yield from fig.texts


def assert_texts_inside(fig):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    checked = 0
    for text in _texts(fig):
        if not text.get_visible() or not text.get_text():
            continue
        extent = text.get_window_extent(renderer)
        inside = (
            extent.x0 >= box.x0 - 0.5
            and extent.y0 >= box.y0 - 0.5
            and extent.x1 <= box.x1 + 0.5
            and extent.y1 <= box.y1 + 0.5
        )
        assert inside, f"text {text.get_text()!r} at {extent.bounds} falls outside {box.bounds}"
        checked += 1
    assert checked > 0


def _long_names(n_classes):
    return [f"class {i:02d}: a long descriptive label" for i in range(n_classes)]


def _labelled(n_classes, seed=0):
    rng = np.random.default_rng(seed)
    names = np.array(_long_names(n_classes))
    y = np.repeat(np.arange(n_classes), 4)
    pred = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, n_classes, len(y)))
    return names[y], pred


def test_text_check_catches_a_cropped_label():
    fig, axis = plt.subplots(figsize=(2, 2))
    axis.set_ylabel("a label far too long to fit in a two-inch figure without layout")
    axis.set_yticks([0, 1], ["a tick label that is very long indeed", "b"])
    with pytest.raises(AssertionError, match="falls outside"):
        assert_texts_inside(fig)


@pytest.mark.parametrize("n_classes", [6, 30])
@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_text_inside_figure(n_classes, normalize):
    y_true, y_pred = _labelled(n_classes)
    assert_texts_inside(plot_confusion_matrix(y_true, y_pred, normalize=normalize))


@pytest.mark.parametrize("n_classes", [6, 30])
def test_cluster_map_text_inside_figure(n_classes):
    y_true, y_pred = _labelled(n_classes)
    X = np.random.default_rng(1).normal(size=(len(y_true), 8))
    names = np.array(_long_names(n_classes))[y_pred]
    assert_texts_inside(plot_cluster_map(X, names, y_true=y_true, reducer=PCA(2)))


@pytest.mark.parametrize("n_classes", [6, 30])
def test_history_text_inside_figure(n_classes):
    stages = _long_names(3)
    rows = [
        {
            "stage": stages[(epoch - 1) // 10],
            "train_loss": 1e4 / epoch,
            "n_clusters": n_classes - epoch // 8,
        }
        for epoch in range(1, 31)
    ]
    fig = plot_history(rows)
    assert_texts_inside(fig)
    assert [line.get_label() for line in fig.axes[0].lines] == stages


def test_count_colour_bar_has_integer_ticks():
    fig = plot_confusion_matrix([0, 0, 1, 1, 2, 2], [0, 0, 1, 2, 2, 2])
    fig.canvas.draw()
    colour_bar = fig.axes[1]
    ticks = [t for t in colour_bar.get_yticks() if 0 <= t <= 2]
    assert len(ticks) >= 2
    np.testing.assert_array_equal(ticks, np.round(ticks))


# --- the default reducer -------------------------------------------------------------------


def test_default_reducer_is_tsne_below_the_threshold_and_pca_from_it():
    from sklearn.manifold import TSNE

    from skaudiocluster import plot

    small = plot._default_reducer(plot.TSNE_BELOW - 1, 512, 0)
    assert isinstance(small[-1], TSNE) and small[-1].perplexity == 30
    assert plot._default_reducer(10, 512, 0)[-1].perplexity == 3
    large = plot._default_reducer(plot.TSNE_BELOW, 512, 0)
    assert isinstance(large, PCA) and large.n_components == 2


@pytest.mark.parametrize("shape", [(1, 5), (2, 5), (6, 1)])
def test_default_map_of_tiny_inputs_is_the_first_column(shape):
    from skaudiocluster.plot import default_map

    X = np.arange(np.prod(shape), dtype=float).reshape(shape)
    np.testing.assert_array_equal(default_map(X), np.column_stack([X[:, 0], np.zeros(len(X))]))


def test_default_map_keeps_two_columns_and_repeats():
    from skaudiocluster.plot import default_map

    X, _ = make_blobs(n_samples=40, centers=3, n_features=8, random_state=0)
    np.testing.assert_array_equal(default_map(X[:, :2]), X[:, :2])
    np.testing.assert_array_equal(default_map(X, 3), default_map(X, 3))
    with pytest.raises(ValueError, match="2-D"):
        default_map(X[0])


def test_default_cluster_map_of_60_points_needs_no_umap(monkeypatch):
    # UMAP would cost 20-60 s of import and compilation here; t-SNE takes about a second
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    X, y = make_blobs(n_samples=60, centers=3, n_features=512, random_state=0)
    fig = plot_cluster_map(X, y, y_true=y)
    points = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert points.shape == (60, 2) and np.isfinite(points).all()


@pytest.mark.parametrize("shape", [(1, 5), (5, 1)])
def test_cluster_map_needs_two_samples_and_features(shape):
    with pytest.raises(ValueError, match="at least 2 samples and 2 features"):
        plot_cluster_map(np.zeros(shape), [0] * shape[0])
