"""How a clip of any length becomes BirdNET's 3-second windows."""

from __future__ import annotations

import numpy as np

__all__ = ["SHORT_MODES", "clip_windows", "n_windows"]

#: How a clip shorter than one window fills it (see :func:`clip_windows`).
SHORT_MODES = ("tile", "centre", "pad")


def n_windows(n_samples: int, window: int, hop: int) -> int:
    """Windows :func:`clip_windows` cuts from a clip of ``n_samples`` samples."""
    if n_samples < window:
        return 1
    # birdnetlib's rule: a window starts every hop; one with less than half a window of
    # signal left is dropped (the first always holds a full window here)
    return len(range(0, n_samples - window // 2 + 1, hop))


def clip_windows(clip: np.ndarray, window: int, hop: int, short: str) -> np.ndarray:
    """Cut a 1-D clip into windows of ``window`` samples, shape ``(k, window)``.

    A clip at least one window long gives a window every ``hop`` samples from its
    start, as birdnetlib's recordings do: the last one, if it runs past the end, is
    zero-padded on the right, and one with less than half a window of signal is
    dropped. A shorter clip gives one window, filled according to ``short``:

    * ``"tile"``: the clip repeated back to back from the window's start,
    * ``"centre"``: the clip in the middle, zeros either side,
    * ``"pad"``: the clip at the start, zeros after (birdnetlib's padding).

    Examples
    --------
    >>> clip_windows(np.array([1.0, 2.0]), 5, 5, "tile")
    array([[1., 2., 1., 2., 1.]])
    >>> clip_windows(np.array([1.0, 2.0]), 5, 5, "centre")
    array([[0., 1., 2., 0., 0.]])
    >>> clip_windows(np.arange(1.0, 8.0), 4, 2, "pad")
    array([[1., 2., 3., 4.],
           [3., 4., 5., 6.],
           [5., 6., 7., 0.]])
    """
    n = len(clip)
    if n < window:
        if short == "tile":
            return np.tile(clip, -(-window // n))[None, :window]
        out = np.zeros((1, window), dtype=clip.dtype)
        left = (window - n) // 2 if short == "centre" else 0
        out[0, left : left + n] = clip
        return out
    count = n_windows(n, window, hop)
    out = np.zeros((count, window), dtype=clip.dtype)
    for row in range(count):
        piece = clip[row * hop : row * hop + window]
        out[row, : len(piece)] = piece
    return out
