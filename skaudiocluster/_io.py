"""Atomic writes: build the output under a temporary name beside it, then rename it.

Every file the package writes for a user goes through here: the command line's
CSVs, the listening report's folder, :func:`~skaudiocluster.streaming.embed_files`'
memmap and chunk cache. An output is therefore whole or absent: on any
exception, ``KeyboardInterrupt`` included, the temporary is removed, and the
rename replaces an older output in one step. Outputs get the mode the umask
gives a new file (``0o666 & ~umask``, folders ``0o777 & ~umask``), as with
``open(path, "w")``; :func:`tempfile.mkstemp` would make them ``0o600``.

Temporaries are named ``.<name>.<random>.<host>.<pid>.tmp`` beside the target
(same file system, so the rename is atomic), so that :func:`remove_stale_temps`
can tell those a killed process left from those of a live one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_folder", "atomic_write", "create_temp", "host", "remove_stale_temps"]


def host() -> str:
    """This machine's name as it appears in temporary names (dots would split the fields).

    Examples
    --------
    >>> "." in host()
    False
    """
    return socket.gethostname().replace(".", "-")


def _temp_path(target: Path) -> Path:
    token = secrets.token_hex(4)
    return target.with_name(f".{target.name}.{token}.{host()}.{os.getpid()}.tmp")


def create_temp(target: str | os.PathLike) -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``target`` and open it for writing.

    Parameters
    ----------
    target : str or path-like
        The file the temporary will be renamed to.

    Returns
    -------
    descriptor : int
        Open for writing (``O_WRONLY``); the caller closes it.
    path : pathlib.Path
        ``.<target name>.<random>.<host>.<pid>.tmp`` in ``target``'s folder,
        created exclusively with mode ``0o666 & ~umask``.

    Examples
    --------
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> descriptor, path = create_temp(Path(tempfile.mkdtemp()) / "a.csv")
    >>> os.close(descriptor)
    >>> path.name.startswith(".a.csv.") and path.name.endswith(".tmp")
    True
    """
    target = Path(target)
    for _ in range(100):
        path = _temp_path(target)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {os.fspath(target.parent)!r}")


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``target``; on success, sync it and rename it to ``target``.

    Parameters
    ----------
    target : str or path-like
        The file to write; an existing one is replaced whole.
    mode : {"w", "wb"}, default="w"
        Text or binary.
    **open_kwargs
        Passed to :func:`open` (``newline``, ``encoding``).

    Yields
    ------
    handle : file object
        Write the content to it. An exception in the ``with`` block removes
        the temporary and leaves ``target`` as it was.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_write(out) as handle:
    ...     _ = handle.write("whole or absent")
    >>> out.read_text(), [p.name for p in out.parent.iterdir()]
    ('whole or absent', ['a.txt'])
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    descriptor, temp = create_temp(target)
    try:
        with os.fdopen(descriptor, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``target``; on success, swap it in.

    An older folder at ``target`` is renamed aside, the new one renamed into
    place and only then the old one deleted (it is put back if the rename
    fails). The caller decides whether ``target`` may be replaced.

    Parameters
    ----------
    target : str or path-like
        The folder to write.

    Yields
    ------
    folder : pathlib.Path
        The new, empty temporary folder (mode ``0o777 & ~umask``) to fill. An
        exception in the ``with`` block deletes it and leaves ``target`` as it was.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "report"
    >>> with atomic_folder(out) as folder:
    ...     _ = (folder / "index.html").write_text("<p>hi</p>")
    >>> [p.name for p in out.iterdir()], [p.name for p in out.parent.iterdir()]
    (['index.html'], ['report'])
    """
    target = Path(target)
    for _ in range(100):
        temp = _temp_path(target)
        try:
            os.mkdir(temp, 0o777)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary folder name in {os.fspath(target.parent)!r}")
    try:
        yield temp
        _swap_in(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _swap_in(temp: Path, target: Path) -> None:
    """Rename the folder ``temp`` to ``target``; an old ``target`` is removed after."""
    if not target.exists():
        os.rename(temp, target)
        return
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    os.rename(target, old)
    try:
        os.rename(temp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(folder: str | os.PathLike, pattern: str) -> None:
    """Delete the temporary files matching ``pattern`` that a killed process on this host left.

    A temporary is stale when its name's host is this machine's and its
    process no longer exists. Another host's (a shared folder), a live
    process's and any other name are kept.

    Parameters
    ----------
    folder : str or path-like
    pattern : str
        A :meth:`pathlib.Path.glob` pattern, e.g. ``"*.tmp"``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / f".a.npy.00.{host()}.{os.getpid()}.tmp").write_bytes(b"")
    >>> remove_stale_temps(folder, "*.tmp")  # this process is alive: kept
    >>> len(list(folder.iterdir()))
    1
    """
    here = host()
    for temp in Path(folder).glob(pattern):
        fields = temp.name.split(".")
        if len(fields) < 4 or fields[-3] != here or not fields[-2].isdigit():
            continue  # another naming, or another host's: not ours to judge
        try:
            os.kill(int(fields[-2]), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                temp.unlink()
        except OSError:
            pass  # alive, owned by another user
