"""Figures for clustering results: cluster maps, matched confusion matrices, training curves.

matplotlib is an optional dependency (``pip install "skaudiocluster[plot]"``);
it and scikit-learn are imported when a function here is first called, so the
listening report takes its map (:func:`default_map`) from here at no import
cost. Every ``plot_*`` function draws on the ``ax`` it is given, or on a new
figure, and returns the figure. New figures use matplotlib's constrained layout
and grow with the number and length of the labels, so no text falls outside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["TSNE_BELOW", "default_map", "plot_cluster_map", "plot_confusion_matrix", "plot_history"]

#: Below this many samples :func:`default_map` is t-SNE (after PCA to at most 50
#: dimensions, on one thread), from here on PCA. Measured on FSDD (2 cores shared, load
#: 5-6): t-SNE on one thread 2.6 s for 220 clips, 15 s for 1,000 and 45 s for 3,000 (with
#: OpenMP's default threads on the loaded machine 24 s and 79 s for 220 and 1,000); UMAP
#: 100 s for 3,000 in a fresh process (import and numba compilation) and 39 s once
#: compiled, 20-60 s of that whatever the size; PCA 0.02 s.
TSNE_BELOW = 1000
# Approximate width of one character, in inches, at matplotlib's default 10 pt font.
_CHAR_INCHES = 0.085


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "skaudiocluster.plot needs matplotlib; install it with "
            "pip install 'skaudiocluster[plot]' (or pip install matplotlib)"
        ) from error
    return plt


def _axes(ax, n_panels: int, panel_size: tuple[float, float] = (5.0, 4.5)):
    """The given axes, or ``n_panels`` new axes side by side on a constrained-layout figure."""
    if ax is not None:
        axes = list(np.atleast_1d(ax))
        if len(axes) != n_panels:
            raise ValueError(f"expected {n_panels} axes, got {len(axes)}")
        return axes[0].figure, axes
    plt = _pyplot()
    fig, axes = plt.subplots(
        1,
        n_panels,
        figsize=(panel_size[0] * n_panels, panel_size[1]),
        squeeze=False,
        layout="constrained",
    )
    return fig, list(axes[0])


def _scatter_by_label(
    ax, points: np.ndarray, labels, title: str, max_legend: int, names: list | None = None
) -> None:
    """Scatter ``points`` coloured by label; the i-th of ``names`` gets the i-th colour."""
    values = np.asarray(labels)
    names = list(dict.fromkeys(values.tolist())) if names is None else names
    cmap = _pyplot().get_cmap("tab10" if len(names) <= 10 else "tab20")
    for index, name in enumerate(names):
        mask = values == name
        colour = cmap(index % cmap.N) if len(names) <= 20 else None
        ax.scatter(*points[mask].T, s=8, alpha=0.8, color=colour, label=str(name), linewidths=0)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(names) <= max_legend:
        # beside the axes, where long names cover no points; the layout makes room
        ax.legend(
            markerscale=2,
            fontsize="small",
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
        )


def _text_inches(labels) -> float:
    """Rough width in inches of the longest of ``labels`` at the default font size."""
    return _CHAR_INCHES * max((len(str(label)) for label in labels), default=0)


def default_map(X, random_state: int | None = 0) -> np.ndarray:
    """The default 2-D map of ``X``: of :func:`plot_cluster_map` and the listening report.

    Below :data:`TSNE_BELOW` (1,000) samples it is PCA to at most 50
    dimensions then scikit-learn's t-SNE (perplexity ``min(30, (n - 1) / 3)``,
    one thread), from there on PCA to 2 dimensions. Not UMAP: it costs 20-60 s
    of import and numba compilation in every new process, whatever the size,
    and 100 s for 3,000 samples in all, past the report's one-minute budget
    (t-SNE would take 45 s there, PCA 0.02 s); one rule for the figure and
    the report draws the same data the same way in both. For a UMAP map,
    compute it and pass the coordinates, or pass ``reducer=umap.UMAP()``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Two columns are returned as they are. Fewer than 3 samples or a
        single feature give the first column against zeros.
    random_state : int or None, default=0
        Seed of PCA and t-SNE.

    Returns
    -------
    points : ndarray of shape (n_samples, 2), float64

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skaudiocluster.plot import default_map
    >>> X, _ = make_blobs(n_samples=40, n_features=8, random_state=0)
    >>> default_map(X).shape
    (40, 2)
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features); got shape {X.shape}")
    if X.shape[1] == 2:
        return X
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # see TSNE_BELOW
        points = _default_reducer(*X.shape, random_state).fit_transform(X)
    return np.asarray(points, dtype=np.float64)


