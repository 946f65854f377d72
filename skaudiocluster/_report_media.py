"""The listening report's media: loudest excerpts, audio files and spectrogram thumbnails.

Thumbnails are written as PNG with the standard library (zlib), so the report
needs neither matplotlib nor Pillow.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile

#: soundfile format and subtype of each ``audio_format`` of the report.
AUDIO_FORMATS = {
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "wav": ("WAV", "PCM_16"),
}
# Anchors of the thumbnails' colour map (dark to light, close to matplotlib's magma).
_ANCHORS = np.array(
    [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
    dtype=np.float64,
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), c) for c in _ANCHORS.T],
    axis=1,
).astype(np.uint8)
_DYNAMIC_RANGE_DB = 55.0


def loudest_window(samples: np.ndarray, rate: int, seconds: float) -> tuple[int, int]:
    """``(start, stop)`` of the ``seconds``-long window of ``samples`` with the most energy.

    Clips no longer than ``seconds`` are returned whole. Windows start on a
    10 ms grid, so a long clip costs one cumulative sum.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros(10_000); x[6000:7000] = 1.0
    >>> loudest_window(x, 1000, 2.0)
    (5500, 7500)
    """
    length = max(1, int(round(seconds * rate)))
    if len(samples) <= length:
        return 0, len(samples)
    energy = np.concatenate([[0.0], np.cumsum(np.square(samples, dtype=np.float64))])
    step = max(1, rate // 100)
    starts = np.arange(0, len(samples) - length + 1, step)
    window_energy = energy[starts + length] - energy[starts]
    best = np.flatnonzero(window_energy == window_energy.max())
    start = int(starts[best[len(best) // 2]])  # centre of a plateau (e.g. one short loud event)
    return start, start + length


def write_audio(path: Path, samples: np.ndarray, rate: int, audio_format: str) -> None:
    """Write mono ``samples`` (float, full scale 1) in one of :data:`AUDIO_FORMATS`."""
    fmt, subtype = AUDIO_FORMATS[audio_format]
    soundfile.write(path, np.clip(samples, -1.0, 1.0), rate, format=fmt, subtype=subtype)


def spectrogram_image(samples: np.ndarray, rate: int, width: int, height: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 log-power spectrogram, mel-spaced, low frequencies down.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(8000) / 8000
    >>> image = spectrogram_image(np.sin(2 * np.pi * 440 * t), 8000, 40, 16)
    >>> image.shape, image.dtype
    ((16, 40, 3), dtype('uint8'))
    """
    n_fft = 2 ** int(round(np.log2(max(0.025 * rate, 16))))
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < n_fft:
        samples = np.pad(samples, (0, n_fft - len(samples)))
    starts = np.linspace(0, len(samples) - n_fft, width).astype(np.int64)
    frames = samples[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (width, n_fft // 2 + 1)
    mel_top = 2595 * np.log10(1 + rate / 2 / 700)
    edges_hz = 700 * (10 ** (np.linspace(0, mel_top, height + 1) / 2595) - 1)
    first_bin = np.minimum(
        (edges_hz[:-1] / (rate / 2) * (power.shape[1] - 1)).astype(int), power.shape[1] - 1
    )
    bands = np.maximum.reduceat(power, first_bin, axis=1)  # (width, height)
    db = 10 * np.log10(bands + 1e-12)
    # dark from the background noise (the quietest fifth of the cells) or 55 dB down up
    floor = max(db.max() - _DYNAMIC_RANGE_DB, np.percentile(db, 20))
    scaled = np.clip((db - floor) / max(db.max() - floor, 1e-9), 0.0, 1.0)
    return _LUT[(scaled.T[::-1] * 255).astype(np.uint8)]


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode a ``(height, width, 3)`` uint8 array as a PNG file.

    Examples
    --------
    >>> import numpy as np
    >>> png_bytes(np.zeros((2, 3, 3), np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    height, width, _ = rgb.shape
    rows = np.concatenate(
        [np.zeros((height, 1), np.uint8), np.ascontiguousarray(rgb).reshape(height, width * 3)],
        axis=1,
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )
