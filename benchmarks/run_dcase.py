"""Compare feature producers x reducers x clusterers on a labelled sound collection.

Every pipeline embeds the clips, optionally reduces the embeddings and clusters
them; it is scored against the true labels by NMI, ARI and Hungarian accuracy,
with its fit time and the number of clusters K it produced. The table is
printed as markdown and written with a CSV of the same rows to ``--out``, next
to PNG plots of the best pipeline (a 2-D map of its embeddings,
``skaudiocluster.plot.default_map``, coloured by cluster and by true label, the
Hungarian-matched confusion matrix and, for a deep clusterer, its training
history)::

    python benchmarks/run_dcase.py                                # synthetic sounds
    python benchmarks/run_dcase.py --fsdd ../shared/data/fsdd/recordings \\
        --byola-weights ../shared/weights/AudioNTT2020-BYOLA-64x96d512.pth
    python benchmarks/run_dcase.py --dcase DCASE2018-task5-dev --subset 900 --seeds 0 1 2
    python benchmarks/run_dcase.py --folder my_sounds --features spectrogram \\
        --reducers none pca tsne --clusterers kmeans agglomerative

Data: ``--dcase`` (the DCASE 2018 task 5 development set, 9 classes), ``--fsdd``
(``--target speaker`` or ``digit``), ``--folder`` (labels from sub-folders), or
by default ``make_sound_classes``. ``--subset N`` draws a stratified subset
seeded by ``--subset-seed``. Embeddings are cached with joblib under
``--cache`` (default ``OUT/cache``), so a second run with other reducers or
clusterers does not re-embed. With several ``--seeds`` every seeded step
(random-init embedder, reducer, clusterer) is repeated and the table reports
mean and standard deviation.

Deep clusterers (SPICE, TEMI, DeepDPM) standardise and reduce their input
themselves, so they run on the embeddings directly (reducer ``none``) with their
default training budgets; ``--quick`` shrinks those budgets for a smoke run.
An estimator that is not importable, or weights that cannot be found offline,
give a row whose status says why; a pipeline that raises gives a ``failed``
row; neither stops the run.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from joblib import Memory
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import train_test_split

from skaudiocluster.datasets import (
    load_audio_folder,
    load_dcase2018_task5,
    load_fsdd,
    make_sound_classes,
)
from skaudiocluster.metrics import hungarian_accuracy

RATE = 16000  # rate of the synthetic clips; files carry their own

COLUMNS = [
    "features",
    "reducer",
    "clusterer",
    "status",
    "n_seeds",
    "nmi_mean",
    "nmi_std",
    "ari_mean",
    "ari_std",
    "acc_mean",
    "acc_std",
    "k_mean",
    "k_std",
    "fit_time_s",
    "embed_time_s",
]


# --------------------------------------------------------------------------- feature producers


def _spectrogram(args, seed):
    from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

    return SpectrogramTransformer(sample_rate=RATE, device=args.device, verbose=args.verbose)


def _byola(args, seed):
    from skaudiocluster.transformers import resolve_weights
    from skaudiocluster.transformers.byola import BYOLAEmbedder

    weights = str(resolve_weights(args.byola_weights))
    return BYOLAEmbedder(weights, sample_rate=RATE, device=args.device, verbose=args.verbose)


def _byola_random(args, seed):
    from skaudiocluster.transformers.byola import BYOLAEmbedder

    return BYOLAEmbedder(
        None, sample_rate=RATE, device=args.device, random_state=seed, verbose=args.verbose
    )


def _passt(args, seed):
    from skaudiocluster.transformers import resolve_weights
    from skaudiocluster.transformers.passt import PaSSTEmbedder

    weights = str(resolve_weights(args.passt_weights))
    return PaSSTEmbedder(weights, sample_rate=RATE, device=args.device, verbose=args.verbose)


def _birdnet(args, seed):
    from skaudiocluster.transformers.birdnet import BirdNETEmbedder

    return BirdNETEmbedder(sample_rate=RATE, verbose=args.verbose)  # needs [birdnet]


# name -> (factory(args, seed), whether the embedding depends on the seed)
FEATURES: dict[str, tuple[Callable, bool]] = {
    "spectrogram": (_spectrogram, False),
    "byola": (_byola, False),
    "byola-random": (_byola_random, True),
    "passt": (_passt, False),
    "birdnet": (_birdnet, False),
}


def _fit_transform(producer, X, fingerprint):
    """Embed X; cached by joblib on the producer's parameters, X and the files' fingerprint."""
    start = time.perf_counter()
    features = np.asarray(producer.fit_transform(X), dtype=np.float32)
    return features, time.perf_counter() - start


# --------------------------------------------------------------------------- reducers


def _reducer(name: str, n_samples: int, n_features: int, seed: int):
    if name == "none":
        return None
    if name == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=min(32, n_samples, n_features), random_state=seed)
    if name == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (n_samples - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    if name == "umap":
        from umap import UMAP

        # min_dist=0 packs neighbours tightly, the setting umap-learn advises for clustering
        n_neighbors = min(15, n_samples - 1)
        return UMAP(
            n_components=min(10, n_features),
            n_neighbors=n_neighbors,
            min_dist=0.0,
            random_state=seed,
            n_jobs=1,
        )
    raise ValueError(f"unknown reducer {name!r}")


REDUCERS = ("none", "pca", "tsne", "umap")


# --------------------------------------------------------------------------- clusterers


def _dbscan(Z, K, seed, args):
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    # eps: the median distance to the min_samples-th neighbour, a common data-driven choice
    min_samples = 5
    n_neighbors = min(min_samples, len(Z) - 1) + 1
    distances, _ = NearestNeighbors(n_neighbors=n_neighbors).fit(Z).kneighbors(Z)
    eps = float(np.median(distances[:, -1])) or 1e-6
    return DBSCAN(eps=eps, min_samples=min_samples)


def _meanshift(Z, K, seed, args):
    from sklearn.cluster import MeanShift, estimate_bandwidth

    rng = np.random.default_rng(seed)
    bandwidth = estimate_bandwidth(Z, quantile=0.2, n_samples=min(len(Z), 1000), random_state=seed)
    # 100 random samples as starting points keep it affordable in hundreds of dimensions
    seeds = Z[rng.choice(len(Z), size=min(len(Z), 100), replace=False)]
    return MeanShift(bandwidth=bandwidth or None, seeds=seeds)


def _kmeans(Z, K, seed, args):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=K, n_init=10, random_state=seed)


def _agglomerative(Z, K, seed, args):
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=K, linkage="ward")


def _dpgmm(Z, K, seed, args):
    from sklearn.mixture import BayesianGaussianMixture

    from skaudiocluster.cluster.deepdpm import AUTO_DIAGONAL_ABOVE

    # scikit-learn's Dirichlet-process mixture, the classical way to infer K: up to
    # 40 components, full covariances where DeepDPM's "auto" would use them
    return BayesianGaussianMixture(
        n_components=min(40, len(Z)),
        covariance_type="full" if Z.shape[1] <= AUTO_DIAGONAL_ABOVE else "diag",
        weight_concentration_prior_type="dirichlet_process",
        max_iter=500,
        random_state=seed,
    )


# --quick: training budgets for a smoke run of the deep clusterers (not for results)
QUICK = {
    "spice": {
        "max_steps": None,
        "max_epochs": 3,
        "n_repeats": 2,
        "semi_max_steps": None,
        "semi_max_epochs": 5,
    },
    "temi": {"max_steps": 200, "n_heads": 4},
    "deepdpm": {"max_epochs": 30, "split_merge_every": 6},
}


def _deep_params(name, args) -> dict:
    params = {"device": args.device, "verbose": args.verbose}
    return {**params, **QUICK[name]} if args.quick else params


def _spice(Z, K, seed, args):
    from skaudiocluster.cluster.spice import SPICEClusterer

    return SPICEClusterer(n_clusters=K, random_state=seed, **_deep_params("spice", args))


def _temi(Z, K, seed, args):
    from skaudiocluster.cluster.temi import TEMIClusterer

    return TEMIClusterer(n_clusters=K, random_state=seed, **_deep_params("temi", args))


def _deepdpm(Z, K, seed, args):
    from skaudiocluster.cluster.deepdpm import DeepDPMClusterer

    return DeepDPMClusterer(random_state=seed, **_deep_params("deepdpm", args))


# name -> factory(features, n_classes, seed, args); deep ones train on the features
# themselves. DBSCAN, MeanShift, dpgmm and DeepDPM find K; the others are given it.
CLUSTERERS: dict[str, Callable] = {
    "kmeans": _kmeans,
    "agglomerative": _agglomerative,
    "dbscan": _dbscan,
    "meanshift": _meanshift,
    "dpgmm": _dpgmm,
    "spice": _spice,
    "temi": _temi,
    "deepdpm": _deepdpm,
}
DEEP = {"spice", "temi", "deepdpm"}
DEEP_REDUCERS = {"none"}


# --------------------------------------------------------------------------- data


def load_data(args) -> tuple[list, np.ndarray, str]:
    """The clips, their labels and a description of the data set."""
    chosen = [flag for flag in ("dcase", "fsdd", "folder") if getattr(args, flag)]
    if len(chosen) > 1:
        raise SystemExit(f"choose one data set, got --{' and --'.join(chosen)}")
    if args.dcase:
        X, y = load_dcase2018_task5(args.dcase)
        name = "DCASE 2018 task 5 development set"
    elif args.fsdd:
        X, y = load_fsdd(args.fsdd, target=args.target)
        name = f"FSDD by {args.target}"
    elif args.folder:
        X, y = load_audio_folder(args.folder)
        name = f"folder {args.folder}"
    else:
        X, y = make_sound_classes(args.n_samples, args.n_classes, random_state=args.subset_seed)
        name = "synthetic make_sound_classes"
    if args.subset is not None and args.subset < len(y):
        index, _ = train_test_split(
            np.arange(len(y)), train_size=args.subset, stratify=y, random_state=args.subset_seed
        )
        index = np.sort(index)
        X, y = [X[i] for i in index], y[index]
        name += f", stratified subset of {args.subset}"
    return X, y, name


def _fingerprint(X) -> tuple | None:
    """Size and modification time of every file, so edited files are re-embedded."""
    if not X or not isinstance(X[0], (str, os.PathLike)):
        return None
    return tuple((os.fspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in X)


# --------------------------------------------------------------------------- running


def _status_of(error: BaseException) -> str:
    kind = "unavailable" if isinstance(error, ImportError) else "failed"
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{kind}: {type(error).__name__}: {message}"[:300]


def _n_found(labels: np.ndarray) -> int:
    """Clusters used, not counting DBSCAN's noise label -1."""
    return len(set(labels.tolist()) - {-1})


