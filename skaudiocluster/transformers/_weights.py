"""Pretrained weights: registry of official files, download into a cache, checked loading."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["WeightsInfo", "register_weights", "registered_weights", "resolve_weights",
           "load_state_dict", "cache_dir"]


@dataclass(frozen=True)
class WeightsInfo:
    """An official checkpoint: where it lives and how to recognise it."""

    name: str
    url: str
    sha256: str | None
    filename: str
    licence: str = ""


_REGISTRY: dict[str, WeightsInfo] = {}


def register_weights(info: WeightsInfo) -> None:
    """Add an official checkpoint to the registry under ``info.name``."""
    _REGISTRY[info.name] = info


def registered_weights(prefix: str = "") -> list[str]:
    """Names of the registered checkpoints that start with ``prefix``."""
    return sorted(name for name in _REGISTRY if name.startswith(prefix))


def cache_dir() -> Path:
    """Where downloaded weights are kept.

    ``$SKAUDIOCLUSTER_CACHE`` if set, else ``$XDG_CACHE_HOME/skaudiocluster``,
    else ``~/.cache/skaudiocluster``.
    """
    if os.environ.get("SKAUDIOCLUSTER_CACHE"):
        return Path(os.environ["SKAUDIOCLUSTER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skaudiocluster"


def resolve_weights(weights: str | os.PathLike, *, download: bool = True) -> Path:
    """Return a local file for ``weights``: a registered name or a path.

    A registered name is looked up in :func:`cache_dir`; if absent it is
    downloaded from its official location (sha256 checked, written to a
    temporary file and renamed, so no half-written file is ever left). A name
    that cannot be downloaded raises a ``ValueError`` that says where to put
    the file by hand.
    """
    name = os.fspath(weights)
    if name in _REGISTRY:
        info = _REGISTRY[name]
        target = cache_dir() / info.filename
        if target.is_file():
            return target
        if not download:
            raise ValueError(_offline_message(info, target, "downloading is disabled"))
        try:
            _download(info, target)
        except OSError as exc:
            raise ValueError(_offline_message(info, target, str(exc))) from exc
        return target
    path = Path(name).expanduser()
    if path.is_file():
        return path
    known = ", ".join(registered_weights()) or "none"
    raise ValueError(
        f"weights={name!r} is neither an existing file nor a registered name "
        f"(registered: {known})"
    )


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint's state dict safely (``weights_only=True``) onto the CPU.

    Checkpoints that wrap the state dict (``{"state_dict": ...}`` or
    ``{"model": ...}``) are unwrapped. Anything else raises a ``ValueError``
    naming the file.
    """
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot load checkpoint {os.fspath(path)!r}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"checkpoint {os.fspath(path)!r} does not hold a state dict of tensors")
    return state


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(info: WeightsInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{info.filename}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(info.url, timeout=60) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
        if info.sha256 is not None and sha256_of(tmp_name) != info.sha256:
            raise OSError(f"sha256 mismatch for {info.url}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def _offline_message(info: WeightsInfo, target: Path, reason: str) -> str:
    licence = f" Licence: {info.licence}." if info.licence else ""
    return (
        f"could not obtain weights {info.name!r} ({reason}). Download {info.url} "
        f"on a machine with internet and place it at {target} "
        f"(or pass weights='/path/to/{info.filename}').{licence}"
    )
