"""Log-mel or chroma features: pooled statistics or fixed-size log-mel images."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
import torchaudio
from sklearn.utils._param_validation import Interval, StrOptions

from skaudiocluster._torch import progress
from skaudiocluster.audio import length_batches
from skaudiocluster.transformers._base import GROUP_BY, BaseAudioEmbedder

__all__ = ["SpectrogramTransformer", "chroma_filterbank"]

#: MFCCs of the content view: 1-12, the envelope of the spectrum that speech and song
#: recognisers have used since the 1980s; 0 (loudness) is left out.
MFCC_COEFFICIENTS = 12


class SpectrogramTransformer(BaseAudioEmbedder):
    """Log-mel spectrograms of raw audio, standardised per mel band.

    ``fit`` learns each band's mean and standard deviation over all frames of
    the training clips; ``transform`` standardises with them and either pools
    every clip over time into a fixed vector (``pooling="meanstd"``, ready for
    any scikit-learn clusterer) or crops / zero-pads it to ``n_frames`` frames
    (``pooling=None``, the input of an encoder).

    Parameters
    ----------
    sample_rate : int, default=16000
        Rate the audio is analysed at, and the rate of in-memory arrays in X.
        Files are decoded at their own rate and resampled.
    n_fft : int, default=400
        FFT size and window length in samples (25 ms at 16 kHz).
    hop_length : int, default=160
        Hop between frames in samples (10 ms at 16 kHz).
    n_mels : int, default=64
        Number of mel bands.
    f_min : float, default=0.0
        Lowest mel band edge in Hz.
    f_max : float, default=None
        Highest mel band edge in Hz; ``None`` is ``sample_rate / 2``.
    kind : {"mel", "chroma"}, default="mel"
        ``"mel"``: ``n_mels`` log-mel bands. ``"chroma"``: a 12-band chromagram
        (C, C#, ..., B): the power of every FFT bin in ``[f_min, f_max]`` (DC
        excluded) added to the pitch class nearest its frequency (A4 = 440 Hz,
        equal temperament), each frame divided by its largest band (silent frames
        stay 0); ``n_mels`` is then unused. Chroma + PCA + k-means is the baseline
        of bird-song studies such as the nightingale one this package learns from.
    pooling : {"meanstd"} or None, default="meanstd"
        ``"meanstd"``: mean and standard deviation of each band over time,
        shape (n_clips, 2 * n_mels). ``None``: the standardised log-mel itself,
        shape (n_clips, n_mels, n_frames).
    n_frames : int, default=100
        Frames kept when ``pooling=None`` (longer clips are cropped at the end,
        shorter ones zero-padded after standardisation).
    group_by : {"source", "content"}, default="source"
        ``"source"``: the features above, which group clips by who or what makes
        the sound. ``"content"``: the content view of the clip's MFCCs (the DCT
        of the log-mel, coefficients 1-12; coefficient 0 is loudness), which
        groups clips by what is said or sung: silence trimmed, the clip's mean
        MFCC removed, resampled to ``CONTENT_FRAMES`` frames, shape
        (n_clips, 120). Needs ``kind="mel"`` and ``pooling="meanstd"``. See
        :ref:`group-by` for choosing.
    batch_size : int, default=64
        Clips per batch; clips are grouped by similar length and padding never
        changes a clip's features.
    device : str, default="auto"
        Torch device; ``"auto"`` uses CUDA when present, else the CPU.
    verbose : int, default=0
        Show a progress bar when positive.

    Attributes
    ----------
    mean_ : ndarray of shape (n_mels,)
        Per-band mean of the training log-mels.
    scale_ : ndarray of shape (n_mels,)
        Per-band standard deviation of the training log-mels (1 where zero).
    n_frames_seen_ : int
        Number of frames the statistics were computed from.
    n_clips_ : int
        Number of clips seen in ``fit``.
    device_ : torch.device
        Where the log-mels are computed (``device`` resolved in ``fit``; the CPU
        after unpickling).

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster import SpectrogramTransformer
    >>> rng = np.random.default_rng(0)
    >>> clips = [rng.standard_normal(16000).astype(np.float32) for _ in range(3)]
    >>> SpectrogramTransformer(n_mels=32).fit_transform(clips).shape
    (3, 64)
    """

    _parameter_constraints: dict = {
        **BaseAudioEmbedder._parameter_constraints,
        "n_fft": [Interval(Integral, 2, None, closed="left")],
        "hop_length": [Interval(Integral, 1, None, closed="left")],
        "n_mels": [Interval(Integral, 1, None, closed="left")],
        "f_min": [Interval(Real, 0, None, closed="left")],
        "f_max": [Interval(Real, 0, None, closed="neither"), None],
        "kind": [StrOptions({"mel", "chroma"})],
        "pooling": [StrOptions({"meanstd"}), None],
        "n_frames": [Interval(Integral, 1, None, closed="left")],
        "group_by": [GROUP_BY],
        "device": [str, torch.device],
    }

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        kind: str = "mel",
        pooling: str | None = "meanstd",
        n_frames: int = 100,
        group_by: str = "source",
        batch_size: int = 64,
        device: str = "auto",
        verbose: int = 0,
    ):
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.kind = kind
        self.pooling = pooling
        self.n_frames = n_frames
        self.group_by = group_by
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose

    def _check_params(self) -> None:
        f_max = self.sample_rate / 2 if self.f_max is None else self.f_max
        if not self.f_min < f_max <= self.sample_rate / 2:
            raise ValueError(
                f"need f_min < f_max <= sample_rate / 2, got f_min={self.f_min}, "
                f"f_max={f_max}, sample_rate={self.sample_rate}"
            )
        if self.group_by == "content" and (self.kind != "mel" or self.pooling != "meanstd"):
            raise ValueError(
                'group_by="content" is the view of the MFCC frames: it needs kind="mel" and '
                f'pooling="meanstd", got kind={self.kind!r}, pooling={self.pooling!r}'
            )

    def _fit_clips(self, clips: list[np.ndarray], seed: int) -> None:
        """Learn the per-band standardisation statistics from the clips."""
        total = np.zeros(self._n_bands)
        total_sq = np.zeros(self._n_bands)
        count = 0
        for _, log_mel, n_valid in self._log_mel_batches(clips, "fitting log-mel statistics"):
            mask = _frame_mask(n_valid, log_mel.shape[-1]).unsqueeze(1)
            values = (log_mel * mask).double()
            total += values.sum(dim=(0, 2)).cpu().numpy()
            total_sq += (values * log_mel).sum(dim=(0, 2)).cpu().numpy()
            count += int(n_valid.sum())
        self.mean_ = (total / count).astype(np.float32)
        variance = np.maximum(total_sq / count - self.mean_.astype(np.float64) ** 2, 0.0)
        scale = np.sqrt(variance)
        self.scale_ = np.where(scale > 1e-8, scale, 1.0).astype(np.float32)
        self.n_frames_seen_ = count

    def transform(self, X) -> np.ndarray:
        """Standardised log-mel features of the clips in X.

        Parameters
        ----------
        X : raw audio
            Anything :func:`skaudiocluster.audio.check_audio` accepts.

        Returns
        -------
        features : ndarray of float32
            Shape (n_clips, 2 * n_mels) with ``pooling="meanstd"``, else
            (n_clips, n_mels, n_frames).
        """
        return super().transform(X)

    def _transform_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        width = 2 * self._n_bands if self.pooling == "meanstd" else self.n_frames
        out = np.zeros(
            (len(clips), width) if self.pooling else (len(clips), self._n_bands, width),
            dtype=np.float32,
        )
        mean = torch.as_tensor(self.mean_).view(1, -1, 1)
        scale = torch.as_tensor(self.scale_).view(1, -1, 1)
        for indices, log_mel, n_valid in self._log_mel_batches(clips, "log-mel features"):
            standard = (log_mel - mean.to(log_mel.device)) / scale.to(log_mel.device)
            if self.pooling == "meanstd":
                out[indices] = _masked_mean_std(standard, n_valid).cpu().numpy()
            else:
                standard = standard * _frame_mask(n_valid, standard.shape[-1]).unsqueeze(1)
                kept = min(self.n_frames, standard.shape[-1])
                out[indices, :, :kept] = standard[..., :kept].cpu().numpy()
        return out

    def _frame_clips(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """MFCCs 1-12 of every frame (the DCT of the log-mel; 0, the loudness, left out)."""
        n_coefficients = min(MFCC_COEFFICIENTS, self.n_mels - 1)
        dct = torchaudio.functional.create_dct(n_coefficients + 1, self.n_mels, "ortho")
        frames: list[np.ndarray] = [np.empty(0)] * len(clips)
        for indices, log_mel, n_valid in self._log_mel_batches(clips, "MFCC frames"):
            mfcc = (log_mel.transpose(1, 2) @ dct.to(log_mel.device))[..., 1:]
            for row, index in enumerate(indices):
                frames[index] = mfcc[row, : int(n_valid[row])].cpu().numpy()
        return frames

    @property
    def _n_bands(self) -> int:
        return 12 if self.kind == "chroma" else self.n_mels

    def _log_mel_batches(self, clips: list[np.ndarray], desc: str):
        """Yield (indices, features (batch, bands, frames), valid frame counts) per batch.

        The features are log-mels, or chromagrams when ``kind="chroma"``.
        """
        device = self.device_
        if self.kind == "chroma":
            mel = _Chroma(self.sample_rate, self.n_fft, self.hop_length, self.f_min, self.f_max)
        else:
            mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                f_min=self.f_min,
                f_max=self.f_max,
                n_mels=self.n_mels,
                pad_mode="constant",  # zero padding: a batch-mate's padding equals the clip's own
            )
        mel = mel.to(device)
        lengths = [len(clip) for clip in clips]
        batches = length_batches(lengths, self.batch_size)
        with torch.inference_mode():
            for indices in progress(batches, verbose=self.verbose, desc=desc):
                longest = max(lengths[i] for i in indices)
                batch = np.zeros((len(indices), longest), dtype=np.float32)
                for row, i in enumerate(indices):
                    batch[row, : lengths[i]] = clips[i]
                power = mel(torch.from_numpy(batch).to(device))
                n_valid = torch.as_tensor(
                    [1 + lengths[i] // self.hop_length for i in indices], device=device
                )
                yield indices, power if self.kind == "chroma" else torch.log(power + 1e-6), n_valid


def chroma_filterbank(
    n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """``(n_fft // 2 + 1, 12)`` matrix adding each FFT bin's power to its pitch class.

    Bin ``k`` (frequency ``k * sample_rate / n_fft``, DC excluded, within
    ``[f_min, f_max]``) goes to pitch class ``round(12 * log2(f / 440) + 69) mod 12``
    (0 = C, 9 = A).

    Examples
    --------
    >>> bank = chroma_filterbank(1024, 16000)
    >>> int(bank[round(440 * 1024 / 16000)].argmax())  # 440 Hz is an A
    9
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    bank = np.zeros((len(freqs), 12), dtype=np.float32)
    keep = (freqs > 0) & (freqs >= f_min) & (freqs <= f_max)
    pitch = np.round(12 * np.log2(freqs[keep] / 440.0) + 69).astype(int) % 12
    bank[np.flatnonzero(keep), pitch] = 1.0
    return bank


class _Chroma(torch.nn.Module):
    """Power spectrogram (Hann, zero-padded centre frames) to per-frame max-normalised chroma."""

    def __init__(self, sample_rate, n_fft, hop_length, f_min, f_max):
        super().__init__()
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, hop_length=hop_length, pad_mode="constant"
        )
        bank = chroma_filterbank(n_fft, sample_rate, f_min, f_max)
        self.register_buffer("bank", torch.from_numpy(bank))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        chroma = torch.einsum("bft,fc->bct", self.spectrogram(waves), self.bank)
        peak = chroma.amax(dim=1, keepdim=True)
        return torch.where(peak > 0, chroma / peak.clamp_min(1e-30), torch.zeros_like(chroma))


def _frame_mask(n_valid: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(batch, n_frames) float mask of each clip's own frames."""
    return (torch.arange(n_frames, device=n_valid.device) < n_valid[:, None]).float()


def _masked_mean_std(features: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    """Mean and std over each clip's own frames: (batch, bands, frames) -> (batch, 2 * bands)."""
    mask = _frame_mask(n_valid, features.shape[-1]).unsqueeze(1)
    count = n_valid.view(-1, 1).float()
    mean = (features * mask).sum(-1) / count
    var = (((features - mean.unsqueeze(-1)) * mask) ** 2).sum(-1) / count
    return torch.cat([mean, var.sqrt()], dim=1)