def run_benchmark(args, X, y, log=print) -> tuple[list[dict], dict]:
    """Run every selected pipeline for every seed.

    Returns the per-seed runs (dicts with the table's keys plus ``seed``) and,
    for the first seed, what the plots need: embeddings by feature producer,
    labels and fitted clusterer by pipeline.
    """
    memory = Memory(args.cache, verbose=0)
    embed = memory.cache(_fit_transform)
    fingerprint = _fingerprint(X)
    n_classes = len(np.unique(y))
    runs: list[dict] = []
    first: dict = {"features": {}, "labels": {}, "estimators": {}}
    pipelines = [
        (r, c)
        for r in args.reducers
        for c in args.clusterers
        if c not in DEEP or r in DEEP_REDUCERS
    ]
    for feature_name in args.features:
        factory, seeded = FEATURES[feature_name]
        for seed in args.seeds:
            row_base = {"features": feature_name, "seed": seed}
            try:
                features, embed_time = embed(factory(args, seed if seeded else 0), X, fingerprint)
            except Exception as error:  # reported as a row; the other pipelines still run
                status = _status_of(error)
                if isinstance(error, ValueError) and "weights" in str(error):
                    status = status.replace("failed:", "unavailable:", 1)
                log(f"{feature_name}: {status}")
                runs += [
                    {**row_base, "reducer": r, "clusterer": c, "status": status}
                    for r, c in pipelines
                ]
                continue
            log(f"{feature_name}: {features.shape} in {embed_time:.1f} s (seed {seed})")
            if seed == args.seeds[0]:
                first["features"][feature_name] = features
            reduced: dict[str, tuple] = {}
            for reducer_name, clusterer_name in pipelines:
                row = {**row_base, "reducer": reducer_name, "clusterer": clusterer_name}
                row["embed_time_s"] = embed_time
                try:
                    if reducer_name not in reduced:
                        reducer = _reducer(reducer_name, *features.shape, seed)
                        start = time.perf_counter()
                        Z = features if reducer is None else reducer.fit_transform(features)
                        reduced[reducer_name] = (np.asarray(Z), time.perf_counter() - start)
                    Z, reduce_time = reduced[reducer_name]
                    estimator = CLUSTERERS[clusterer_name](Z, n_classes, seed, args)
                    start = time.perf_counter()
                    labels = np.asarray(estimator.fit_predict(Z))
                    row["fit_time_s"] = reduce_time + time.perf_counter() - start
                except Exception as error:  # reported as a row; the other pipelines still run
                    row["status"] = _status_of(error)
                    log(f"  {reducer_name} / {clusterer_name}: {row['status']}")
                    runs.append(row)
                    continue
                row.update(
                    status="ok",
                    nmi=normalized_mutual_info_score(y, labels),
                    ari=adjusted_rand_score(y, labels),
                    acc=hungarian_accuracy(y, labels),
                    k=_n_found(labels),
                )
                log(
                    f"  {reducer_name} / {clusterer_name}: NMI {row['nmi']:.3f} "
                    f"ACC {row['acc']:.3f} K {row['k']} ({row['fit_time_s']:.1f} s)"
                )
                runs.append(row)
                if seed == args.seeds[0]:
                    key = (feature_name, reducer_name, clusterer_name)
                    first["labels"][key] = labels
                    first["estimators"][key] = estimator
    return runs, first


