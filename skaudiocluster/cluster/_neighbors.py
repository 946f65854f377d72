"""Cosine k-nearest neighbours in O(N * k) memory."""

from __future__ import annotations

import numpy as np
import torch


def cosine_knn(
    X: np.ndarray,
    n_neighbors: int,
    *,
    include_self: bool = False,
    chunk_size: int = 2048,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine nearest neighbours of every row of ``X``, computed in chunks.

    Rows are L2-normalised and compared by inner product ``chunk_size`` queries
    at a time, so memory is O(chunk_size * N + N * k), never O(N ** 2).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    n_neighbors : int
        Neighbours per row (clipped to what exists).
    include_self : bool, default=False
        Whether a row counts as its own neighbour (always first when included).
    chunk_size : int, default=2048
    device : torch device, default="cpu"

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
    # A float32 copy: the caller's array may be read-only (a joblib memmap), which torch
    # cannot wrap without a warning.
    data = torch.nn.functional.normalize(
        torch.from_numpy(np.array(X, dtype=np.float32)).to(device), dim=1
    )
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
