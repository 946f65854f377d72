"""Scale: neighbour mining and the deep clusterers at 10k, 100k and 1M x 512 embeddings.

The embeddings are a Gaussian mixture (200 random centres, unit-variance noise, float32),
more realistic for neighbour search than pure noise, where every neighbour is a near-tie.
For each N it prints

* kNN: the time of ``cosine_knn`` (exact up to ``EXACT_MAX_SAMPLES`` rows, an IVF index
  above) and its recall@k against exact search on a 20k-row sample of queries;
* each deep clusterer: fit time, time per epoch (skorch's ``dur``; SPICE: its SPICE-Self
  epochs) and peak RSS, each fit in its own subprocess so ``ru_maxrss`` is that fit's
  (it includes the N x 512 float32 input itself: 2 GB at 1M).

The fits train on one thread (the clusterers' default ``n_threads=1``); ``--threads`` (default 2)
sets torch's threads for the kNN runs and the process. Jobs run one at a time.
The 1M runs take hours on 2 cores: ``--sizes 10000 100000`` for a quick look.

Run: ``python benchmarks/bench_scale.py [--sizes 10000 100000 1000000] [--epochs 2]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_FEATURES = 512
N_CENTRES = 200
SIZES = (10_000, 100_000, 1_000_000)
METHODS = ("temi", "spice", "deepdpm")
RECALL_QUERIES = 20_000
N_NEIGHBORS = 50


def mixture(n_samples: int, seed: int = 0, n_features: int = N_FEATURES) -> np.ndarray:
    """``n_samples`` float32 rows around ``N_CENTRES`` random centres, made in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CENTRES, n_features), dtype=np.float32)
    X = np.empty((n_samples, n_features), dtype=np.float32)
    for start in range(0, n_samples, 65_536):
        rows = X[start : start + 65_536]
        rows[:] = centres[rng.integers(0, N_CENTRES, len(rows))]
        rows += rng.standard_normal(rows.shape, dtype=np.float32)
    return X


def exact_neighbours(X: np.ndarray, rows: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Exact cosine top-``k`` (self excluded) of ``X[rows]`` among all rows of ``X``.

    Normalises ``X`` in place; a block of ``chunk`` x N similarities at a time.
    """
    import torch

    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    base = torch.from_numpy(X)
    out = np.empty((len(rows), k), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(rows), chunk):
            own = torch.from_numpy(rows[start : start + chunk])
            sims = base[own] @ base.T
            sims[torch.arange(len(own)), own] = -float("inf")
            out[start : start + len(own)] = torch.topk(sims, k, dim=1).indices.numpy()
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row's exact neighbours that ``found`` holds."""
    hits = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(found, exact)]
    return float(np.mean(hits)) / exact.shape[1]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_knn(n_samples: int, k: int = N_NEIGHBORS, n_queries: int = RECALL_QUERIES) -> dict:
    """Time ``cosine_knn`` on the mixture and its recall on a sample of queries."""
    from skaudiocluster.cluster._neighbors import cosine_knn, resolve_method

    X = mixture(n_samples)
    start = time.perf_counter()
    indices, _ = cosine_knn(X, k)
    seconds = time.perf_counter() - start
    rows = np.sort(np.random.default_rng(1).choice(n_samples, min(n_queries, n_samples), False))
    exact = exact_neighbours(X, rows, indices.shape[1])
    return {
        "n": n_samples,
        "method": resolve_method("auto", n_samples),
        "knn s": seconds,
        "recall": recall_at_k(indices[rows], exact),
        "peak rss GB": peak_rss_gb(),
    }


def budget(method: str, n_epochs: int) -> dict:
    """Parameters that stop each clusterer after ``n_epochs`` epochs (50 clusters)."""
    return {
        "temi": {"n_clusters": 50, "max_steps": None, "max_epochs": n_epochs},
        "spice": {
            "n_clusters": 50,
            "max_steps": None,
            "max_epochs": n_epochs,
            "semi_max_steps": None,
            "semi_max_epochs": 1,
        },
        "deepdpm": {"max_epochs": n_epochs},
    }[method]


