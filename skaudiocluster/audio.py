"""Raw-audio input: validation, decoding, mono conversion, resampling, length batching.

Every transformer calls :func:`check_audio` first, so all of them accept the
same inputs and fail on bad ones with the same messages.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import soundfile
import torch
import torchaudio
from scipy import signal, sparse

__all__ = [
    "MAX_AMPLITUDE",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "check_audio",
    "check_finite_output",
    "length_batches",
    "read_file",
    "resample",
]

_PCM_SCALE = {1: 2.0**7, 2: 2.0**15, 4: 2.0**31}
#: Lowest sample rate accepted, in Hz, for files and in-memory arrays alike: below it a
#: header is corrupt (a 4 KB WAV declaring 1 Hz would be upsampled 16,000 times).
MIN_SAMPLE_RATE = 1000
#: Highest sample rate accepted, in Hz (the highest rate audio interfaces record): above
#: it a header is corrupt (an 8 KB WAV declaring 2**31 - 1 Hz would need 320 GiB to resample).
MAX_SAMPLE_RATE = 768_000
# A downmix whose RMS is below this fraction of its channels' RMS cancelled (opposite
# channels averaged to near-silence).
_CANCELLED_DOWNMIX = 0.1
#: Largest absolute sample value accepted: the int32 PCM scale. Larger values come from
#: no audio format, and their power spectra overflow float32 into inf and NaN features.
MAX_AMPLITUDE = 2.0**31
# torchaudio's resampler builds a (new / gcd, orig / gcd)-sized kernel, which takes
# minutes and gigabytes for coprime rates such as 44101 -> 16000: polyphase instead.
_MAX_RESAMPLE_FACTOR = 1000


def check_audio(X, *, sample_rate: int, target_rate: int | None = None) -> list[np.ndarray]:
    """Validate raw audio and return it as mono float32 clips at ``target_rate``.

    Parameters
    ----------
    X : list, tuple or object array of clips or paths, or 2-D array
        Each clip is one of

        * a 1-D numeric array (mono samples),
        * a 2-D array ``(n_samples, n_channels)``; channels are averaged,
        * a ``str`` or :class:`os.PathLike` naming an audio file that
          :mod:`soundfile` can decode; the file's own rate is used.

        A 2-D numeric array ``(n_clips, n_samples)`` is a batch of
        equal-length mono clips. Float samples are used as they are (audio is
        expected in ``[-1, 1]``). Integer samples are PCM, scaled to ``[-1, 1]``:
        ``int8``, ``int16`` and ``int32`` by ``2 ** (bits - 1)``, unsigned 8-, 16-
        and 32-bit ones centred first. ``int64`` / ``uint64`` (what a list of
        Python ints or ``astype(int)`` gives) is no PCM format: such a clip is
        read as 16-bit PCM when every value fits the int16 range, and refused
        otherwise (cast it to ``np.int32`` if it is 32-bit PCM); one holding only
        -1, 0 and 1 (float audio truncated by ``astype(int)``?) warns.
    sample_rate : int
        Rate of the in-memory arrays in ``X``, in Hz; at least
        :data:`MIN_SAMPLE_RATE` (1 kHz) and at most :data:`MAX_SAMPLE_RATE`
        (768 kHz), as is the rate a file declares.
    target_rate : int, default=None
        Rate of the returned clips; ``None`` keeps ``sample_rate``.
        Resampling uses :class:`torchaudio.transforms.Resample`.

    Returns
    -------
    clips : list of ndarray of shape (n_samples_i,), dtype float32
        One contiguous array per input clip, in input order.

    Raises
    ------
    ValueError
        If ``X`` is empty or 3-D, or a clip is empty, contains NaN or inf or a
        sample beyond :data:`MAX_AMPLITUDE` (``2 ** 31``) in absolute value,
        has a non-numeric dtype or int64 values beyond the int16 range, or is a
        file that is missing, unreadable or declares a rate outside 1 kHz - 768 kHz,
        or resampling fails. The message names the clip index or the file.
    TypeError
        If ``X`` is a single path or a scalar rather than a collection of clips.

    Warns
    -----
    UserWarning
        For a file shorter than its header declares (truncated), and for a
        multichannel clip whose channels cancel when averaged (e.g. opposite
        polarity), naming the clip or file.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.audio import check_audio
    >>> clips = check_audio([np.zeros(800), np.ones(400)], sample_rate=8000,
    ...                     target_rate=16000)
    >>> [c.shape for c in clips]
    [(1600,), (800,)]
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    target_rate = sample_rate if target_rate is None else _check_rate(target_rate, "target_rate")
    items = _split_clips(X)
    clips = []
    for index, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            samples, rate = read_file(item)
            where = f"file {os.fspath(item)!r} (clip {index})"
        else:
            samples, rate = _to_mono(item, index), sample_rate
            where = f"clip {index}"
        if samples.size == 0:
            raise ValueError(f"{where} has zero length")
        if not np.all(np.isfinite(samples)):
            raise ValueError(f"{where} contains NaN or infinite samples")
        peak = float(np.max(np.abs(samples)))
        if peak > MAX_AMPLITUDE:
            raise ValueError(
                f"{where} has a sample of absolute value {peak:.3g}, beyond any audio scale "
                f"(at most 2**31); audio samples are expected in [-1, 1]"
            )
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise ValueError(
                f"{where} declares a sample rate of {rate} Hz, outside the {MIN_SAMPLE_RATE} - "
                f"{MAX_SAMPLE_RATE} Hz range (a corrupt header?)"
            )
        if rate != target_rate:
            try:
                samples = resample(samples, rate, target_rate)
            except (MemoryError, RuntimeError, OverflowError) as exc:
                raise ValueError(
                    f"{where} could not be resampled from {rate} Hz to {target_rate} Hz: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        clips.append(np.ascontiguousarray(samples, dtype=np.float32))
    return clips


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a 1-D float array with torchaudio's windowed-sinc resampler.

    Rates whose reduced ratio has a term above 1000 (e.g. 44101 -> 16000), for
    which that resampler's kernel is huge, use :func:`scipy.signal.resample_poly`.
    """
    if orig_rate == new_rate:
        return samples
    divisor = math.gcd(int(orig_rate), int(new_rate))
    up, down = int(new_rate) // divisor, int(orig_rate) // divisor
    if max(up, down) > _MAX_RESAMPLE_FACTOR:
        return signal.resample_poly(samples, up, down).astype(samples.dtype, copy=False)
    with torch.inference_mode():
        out = _resampler(int(orig_rate), int(new_rate))(torch.from_numpy(samples))
    return out.numpy()


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices of clips grouped into batches of similar length.

    Clips are sorted by length (stable, so ties keep input order) and cut into
    consecutive batches of at most ``batch_size``, which keeps padding small.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig_rate, new_rate)


def _check_rate(rate, name: str) -> int:
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"{name} must be a positive integer (Hz), got {rate!r}")
    if rate < MIN_SAMPLE_RATE:
        raise ValueError(
            f"{name}={rate} Hz is below the {MIN_SAMPLE_RATE} Hz minimum (rates are in Hz, not kHz)"
        )
    if rate > MAX_SAMPLE_RATE:
        raise ValueError(f"{name}={rate} Hz is above the {MAX_SAMPLE_RATE} Hz maximum")
    return int(rate)


def _split_clips(X) -> list:
    if isinstance(X, (str, os.PathLike, bytes)):
        raise TypeError(
            "X must be a collection of clips or paths, not a single path; wrap it in a list"
        )
    if sparse.issparse(X):
        raise TypeError("Sparse data was passed, but dense audio samples are required")
    if not isinstance(X, (list, tuple, np.ndarray)) and hasattr(X, "__array__"):
        X = np.asarray(X)
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 2:
            if X.shape[1] == 0:
                raise ValueError(
                    f"clip 0 has zero length: 0 feature(s) (shape={X.shape}) while a "
                    "minimum of 1 is required."
                )
            items = list(X)
        elif X.ndim == 1:
            raise ValueError(
                "X is a 1-D numeric array. Reshape your data: pass a list of clips, "
                "e.g. [x], or a 2-D array of shape (n_clips, n_samples)"
            )
        else:
            raise ValueError(
                f"X has {X.ndim} dimensions; expected a 2-D array (n_clips, n_samples) "
                "or a list of 1-D clips"
            )
    elif np.isscalar(X) or X is None:
        raise TypeError(f"X must be a collection of clips, got {type(X).__name__}")
    else:
        items = list(X)
    if len(items) == 0:
        raise ValueError("X is empty: at least one clip is required")
    return items


def _to_mono(item, index: int) -> np.ndarray:
    try:
        array = np.asarray(item)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"clip {index} is not an array of samples: {exc}") from exc
    if array.dtype.kind == "c":
        raise ValueError(f"clip {index}: Complex data not supported (dtype {array.dtype})")
    if array.dtype.kind == "O":
        try:
            array = array.astype(np.float64)
        except TypeError as exc:
            raise TypeError(f"clip {index} has non-numeric values: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"clip {index} has non-numeric values: {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise ValueError(f"clip {index} has non-numeric dtype {array.dtype}")
    if array.ndim == 2:
        if array.shape[1] > array.shape[0]:
            raise ValueError(
                f"clip {index} has shape {array.shape}; multichannel clips must be "
                "(n_samples, n_channels)"
            )
        array = _downmix(_scale_pcm(array, index), f"clip {index}")
    elif array.ndim == 1:
        array = _scale_pcm(array, index)
    else:
        raise ValueError(
            f"clip {index} has {array.ndim} dimensions; expected 1-D samples "
            "or (n_samples, n_channels)"
        )
    return array.astype(np.float32, copy=False)


def _scale_pcm(array: np.ndarray, index: int) -> np.ndarray:
    if array.dtype.kind == "f":
        return array
    if array.dtype.kind == "b":
        raise ValueError(f"clip {index} has non-numeric dtype bool")
    if array.dtype.itemsize == 8:
        return _scale_int64(array, index)
    scale = _PCM_SCALE[array.dtype.itemsize]
    if array.dtype.kind == "u":
        return (array.astype(np.float64) - scale) / scale
    return array.astype(np.float64) / scale


def _scale_int64(array: np.ndarray, index: int) -> np.ndarray:
    """int64 / uint64 samples as 16-bit PCM when they fit its range; an error otherwise."""
    if array.size == 0:
        return array.astype(np.float64)
    low, high = int(array.min()), int(array.max())
    if low < -(2**15) or high >= 2**15:
        raise ValueError(
            f"clip {index} has {array.dtype} samples in [{low}, {high}], beyond the int16 range; "
            f"{array.dtype} is read as 16-bit PCM, so pass float samples in [-1, 1] or cast "
            "to the PCM dtype they are (e.g. np.int32)"
        )
    if -1 <= low and high <= 1:
        warnings.warn(
            f"clip {index} has {array.dtype} samples all in {{-1, 0, 1}}, which is "
            "silence as 16-bit PCM: float audio truncated by astype(int)? Pass the float "
            "samples",
            UserWarning,
            stacklevel=5,
        )
    return array.astype(np.float64) / 2.0**15


def read_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file with :mod:`soundfile` to mono float32 at its own rate.

    :func:`check_audio` reads files with it before it checks and resamples them.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    samples : ndarray of shape (n_samples,), float32
        The mean of the channels, in [-1, 1] for PCM files.
    sample_rate : int
        The file's rate, in Hz.

    Raises
    ------
    ValueError
        Naming the file, when it does not exist, cannot be decoded or declares a
        sample rate outside :data:`MIN_SAMPLE_RATE` - :data:`MAX_SAMPLE_RATE`
        (checked before the samples are read).

    Warns
    -----
    UserWarning
        Naming the file, when it holds fewer samples than its header declares
        (truncated), or when its channels cancel in the mean.

    Examples
    --------
    >>> import tempfile, numpy as np, soundfile
    >>> from skaudiocluster.audio import read_file
    >>> path = tempfile.mkdtemp() + "/a.wav"
    >>> soundfile.write(path, np.zeros((800, 2)), 8000)
    >>> samples, rate = read_file(path)
    >>> samples.shape, samples.dtype, rate
    ((800,), dtype('float32'), 8000)
    """
    name = f"audio file {os.fspath(path)!r}"
    try:
        with soundfile.SoundFile(os.fspath(path)) as audio:
            rate, declared = int(audio.samplerate), audio.frames
            if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                raise ValueError(
                    f"{name} declares a sample rate of {rate} Hz, outside the "
                    f"{MIN_SAMPLE_RATE} - {MAX_SAMPLE_RATE} Hz range (a corrupt header?)"
                )
            samples = audio.read(dtype="float32", always_2d=True)
    except ValueError as exc:
        if str(exc).startswith(name):
            raise
        raise ValueError(f"{name} could not be decoded: {exc}") from exc
    except FileNotFoundError as exc:
        raise ValueError(f"{name} does not exist") from exc
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError
        if not os.path.exists(path):
            raise ValueError(f"{name} does not exist") from exc
        raise ValueError(f"{name} could not be decoded: {exc}") from exc
    header = _wav_declared_frames(path)
    if header is not None:
        declared = max(declared, header)
    if len(samples) < declared:
        warnings.warn(
            f"{name} is truncated: its header declares {declared} samples per channel but "
            f"only {len(samples)} could be read",
            UserWarning,
            stacklevel=2,
        )
    return _downmix(samples, name), rate


def _downmix(samples: np.ndarray, where: str) -> np.ndarray:
    """The mean of the channels of ``(n_samples, n_channels)``; warns if they cancel."""
    mono = samples.mean(axis=1, dtype=np.float64)
    if samples.shape[1] > 1:
        channel_rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        mono_rms = float(np.sqrt(np.mean(np.square(mono))))
        if channel_rms > 1e-6 and mono_rms < _CANCELLED_DOWNMIX * channel_rms:
            warnings.warn(
                f"{where}: its {samples.shape[1]} channels cancel when averaged to mono "
                f"(mono RMS {mono_rms:.3g}, channel RMS {channel_rms:.3g}; opposite "
                "polarity?); the clip is embedded as near-silence",
                UserWarning,
                stacklevel=3,
            )
    return mono.astype(np.float32)


def _wav_declared_frames(path) -> int | None:
    """Frames a RIFF/WAVE header declares in its data chunk; ``None`` if not a plain WAV.

    libsndfile shortens the frame count of a truncated WAV to what the file holds,
    so the declared size is read from the header itself.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                chunk = file.read(8)
                if len(chunk) < 8:
                    return None
                kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if kind == b"fmt ":
                    fmt = file.read(size)
                    if len(fmt) >= 14:
                        block_align = int.from_bytes(fmt[12:14], "little")
                    if size % 2:
                        file.seek(1, os.SEEK_CUR)
                elif kind == b"data":
                    if not block_align or size == 0xFFFFFFFF:
                        return None
                    return size // block_align
                else:
                    file.seek(size + size % 2, os.SEEK_CUR)
    except OSError:
        return None


def check_finite_output(out: np.ndarray, X, owner: str) -> np.ndarray:
    """Return ``out`` if every row is finite; else a ``ValueError`` naming the clips.

    Parameters
    ----------
    out : ndarray of shape (n_clips, ...)
        One output row per clip of ``X``.
    X : the clips given to the embedder
        Used only to name files in the message.
    owner : str
        Who computed ``out``, for the message (e.g. ``"BYOLAEmbedder"``).

    Examples
    --------
    >>> import numpy as np
    >>> check_finite_output(np.ones((2, 3)), [None, None], "demo").shape
    (2, 3)
    """
    bad = np.flatnonzero(~np.isfinite(out.reshape(len(out), -1)).all(axis=1))
    if bad.size:
        index = int(bad[0])
        item = X[index] if isinstance(X, (list, tuple)) and index < len(X) else None
        where = f"clip {index}"
        if isinstance(item, (str, os.PathLike)):
            where += f" (file {os.fspath(item)!r})"
        others = f" and {bad.size - 1} other clip(s)" if bad.size > 1 else ""
        raise ValueError(
            f"{owner} computed a NaN or infinite output for {where}{others}; its weights "
            "or normalisation statistics are not finite (a diverged training?)"
        )
    return out
