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
import contextvars
import os
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_folder",
    "atomic_outputs",
    "atomic_write",
    "create_temp",
    "host",
    "output_lock",
    "recover_outputs",
    "remove_stale_temps",
]

# The open :func:`atomic_outputs` block, if any: its targets are renamed together at its end.
_PENDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("_PENDING", default=None)


def host() -> str:
    """This machine's name as it appears in temporary names (dots would split the fields).

    Examples
    --------
    >>> "." in host()
    False
    """
    return socket.gethostname().replace(".", "-")


def _temp_path(target: Path, suffix: str = "tmp") -> Path:
    token = secrets.token_hex(4)
    return target.with_name(f".{target.name}.{token}.{host()}.{os.getpid()}.{suffix}")


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
        if not _stage(temp, target):
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
        if not _stage(temp, target):
            _swap_in(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _swap_in(temp: Path, target: Path) -> None:
    """Rename the folder ``temp`` to ``target``; an old ``target`` is removed after.

    The old one is first renamed aside to ``.<name>.<random>.<host>.<pid>.old``:
    a process killed between the two renames leaves it there, and
    :func:`recover_outputs` puts it back.
    """
    _commit([(temp, target)])


def _commit(moves: list[tuple[Path | None, Path]]) -> None:
    """Rename each ``temp`` to its ``target`` (``None``: remove ``target``), all or none.

    Each existing target is first renamed aside (``.old``); if a rename
    fails, the targets renamed so far are put back. The olds are deleted at
    the end. ``SIGINT``, ``SIGTERM`` and ``SIGHUP`` wait until the renames are
    done, so Ctrl-C cannot stop them halfway; a ``KeyboardInterrupt`` raised
    once they are done has the attribute ``outputs_written = True``.
    """
    blocked = {signal.SIGINT, signal.SIGTERM} | (
        {signal.SIGHUP} if hasattr(signal, "SIGHUP") else set()
    )
    mask = (
        hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    )
    if mask:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    done: list[tuple[Path | None, Path, Path | None]] = []
    try:
        for temp, target in moves:
            old = None
            if os.path.lexists(target):
                old = _temp_path(target, "old")
                os.rename(target, old)
            done.append((temp, target, old))
            if temp is not None:
                os.rename(temp, target)
    except BaseException:
        for temp, target, old in reversed(done):
            with contextlib.suppress(OSError):
                if temp is not None and os.path.lexists(target) and not os.path.lexists(temp):
                    os.rename(target, temp)
                if old is not None:
                    os.rename(old, target)
        if mask:
            with contextlib.suppress(KeyboardInterrupt):  # the error says it all
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    interrupted = None
    if mask:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        except KeyboardInterrupt as exc:  # a signal that waited for the renames
            interrupted = exc
    for _, _, old in done:
        if old is not None:
            _remove(old)
    if interrupted is not None:
        interrupted.outputs_written = True  # too late to stop: the caller must not say otherwise
        raise interrupted


def _stage(temp: Path | None, target: str | os.PathLike) -> bool:
    """Leave ``temp`` for the open :func:`atomic_outputs` block to rename; False if none."""
    pending = _PENDING.get()
    if pending is None:
        return False
    pending.append((None if temp is None else Path(temp), Path(target)))
    return True


def discard_output(target: str | os.PathLike) -> None:
    """Remove ``target`` with the other outputs of the open :func:`atomic_outputs` block.

    Outside such a block it is removed at once (if it exists).
    """
    if not _stage(None, target):
        _remove(Path(target))


@contextlib.contextmanager
def atomic_outputs() -> Iterator[None]:
    """Make several outputs one unit: all of them are renamed into place at the end, or none.

    Inside the block, :func:`atomic_write` and :func:`atomic_folder` build
    their temporaries as usual but leave the renames to the block's end,
    where they are done together (:func:`discard_output` adds a removal).
    On any exception, ``KeyboardInterrupt`` included, every temporary is
    deleted and every target stays as it was.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> try:
    ...     with atomic_outputs():
    ...         with atomic_write(folder / "a.csv") as handle:
    ...             _ = handle.write("a")
    ...         raise OSError(28, "No space left on device")
    ... except OSError:
    ...     pass
    >>> list(folder.iterdir())
    []
    """
    if _PENDING.get() is not None:
        raise RuntimeError("atomic_outputs blocks do not nest")
    pending: list = []
    token = _PENDING.set(pending)
    try:
        try:
            yield
        finally:
            _PENDING.reset(token)
        _commit(pending)
    except BaseException:
        for temp, _ in pending:
            if temp is not None:
                _remove(temp)
        raise


def recover_outputs(target: str | os.PathLike) -> None:
    """Clean up what a killed run left beside ``target``; call it holding :func:`output_lock`.

    A killed process's (this host, dead pid) temporaries of ``target``
    (``.<name>.*.tmp``) are deleted. Its ``.<name>.*.old`` (the previous
    output, renamed aside just before the new one was renamed in) is put
    back when ``target`` is missing, else deleted.

    Parameters
    ----------
    target : str or path-like
        A file or folder the caller is about to write.
    """
    target = Path(target)
    pattern = f".{glob_escape(target.name)}.*"
    remove_stale_temps(target.parent, pattern + ".tmp")
    for old in sorted(target.parent.glob(pattern + ".old")):
        if not _is_stale(old):
            continue
        if not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(old, target)
                continue
        _remove(old)


def glob_escape(name: str) -> str:
    """``name`` with the :meth:`pathlib.Path.glob` wildcards ``*?[`` escaped."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in name)


def _is_stale(path: Path) -> bool:
    """Whether ``path``'s name says a process of this host that no longer runs made it."""
    fields = path.name.split(".")
    if len(fields) < 4 or fields[-3] != host() or not fields[-2].isdigit():
        return False
    return not _alive(int(fields[-2]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's
    return True


@contextlib.contextmanager
def output_lock(*targets: str | os.PathLike, option: str = "") -> Iterator[None]:
    """Hold ``<target>.lock`` for each target: a second run on the same output is refused.

    Each lock file is created exclusively and holds ``<host> <pid>``; it is
    removed at the end of the block. A lock left by a dead process of this
    host is taken over.

    Parameters
    ----------
    *targets : str or path-like
        The outputs to lock.
    option : str, default=""
        Named in the error (e.g. ``"--out"``).

    Raises
    ------
    ValueError
        When another live process holds one of the locks.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "a.csv"
    >>> with output_lock(out):
    ...     sorted(p.name for p in out.parent.iterdir())
    ['a.csv.lock']
    >>> list(out.parent.iterdir())
    []
    """
    held: list[Path] = []
    try:
        for target in targets:
            held.append(_acquire(Path(os.path.abspath(target)), option))
        yield
    finally:
        for lock in held:
            with contextlib.suppress(OSError):
                lock.unlink()


def _acquire(target: Path, option: str) -> Path:
    lock = target.with_name(target.name + ".lock")
    for _ in range(100):
        try:
            descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                owner = lock.read_text(encoding="utf-8").split()
            except FileNotFoundError:
                continue  # released meanwhile
            if (
                len(owner) == 2
                and owner[0] == host()
                and owner[1].isdigit()
                and not _alive(int(owner[1]))
            ):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # a killed run's
                continue
            who = f"process {owner[1]} on {owner[0]}" if len(owner) == 2 else "another process"
            named = f"{option} " if option else ""
            raise ValueError(
                f"{named}{os.fspath(target)!r} is being written by another run ({who}); "
                f"wait for it, or delete {os.fspath(lock)!r} if no such run exists"
            ) from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(f"{host()} {os.getpid()}\n")
        return lock
    raise ValueError(f"cannot lock {os.fspath(target)!r}: {os.fspath(lock)!r} keeps changing")


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
    for temp in Path(folder).glob(pattern):
        # another naming or another host's: not ours to judge; a live process's: in use
        if _is_stale(temp):
            _remove(temp)
