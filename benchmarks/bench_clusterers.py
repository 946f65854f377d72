"""Fit time and peak memory of the deep clusterers on random embeddings.

Each (method, N) run happens in a fresh Python subprocess so that its peak
resident memory (``resource.getrusage``, which also sees torch's allocations)
belongs to that run alone. Data: ``N`` rows of 512-d Gaussian blobs (float32).

    python benchmarks/bench_clusterers.py --method temi --n 10000 100000
    python benchmarks/bench_clusterers.py --method all --n 10000 --threads 2
    python benchmarks/bench_clusterers.py --method temi --n 2000 --params '{"min_steps": 50}'
    python benchmarks/bench_clusterers.py --method spice --n 10000 100000
    python benchmarks/bench_clusterers.py --method deepdpm --n 10000 100000 --dim 32

To add a method, add a factory to ``METHODS`` (and, if a stage deserves its own
timing, a function to ``STAGES``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def make_temi(n_clusters: int, random_state: int, **params):
    from skaudiocluster.cluster.temi import TEMIClusterer

    return TEMIClusterer(n_clusters=n_clusters, random_state=random_state, **params)


def temi_knn_stage(estimator, X: np.ndarray) -> None:
    """TEMI's neighbour mining alone, on the features TEMI mines them from."""
    from sklearn.base import clone

    from skaudiocluster.cluster._neighbors import cosine_knn

    preprocessor = clone(estimator)._make_preprocessor(X.shape, seed=0)
    features = preprocessor.fit_transform(X).astype(np.float32)
    cosine_knn(features, 50)


def make_spice(n_clusters: int, random_state: int, **params):
    from skaudiocluster.cluster.spice import SPICEClusterer

    return SPICEClusterer(n_clusters=n_clusters, random_state=random_state, **params)


def spice_reliable_stage(estimator, X: np.ndarray) -> None:
    """SPICE's reliable-label rule alone (k=100 cosine kNN, chunked, never N x N)."""
    from skaudiocluster.cluster._spice_labels import reliable_labels

    rng = np.random.RandomState(0)
    proba = rng.dirichlet(np.full(estimator.n_clusters, 0.05), size=len(X))
    reliable_labels(X, proba, n_neighbors=estimator.n_neighbors, random_state=rng)


def make_deepdpm(n_clusters: int, random_state: int, **params):
    """DeepDPM infers K: it starts from its default n_clusters_init, not from n_clusters."""
    from skaudiocluster.cluster.deepdpm import DeepDPMClusterer

    return DeepDPMClusterer(random_state=random_state, **params)


METHODS = {"temi": make_temi, "spice": make_spice, "deepdpm": make_deepdpm}
STAGES = {
    "temi": {"pca+knn (k=50)": temi_knn_stage},
    "spice": {"reliable labels (k=100)": spice_reliable_stage},
}


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(
    method: str, n_samples: int, dim: int, n_clusters: int, threads: int, params: dict
) -> dict:
    """Fit ``method`` on ``n_samples`` random embeddings; runs inside the child process."""
    import torch
    from sklearn.datasets import make_blobs

    torch.set_num_threads(threads)
    X, _ = make_blobs(n_samples, n_features=dim, centers=n_clusters, random_state=0)
    X = X.astype(np.float32)
    baseline = peak_rss_mb()
    estimator = METHODS[method](n_clusters, 0, **params)
    result = {"method": method, "n": n_samples, "data_mb": X.nbytes / 2**20}
    for stage, function in STAGES.get(method, {}).items():
        start = time.perf_counter()
        function(estimator, X)
        result[f"{stage} s"] = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    estimator.fit(X)
    result["fit s"] = time.perf_counter() - start
    result["fit cpu s"] = time.process_time() - cpu
    for attribute in ("n_steps_", "n_iter_", "n_clusters_"):
        if hasattr(estimator, attribute):
            result[attribute] = getattr(estimator, attribute)
    result["peak rss MB"] = peak_rss_mb()
    result["peak rss over data MB"] = result["peak rss MB"] - baseline
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=[*METHODS, "all"], default="all")
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--n-clusters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--params", default="{}", help="JSON of estimator parameters")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    methods = list(METHODS) if args.method == "all" else [args.method]
    if args.child:
        params = json.loads(args.params)
        result = run_one(methods[0], args.n[0], args.dim, args.n_clusters, args.threads, params)
        print(json.dumps(result))
        return
    for method in methods:
        for n_samples in args.n:
            command = [sys.executable, __file__, "--child", "--method", method]
            command += ["--n", str(n_samples), "--dim", str(args.dim)]
            command += ["--n-clusters", str(args.n_clusters), "--threads", str(args.threads)]
            command += ["--params", args.params]
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode:
                print(f"{method} N={n_samples}: failed\n{completed.stderr[-2000:]}", flush=True)
                continue
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            print(
                "  ".join(
                    f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in result.items()
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
