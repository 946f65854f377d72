"""The HTML listening report: browse and hear the clusters in a web page.

:func:`write_report` writes one self-contained folder (``index.html``, ``audio/``,
``thumbs/``) that a browser opens straight from disk: no server, no network, no
script or font from elsewhere. It can be zipped and shared.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skaudiocluster._io import atomic_folder
from skaudiocluster._report_media import (
    AUDIO_FORMATS,
    loudest_window,
    png_bytes,
    spectrogram_image,
    write_audio,
)
from skaudiocluster.plot import TSNE_BELOW, default_map

__all__ = ["write_report", "check_report_folder", "MAP_TSNE_BELOW", "CHROMIUM_FLAGS"]

#: :data:`skaudiocluster.plot.TSNE_BELOW`, under the name this module has always given it:
#: below this many clips the default map (:func:`skaudiocluster.plot.default_map`) is
#: t-SNE, from here on PCA.
MAP_TSNE_BELOW = TSNE_BELOW
#: Flags the report is tested and benchmarked under in headless Chromium (no sandbox: root
#: in containers; no network; autoplay allowed, so a script may start playback).
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
)
_MARKER = ".skaudiocluster-report"
_THUMB_SIZE = (160, 56)
_TAB10 = "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf".split()


def write_report(
    paths: Sequence[str | os.PathLike],
    labels: Sequence,
    *,
    embeddings=None,
    proba=None,
    true_labels: Sequence | None = None,
    out: str | os.PathLike,
    coords=None,
    reducer=None,
    n_typical: int = 6,
    n_atypical: int = 3,
    excerpt_seconds: float = 5.0,
    audio_format: str = "flac",
    title: str = "Listening report",
    notes: Sequence[str] = (),
    random_state: int | None = 0,
    verbose: int = 0,
) -> Path:
    """Write an HTML listening report of a clustering of audio files into the folder ``out``.

    The page has an overview (numbers of clips and clusters, a bar chart of
    the cluster sizes, a 2-D map of the clips coloured by cluster: clicking a
    point plays its clip) and one section per cluster with its most and least
    typical clips, each with an audio player and a spectrogram thumbnail.
    With ``true_labels`` it also shows each cluster's label mix, the
    Hungarian-matched confusion matrix and the scores.

    Every clip is copied into ``out/audio`` (mono, in ``audio_format``); a
    clip longer than ``excerpt_seconds`` is cut to its loudest
    ``excerpt_seconds``. The folder is built beside ``out`` under a temporary
    name and renamed at the end: an interrupted call leaves nothing
    half-written. An existing report at ``out`` is replaced; any other
    non-empty folder there is an error.

    Parameters
    ----------
    paths : sequence of str or path-like, length n_clips
        Audio files, decoded with ``soundfile``.
    labels : sequence of length n_clips
        Cluster of each clip (any hashable values; sorted when they can be).
    embeddings : array-like of shape (n_clips, n_features), default=None
        Features the clusters were found in; they give the map (when
        ``coords`` is not given) and, when ``proba`` is not given, each clip's
        confidence in its cluster
        (:func:`~skaudiocluster.cluster.centroid_confidence`), which orders
        the clips. Best: the features the clusterer saw,
        ``pipeline[:-1].transform(X)``.
    proba : array-like of shape (n_clips,) or (n_clips, n_clusters), default=None
        Each clip's confidence in its own cluster (e.g. ``confidence_`` of
        the deep clusterers), or a ``predict_proba`` whose columns are the
        integer labels ``0 .. n_clusters - 1``. Clips with the highest value
        are the most typical and the lowest are shown as possible mistakes;
        a trained network's ``predict_proba`` sits near 1 for almost every
        clip and orders them poorly.
    true_labels : sequence of length n_clips, default=None
        Known classes, for the label mix and the matched confusion matrix.
    out : str or path-like
        Folder to write; its parent must exist.
    coords : array-like of shape (n_clips, 2), default=None
        Map coordinates, e.g. a UMAP you computed; by default they come from
        ``embeddings`` (used as they are when they have two columns).
    reducer : estimator with ``fit_transform``, default=None
        Maps ``embeddings`` to 2-D. ``None`` uses
        :func:`skaudiocluster.plot.default_map`, the map of
        :func:`~skaudiocluster.plot.plot_cluster_map` too: PCA to 50 dimensions
        then t-SNE below :data:`MAP_TSNE_BELOW` (1,000) clips, plain PCA from
        there on (fast: ``umap.UMAP()`` costs a minute or more in a new process,
        past the report's one-minute budget for 3,000 clips).
    n_typical, n_atypical : int, default=6, 3
        Players shown per cluster: its ``n_typical`` most typical clips and
        its ``n_atypical`` least typical ones (fewer when it is smaller);
        every clip stays playable from the map and the cluster's full list.
    excerpt_seconds : float, default=5.0
        Longer clips are previewed by their loudest excerpt of this length.
    audio_format : {"flac", "ogg", "wav"}, default="flac"
        Format of the copied clips. ``ogg`` is lossy Vorbis: a third of
        FLAC's size on 5 s of 16 kHz speech, but no smaller and four times
        slower to write on FSDD's half-second 8 kHz clips.
    title : str, default="Listening report"
        Title of the page.
    notes : sequence of str, default=()
        Shown at the top of the page, one item each, as plain text: e.g. the
        warnings raised while the clusters were found (the command line puts
        them there).
    random_state : int or None, default=0
        Seed of the default reducer.
    verbose : int, default=0
        Show a progress bar while the clips are copied.

    Returns
    -------
    out : pathlib.Path
        The report's folder; open ``out / "index.html"`` in a browser.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, soundfile
    >>> from skaudiocluster.report import write_report
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> t = np.arange(4000) / 8000
    >>> paths = []
    >>> for i, freq in enumerate([300, 320, 2000, 2100]):
    ...     paths.append(folder / f"tone{i}.wav")
    ...     soundfile.write(paths[-1], 0.5 * np.sin(2 * np.pi * freq * t), 8000)
    >>> report = write_report(paths, [0, 0, 1, 1], coords=np.eye(4)[:, :2],
    ...                       out=folder / "report")
    >>> sorted(p.name for p in report.iterdir())
    ['.skaudiocluster-report', 'audio', 'index.html', 'thumbs']
    """
    paths = [os.fspath(p) for p in paths]
    labels = list(np.asarray(labels).tolist())
    n = len(paths)
    _check_length(labels, n, "labels")
    if n == 0:
        raise ValueError("no clips: paths and labels are empty")
    if true_labels is not None:
        true_labels = list(np.asarray(true_labels).tolist())
        _check_length(true_labels, n, "true_labels")
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(
            f"audio_format must be one of {sorted(AUDIO_FORMATS)}, got {audio_format!r}"
        )
    for name, value in (("n_typical", n_typical), ("n_atypical", n_atypical)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not excerpt_seconds > 0:
        raise ValueError(f"excerpt_seconds must be positive, got {excerpt_seconds!r}")
    if isinstance(notes, str) or not all(isinstance(note, str) for note in notes):
        raise ValueError(f"notes must be a sequence of str, got {notes!r}")
    out = Path(out)
    target = check_report_folder(out)  # before the costly map
    clusters = _distinct(labels)
    index = {value: c for c, value in enumerate(clusters)}
    codes = np.array([index[value] for value in labels], dtype=np.int64)
    confidence = _confidence(proba, labels, n)
    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if embeddings.ndim != 2 or len(embeddings) != n:
            raise ValueError(
                f"embeddings must have shape (n_clips, n_features) = ({n}, ...); "
                f"got {embeddings.shape}"
            )
    ordered_by = _ordered_by(confidence, embeddings)
    if confidence is None and embeddings is not None:
        from skaudiocluster.cluster import centroid_confidence

        confidence = centroid_confidence(embeddings, codes)
    members = typical_order(codes, confidence=confidence)
    points = _map_points(coords, embeddings, reducer, random_state, n)
    with atomic_folder(target) as tmp:
        shown = [_shown(rows, n_typical, n_atypical) for rows in members]
        with_thumbs = {int(i) for parts in shown for part in parts for i in part}
        clips = _copy_clips(tmp, paths, with_thumbs, excerpt_seconds, audio_format, verbose)
        page = _page(
            title=title,
            notes=list(notes),
            names=_display_names(paths),
            clusters=clusters,
            codes=codes,
            members=members,
            confidence=confidence,
            ordered_by=ordered_by,
            true_labels=true_labels,
            labels=labels,
            points=points,
            clips=clips,
            shown=shown,
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / _MARKER).write_text("written by skaudiocluster.report.write_report\n")
    return target


def typical_order(codes: np.ndarray, *, confidence=None) -> list[np.ndarray]:
    """Indices of each cluster's clips, most typical first.

    Typical means the highest ``confidence`` when given, else input order.

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.array([0, 0, 0, 1])
    >>> [m.tolist() for m in typical_order(codes, confidence=np.array([0.2, 0.9, 0.5, 1.0]))]
    [[1, 2, 0], [3]]
    """
    order = []
    for c in range(int(codes.max()) + 1):
        rows = np.flatnonzero(codes == c)
        key = np.zeros(len(rows)) if confidence is None else -confidence[rows]
        order.append(rows[np.argsort(key, kind="stable")])
    return order


def _check_length(values: Sequence, n: int, name: str) -> None:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries, paths has {n}")


def _distinct(values: list) -> list:
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique)
    except TypeError:  # mixed types: first appearance
        return unique


def _confidence(proba, labels: list, n: int) -> np.ndarray | None:
    if proba is None:
        return None
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1 and len(proba) == n:
        return proba
    if proba.ndim != 2 or len(proba) != n:
        raise ValueError(f"proba must have shape ({n},) or ({n}, n_clusters); got {proba.shape}")
    codes = np.asarray(labels)
    if codes.dtype.kind not in "iu" or codes.min() < 0 or codes.max() >= proba.shape[1]:
        raise ValueError(
            f"a 2-D proba needs integer labels in 0..{proba.shape[1] - 1} (its columns); "
            "pass each clip's confidence as a 1-D array instead"
        )
    return proba[np.arange(n), codes]


def _ordered_by(confidence, embeddings) -> str:
    if confidence is not None:
        return "the confidence given with the clusters, highest first"
    if embeddings is not None:
        return (
            "confidence in the cluster (the clip's soft assignment to the cluster centres "
            "in the embeddings), highest first"
        )
    return "input order (neither embeddings nor confidences were given)"


def _map_points(coords, embeddings, reducer, random_state, n: int) -> np.ndarray | None:
    if coords is not None:
        points = np.asarray(coords, dtype=np.float64)
        if points.shape != (n, 2):
            raise ValueError(f"coords must have shape ({n}, 2); got {points.shape}")
    elif embeddings is None:
        return None
    elif reducer is None:
        points = default_map(embeddings, random_state)
    else:
        points = np.asarray(reducer.fit_transform(embeddings), dtype=np.float64)
    if not np.isfinite(points).all():
        raise ValueError("the map coordinates contain NaN or infinite values")
    return points


def _shown(rows: np.ndarray, n_typical: int, n_atypical: int) -> tuple[np.ndarray, np.ndarray]:
    """The cluster's typical clips and its atypical ones (disjoint; least typical last)."""
    typical = rows[:n_typical]
    rest = rows[len(typical) :]
    return typical, rest[len(rest) - min(n_atypical, len(rest)) :]


def check_report_folder(out: str | os.PathLike) -> Path:
    """The absolute folder a report at ``out`` goes to; a ``ValueError`` if it cannot.

    :func:`write_report` checks this first; the command line checks it before
    any costly work. ``out`` may be absent, an empty folder or an earlier
    report (which is replaced), and its parent folder must exist.

    Parameters
    ----------
    out : str or path-like
        The report's folder.

    Returns
    -------
    target : pathlib.Path
        ``out`` as an absolute path.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skaudiocluster.report import check_report_folder
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_report_folder(folder / "report") == folder / "report"
    True
    >>> (folder / "notes.txt").write_text("mine")
    4
    >>> check_report_folder(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: '...' is a non-empty folder that is not a report; ...
    """
    target = Path(out).absolute()
    if not target.parent.is_dir():
        raise ValueError(
            f"cannot write the report {os.fspath(out)!r}: its parent folder does not exist"
        )
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"the report's folder {os.fspath(out)!r} exists and is not a folder")
        if any(target.iterdir()) and not (target / _MARKER).exists():
            raise ValueError(
                f"{os.fspath(out)!r} is a non-empty folder that is not a report; "
                "choose a new folder (an existing report is replaced)"
            )
    return target


