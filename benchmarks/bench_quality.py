"""Clustering quality of the deep clusterers next to the classical pipelines, on real audio.

For every labelled set in the shared data folder and every feature producer,
the same embeddings (computed once, cached with joblib) are clustered by

* given K: ``kmeans`` (k-means, 10 inits), ``ward`` (agglomerative, Ward),
  ``umap+kmeans`` (UMAP to 10-D, ``min_dist=0``, then k-means), ``temi``,
  ``temi-umap`` (``neighbors="umap"``: neighbours mined in that UMAP layout),
  ``temi-over`` (``overclustering=2``: heads of 2K clusters merged by their
  co-association), ``spice``, ``temporal`` (content features only);
* K inferred: ``umap+hdbscan`` (scikit-learn's ``HDBSCAN`` on the same UMAP,
  ``min_cluster_size = max(5, N // 100)``; noise is one more label when scored),
  ``dpgmm`` (scikit-learn's Dirichlet-process ``BayesianGaussianMixture``, 40
  components, on standardised PCA-32 features), ``deepdpm``, ``deepdpm-32``
  (``n_components=32``, the fixed dimension before ``"auto"``);

and ``ceiling``: the NMI of 5-fold cross-validated logistic-regression predictions
on the same features, the most any partition of them can be expected to reach;
each at its defaults, for every seed, and scored by NMI, ARI and Hungarian
accuracy (mean and sd over seeds), with the K found and the fit seconds. Every
fit runs in its own worker process on one thread (``--jobs`` workers at once)::

    python benchmarks/bench_quality.py --shared ../shared
    python benchmarks/bench_quality.py --sets fsdd-speaker --features byola --methods kmeans temi
    python benchmarks/bench_quality.py --sets fsdd-speaker --subset 300 --seeds 0 1 2
    python benchmarks/bench_quality.py --sets fsdd-speaker arabic-speakers --features speaker \
        --methods kmeans umap+kmeans temi spice deepdpm     # SpeakerEmbedder (GE2E)

The sets are FSDD by speaker and by digit, Bengalese finch syllables, Arabic keywords
by word (``arabic-commands``) and by speaker (``arabic-speakers``: 30 speakers, the
first 8 digits of each clip's ``source_path`` file name in ``sources.csv``); the
features BYOL-A, log-mel statistics, BirdNET and ``speaker`` (SpeakerEmbedder).

``--subset N`` draws, for each seed, a stratified subset of N clips (seeded by
the seed), so the figures are means over subsets as well as over seeds.
Features ending ``-content`` are the embedder's content view (``group_by="content"``):
what is said or sung, in order, rather than who says it.
The tables are printed as markdown and written with a CSV of the runs to ``--out``.
``--merge`` prints one table from the ``runs.csv`` of several earlier runs, fitting nothing::

    python benchmarks/bench_quality.py --merge classical/runs.csv deep/runs.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SETS = ("fsdd-speaker", "fsdd-digit", "bengalese-finch", "arabic-commands", "arabic-speakers")
FEATURES = (
    "byola",
    "spectrogram",
    "birdnet",
    "speaker",
    "spectrogram-content",
    "byola-content",
)
# the content view (group_by="content") of the embedders that have one
CONTENT_FEATURES = ("spectrogram-content", "byola-content")
GIVEN_K = ("kmeans", "ward", "umap+kmeans", "temi", "temi-umap", "temi-over", "spice", "temporal")
FOUND_K = ("umap+hdbscan", "dpgmm", "deepdpm", "deepdpm-32")
# supervised: NMI of 5-fold cross-validated logistic-regression predictions, the most a
# partition of these features can be expected to reach
CEILING = ("ceiling",)
METHODS = GIVEN_K + FOUND_K + CEILING
# methods that read the content view's frame sequences
NEEDS_CONTENT = ("temporal",)
BYOLA_WEIGHTS = "weights/AudioNTT2020-BYOLA-64x96d512.pth"
SPEAKER_WEIGHTS = "weights/resemblyzer-ge2e-pretrained.pt"


# --------------------------------------------------------------------------- data


def _labels_csv(folder: Path) -> tuple[list[str], np.ndarray]:
    """Paths and labels of a folder with a ``labels.csv`` of ``path,label`` rows."""
    with open(folder / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [str(folder / row["path"]) for row in rows], np.asarray([row["label"] for row in rows])


def load_set(name: str, shared: Path) -> tuple[list[str], np.ndarray]:
    """Clip paths and labels of one of :data:`SETS`."""
    from skaudiocluster.datasets import load_fsdd

    if name.startswith("fsdd-"):
        return load_fsdd(shared / "data/fsdd/recordings", target=name.removeprefix("fsdd-"))
    folders = {
        "bengalese-finch": "bengalese_finch_gy6or6",
        "arabic-commands": "arabic_speech_commands",
        "arabic-speakers": "arabic_speech_commands",
    }
    paths, labels = _labels_csv(shared / "data" / folders[name])
    if name == "arabic-speakers":  # 30 speakers: the first 8 digits of the source file name
        folder = shared / "data" / folders[name]
        with open(folder / "sources.csv", newline="") as handle:
            speaker = {
                str(folder / row["path"]): Path(row["source_path"]).name[:8]
                for row in csv.DictReader(handle)
            }
        labels = np.asarray([speaker[path] for path in paths])
    return paths, labels


def embed(feature: str, paths: list[str], weights: str) -> np.ndarray:
    """Embeddings of ``paths`` by one of :data:`FEATURES` (cached by the caller)."""
    import torch

    torch.set_num_threads(2)
    group_by = "content" if feature in CONTENT_FEATURES else "source"
    feature = feature.removesuffix("-content")
    if feature == "byola":
        from skaudiocluster.transformers.byola import BYOLAEmbedder

        producer = BYOLAEmbedder(weights=weights, group_by=group_by)
    elif feature == "birdnet":  # needs pip install "skaudiocluster[birdnet]"
        from skaudiocluster.transformers.birdnet import BirdNETEmbedder

        producer = BirdNETEmbedder(n_threads=2)
    elif feature == "speaker":
        from skaudiocluster.transformers.speaker import SpeakerEmbedder

        producer = SpeakerEmbedder(weights=weights)
    else:
        from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

        producer = SpectrogramTransformer(group_by=group_by)
    return np.asarray(producer.fit_transform(paths), dtype=np.float32)


def stratified_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a stratified subset of ``size`` rows."""
    from sklearn.model_selection import train_test_split

    index, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y, random_state=seed)
    return np.sort(index)