def _default_reducer(n_samples: int, n_features: int, random_state):
    """t-SNE (after PCA to at most 50 dimensions) below ``TSNE_BELOW`` samples, else PCA."""
    from sklearn.decomposition import PCA

    if n_samples < 3 or n_features < 2:
        from sklearn.preprocessing import FunctionTransformer

        return FunctionTransformer(lambda X: np.column_stack([X[:, 0], np.zeros(len(X))]))
    if n_samples >= TSNE_BELOW:
        return PCA(2, random_state=random_state)
    from sklearn.manifold import TSNE
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        PCA(min(50, n_samples, n_features), random_state=random_state),
        TSNE(
            n_components=2,
            perplexity=min(30.0, max((n_samples - 1) / 3, 1.0)),
            init="pca",
            random_state=random_state,
        ),
    )


def plot_cluster_map(
    X,
    labels: Sequence,
    y_true: Sequence | None = None,
    *,
    reducer=None,
    random_state: int | None = 0,
    ax=None,
    max_legend: int = 12,
):
    """Scatter the samples in 2-D, coloured by cluster and, if given, by true label.

    With ``y_true``, each cluster is drawn in the colour of the class it is
    matched to by the Hungarian algorithm, so the two panels can be compared
    at a glance.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Features the clusters were found in (e.g. embeddings). Two columns are
        plotted as they are; more are reduced to two with ``reducer``.
    labels : sequence of length n_samples
        Cluster of each sample.
    y_true : sequence of length n_samples, default=None
        True label of each sample; when given, a second panel is coloured by it.
    reducer : estimator with ``fit_transform``, default=None
        Maps X to 2-D. ``None`` uses :func:`default_map`, the listening
        report's map too: t-SNE below :data:`TSNE_BELOW` (1,000) samples, PCA
        from there on (``umap.UMAP()`` costs 20-60 s of compilation in each new
        process whatever the size of X; pass it here for a UMAP map).
    random_state : int or None, default=0
        Seed of the default reducer.
    ax : matplotlib Axes or sequence of Axes, default=None
        One axes (two with ``y_true``) to draw on; ``None`` makes a new figure.
    max_legend : int, default=12
        Legends are drawn only up to this many distinct labels.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn.decomposition import PCA
    >>> from skaudiocluster.plot import plot_cluster_map
    >>> X, y = make_blobs(n_samples=60, centers=3, n_features=5, random_state=0)
    >>> fig = plot_cluster_map(X, y, y_true=y, reducer=PCA(2))
    >>> len(fig.axes)
    2
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(labels):
        raise ValueError(
            f"X must be 2-D with one row per label; got shape {X.shape} and {len(labels)} labels"
        )
    if y_true is not None and len(y_true) != len(labels):
        raise ValueError(f"y_true has {len(y_true)} entries, labels has {len(labels)}")
    if X.shape[1] < 2 or len(X) < 2:
        raise ValueError(f"X needs at least 2 samples and 2 features to map; got shape {X.shape}")
    if X.shape[1] == 2:
        points = X
    elif reducer is None:
        points = default_map(X, random_state)
    else:
        points = np.asarray(reducer.fit_transform(X))
    panels = [set(np.asarray(v).tolist()) for v in (labels, y_true) if v is not None]
    with_legend = [names for names in panels if len(names) <= max_legend]
    legend = max(map(_text_inches, with_legend)) + 0.6 if with_legend else 0.0
    fig, axes = _axes(ax, 1 if y_true is None else 2, panel_size=(4.5 + legend, 4.5))
    n_clusters = len(set(np.asarray(labels).tolist()))
    classes = clusters = None
    if y_true is not None:
        from skaudiocluster.metrics import matched_confusion_matrix

        _, classes, clusters = matched_confusion_matrix(y_true, labels)
    title = f"clusters (K={n_clusters})"
    _scatter_by_label(axes[0], points, labels, title, max_legend, clusters)
    if y_true is not None:
        _scatter_by_label(axes[1], points, y_true, "true labels", max_legend, classes)
    return fig


def plot_confusion_matrix(
    y_true: Sequence,
    y_pred: Sequence,
    *,
    normalize: bool = False,
    ax=None,
    annotate: bool | None = None,
):
    """Confusion matrix of classes against clusters after Hungarian matching.

    Clusters are reordered by :func:`skaudiocluster.metrics.matched_confusion_matrix`
    so that each matched cluster faces its class on the diagonal; surplus
    clusters follow on the right. The title gives the Hungarian accuracy.

    Parameters
    ----------
    y_true : sequence of length n_samples
        True labels.
    y_pred : sequence of length n_samples
        Cluster labels.
    normalize : bool, default=False
        Show each row as fractions of its class instead of counts.
    ax : matplotlib Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    annotate : bool, default=None
        Write the value in each cell; ``None`` does so up to 15 x 15 cells.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skaudiocluster.plot import plot_confusion_matrix
    >>> fig = plot_confusion_matrix(["a", "a", "b", "b"], [1, 1, 0, 2])
    >>> fig.axes[0].get_title()
    'Hungarian accuracy 0.75'
    """
    from skaudiocluster.metrics import hungarian_accuracy, matched_confusion_matrix

    matrix, classes, clusters = matched_confusion_matrix(y_true, y_pred)
    values = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    # cells of about 0.4 inch, plus room for the (rotated) tick labels and the colour bar
    size = (
        max(4.0, 2.2 + 0.4 * len(clusters) + _text_inches(classes)),
        max(3.0, 1.4 + 0.4 * len(classes) + _text_inches(clusters)),
    )
    fig, (axis,) = _axes(ax, 1, panel_size=size)
    image = axis.imshow(values, cmap="Blues", aspect="auto")
    from matplotlib.ticker import MaxNLocator

    ticks = None if normalize else MaxNLocator(integer=True)
    fig.colorbar(image, ax=axis, fraction=0.05, ticks=ticks)
    axis.set_xticks(range(len(clusters)), [str(c) for c in clusters], rotation=90)
    axis.set_yticks(range(len(classes)), [str(c) for c in classes])
    axis.set_xlabel("cluster (matched order)")
    axis.set_ylabel("true label")
    axis.set_title(f"Hungarian accuracy {hungarian_accuracy(y_true, y_pred):.2f}")
    if annotate is None:
        annotate = max(matrix.shape) <= 15
    if annotate:
        threshold = values.max() / 2 if values.size else 0
        for (i, j), value in np.ndenumerate(values):
            text = f"{value:.2f}" if normalize else str(int(value))
            colour = "white" if value > threshold else "black"
            axis.text(j, i, text, ha="center", va="center", fontsize="x-small", color=colour)
    return fig


def _history_stages(history) -> dict[str, list[tuple[float, Mapping]]]:
    """``(epoch, row)`` pairs per training stage, in order of first appearance.

    Rows without a ``stage`` key form one unnamed stage; a row's epoch is its
    ``epoch`` entry, else its position in the history.
    """
    history = getattr(history, "history_", history)
    if (
        isinstance(history, (Mapping, str))
        or not isinstance(history, Sequence)
        or not all(isinstance(row, Mapping) for row in history)
    ):
        raise TypeError(
            "history must be a fitted estimator with history_ or a list of per-epoch dicts "
            f"(e.g. a skorch History); got {type(history).__name__}"
        )
    stages: dict[str, list[tuple[float, Mapping]]] = {}
    for position, row in enumerate(history, start=1):
        epoch = row.get("epoch", position)
        stages.setdefault(str(row.get("stage", "")), []).append((epoch, row))
    return stages


def plot_history(history, *, keys: Sequence[str] = ("train_loss", "n_clusters"), ax=None):
    """Training curves per epoch: the loss and, for DeepDPM, the number of clusters K.

    Parameters
    ----------
    history : estimator or list of dict
        A fitted clusterer with ``history_`` (TEMI, SPICE, DeepDPM), or its
        ``history_`` (a skorch ``History``), or any list of per-epoch dicts
        (e.g. ``BYOLAEmbedder().pretrain_history_``). Rows with a ``stage`` key
        (SPICE's ``"self"`` and ``"semi"``) are drawn as one line per stage.
    keys : sequence of str, default=("train_loss", "n_clusters")
        Per-epoch entries to draw, one panel each; keys no epoch has are skipped.
    ax : matplotlib Axes or sequence of Axes, default=None
        One axes per drawn key; ``None`` makes a new figure.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skaudiocluster.plot import plot_history
    >>> history = [{"epoch": e, "train_loss": 1 / e, "n_clusters": 2 + e // 3}
    ...            for e in range(1, 10)]
    >>> [a.get_ylabel() for a in plot_history(history).axes]
    ['train_loss', 'n_clusters']
    """
    stages = _history_stages(history)
    present = [k for k in keys if any(k in row for rows in stages.values() for _, row in rows)]
    if not present:
        raise ValueError(f"no epoch of the history records any of {list(keys)}")
    legend = _text_inches(stages) + 0.8 if len(stages) > 1 else 0.0
    fig, axes = _axes(ax, len(present), panel_size=(5.0 + legend, 3.5))
    for key, axis in zip(present, axes):
        for stage, rows in stages.items():
            epochs = [epoch for epoch, row in rows if key in row]
            values = [row[key] for _, row in rows if key in row]
            if not values:
                continue
            draw = axis.step if key == "n_clusters" else axis.plot
            kwargs = {"where": "post"} if key == "n_clusters" else {}
            draw(epochs, values, label=stage or None, **kwargs)
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        if key == "n_clusters":
            axis.yaxis.get_major_locator().set_params(integer=True)
        if len(stages) > 1:
            axis.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