def _copy_clips(
    folder: Path, paths: list[str], thumbs: set, seconds: float, audio_format: str, verbose: int
) -> list[dict]:
    """Copy every clip (its loudest excerpt when long) and draw the shown ones' thumbnails."""
    from skaudiocluster._torch import progress
    from skaudiocluster.audio import read_file

    (folder / "audio").mkdir()
    (folder / "thumbs").mkdir()
    clips = []
    for i, path in progress(enumerate(paths), verbose=verbose, desc="report", total=len(paths)):
        samples, rate = read_file(path)
        if len(samples) == 0:
            raise ValueError(f"audio file {path!r} is empty")
        start, stop = loudest_window(samples, rate, seconds)
        excerpt = samples[start:stop]
        audio = f"audio/{i:05d}.{audio_format}"
        write_audio(folder / audio, excerpt, rate, audio_format)
        clip = {"audio": audio, "duration": len(samples) / rate}
        if stop - start < len(samples):
            clip["excerpt"] = (start / rate, stop / rate)
        if i in thumbs:
            clip["thumb"] = f"thumbs/{i:05d}.png"
            image = spectrogram_image(excerpt, rate, *_THUMB_SIZE)
            (folder / clip["thumb"]).write_bytes(png_bytes(image))
        clips.append(clip)
    return clips


