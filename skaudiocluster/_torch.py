"""Torch plumbing shared by every estimator: device, seeding, progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from sklearn.utils import check_random_state

T = TypeVar("T")

DEVICE_OPTIONS = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn a ``device`` parameter into a :class:`torch.device`.

    ``"auto"`` means CUDA when a GPU is visible, else the CPU. Any string torch
    understands (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is passed through; asking
    for CUDA on a machine without it raises a ``ValueError``.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device={device!r} is not a valid torch device") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    return resolved


def seed_torch(random_state: int | np.random.RandomState | None) -> int:
    """Seed torch's global generators from ``random_state`` and return the seed.

    ``random_state=None`` draws a fresh seed, so runs differ; an int makes CPU
    runs repeat exactly. The returned int can seed NumPy or a
    :class:`torch.Generator` for the same fit.
    """
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    torch.manual_seed(seed)
    return seed


def make_generator(seed: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with ``seed`` (for samplers, loaders)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def progress(
    iterable: Iterable[T], *, verbose: int, desc: str, total: int | None = None
) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar when ``verbose > 0``, else return it unchanged."""
    if not verbose:
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, leave=False))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Detach a tensor to a float32 (or integer) NumPy array on the CPU."""
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array
