"""Embedding large file collections: chunked, parallel, resumable, on one machine or on Dask.

:func:`embed_files` cuts a file list into chunks of ``chunk_size`` files and
hands each chunk to a fitted embedder's ``transform``, so only the chunks in
flight are decoded at any time. Chunks run on a joblib pool of threads (decoding
with :mod:`soundfile` and torch both release the GIL) or on a
:class:`dask.distributed.Client`. With ``cache_dir``, every finished chunk is
saved (temporary file, then rename) under a key of the embedder's state and the
chunk's files, so a re-run after a crash or a kill recomputes only the missing
chunks and returns the same embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import joblib
import numpy as np
from sklearn.utils.validation import check_is_fitted

from skaudiocluster._io import atomic_write, create_temp, remove_stale_temps

__all__ = ["embed_files"]

# Bump when the chunk file format or the key changes: old caches are then ignored.
_CACHE_VERSION = 2
# Parameters that never change an embedding, left out of the cache key.
_NOT_IN_KEY = frozenset({"verbose", "checkpoint_dir"})


def embed_files(
    paths: Sequence[str | os.PathLike],
    embedder,
    *,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 256,
    n_jobs: int | None = None,
    client=None,
    memmap: str | os.PathLike | None = None,
    verbose: int = 0,
) -> np.ndarray:
    """Embed audio files chunk by chunk with a fitted embedder, optionally resumable.

    Parameters
    ----------
    paths : sequence of str or path-like
        Audio files, in the order of the output rows.
    embedder : fitted embedder
        Any skaudiocluster embedder (``SpectrogramTransformer``, ``BYOLAEmbedder``,
        ``PaSSTEmbedder``) or transformer taking a list of paths, **already fitted**:
        its statistics are learned once, e.g. ``embedder.fit(paths[:1000])``
        (``SpectrogramTransformer``'s band statistics, BYOL-A's normalisation
        ``mean_`` / ``std_``; ``PaSSTEmbedder.fit`` only loads its weights), and the
        same fitted embedder then embeds every chunk.
    cache_dir : str or path, default=None
        Directory of the resumable cache; ``None`` caches nothing. Each chunk is
        saved as ``<cache_dir>/<embedder key>/<chunk key>.npy``, written to a
        temporary file and renamed, so a killed run leaves whole chunks or none
        (the next run on the same machine deletes the temporary files it left).
        Beside it, ``<chunk key>.sha256`` holds the SHA-256 of the chunk's dtype,
        shape and bytes (written first); a chunk that does not match it, is
        unreadable or has the wrong shape is recomputed, with a warning naming it.
        The embedder key hashes (``joblib.hash``) the embedder's class, its
        parameters except ``verbose`` and ``checkpoint_dir``, and its learned
        arrays, tensors and module weights; the chunk key hashes the chunk's
        absolute paths with each file's size and modification time. Changing the
        embedder recomputes everything; editing, touching or replacing a file
        recomputes its chunk; appending files computes only the new chunks.
        Inserting a file shifts the chunks after it, which are then recomputed.
        An error in one chunk (an unreadable file) stops the run; the chunks
        written before it stay cached.
    chunk_size : int, default=256
        Files per chunk: the unit of work, of caching and of memory (decoded
        audio of ``chunk_size`` files per chunk in flight).
    n_jobs : int, default=None
        Chunks embedded at once in threads (joblib; ``None`` is 1, ``-1`` all
        cores). At most ``2 * n_jobs`` chunks are in flight. Ignored with ``client``.
    client : dask.distributed.Client, default=None
        Embed on this Dask cluster instead: the fitted embedder is sent once to
        every worker (``scatter(broadcast=True)``; its pickle holds its weights,
        on the CPU), each worker keeps that one model, and each chunk is one task.
        Workers read the files themselves (a filesystem they all see); results
        come back to the caller, which writes the cache. Needs the ``dask`` extra
        (``pip install skaudiocluster[dask]``).
    memmap : str or path, default=None
        Write the embeddings to this ``.npy`` file (temporary file, then rename)
        and return it as a read-only :class:`numpy.memmap`, for collections whose
        embeddings do not fit in memory. ``None`` returns an in-memory array.
    verbose : int, default=0
        A progress bar over files, with rate and ETA, when positive.

    Returns
    -------
    embeddings : ndarray of shape (n_files, ...), dtype float32
        Row ``i`` is the embedding of ``paths[i]``, the same as
        ``embedder.transform(paths)`` up to float rounding (bit-identical
        between runs with the same ``chunk_size``).

    Raises
    ------
    TypeError
        If ``paths`` is a single path or holds something other than paths.
    ValueError
        If ``paths`` is empty, ``chunk_size`` < 1, a file is missing (with a
        cache), or the embedder fails on a file (its message names the file).
    sklearn.exceptions.NotFittedError
        If ``embedder`` is not fitted.

    Examples
    --------
    >>> import tempfile, numpy as np, soundfile
    >>> from skaudiocluster import SpectrogramTransformer, embed_files
    >>> folder = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> paths = []
    >>> for i in range(5):
    ...     paths.append(f"{folder}/clip{i}.wav")
    ...     soundfile.write(paths[-1], rng.normal(scale=0.1, size=8000), 16000)
    >>> embedder = SpectrogramTransformer(n_mels=16).fit(paths[:2])
    >>> X = embed_files(paths, embedder, cache_dir=f"{folder}/cache", chunk_size=2)
    >>> X.shape, X.dtype
    ((5, 32), dtype('float32'))
    >>> again = embed_files(paths, embedder, cache_dir=f"{folder}/cache", chunk_size=2)
    >>> bool((again == X).all())
    True
    """
    paths = _check_paths(paths)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be an int, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_is_fitted(
        embedder,
        msg=(
            f"embed_files needs a fitted embedder; {type(embedder).__name__} is not fitted. "
            "Fit it once on a sample first, e.g. embedder.fit(paths[:1000])"
        ),
    )
    chunks = [paths[start : start + chunk_size] for start in range(0, len(paths), chunk_size)]
    files = None
    if cache_dir is not None:
        folder = Path(cache_dir) / embedder_key(embedder)
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / f"{chunk_key(chunk)}.npy" for chunk in chunks]
        remove_stale_temps(folder, "*.tmp")
    if memmap is not None:
        remove_stale_temps(Path(memmap).parent, f".{Path(memmap).name}.*.tmp")
    starts = np.cumsum([0] + [len(chunk) for chunk in chunks])
    out = None

    def put(index: int, features: np.ndarray) -> None:
        nonlocal out
        if out is None:
            out = _allocate((len(paths), *features.shape[1:]), memmap)
        if features.shape[1:] != out.shape[1:]:
            raise ValueError(
                f"{type(embedder).__name__}.transform gave shape {features.shape} for chunk "
                f"{index} (starting at {chunks[index][0]!r}), but rows of shape "
                f"{out.shape[1:]} for the chunks before it"
            )
        out[starts[index] : starts[index + 1]] = features

    todo = []
    try:
        cached_chunks = {}
        for index in range(len(chunks)):
            cached = None if files is None else _load_chunk(files[index], len(chunks[index]))
            if cached is None:
                todo.append(index)
            else:
                cached_chunks[index] = cached
        _drop_odd_shapes(cached_chunks, files, todo)
        for index, cached in cached_chunks.items():
            put(index, cached)
        todo.sort()
        with _progress_bar(
            len(paths), len(paths) - sum(len(chunks[i]) for i in todo), verbose
        ) as bar:
            for index, features in _run_chunks(embedder, chunks, todo, n_jobs, client):
                if files is not None:
                    _save_chunk(files[index], features)
                put(index, features)
                bar.update(len(chunks[index]))
    except BaseException:
        if isinstance(out, np.memmap):
            _discard_memmap(out)
        raise
    return out if memmap is None else _finish_memmap(out, memmap)


def embedder_key(embedder) -> str:
    """Hash of what determines an embedder's output: class, parameters, learned state.

    Parameters that never change an embedding (``verbose``, ``checkpoint_dir``)
    are left out; learned attributes (names ending in ``_``) enter when they are
    arrays, tensors, torch modules (their ``state_dict``) or numbers. Training
    records such as skorch histories (which hold timings) do not.

    Examples
    --------
    >>> from skaudiocluster import SpectrogramTransformer
    >>> a = SpectrogramTransformer(verbose=0)
    >>> embedder_key(a) == embedder_key(SpectrogramTransformer(verbose=1))
    True
    >>> embedder_key(a) == embedder_key(SpectrogramTransformer(n_mels=32))
    False
    """
    params = {k: v for k, v in embedder.get_params(deep=False).items() if k not in _NOT_IN_KEY}
    learned = {}
    for name, value in sorted(vars(embedder).items()):
        if name.endswith("_") and not name.startswith("_"):
            token = _learned_token(value)
            if token is not None:
                learned[name] = token
    kind = f"{type(embedder).__module__}.{type(embedder).__qualname__}"
    return joblib.hash((_CACHE_VERSION, kind, _param_token(params), learned))


def chunk_key(paths: Sequence[str | os.PathLike]) -> str:
    """Hash of a chunk's absolute paths with each file's size and modification time.

    Raises a ``ValueError`` naming the first file that does not exist.
    """
    entries = []
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError as exc:
            raise ValueError(f"audio file {os.fspath(path)!r} does not exist") from exc
        entries.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
    return joblib.hash(entries)


def _check_paths(paths) -> list[str]:
    if isinstance(paths, (str, os.PathLike, bytes)):
        raise TypeError("paths must be a sequence of paths, not a single path; wrap it in a list")
    paths = list(paths)
    if not paths:
        raise ValueError("paths is empty: at least one audio file is required")
    for index, path in enumerate(paths):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"paths[{index}] is a {type(path).__name__}, not a path; embed_files takes "
                "audio files (embedder.transform takes in-memory clips)"
            )
    return [os.fspath(path) for path in paths]


def _learned_token(value):
    import torch

    if isinstance(value, torch.nn.Module):
        return {k: v.detach().cpu().numpy() for k, v in value.state_dict().items()}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, int, float, str, tuple, np.generic)):
        return value
    return None


def _param_token(params: dict) -> dict:
    """Nested estimators (a parameter that is an estimator) enter by their own key."""
    return {k: embedder_key(v) if hasattr(v, "get_params") else v for k, v in params.items()}


def _run_chunks(embedder, chunks, todo, n_jobs, client):
    """Yield ``(chunk index, features)`` as chunks finish; joblib bounds the chunks in flight."""
    if not todo:
        return
    tasks = (joblib.delayed(_indexed_chunk)(index, embedder, chunks[index]) for index in todo)
    if client is None:
        yield from joblib.Parallel(
            n_jobs=n_jobs, prefer="threads", return_as="generator_unordered"
        )(tasks)
        return
    # joblib's Dask backend: the embedder is scattered once to every worker, a chunk is a task
    with joblib.parallel_config(backend="dask", client=client, scatter=[embedder]):
        yield from joblib.Parallel(n_jobs=-1, return_as="generator_unordered")(tasks)


def _indexed_chunk(index: int, embedder, paths: list[str]) -> tuple[int, np.ndarray]:
    try:
        return index, np.asarray(embedder.transform(paths), dtype=np.float32)
    except ValueError as exc:  # its clip numbers count from the chunk's first file
        raise ValueError(f"{exc} (in chunk {index}, starting at {paths[0]!r})") from exc


def _load_chunk(file: Path, n_rows: int) -> np.ndarray | None:
    """A cached chunk, or ``None`` when it is absent or altered (then it is recomputed).

    Altered: unreadable, not ``n_rows`` rows, or not matching its ``.sha256`` file;
    those warn, naming the file.
    """
    if not file.exists():
        return None
    try:
        features = np.load(file, allow_pickle=False)
        expected = _checksum_file(file).read_text().strip()
    except (OSError, ValueError, EOFError) as exc:
        _warn_recomputed(file, f"it cannot be read ({exc})")
        return None
    if features.ndim < 2 or len(features) != n_rows:
        _warn_recomputed(file, f"it has shape {features.shape}, not {n_rows} rows of features")
        return None
    if _checksum(features) != expected:
        _warn_recomputed(file, "it does not match its SHA-256 checksum (altered after writing)")
        return None
    return features


def _drop_odd_shapes(cached: dict, files, todo: list) -> None:
    """Move cached chunks whose row shape is not the most common one to ``todo``."""
    shapes = [features.shape[1:] for features in cached.values()]
    if len(set(shapes)) < 2:
        return
    common = max(set(shapes), key=shapes.count)
    for index in [i for i, features in cached.items() if features.shape[1:] != common]:
        _warn_recomputed(
            files[index], f"its rows have shape {cached[index].shape[1:]}, the others' {common}"
        )
        del cached[index]
        todo.append(index)


def _warn_recomputed(file: Path, problem: str) -> None:
    warnings.warn(
        f"cached embedding chunk {os.fspath(file)!r} is recomputed: {problem}",
        UserWarning,
        stacklevel=4,
    )


def _checksum(features: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{features.dtype.str}{features.shape}".encode())
    digest.update(np.ascontiguousarray(features).tobytes())
    return digest.hexdigest()


def _checksum_file(file: Path) -> Path:
    return file.with_suffix(".sha256")


def _save_chunk(file: Path, features: np.ndarray) -> None:
    # The checksum first: a chunk file present always has its checksum beside it.
    checksum = _checksum_file(file)
    with atomic_write(checksum, "w") as handle:
        handle.write(_checksum(features) + "\n")
    try:
        with atomic_write(file, "wb") as handle:
            np.save(handle, features)
    except BaseException:
        if not file.exists():
            checksum.unlink(missing_ok=True)
        raise


def _allocate(shape: tuple, memmap) -> np.ndarray:
    """The output: in memory, or a ``.npy`` memmap beside ``memmap`` renamed at the end."""
    if memmap is None:
        return np.empty(shape, dtype=np.float32)
    descriptor, temp = create_temp(memmap)  # the umask's mode; open_memmap keeps it
    os.close(descriptor)
    try:
        return np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=shape)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _finish_memmap(out: np.memmap, memmap) -> np.memmap:
    out.flush()
    temp = out.filename
    del out
    os.replace(temp, memmap)
    return np.load(memmap, mmap_mode="r")


def _discard_memmap(out: np.memmap) -> None:
    temp = out.filename
    del out
    with contextlib.suppress(OSError):
        os.unlink(temp)


class _NoBar(contextlib.nullcontext):
    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        pass


def _progress_bar(total: int, done: int, verbose: int):
    if not verbose:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="embedding files", unit="file", smoothing=0.1)