def _display_names(paths: list[str]) -> list[str]:
    """Names shown in the report: never a folder above the clips' common folder.

    Paths relative to the folder the clips share (just the file names for
    one folder). When they share none but the root of the file system (or
    sit on different drives), the file names alone, a clash numbered
    (``a.wav [2]``): a shared report must not leak the folders they come from.
    """
    # As UTF-8 whatever the locale; bytes that are not UTF-8 become U+FFFD.
    absolute = [os.fsencode(os.path.abspath(p)).decode("utf-8", "replace") for p in paths]
    folders = [os.path.dirname(p) for p in absolute]
    try:
        root = os.path.commonpath(folders)
    except ValueError:  # different drives
        root = None
    if root is not None and root != os.path.dirname(root):  # shares more than the root
        return [os.path.relpath(p, root) for p in absolute]
    names = [os.path.basename(p) for p in absolute]
    count = Counter(names)
    seen: Counter = Counter()
    shown = []
    for name in names:
        seen[name] += 1
        shown.append(name if count[name] == 1 else f"{name} [{seen[name]}]")
    return shown


def _colours(n: int) -> list[str]:
    if n <= len(_TAB10):
        return list(_TAB10[:n])
    return [f"hsl({(i * 137.508) % 360:.1f},65%,{45 + 10 * (i % 2)}%)" for i in range(n)]


