"""How well each clusterer's per-clip confidence points at its mistakes, on real audio.

For every labelled set of the shared data folder (BYOL-A d512 embeddings, cached
with joblib as in ``bench_quality.py``) and every seed, each clusterer is fitted
at its defaults and its confidence is scored against the truth: a clip is right
when its cluster is matched to its class (Hungarian matching), and the score is
the ROC AUC of the confidence for "right" (:func:`skaudiocluster.metrics.confidence_auroc`),
with the fraction of clips at confidence >= 0.99 (a confidence that says 1.00 for
nearly every clip cannot point at anything). Two confidences per clusterer:

* ``centroid``: :func:`skaudiocluster.cluster.centroid_confidence` in the space
  the clusterer saw (``confidence_`` of the deep clusterers; for ``kmeans`` and
  ``ward``, the StandardScaler + PCA(32) features the CLI gives them), what the
  CLI's ``confidence`` column and the listening report's typical order use;
* ``softmax``: the largest ``predict_proba`` of the deep clusterers, the
  confidence the CLI wrote before.

Every fit runs in its own worker process on one thread::

    python benchmarks/bench_confidence.py --shared ../shared
    python benchmarks/bench_confidence.py --sets bengalese-finch --methods temi --seeds 0
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

METHODS = ("kmeans", "ward", "temi", "spice", "deepdpm")
# bench_quality.SETS, in its order (imported in main: the scripts folder is no package)
SETS = ("fsdd-speaker", "fsdd-digit", "bengalese-finch", "arabic-commands")
# Above this many clips a confidence is "saturated": it no longer orders them.
SATURATED = 0.99


def fit_one(method: str, X: np.ndarray, n_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Labels and confidences of one fit: ``labels``, ``centroid`` and, if any, ``softmax``."""
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from skaudiocluster import DeepDPMClusterer, SPICEClusterer, TEMIClusterer, centroid_confidence

    if method in ("kmeans", "ward"):
        seen = StandardScaler().fit_transform(X)
        seen = PCA(min(32, *X.shape), random_state=0).fit_transform(seen)
        if method == "kmeans":
            labels = KMeans(n_classes, n_init=10, random_state=seed).fit_predict(seen)
        else:
            labels = AgglomerativeClustering(n_classes).fit_predict(seen)
        return {"labels": labels, "centroid": centroid_confidence(seen, labels)}
    make = {
        "temi": lambda: TEMIClusterer(n_classes, random_state=seed),
        "spice": lambda: SPICEClusterer(n_classes, random_state=seed),
        "deepdpm": lambda: DeepDPMClusterer(random_state=seed),
    }[method]
    return confidences(make().fit(X), X)


def confidences(clusterer, X: np.ndarray) -> dict[str, np.ndarray]:
    """Labels and both confidences of a fitted deep clusterer on its training rows."""
    return {
        "labels": clusterer.labels_,
        "centroid": clusterer.confidence_,
        "softmax": clusterer.predict_proba(X).max(axis=1),
    }


def score(y: np.ndarray, fitted: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy, and the AUROC and saturation of each confidence of ``fitted``."""
    from skaudiocluster.metrics import confidence_auroc, hungarian_accuracy

    labels = fitted["labels"]
    scores = {"acc": hungarian_accuracy(y, labels), "k": len(np.unique(labels))}
    for name in ("centroid", "softmax"):
        values = fitted.get(name)
        scores[f"{name}_auroc"] = np.nan if values is None else confidence_auroc(y, labels, values)
        scores[f"{name}_saturated"] = (
            np.nan if values is None else float(np.mean(values >= SATURATED))
        )
    return scores


def run_one(method: str, X: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """Fit one method on one thread and score its confidences; runs in a worker process."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    start = time.perf_counter()
    with threadpool_limits(1):
        fitted = fit_one(method, X, len(np.unique(y)), seed)
    return {**score(y, fitted), "fit_s": time.perf_counter() - start}


METRICS = ("acc", "k", "centroid_auroc", "centroid_saturated", "softmax_auroc", "softmax_saturated")


def markdown(runs: list[dict]) -> str:
    """One row per (set, method): mean ± sd over seeds of every metric."""
    lines = [
        "| set | method | ACC | K | centroid AUROC | centroid >= 0.99 "
        "| softmax AUROC | softmax >= 0.99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["set"], r["method"]) for r in runs},
        key=lambda key: (SETS.index(key[0]), METHODS.index(key[1])),
    )
    for set_name, method in keys:
        group = [r for r in runs if (r["set"], r["method"]) == (set_name, method)]
        cells = []
        for metric in METRICS:
            values = np.asarray([r[metric] for r in group], dtype=float)
            if np.isnan(values).all():
                cells.append("")
            else:
                digits = 1 if metric == "k" else 3
                cells.append(f"{np.nanmean(values):.{digits}f} ± {np.nanstd(values):.{digits}f}")
        lines.append(f"| {set_name} | {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_shared = os.environ.get("SKAUDIOCLUSTER_SHARED", "../shared")
    parser.add_argument("--shared", type=Path, default=Path(default_shared))
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("bench_confidence_results"))
    parser.add_argument("--cache", type=Path, default=None, help="default: OUT/cache")
    args = parser.parse_args(argv)

    from bench_quality import BYOLA_WEIGHTS, embed, load_set, write_results
    from joblib import Memory, Parallel, delayed

    args.out.mkdir(parents=True, exist_ok=True)
    cached_embed = Memory(args.cache or args.out / "cache", verbose=0).cache(embed)
    weights = str(args.shared / BYOLA_WEIGHTS)
    jobs, keys = [], []
    for set_name in args.sets:
        paths, y = load_set(set_name, args.shared)
        X = cached_embed("byola", paths, weights)
        for seed in args.seeds:
            for method in args.methods:
                jobs.append(delayed(run_one)(method, X, y, seed))
                keys.append({"set": set_name, "method": method, "seed": seed})
    results = Parallel(n_jobs=args.jobs, backend="loky")(jobs)
    runs = [{**key, **result} for key, result in zip(keys, results)]
    write_results(args.out, markdown(runs), runs)


if __name__ == "__main__":
    main()
