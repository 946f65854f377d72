"""Command line: ``skaudiocluster demo`` and ``skaudiocluster cluster PATH``."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skaudiocluster.metrics import hungarian_accuracy


def _embedders(weights: str | None) -> dict[str, Callable]:
    """Embedder factories by CLI name (imported lazily: each pulls in its network)."""

    def byola():
        from skaudiocluster.transformers.byola import BYOLAEmbedder

        return BYOLAEmbedder(weights=weights)

    def passt():
        from skaudiocluster.transformers.passt import PaSSTEmbedder

        return PaSSTEmbedder(weights=weights)

    def spectrogram():
        from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

        return SpectrogramTransformer()

    return {"spectrogram": spectrogram, "byola": byola, "passt": passt}


def _clusterers(n_clusters: int, random_state: int, *, quick: bool = False) -> dict[str, Callable]:
    """Clusterer factories by CLI name; each expects standardised 2-D features.

    ``quick`` shrinks the deep clusterers' training budgets (for the demo).
    """

    def temi():
        from skaudiocluster.cluster.temi import TEMIClusterer

        budget = {"min_steps": 1500} if quick else {}
        return TEMIClusterer(n_clusters=n_clusters, random_state=random_state, **budget)

    def spice():
        from skaudiocluster.cluster.spice import SPICEClusterer

        budget = {"max_epochs": 10, "n_repeats": 4, "semi_max_epochs": 50} if quick else {}
        return SPICEClusterer(n_clusters=n_clusters, random_state=random_state, **budget)

    def deepdpm():
        from skaudiocluster.cluster.deepdpm import DeepDPMClusterer

        budget = {"max_epochs": 60} if quick else {}
        return DeepDPMClusterer(random_state=random_state, **budget)

    return {
        "kmeans": lambda: KMeans(n_clusters, n_init=10, random_state=random_state),
        "agglomerative": lambda: AgglomerativeClustering(n_clusters),
        "temi": temi,
        "spice": spice,
        "deepdpm": deepdpm,
    }


def _head(features: np.ndarray, clusterer) -> object:
    n_components = min(32, *features.shape)
    return make_pipeline(StandardScaler(), PCA(n_components, random_state=0), clusterer)


_DEMO_COLUMNS = ("pipeline", "K found", "NMI", "ARI", "accuracy", "fit s")


def _markdown_row(cells: Sequence) -> str:
    return "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |"


def demo(args: argparse.Namespace) -> int:
    """Cluster a synthetic sound set with several pipelines and print their scores."""
    from skaudiocluster.datasets import make_sound_classes
    from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

    X, y = make_sound_classes(
        n_samples=args.n_samples, n_classes=args.n_classes, random_state=args.random_state
    )
    print(
        f"{len(X)} synthetic clips, {args.n_classes} sound classes "
        "(skaudiocluster.datasets.make_sound_classes)\n"
    )
    start = time.perf_counter()
    features = SpectrogramTransformer().fit_transform(X)
    embed_seconds = time.perf_counter() - start
    print(_markdown_row(_DEMO_COLUMNS))
    print("|" + "---|" * len(_DEMO_COLUMNS))
    clusterers = _clusterers(args.n_classes, args.random_state, quick=True)
    for name, make in clusterers.items():
        model = _head(features, make())
        start = time.perf_counter()
        labels = model.fit_predict(features)
        seconds = time.perf_counter() - start + embed_seconds
        print(
            _markdown_row(
                (
                    f"log-mel mean+std -> scale -> PCA -> {name}",
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
    """Cluster the audio files under a folder and write ``path,cluster,confidence`` rows."""
    paths = _find_audio(args.path)
    embedder = _embedders(args.weights)[args.embedder]()
    features = embedder.fit_transform(paths)
    model = _head(features, _clusterers(args.n_clusters, args.random_state)[args.clusterer]())
    labels = model.fit_predict(features)
    confidence = (
        model.predict_proba(features).max(axis=1) if hasattr(model, "predict_proba") else None
    )
    _write_csv(args.out, paths, labels, confidence)
    print(f"{len(paths)} files, {len(np.unique(labels))} clusters -> {args.out}")
    return 0


def _find_audio(folder: str) -> list[str]:
    from pathlib import Path

    from skaudiocluster.datasets import AUDIO_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder!r} is not a folder")
    paths = sorted(
        str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )
    if not paths:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder!r}")
    return paths


def _write_csv(out: str, paths: Sequence[str], labels, confidence) -> None:
    """Write atomically: a temporary file in the target folder, then a rename."""
    folder = os.path.dirname(os.path.abspath(out))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".csv.tmp")
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "cluster", "confidence"])
            for i, (path, label) in enumerate(zip(paths, labels)):
                conf = "" if confidence is None else f"{confidence[i]:.4f}"
                writer.writerow([path, int(label), conf])
        os.replace(tmp, out)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skaudiocluster", description="Cluster sound collections with deep clustering."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="score a few pipelines on built-in synthetic sounds")
    p_demo.add_argument("--n-samples", type=int, default=400)
    p_demo.add_argument("--n-classes", type=int, default=6)
    p_demo.add_argument("--random-state", type=int, default=0)
    p_demo.set_defaults(func=demo)

    p_cluster = sub.add_parser("cluster", help="cluster a folder of audio files into a CSV")
    p_cluster.add_argument("path", help="folder searched recursively for audio files")
    p_cluster.add_argument("--out", default="assignments.csv")
    p_cluster.add_argument("--n-clusters", type=int, default=8)
    p_cluster.add_argument("--embedder", choices=sorted(_embedders(None)), default="spectrogram")
    p_cluster.add_argument(
        "--weights",
        default=None,
        help="pretrained weights for byola/passt: a registered name or a path",
    )
    p_cluster.add_argument("--clusterer", choices=sorted(_clusterers(2, 0)), default="kmeans")
    p_cluster.add_argument("--random-state", type=int, default=0)
    p_cluster.set_defaults(func=cluster)
    return parser


# Exit status of a command stopped by Ctrl-C: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status.

    0 on success; 2 with a one-line message for a bad input; 130 on Ctrl-C,
    after which no output file exists (estimators interrupted mid-fit stay
    unfitted and the CSV is only written once everything is computed).
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"skaudiocluster {args.command}: interrupted, nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, ImportError) as exc:
        print(f"skaudiocluster {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