def run_fit(
    method: str, n_samples: int, n_epochs: int, n_features: int = N_FEATURES, **params
) -> dict:
    """One fit at its epoch budget: wall time, mean epoch time, and this process' peak RSS."""
    from skaudiocluster.cluster import DeepDPMClusterer, SPICEClusterer, TEMIClusterer

    classes = {"temi": TEMIClusterer, "spice": SPICEClusterer, "deepdpm": DeepDPMClusterer}
    X = mixture(n_samples, n_features=n_features)
    estimator = classes[method](random_state=0, **{**budget(method, n_epochs), **params})
    start = time.perf_counter()
    estimator.fit(X)
    seconds = time.perf_counter() - start
    rows = [row for row in estimator.history_ if row.get("stage", "self") == "self"]
    return {
        "n": n_samples,
        "method": method,
        "fit s": seconds,
        "epochs": len(rows),
        "epoch s": float(np.mean([row["dur"] for row in rows])),
        "peak rss GB": peak_rss_gb(),
    }


def in_subprocess(job: str, threads: int, *args, options: tuple[str, ...] = ()) -> dict:
    """``job`` (``knn`` or ``fit``) in a fresh interpreter, so its peak RSS is its own."""
    command = [sys.executable, __file__, "--child", job, "--threads", str(threads), *options]
    # stderr is the caller's: progress bars (--verbose) and errors show as the job runs
    done = subprocess.run(
        [*command, "--", *map(str, args)], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode:
        return {"error": f"exit status {done.returncode} (its error is above)"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(results: list[dict], key: str, small: int, large: int) -> dict[str, float]:
    """``key`` at ``large`` over ``key`` at ``small``, per method."""
    table = {(r.get("method"), r.get("n")): r.get(key) for r in results}
    return {
        method: table[method, large] / table[method, small]
        for method, n in table
        if n == large and table.get((method, small)) and table[method, large]
    }


def run_embedding(args) -> None:
    """The embedding half (``bench_scale_embed.py``, issue 18's other branch): wired in here."""
    script = Path(__file__).with_name("bench_scale_embed.py")
    if not script.exists():
        print("embedding: benchmarks/bench_scale_embed.py is not in this checkout; not run")
        return
    subprocess.run([sys.executable, str(script)], check=False)


def print_table(rows: list[dict], keys: list[str], header: bool = True) -> None:
    if header:
        print("  ".join(f"{key:>12}" for key in keys))
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key, "")
            cells.append(f"{value:12.3f}" if isinstance(value, float) else f"{value!s:>12}")
        print("  ".join(cells) + (f"  {row['error']}" if "error" in row else ""))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--verbose", type=int, default=0, help="progress bars of the fits")
    parser.add_argument("--no-knn", action="store_true")
    parser.add_argument("--no-embedding", action="store_true")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--child", choices=["knn", "fit"], help=argparse.SUPPRESS)
    parser.add_argument("job_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "knn":
        print(json.dumps(run_knn(int(args.job_args[0]))))
        return
    if args.child == "fit":
        method, n, epochs = args.job_args
        print(json.dumps(run_fit(method, int(n), int(epochs), verbose=args.verbose)))
        return
    if max(args.sizes) >= 1_000_000:
        print("warning: the 1M runs take hours on 2 cores", file=sys.stderr)
    print(f"Gaussian mixture, {N_FEATURES}-d; {args.threads} torch threads; fits on 1 thread")
    results = []
    if not args.no_knn:
        knn = [in_subprocess("knn", args.threads, n) for n in args.sizes]
        print(f"\nkNN (k={N_NEIGHBORS}, recall on {RECALL_QUERIES} queries against exact)")
        print_table(knn, ["n", "method", "knn s", "recall", "peak rss GB"])
        results += [{**row, "job": "knn"} for row in knn]
    fits = []
    fit_keys = ["method", "n", "fit s", "epochs", "epoch s", "peak rss GB"]
    print(f"\nfits ({args.epochs} epoch(s) each, one subprocess per fit)")
    print_table([], fit_keys)
    for n in args.sizes:
        for method in args.methods:
            fits.append(
                {
                    "method": method,
                    "n": n,
                    **in_subprocess(
                        "fit",
                        args.threads,
                        method,
                        n,
                        args.epochs,
                        options=("--verbose", str(args.verbose)),
                    ),
                }
            )
            print_table(fits[-1:], fit_keys, header=False)
    results += [{**row, "job": "fit"} for row in fits]
    if 100_000 in args.sizes and 1_000_000 in args.sizes:
        print("\n1M / 100k, time per epoch:", ratio(fits, "epoch s", 100_000, 1_000_000))
    if not args.no_embedding:
        run_embedding(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
