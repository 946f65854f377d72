"""Nearest neighbours for pair mining: cosine in O(N * k) memory (exact when small, an IVF
index when large), or Euclidean in a UMAP layout."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

#: Above this many rows ``method="auto"`` searches approximately: exact search is
#: O(N ** 2 * D), the IVF index near-linear and nearly exact on clustered data
#: (timings in docs/benchmark.rst, "Large collections"; benchmarks/bench_scale.py).
EXACT_MAX_SAMPLES = 50_000
#: Inverted lists probed per query (of ``4 * sqrt(N)``): enough to find every one of
#: 50 neighbours on clustered data, where half as many miss some (docs/benchmark.rst).
IVF_NPROBE = 16
_ROWS = 65_536  # rows normalised, added or searched at a time: bounded temporaries
# Row magnitudes whose float32 squares neither overflow nor underflow when summed.
FLOAT32_SAFE = (1e-15, 1e15)


def cosine_knn(
    X: np.ndarray,
    n_neighbors: int,
    *,
    include_self: bool = False,
    chunk_size: int = 2048,
    device: torch.device | str = "cpu",
    method: str = "auto",
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine nearest neighbours of every row of ``X``, exact or from an IVF index.

    Exact search L2-normalises rows (rows of extreme scale, such as 1e30 or 1e-30,
    are first rescaled: cosine is scale-free) and compares them by inner product
    ``chunk_size`` queries at a time, so memory is O(chunk_size * N + N * k),
    never O(N ** 2). Above :data:`EXACT_MAX_SAMPLES` rows (``method="auto"``) an
    inverted-file index (faiss ``IndexIVFFlat``, ``4 * sqrt(N)`` k-means lists,
    :data:`IVF_NPROBE` probed per query) keeps time near-linear in N; it needs
    ``faiss-cpu`` (``pip install skaudiocluster[scale]``); without it search stays
    exact, with a warning. (pynndescent, installed with umap-learn, took over 10 min
    at 100k x 512 on 2 cores, faiss IVF under 3 min.)

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    n_neighbors : int
        Neighbours per row (clipped to what exists).
    include_self : bool, default=False
        Whether a row counts as its own neighbour (always first when included).
    chunk_size : int, default=2048
        Queries per block of exact search.
    device : torch device, default="cpu"
        Where exact search runs (the approximate indexes run on the CPU).
    method : {"auto", "exact", "ivf"}, default="auto"
        ``"auto"``: exact up to :data:`EXACT_MAX_SAMPLES` rows, then ``"ivf"`` if
        faiss is installed.
    random_state : int, default=0
        Seed of the IVF index (its training sample and k-means).

    Returns
    -------
    indices : ndarray of shape (n_samples, k), int64
        Neighbours ordered by decreasing similarity.
    similarities : ndarray of shape (n_samples, k), float32

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    >>> indices, similarities = cosine_knn(X, 1)
    >>> indices.ravel()
    array([1, 0, 3, 2])
    """
    n = X.shape[0]
    k = min(n_neighbors, n if include_self else n - 1)
    if k < 1:
        raise ValueError(f"cannot find neighbours among {n} sample(s)")
    method = resolve_method(method, n)
    if method == "exact":
        return _exact(X, k, include_self, chunk_size, device)
    # One extra neighbour: the row itself, usually found first, is then dropped or moved first.
    indices, sims = _ivf(X, min(k + 1, n), random_state)
    return _place_self(indices, sims, k, include_self)


def umap_knn(
    X: np.ndarray, n_neighbors: int, *, n_components: int = 10, random_state: int = 0
) -> np.ndarray:
    """Euclidean nearest neighbours of every row in a UMAP layout of ``X``.

    The layout is the one the UMAP + k-means pipeline clusters
    (``UMAP(n_components, min_dist=0)`` on ``X``, one thread, seeded):
    UMAP's fuzzy graph pulls a manifold's points together, so neighbours in the
    layout follow it where raw cosine neighbours cross into another manifold. Cost:
    UMAP's fit, tens of seconds per few thousand rows plus its import and numba
    compilation once per process (:ref:`bench-temi-neighbors`); memory stays
    O(N * k) (UMAP's own neighbour search is approximate).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    n_neighbors : int
        Neighbours per row (self excluded), at most ``n_samples - 1``.
    n_components : int, default=10
        Dimension of the layout (at most ``n_samples - 2``).
    random_state : int, default=0

    Returns
    -------
    indices : ndarray of shape (n_samples, k), int64
        Neighbours by increasing distance in the layout.
    """
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, X.shape[0] - 1)
    layout = umap_layout(X, n_components, random_state)
    search = NearestNeighbors(n_neighbors=k).fit(layout)
    return search.kneighbors(return_distance=False).astype(np.int64)


def umap_layout(X: np.ndarray, n_components: int = 10, random_state: int = 0) -> np.ndarray:
    """``UMAP(n_components, n_neighbors=15, min_dist=0)`` of ``X`` on one thread, seeded.

    The layout UMAP + k-means clusters in ``benchmarks/bench_quality.py`` and
    :func:`umap_knn` mines; ``n_components`` is clipped to ``n_samples - 2``.
    """
    from umap import UMAP

    n = X.shape[0]
    if n < 4:
        raise ValueError(f"a UMAP layout needs at least 4 samples, got {n}")
    return UMAP(
        n_components=min(n_components, n - 2),
        n_neighbors=min(15, n - 1),
        min_dist=0.0,
        random_state=random_state,
        n_jobs=1,
    ).fit_transform(np.asarray(X, dtype=np.float32))


