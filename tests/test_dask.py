"""Dask: embed_files on a two-worker LocalCluster equals local embedding; GridSearchCV on Dask.

Every test needs the ``dask`` extra: the module's ``extras`` mark skips them without it (a
failure where ``$SKAUDIOCLUSTER_EXTRAS`` is set, see tests/conftest.py).
"""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skaudiocluster import (
    CLUSTERING_SCORERS,
    BYOLAEmbedder,
    SpectrogramTransformer,
    TEMIClusterer,
    embed_files,
    load_fsdd,
)

pytestmark = pytest.mark.extras("dask")


def local_cluster(processes: bool):
    from dask.distributed import LocalCluster

    return LocalCluster(
        n_workers=2, processes=processes, threads_per_worker=1, dashboard_address=":0"
    )


@pytest.fixture(scope="module")
def client():
    """Two in-process workers (threads): starts in a second."""
    from dask.distributed import Client

    with local_cluster(processes=False) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def fsdd_sample(fsdd_dir):
    paths, digit = load_fsdd(fsdd_dir, target="digit")
    return paths[::50], digit[::50]  # 60 clips, every digit


def _fitted(kind: str, paths, weights):
    if kind == "byola":
        return BYOLAEmbedder(weights=weights, device="cpu").fit(paths[:20])
    return SpectrogramTransformer(device="cpu").fit(paths[:20])


@pytest.mark.parametrize("kind", ["spectrogram", "byola"])
def test_embeds_fsdd_on_two_workers_like_locally(client, fsdd_sample, byola_d512_weights, kind):
    paths, _ = fsdd_sample
    embedder = _fitted(kind, paths, byola_d512_weights)
    local = embed_files(paths, embedder, chunk_size=8)
    distributed = embed_files(paths, embedder, chunk_size=8, client=client)
    assert distributed.shape == local.shape == (60, 512 if kind == "byola" else 128)
    np.testing.assert_allclose(distributed, local, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def process_client():
    """Two worker processes: real pickling, each worker with its own torch (slow to start)."""
    from dask.distributed import Client

    with local_cluster(processes=True) as cluster, Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_embeds_fsdd_on_two_worker_processes_like_locally(
    process_client, fsdd_sample, byola_d512_weights
):
    """The embedder travels pickled (weights included), once to each worker."""
    paths, _ = fsdd_sample
    embedder = _fitted("byola", paths, byola_d512_weights)
    local = embed_files(paths, embedder, chunk_size=8)
    distributed = embed_files(paths, embedder, chunk_size=8, client=process_client)
    np.testing.assert_allclose(distributed, local, rtol=0, atol=1e-6)


def test_cache_written_by_the_caller(client, fsdd_sample, tmp_path):
    paths, _ = fsdd_sample
    embedder = SpectrogramTransformer(device="cpu").fit(paths[:20])
    first = embed_files(paths, embedder, chunk_size=16, client=client, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*/*.npy"))) == 4
    np.testing.assert_array_equal(
        embed_files(paths, embedder, chunk_size=16, cache_dir=tmp_path), first
    )


def _grid_search_matches_local(client, estimator, grid, X, y):
    search = GridSearchCV(
        estimator,
        grid,
        scoring=CLUSTERING_SCORERS["nmi"],
        cv=StratifiedKFold(2, shuffle=True, random_state=0),
    )
    with joblib.parallel_config(backend="dask", client=client):
        on_dask = search.fit(X, y).cv_results_
    local = GridSearchCV(**search.get_params(deep=False)).fit(X, y).cv_results_
    assert np.all(np.isfinite(on_dask["mean_test_score"]))
    np.testing.assert_allclose(on_dask["mean_test_score"], local["mean_test_score"], atol=1e-6)


@pytest.fixture(scope="module")
def fsdd_features(client, fsdd_sample):
    paths, digit = fsdd_sample
    embedder = SpectrogramTransformer(device="cpu").fit(paths)
    return embed_files(paths, embedder, client=client), digit


def test_grid_search_on_the_dask_backend(client, fsdd_features):
    kmeans = KMeans(n_init=3, random_state=0)
    _grid_search_matches_local(client, kmeans, {"n_clusters": [5, 10]}, *fsdd_features)


@pytest.mark.slow
def test_grid_search_of_a_deep_clusterer_on_worker_processes(process_client, fsdd_features):
    """Deep clusterers seed torch's process-wide generator: one fit per process at a time."""
    temi = TEMIClusterer(n_heads=1, max_steps=1, device="cpu", random_state=0)
    _grid_search_matches_local(process_client, temi, {"n_clusters": [5, 10]}, *fsdd_features)