def json_script(data) -> str:
    """JSON for a ``<script type="application/json">`` element: ``<``, ``>``, ``&`` escaped.

    The escapes keep ``</script>`` and ``<!--`` in names from ending the element.

    Examples
    --------
    >>> json_script({"name": "</script><b>&"})
    '{"name": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e\\\\u0026"}'
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 0.95 else f"{value * 1000:.0f} ms"


def _card(i: int, name: str, clip: dict, score: str, truth) -> str:
    meta = [_seconds(clip["duration"])]
    if "excerpt" in clip:
        start, stop = clip["excerpt"]
        meta = [f"excerpt {start:.1f}-{stop:.1f} s of {_seconds(clip['duration'])}"]
    if score:
        meta.append(score)
    if truth is not None:
        meta.append(f"label {_esc(truth)}")
    return (
        f'<figure class="clip" data-clip="{i}">'
        f'<img src="{clip["thumb"]}" width="{_THUMB_SIZE[0]}" height="{_THUMB_SIZE[1]}" '
        f'alt="spectrogram of {_esc(name)}" loading="lazy">'
        f'<audio controls preload="none" src="{clip["audio"]}"></audio>'
        f'<figcaption title="{_esc(name)}">{_esc(name)}</figcaption>'
        f'<div class="meta">{" · ".join(meta)}</div></figure>'
    )


def _bars(rows: list[tuple[str, int, str, str]], total: int) -> str:
    """Horizontal bars: (label html, count, colour, link) per row."""
    top = max(count for _, count, _, _ in rows)
    out = []
    for label, count, colour, link in rows:
        width = 100 * count / top
        name = f'<a href="{link}">{label}</a>' if link else label
        out.append(
            f'<div class="bar"><span class="bar-name">{name}</span>'
            f'<span class="bar-track"><span class="bar-fill" style="width:{width:.1f}%;'
            f'background:{colour}"></span></span>'
            f'<span class="bar-count">{count} ({100 * count / total:.0f} %)</span></div>'
        )
    return "".join(out)


def _truth_overview(true_labels: list, labels: list, clusters: list) -> str:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from skaudiocluster.metrics import hungarian_accuracy, matched_confusion_matrix

    matrix, classes, order = matched_confusion_matrix(true_labels, labels)
    codes = {value: c for c, value in enumerate(clusters)}
    head = "".join(
        f'<th><a href="#cluster-{codes[value]}">{_esc(value)}</a></th>' for value in order
    )
    body = []
    for name, row in zip(classes, matrix):
        cells = "".join(
            f'<td style="background:rgba(31,119,180,{v / max(row.sum(), 1):.2f})">{v}</td>'
            for v in row
        )
        body.append(f"<tr><th>{_esc(name)}</th>{cells}</tr>")
    scores = (
        f"Hungarian accuracy {hungarian_accuracy(true_labels, labels):.3f} · "
        f"NMI {normalized_mutual_info_score(true_labels, labels):.3f} · "
        f"ARI {adjusted_rand_score(true_labels, labels):.3f}"
    )
    return (
        f'<section id="truth"><h2>Against the true labels</h2><p>{scores}</p>'
        "<p>Confusion matrix: one row per true label, one column per cluster; matched "
        "clusters (Hungarian algorithm) face their label on the diagonal. Shading: "
        "share of the row.</p>"
        f'<div class="scroll"><table class="confusion"><tr><th>label \\ cluster</th>{head}</tr>'
        f"{''.join(body)}</table></div></section>"
    )


def _page(
    *,
    title: str,
    notes: list[str],
    names: list[str],
    clusters: list,
    codes: np.ndarray,
    members: list[np.ndarray],
    confidence,
    ordered_by: str,
    true_labels,
    labels: list,
    points,
    clips: list[dict],
    shown: list[tuple[np.ndarray, np.ndarray]],
) -> str:
    n = len(names)
    colours = _colours(len(clusters))
    mapping = {}
    if true_labels is not None:
        from skaudiocluster.metrics import hungarian_mapping

        mapping = hungarian_mapping(true_labels, labels)
    size_rows = [
        (f"cluster {_esc(value)}", len(members[c]), colours[c], f"#cluster-{c}")
        for c, value in enumerate(clusters)
    ]
    sections = []
    for c, value in enumerate(clusters):
        rows = members[c]
        typical, atypical = shown[c]

        def cards(indices):
            return "".join(
                _card(
                    int(i),
                    names[i],
                    clips[i],
                    "" if confidence is None else f"p {confidence[i]:.2f}",
                    None if true_labels is None else true_labels[i],
                )
                for i in indices
            )

        parts = [
            f'<section class="cluster" id="cluster-{c}" data-cluster="{c}">'
            f'<h2><span class="swatch" style="background:{colours[c]}"></span>'
            f"Cluster {_esc(value)} <small>{len(rows)} clip{'s' if len(rows) != 1 else ''} "
            f"({100 * len(rows) / n:.1f} %)</small></h2>"
        ]
        if true_labels is not None:
            mix = Counter(true_labels[i] for i in rows).most_common()
            matched = (
                f"matched to label <b>{_esc(mapping[value])}</b>"
                if value in mapping
                else "matched to no label"
            )
            shown_mix = [(_esc(k), v, "#888", "") for k, v in mix[:8]]
            more = f"<p class='note'>and {len(mix) - 8} more labels</p>" if len(mix) > 8 else ""
            parts.append(
                f'<div class="mix"><p>Label mix ({matched}):</p>'
                f"{_bars(shown_mix, len(rows))}{more}</div>"
            )
        parts.append(f"<h3>Most typical</h3><div class='clips'>{cards(typical)}</div>")
        if len(atypical):
            parts.append(
                "<h3>Least typical (possible mistakes)</h3>"
                f"<div class='clips'>{cards(atypical)}</div>"
            )
        parts.append(
            f'<details class="all" data-cluster="{c}"><summary>All {len(rows)} clips, most '
            "typical first (click to play)</summary><ol></ol></details></section>"
        )
        sections.append("".join(parts))
    data = {
        "names": names,
        "audio": [clip["audio"] for clip in clips],
        "cluster": codes.tolist(),
        "clusters": [str(value) for value in clusters],
        "colours": colours,
        "members": [rows.tolist() for rows in members],
        "x": None if points is None else np.round(points[:, 0], 5).tolist(),
        "y": None if points is None else np.round(points[:, 1], 5).tolist(),
    }
    if true_labels is not None:
        classes = _distinct(true_labels)
        class_codes = {value: k for k, value in enumerate(classes)}
        data["classes"] = [str(value) for value in classes]
        data["truth"] = [class_codes[value] for value in true_labels]
        data["class_colours"] = _colours(len(classes))
    map_html = (
        '<p class="note">No map: neither embeddings nor coordinates were given.</p>'
        if points is None
        else (
            '<div class="map-tools">Colour by <select id="colour-by"><option value="cluster">'
            "cluster</option>"
            + ('<option value="truth">true label</option>' if true_labels is not None else "")
            + '</select> · click a point to play it</div><canvas id="map" width="560" '
            'height="420"></canvas><div id="map-hover" class="note">&nbsp;</div>'
        )
    )
    truth_html = "" if true_labels is None else _truth_overview(true_labels, labels, clusters)
    notes_html = (
        '<div class="notes"><p>Warnings while the clusters were found:</p><ul>'
        + "".join(f"<li>{_esc(note)}</li>" for note in notes)
        + "</ul></div>"
        if notes
        else ""
    )
    return _TEMPLATE.format(
        title=_esc(title),
        notes=notes_html,
        css=_CSS,
        js=_JS,
        data=json_script(data),
        n_clips=n,
        n_clusters=len(clusters),
        ordered_by=_esc(ordered_by),
        sizes=_bars(size_rows, n),
        map=map_html,
        truth=truth_html,
        sections="".join(sections),
    )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto 5em;max-width:1150px;padding:0 1em;
color:#222}
h1{margin:.6em 0 .2em}h2{margin:1.2em 0 .3em}h3{margin:.8em 0 .3em;font-size:1em}
.note{color:#666}.notes{background:#fff4d6;border:1px solid #e6c25a;padding:.2em 1em;
margin:.6em 0}.overview{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.sizes{flex:1 1 320px;max-height:460px;overflow:auto}
.bar{display:flex;align-items:center;gap:.5em;margin:2px 0}
.bar-name{flex:0 0 9em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar-track{flex:1;background:#eee;height:12px}.bar-fill{display:block;height:12px}
.bar-count{flex:0 0 7em;color:#555;font-size:12px}
#map{width:560px;height:420px;border:1px solid #ccc;cursor:crosshair;display:block}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.4em;border-radius:2px}
.cluster{border-top:1px solid #ddd;margin-top:1.5em;content-visibility:auto;
contain-intrinsic-size:auto 900px}
.clips{display:flex;flex-wrap:wrap;gap:10px}
.clip{margin:0;width:164px;padding:5px;border:1px solid #e3e3e3;border-radius:4px;
background:#fafafa}
.clip img{display:block;width:160px;height:56px}
.clip audio{width:164px;height:32px;margin-top:4px}
.clip figcaption{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-size:12px}
.meta{color:#666;font-size:11px}
.mix{max-width:520px}.scroll{overflow:auto;max-width:100%}
.confusion{border-collapse:collapse;font-size:12px}
.confusion td,.confusion th{border:1px solid #ddd;padding:2px 5px;text-align:right}
details.all ol{columns:3;font-size:12px}details.all button{all:unset;cursor:pointer;color:#1659a8}
#player{position:fixed;left:0;right:0;bottom:0;background:#f4f4f4;border-top:1px solid #ccc;
padding:6px 1em;display:flex;gap:1em;align-items:center}#player audio{height:32px}
#now{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
"""

_JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const player = document.getElementById("shared-player");
  const now = document.getElementById("now");
  function play(i) {
    player.src = D.audio[i];
    now.textContent = D.names[i] + " (cluster " + D.clusters[D.cluster[i]] + ")";
    const started = player.play();
    if (started) {
      started.catch(function (err) { now.textContent += " (press play: " + err.name + ")"; });
    }
  }
  document.querySelectorAll("details.all").forEach(function (details) {
    details.addEventListener("toggle", function () {
      const list = details.querySelector("ol");
      if (!details.open || list.childElementCount) { return; }
      D.members[+details.dataset.cluster].forEach(function (i) {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.textContent = D.names[i];
        button.addEventListener("click", function () { play(i); });
        item.appendChild(button);
        list.appendChild(item);
      });
    });
  });
  const canvas = document.getElementById("map");
  const api = { play: play, data: D, point: null };
  window.skaudioclusterReport = api;
  if (!canvas || !D.x) { return; }
  const n = D.x.length, px = new Float32Array(n), py = new Float32Array(n);
  const select = document.getElementById("colour-by");
  const hover = document.getElementById("map-hover");
  function bounds(v) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < v.length; i++) { lo = Math.min(lo, v[i]); hi = Math.max(hi, v[i]); }
    return [lo, hi > lo ? hi - lo : 1];
  }
  const bx = bounds(D.x), by = bounds(D.y);
  function draw() {
    const ratio = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = w * ratio; canvas.height = h * ratio;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const pad = 8, byTruth = select && select.value === "truth";
    ctx.globalAlpha = 0.8;
    for (let i = 0; i < n; i++) {
      px[i] = pad + (D.x[i] - bx[0]) / bx[1] * (w - 2 * pad);
      py[i] = h - pad - (D.y[i] - by[0]) / by[1] * (h - 2 * pad);
      ctx.fillStyle = byTruth ? D.class_colours[D.truth[i]] : D.colours[D.cluster[i]];
      ctx.fillRect(px[i] - 2.5, py[i] - 2.5, 5, 5);
    }
  }
  function nearest(event) {
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left, y = event.clientY - rect.top;
    let best = -1, bestD = 64;
    for (let i = 0; i < n; i++) {
      const d = (px[i] - x) * (px[i] - x) + (py[i] - y) * (py[i] - y);
      if (d < bestD) { best = i; bestD = d; }
    }
    return best;
  }
  api.point = function (i) {
    const rect = canvas.getBoundingClientRect();
    return { x: rect.left + px[i], y: rect.top + py[i] };
  };
  canvas.addEventListener("click", function (event) {
    const i = nearest(event);
    if (i >= 0) { play(i); }
  });
  canvas.addEventListener("mousemove", function (event) {
    const i = nearest(event);
    hover.textContent = i >= 0 ? D.names[i] + " (cluster " + D.clusters[D.cluster[i]] + ")"
                               : "\u00a0";
  });
  if (select) { select.addEventListener("change", draw); }
  window.addEventListener("resize", draw);
  draw();
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="skaudiocluster report">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title><style>{css}</style></head>
<body>
<h1>{title}</h1>
{notes}
<p><b>{n_clips}</b> clips in <b>{n_clusters}</b> clusters. In each cluster, clips are ordered by
{ordered_by}.</p>
<div class="overview"><div class="sizes"><h2>Cluster sizes</h2>{sizes}</div>
<div><h2>Map</h2>{map}</div></div>
{truth}
{sections}
<div id="player"><audio id="shared-player" controls preload="none"></audio>
<span id="now" class="note">Click a point on the map or a clip in a list to play it here.</span>
</div>
<script type="application/json" id="report-data">{data}</script>
<script>{js}</script>
</body></html>
"""