def resolve_method(method: str, n_samples: int) -> str:
    """The search ``cosine_knn(method=method)`` runs on ``n_samples`` rows.

    Examples
    --------
    >>> resolve_method("auto", 1000)
    'exact'
    """
    if method not in {"auto", "exact", "ivf"}:
        raise ValueError(f"method must be 'auto', 'exact' or 'ivf', got {method!r}")
    if method != "auto":
        if method == "ivf" and not _has_faiss():
            raise ImportError(
                "cosine_knn(method='ivf') needs faiss: pip install skaudiocluster[scale]"
            )
        return method
    if n_samples <= EXACT_MAX_SAMPLES:
        return "exact"
    if _has_faiss():
        return "ivf"
    warnings.warn(
        f"faiss is not installed: exact neighbour search of {n_samples} samples, "
        "quadratic in their number; pip install skaudiocluster[scale] for an index",
        UserWarning,
        stacklevel=3,
    )
    return "exact"


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _unit_rows(X: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``X`` as L2-normalised contiguous float32 (zero rows stay zero).

    Rows whose float32 squares would overflow or underflow (magnitudes outside
    :data:`FLOAT32_SAFE`) are first divided by their largest magnitude in float64:
    cosine is scale-free, so features scaled by 1e30 or 1e-30 give the same unit
    rows. Other rows take the plain float32 path, bit for bit as before.
    """
    rows = np.array(X[start:stop], dtype=np.float32)
    wild = _outside_float32_range(X[start:stop])
    if wild.any():
        scaled = np.array(X[start:stop][wild], dtype=np.float64)
        peak = np.max(np.abs(scaled), axis=1, keepdims=True)
        scaled /= np.where(peak > 0, peak, 1.0)
        rows[wild] = scaled.astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def _outside_float32_range(rows: np.ndarray) -> np.ndarray:
    """Rows with a nonzero magnitude outside :data:`FLOAT32_SAFE` (their squares misbehave)."""
    if rows.shape[1] == 0:
        return np.zeros(len(rows), dtype=bool)
    peak = np.max(np.abs(np.asarray(rows, dtype=np.float64)), axis=1)
    low, high = FLOAT32_SAFE
    return (peak > high) | ((peak > 0) & (peak < low))


def _exact(X, k: int, include_self: bool, chunk_size: int, device):
    n = X.shape[0]
    # A float32 copy: the caller's array may be read-only (a joblib memmap), which torch
    # cannot wrap without a warning. Rows of extreme scale are brought into range first.
    unit = np.array(X, dtype=np.float32)
    for start in range(0, n, _ROWS):
        wild = _outside_float32_range(X[start : start + _ROWS])
        if wild.any():
            unit[start : start + _ROWS] = _unit_rows(X, start, start + _ROWS)
    data = torch.nn.functional.normalize(torch.from_numpy(unit).to(device), dim=1)
    indices = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            block = data[start:stop] @ data.T
            rows = torch.arange(stop - start, device=block.device)
            own = torch.arange(start, stop, device=block.device)
            # +inf keeps self first when included; -inf drops it otherwise.
            block[rows, own] = float("inf") if include_self else float("-inf")
            top = torch.topk(block, k, dim=1)
            values = top.values
            if include_self:
                values[:, 0] = 1.0
            indices[start:stop] = top.indices.cpu().numpy()
            sims[start:stop] = values.cpu().numpy()
    return indices, sims


def _ivf(X, k: int, random_state: int):
    """faiss IVF-Flat inner-product search of every row among all rows, in row chunks."""
    import faiss

    n, d = X.shape
    n_lists = max(1, min(int(4 * math.sqrt(n)), n // 40))
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.choice(n, min(n, 40 * n_lists), replace=False))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, n_lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = random_state
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())  # the caller's (the fit's) thread budget
    try:
        index.train(_unit_rows(X[sample], 0, len(sample)))
        for start in range(0, n, _ROWS):
            index.add(_unit_rows(X, start, start + _ROWS))
        index.nprobe = min(IVF_NPROBE, n_lists)
        indices = np.empty((n, k), dtype=np.int64)
        sims = np.empty((n, k), dtype=np.float32)
        for start in range(0, n, _ROWS):
            queries = _unit_rows(X, start, start + _ROWS)
            sims[start : start + len(queries)], indices[start : start + len(queries)] = (
                index.search(queries, k)
            )
        # The probed lists held fewer than k rows: search those queries in every list.
        short = np.flatnonzero((indices < 0).any(axis=1))
        if len(short):
            index.nprobe = n_lists
            sims[short], indices[short] = index.search(_unit_rows(X[short], 0, len(short)), k)
    finally:
        faiss.omp_set_num_threads(threads)
    return indices, sims


def _place_self(indices: np.ndarray, sims: np.ndarray, k: int, include_self: bool):
    """``k`` neighbours per row from ``k + 1`` found: self dropped, or first with similarity 1."""
    n, found = indices.shape
    own = indices == np.arange(n)[:, None]
    # A row the search did not return as its own neighbour loses its last neighbour instead.
    missing = ~own.any(axis=1)
    own[missing, found - 1] = True
    others = ~own
    rows_indices = indices[others].reshape(n, found - 1)
    rows_sims = sims[others].reshape(n, found - 1)
    if not include_self:
        return rows_indices[:, :k], rows_sims[:, :k]
    out_indices = np.empty((n, k), dtype=np.int64)
    out_sims = np.empty((n, k), dtype=np.float32)
    out_indices[:, 0] = np.arange(n)
    out_sims[:, 0] = 1.0
    out_indices[:, 1:] = rows_indices[:, : k - 1]
    out_sims[:, 1:] = rows_sims[:, : k - 1]
    return out_indices, out_sims
