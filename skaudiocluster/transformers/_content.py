"""The content view: what is said or sung in a clip, in order, with the clip's own colour removed.

A pooled clip vector (``group_by="source"``) answers *who* or *what source*: the
speaker, the species, the instrument. The content view answers *what*: the
sequence of sounds. Each clip's frame features are

1. trimmed to the span whose frames lie within ``trim_db`` of the clip's loudest
   (leading and trailing silence would otherwise shift the sequence in time);
2. centred on the clip's own mean frame (cepstral mean normalisation: a fixed
   colour of the voice, the microphone or the room is a constant offset of every
   frame of log-spectral features, and the subtraction removes it);
3. linearly resampled to ``n_frames`` frames (clips of any length become one
   fixed-size, time-aligned sequence) and flattened frame by frame.

The row is ``(n_frames * n_features_per_frame,)``: frame ``t``'s features are
``row[t * d:(t + 1) * d]``, so ``row.reshape(n_frames, -1)`` gives the sequence back
(:class:`skaudiocluster.cluster.TemporalClusterer` reads it so).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CONTENT_FRAMES", "TRIM_DB", "content_view", "trim_silence"]

#: Frames per clip in the content view: enough for the 1-3 syllables of a spoken word or
#: a short song phrase, few enough that a time-aligned vector stays a usable distance.
CONTENT_FRAMES = 10
#: Frames quieter than the clip's loudest by more than this many dB are trimmed from its
#: ends; 35 dB keeps weak consonants and drops the noise floor of ordinary recordings.
TRIM_DB = 35.0
# 25 ms frames, 10 ms hop, as speech front ends frame the energy they trim by
_FRAME_SECONDS, _HOP_SECONDS = 0.025, 0.010


def trim_silence(clip: np.ndarray, sample_rate: int, trim_db: float = TRIM_DB) -> np.ndarray:
    """``clip`` without its leading and trailing frames quieter than the loudest by ``trim_db``.

    Frame energy is the mean square of 25 ms frames every 10 ms. A silent clip,
    or one shorter than a frame, is returned unchanged.

    Parameters
    ----------
    clip : ndarray of shape (n_samples,)
        Mono audio.
    sample_rate : int
        Rate of ``clip`` in Hz.
    trim_db : float, default=35.0
        Frames more than this many dB below the loudest are silence.

    Returns
    -------
    trimmed : ndarray
        A contiguous slice of ``clip`` (a view).

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.transformers import trim_silence
    >>> clip = np.concatenate([np.zeros(8000), np.ones(1600), np.zeros(8000)])
    >>> len(trim_silence(clip, 16000))
    2160
    """
    width = max(1, round(_FRAME_SECONDS * sample_rate))
    hop = max(1, round(_HOP_SECONDS * sample_rate))
    if len(clip) < width:
        return clip
    power = np.lib.stride_tricks.sliding_window_view(clip.astype(np.float64) ** 2, width)[::hop]
    energy = power.mean(axis=1)
    peak = energy.max()
    if peak <= 0:
        return clip
    loud = np.flatnonzero(energy >= peak * 10 ** (-trim_db / 10))
    return clip[loud[0] * hop : loud[-1] * hop + width]


def content_view(frames: list[np.ndarray], n_frames: int = CONTENT_FRAMES) -> np.ndarray:
    """Mean-normalised, resampled, flattened frame sequences: one content row per clip.

    Parameters
    ----------
    frames : list of ndarray of shape (n_frames_i, d)
        Each clip's frame features in time order (already trimmed of silence,
        see :func:`trim_silence`); every clip has the same ``d``.
    n_frames : int, default=10
        Frames each sequence is linearly resampled to.

    Returns
    -------
    rows : ndarray of shape (n_clips, n_frames * d), dtype float32
        Frame ``t`` of clip ``i`` is ``rows[i, t * d:(t + 1) * d]``.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.transformers import content_view
    >>> rising = np.arange(4.0)[:, None] * [1.0, 2.0]  # 4 frames of 2 features
    >>> content_view([rising, rising + 10.0], n_frames=2)  # the offset is removed
    array([[-1.5, -3. ,  1.5,  3. ],
           [-1.5, -3. ,  1.5,  3. ]], dtype=float32)
    """
    rows = []
    for sequence in frames:
        sequence = torch.as_tensor(np.asarray(sequence, dtype=np.float64))
        sequence = sequence - sequence.mean(dim=0)
        # (T, d) -> (1, d, T): interpolate over time; one frame is repeated
        resampled = F.interpolate(
            sequence.T.unsqueeze(0), size=n_frames, mode="linear", align_corners=True
        )
        rows.append(resampled[0].T.reshape(-1))
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.stack(rows).numpy().astype(np.float32)
