"""Why DeepDPM finds the K it finds: the evidence of partitions of the features it sees.

DeepDPM's split and merge moves climb the posterior of a Dirichlet-process
Gaussian mixture under its Normal-Inverse-Wishart prior. Up to a constant, the
log posterior of a hard partition is

    sum_k log p(X_k) + K log(alpha) + sum_k log Gamma(n_k)

(the NIW evidence of each cluster's points and the DP prior). For each labelled
set this script preprocesses the embeddings as ``DeepDPMClusterer`` does at
each ``--n-components`` (standardise, PCA, L2), builds its prior from the data,
and prints

* ``true-one``: the log posterior of the true classes minus that of one cluster
  (negative: the model prefers one cluster to the classes);
* ``K*``: the K in 1..``--max-k`` whose k-means partition has the highest log
  posterior -- a proxy for the K the split and merge moves settle on -- and
  that partition's NMI.

Run: ``python benchmarks/dpm_evidence.py --shared ../shared [--sizes 300 60]``
(embeddings are cached as ``bench_quality.py`` caches them).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from pathlib import Path

import numpy as np


def partition_log_posterior(Z, labels: np.ndarray, prior, alpha: float) -> float:
    """Log posterior, up to a constant, of the hard partition ``labels`` of ``Z`` (float64)."""
    import torch

    from skaudiocluster.cluster._niw import log_marginal_likelihood, sufficient_stats

    codes = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(codes)).to(torch.float64)
    stats = sufficient_stats(Z, one_hot, diagonal=prior.diagonal)
    evidence = log_marginal_likelihood(stats, prior).sum()
    return float(evidence + one_hot.shape[1] * math.log(alpha) + torch.lgamma(stats[0]).sum())


def preferred_k(Z, prior, alpha: float, max_k: int, seed: int = 0) -> tuple[int, np.ndarray]:
    """The K in 1..``max_k`` whose k-means partition of ``Z`` has the highest log posterior.

    k-means runs on one thread: many small fits, which threads only slow down on a busy machine.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    best_k, best_labels, best_score = 1, np.zeros(len(Z), dtype=np.int64), -math.inf
    for k in range(1, min(max_k, len(Z)) + 1):
        if k == 1:
            labels = np.zeros(len(Z), dtype=np.int64)
        else:
            with threadpool_limits(1):
                labels = KMeans(k, n_init=3, random_state=seed).fit_predict(Z.numpy())
        score = partition_log_posterior(Z, labels, prior, alpha)
        if score > best_score:
            best_k, best_labels, best_score = k, labels, score
    return best_k, best_labels


def deepdpm_view(X: np.ndarray, n_components: int, seed: int = 0):
    """``X`` as DeepDPMClusterer's defaults see it (at ``n_components``), and its NIW prior."""
    import torch

    from skaudiocluster import DeepDPMClusterer
    from skaudiocluster.cluster._base import make_preprocessor
    from skaudiocluster.cluster._niw import prior_from_data
    from skaudiocluster.cluster.deepdpm import AUTO_DIAGONAL_ABOVE

    defaults = DeepDPMClusterer()
    preprocessor = make_preprocessor(defaults.preprocessing, n_components, X.shape, seed)
    Z = torch.from_numpy(preprocessor.fit_transform(np.asarray(X, dtype=np.float64)))
    prior = prior_from_data(
        Z,
        kappa=defaults.prior_kappa,
        nu=defaults.prior_nu,
        sigma_scale=defaults.prior_sigma_scale,
        diagonal=Z.shape[1] > AUTO_DIAGONAL_ABOVE,  # covariance_type="auto"
    )
    return Z, prior, defaults.alpha


def _bench_quality():
    """``bench_quality.py`` beside this file (its set loaders, embedder and subsets)."""
    path = Path(__file__).with_name("bench_quality.py")
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    from joblib import Memory
    from sklearn.metrics import normalized_mutual_info_score
    from threadpoolctl import threadpool_limits

    quality = _bench_quality()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_shared = os.environ.get("SKAUDIOCLUSTER_SHARED", "../shared")
    parser.add_argument("--shared", type=Path, default=Path(default_shared))
    parser.add_argument("--sets", nargs="+", choices=quality.SETS, default=list(quality.SETS))
    parser.add_argument("--feature", choices=quality.FEATURES, default="byola")
    parser.add_argument("--sizes", nargs="*", type=int, default=[], help="also stratified subsets")
    parser.add_argument("--n-components", nargs="+", type=int, default=[32, 16, 8])
    parser.add_argument("--max-k", type=int, default=24)
    parser.add_argument("--cache", type=Path, default=Path("bench_quality_results/cache"))
    args = parser.parse_args(argv)

    import torch

    embed = Memory(args.cache, verbose=0).cache(quality.embed)
    weights = str(args.shared / quality.BYOLA_WEIGHTS)
    print("set  N  classes  n_components  true-one  K*  NMI(K*)")
    for name in args.sets:
        paths, y = quality.load_set(name, args.shared)
        X = embed(args.feature, paths, weights)
        torch.set_num_threads(1)  # the embedder ran on 2
        for size in [None, *args.sizes]:
            rows = np.arange(len(y)) if size is None else quality.stratified_subset(y, size, 0)
            for n_components in args.n_components:
                with threadpool_limits(1):
                    Z, prior, alpha = deepdpm_view(X[rows], n_components)
                    gap = partition_log_posterior(Z, y[rows], prior, alpha) - (
                        partition_log_posterior(Z, np.zeros(len(rows)), prior, alpha)
                    )
                    k, labels = preferred_k(Z, prior, alpha, args.max_k)
                nmi = normalized_mutual_info_score(y[rows], labels)
                n_classes = len(np.unique(y[rows]))
                print(
                    f"{name}  {len(rows)}  {n_classes}  {n_components}  {gap:.0f}  {k}  {nmi:.3f}"
                )


if __name__ == "__main__":
    main()