# --------------------------------------------------------------------------- methods


def _umap(X: np.ndarray, seed: int) -> np.ndarray:
    from skaudiocluster.cluster._neighbors import umap_layout

    return umap_layout(X, 10, random_state=seed)


def _pca32(X: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    standard = StandardScaler().fit_transform(X)
    return PCA(min(32, *X.shape), random_state=seed).fit_transform(standard)


def supervised_ceiling(X: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold predictions of a standardised logistic regression, 5 stratified folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return cross_val_predict(model, X, y, cv=folds)


def cluster(method: str, X: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Labels of ``X`` by ``method`` (K given to the :data:`GIVEN_K` methods only)."""
    from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
    from sklearn.mixture import BayesianGaussianMixture

    from skaudiocluster import (
        DeepDPMClusterer,
        SPICEClusterer,
        TEMIClusterer,
        TemporalClusterer,
    )

    def kmeans(Z):
        return KMeans(n_classes, n_init=10, random_state=seed).fit_predict(Z)

    factories: dict[str, Callable[[], np.ndarray]] = {
        "kmeans": lambda: kmeans(X),
        "ward": lambda: AgglomerativeClustering(n_classes, linkage="ward").fit_predict(X),
        "umap+kmeans": lambda: kmeans(_umap(X, seed)),
        "umap+hdbscan": lambda: HDBSCAN(
            min_cluster_size=max(5, len(X) // 100), copy=True
        ).fit_predict(_umap(X, seed)),
        "dpgmm": lambda: BayesianGaussianMixture(
            n_components=min(40, len(X)),
            weight_concentration_prior_type="dirichlet_process",
            max_iter=500,
            random_state=seed,
        ).fit_predict(_pca32(X, seed)),
        "temi": lambda: TEMIClusterer(n_classes, random_state=seed).fit_predict(X),
        "temi-umap": lambda: TEMIClusterer(
            n_classes, neighbors="umap", random_state=seed
        ).fit_predict(X),
        "temi-over": lambda: TEMIClusterer(
            n_classes, overclustering=2.0, random_state=seed
        ).fit_predict(X),
        "spice": lambda: SPICEClusterer(n_classes, random_state=seed).fit_predict(X),
        "temporal": lambda: TemporalClusterer(n_classes, random_state=seed).fit_predict(X),
        "deepdpm": lambda: DeepDPMClusterer(random_state=seed).fit_predict(X),
        "deepdpm-32": lambda: DeepDPMClusterer(n_components=32, random_state=seed).fit_predict(X),
    }
    return factories[method]()


def run_one(method: str, X: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """Fit one method on one thread and score it; runs in a worker process."""
    import torch
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from threadpoolctl import threadpool_limits

    from skaudiocluster.metrics import hungarian_accuracy

    torch.set_num_threads(1)
    start = time.perf_counter()
    with threadpool_limits(1):
        if method in CEILING:
            labels = supervised_ceiling(X, y, seed)
        else:
            labels = cluster(method, X, len(np.unique(y)), seed)
    seconds = time.perf_counter() - start
    return {
        "nmi": normalized_mutual_info_score(y, labels),
        "ari": adjusted_rand_score(y, labels),
        "acc": hungarian_accuracy(y, labels),
        "k": len(set(labels.tolist()) - {-1}),
        "fit_s": seconds,
    }


# --------------------------------------------------------------------------- tables


def summary_rows(runs: list[dict]) -> list[dict]:
    """Mean and sd over seeds of every (set, N, feature, method)."""
    fields = ("set", "n", "feature", "method")
    keys = sorted({tuple(r[f] for f in fields) for r in runs}, key=_order)
    rows = []
    for key in keys:
        group = [r for r in runs if tuple(r[f] for f in fields) == key]
        row = dict(zip(fields, key), n_seeds=len(group))
        for metric in ("nmi", "ari", "acc", "k", "fit_s"):
            values = np.asarray([r[metric] for r in group], dtype=float)
            row[f"{metric}_mean"], row[f"{metric}_sd"] = values.mean(), values.std()
        rows.append(row)
    return rows


def _order(key: tuple) -> tuple:
    set_name, n, feature, method = key
    return (
        SETS.index(set_name) if set_name in SETS else len(SETS),
        -n,
        FEATURES.index(feature),
        METHODS.index(method),
    )


def markdown(rows: list[dict]) -> str:
    lines = [
        "| set | N | features | method | NMI | ARI | ACC | K | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r[f'{metric}_mean']:.{digits}f} ± {r[f'{metric}_sd']:.{digits}f}"
            for metric, digits in (("nmi", 3), ("ari", 3), ("acc", 3), ("k", 1))
        ]
        lines.append(
            f"| {r['set']} | {r['n']:.0f} | {r['feature']} | {r['method']} | {' | '.join(cells)} "
            f"| {r['fit_s_mean']:.1f} |"
        )
    return "\n".join(lines)


def write_results(out: Path, table: str, runs: list[dict]) -> None:
    """Print ``table`` and write it to ``out/results.md``, the runs to ``out/runs.csv``."""
    print(table)
    (out / "results.md").write_text(table + "\n")
    with open(out / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)


def read_runs(path: Path) -> list[dict]:
    """The runs of an earlier ``runs.csv``, with numeric fields as numbers."""
    with open(path, newline="") as handle:
        runs = list(csv.DictReader(handle))
    for run in runs:
        for key in ("seed", "n", "nmi", "ari", "acc", "k", "fit_s"):
            run[key] = float(run[key])
    return runs


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_shared = os.environ.get("SKAUDIOCLUSTER_SHARED", "../shared")
    parser.add_argument("--shared", type=Path, default=Path(default_shared))
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--features", nargs="+", choices=FEATURES, default=list(FEATURES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--subset", type=int, default=None, help="stratified subset per seed")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("bench_quality_results"))
    parser.add_argument("--cache", type=Path, default=None, help="default: OUT/cache")
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=None, help="runs.csv files to tabulate together"
    )
    args = parser.parse_args(argv)
    if args.merge:
        print(markdown(summary_rows([run for path in args.merge for run in read_runs(path)])))
        return

    from joblib import Memory, Parallel, delayed

    args.out.mkdir(parents=True, exist_ok=True)
    memory = Memory(args.cache or args.out / "cache", verbose=0)
    cached_embed = memory.cache(embed)
    jobs, keys = [], []
    for set_name in args.sets:
        paths, y = load_set(set_name, args.shared)
        for feature in args.features:
            weights = str(
                args.shared / (SPEAKER_WEIGHTS if feature == "speaker" else BYOLA_WEIGHTS)
            )
            start = time.perf_counter()
            X = cached_embed(feature, paths, weights)
            print(
                f"{set_name} {feature}: {X.shape} in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
            for seed in args.seeds:
                index = np.arange(len(y))
                if args.subset is not None:
                    index = stratified_subset(y, args.subset, seed)
                for method in args.methods:
                    if method in NEEDS_CONTENT and feature not in CONTENT_FEATURES:
                        continue
                    jobs.append(delayed(run_one)(method, X[index], y[index], seed))
                    keys.append(
                        {
                            "set": set_name,
                            "feature": feature,
                            "method": method,
                            "seed": seed,
                            "n": len(index),
                        }
                    )
    start = time.perf_counter()
    results = Parallel(n_jobs=args.jobs, backend="loky")(jobs)
    runs = [{**key, **result} for key, result in zip(keys, results)]
    print(
        f"\n{len(runs)} fits in {time.perf_counter() - start:.0f} s wall, "
        f"{args.jobs} worker processes of one thread\n"
    )
    write_results(args.out, markdown(summary_rows(runs)), runs)


if __name__ == "__main__":
    main()