def summarize(runs: list[dict]) -> list[dict]:
    """One row per pipeline: mean and standard deviation over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["features"], run["reducer"], run["clusterer"]), []).append(run)
    rows = []
    for (feature, reducer, clusterer), group in groups.items():
        ok = [run for run in group if run["status"] == "ok"]
        row = {"features": feature, "reducer": reducer, "clusterer": clusterer}
        row["n_seeds"] = len(ok)
        if ok:
            row["status"] = "ok" if len(ok) == len(group) else f"ok for {len(ok)}/{len(group)}"
            for key in ("nmi", "ari", "acc", "k"):
                values = np.array([run[key] for run in ok], dtype=float)
                row[f"{key}_mean"], row[f"{key}_std"] = values.mean(), values.std()
            row["fit_time_s"] = float(np.mean([run["fit_time_s"] for run in ok]))
            row["embed_time_s"] = float(np.mean([run["embed_time_s"] for run in ok]))
        else:
            row["status"] = group[0]["status"]
        rows.append(row)
    return rows


def _cell(row: dict, key: str, digits: int = 3) -> str:
    if f"{key}_mean" not in row:
        return "-"
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    text = f"{mean:.{digits}f}"
    return text + f" ± {std:.{digits}f}" if row["n_seeds"] > 1 else text


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table; reasons for unavailable or failed rows become notes."""
    header = "| features | reducer | clusterer | NMI | ARI | ACC | K | fit s | status |"
    lines = [header, "|" + "---|" * 9]
    notes: dict[str, int] = {}
    for row in rows:
        fit = f"{row['fit_time_s']:.1f}" if "fit_time_s" in row else "-"
        status = row["status"]
        if status != "ok":
            number = notes.setdefault(status, len(notes) + 1)
            status = f"{status.split(':')[0]} [{number}]"
        k_digits = 1 if row.get("n_seeds", 0) > 1 else 0
        cells = [
            row["features"],
            row["reducer"],
            row["clusterer"],
            _cell(row, "nmi"),
            _cell(row, "ari"),
            _cell(row, "acc"),
            _cell(row, "k", k_digits),
            fit,
            status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{number}] {status}" for status, number in notes.items()]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def write_plots(out: Path, rows: list[dict], first: dict, y: np.ndarray, seed: int, log=print):
    """PNG plots of the pipeline with the best mean NMI; returns the files written."""
    ok = [row for row in rows if "nmi_mean" in row]
    if not ok:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots (pip install 'skaudiocluster[plot]')")
        return []
    from skaudiocluster.plot import plot_cluster_map, plot_confusion_matrix, plot_history

    best = max(ok, key=lambda row: row["nmi_mean"])
    key = (best["features"], best["reducer"], best["clusterer"])
    labels = first["labels"][key]
    title = " / ".join(key)
    written = []
    figures = {
        "cluster_map.png": lambda: plot_cluster_map(
            first["features"][best["features"]], labels, y_true=y, random_state=seed
        ),
        "confusion_matrix.png": lambda: plot_confusion_matrix(y, labels),
    }
    if hasattr(first["estimators"][key], "history_"):
        figures["history.png"] = lambda: plot_history(first["estimators"][key])
    for name, draw in figures.items():
        fig = draw()
        fig.suptitle(f"best pipeline: {title}")
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data (default: synthetic make_sound_classes)")
    data.add_argument("--dcase", metavar="PATH", help="DCASE 2018 task 5 development set")
    data.add_argument("--fsdd", metavar="PATH", help="FSDD recordings folder")
    data.add_argument(
        "--target",
        choices=("speaker", "digit"),
        default="speaker",
        help="FSDD labels (default: speaker)",
    )
    data.add_argument("--folder", metavar="PATH", help="a folder with one sub-folder per class")
    data.add_argument("--subset", type=int, metavar="N", help="stratified subset of N clips")
    data.add_argument(
        "--subset-seed",
        type=int,
        default=0,
        help="seed of the subset and of the synthetic data (default: 0)",
    )
    data.add_argument("--n-samples", type=int, default=300, help="synthetic clips (default: 300)")
    data.add_argument("--n-classes", type=int, default=6, help="synthetic classes (default: 6)")
    rows = parser.add_argument_group("rows")
    rows.add_argument(
        "--features",
        nargs="+",
        choices=list(FEATURES),
        default=None,
        help="default: spectrogram byola byola-random, and passt when --passt-weights is given",
    )
    rows.add_argument(
        "--reducers",
        nargs="+",
        choices=REDUCERS,
        default=["none", "pca", "umap"],
        help="default: none pca umap",
    )
    rows.add_argument(
        "--clusterers",
        nargs="+",
        choices=list(CLUSTERERS),
        default=list(CLUSTERERS),
        help="default: all",
    )
    rows.add_argument("--seeds", nargs="+", type=int, default=[0], help="default: 0")
    rows.add_argument(
        "--byola-weights",
        default="byola-v1-d512",
        metavar="NAME_OR_PATH",
        help="BYOL-A checkpoint, a registered name or a file",
    )
    rows.add_argument(
        "--passt-weights",
        default=None,
        metavar="NAME_OR_PATH",
        help="PaSST checkpoint, e.g. passt_s_swa_p16_128_ap476 or a file",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out",
        type=Path,
        default=Path("benchmark_results"),
        help="output folder (default: benchmark_results)",
    )
    run.add_argument(
        "--cache", type=Path, default=None, help="embedding cache folder (default: OUT/cache)"
    )
    run.add_argument("--device", default="auto", help="torch device (default: auto)")
    run.add_argument("--verbose", type=int, default=0, help="progress bars when 1")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    run.add_argument(
        "--quick",
        action="store_true",
        help="tiny training budgets for the deep clusterers: a smoke run, not results",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.features is None:
        args.features = ["spectrogram", "byola", "byola-random"]
        if args.passt_weights is not None:
            args.features.append("passt")
    if args.passt_weights is None:
        args.passt_weights = "passt_s_swa_p16_128_ap476"
    args.cache = args.cache or args.out / "cache"
    args.out.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    X, y, name = load_data(args)
    log(f"{name}: {len(y)} clips, {len(np.unique(y))} classes")
    runs, first = run_benchmark(args, X, y, log=log)
    rows = summarize(runs)
    elapsed = time.perf_counter() - start
    table = markdown_table(rows)
    seeds = " ".join(map(str, args.seeds))
    summary = (
        f"# Clustering benchmark: {name}\n\n{len(y)} clips, {len(np.unique(y))} classes, "
        f"seeds {seeds}; total time {elapsed:.0f} s.\n\n{table}\n"
    )
    print(summary)
    (args.out / "results.md").write_text(summary)
    write_csv(args.out / "results.csv", rows, COLUMNS)
    write_csv(
        args.out / "runs.csv",
        runs,
        [
            "features",
            "reducer",
            "clusterer",
            "seed",
            "status",
            "nmi",
            "ari",
            "acc",
            "k",
            "fit_time_s",
            "embed_time_s",
        ],
    )
    if not args.no_plots:
        for path in write_plots(args.out, rows, first, y, args.seeds[0], log=log):
            log(f"wrote {path}")
    log(f"wrote {args.out / 'results.md'}, {args.out / 'results.csv'} and runs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
