"""BYOL-A v1 audio embeddings (Niizumi et al., "BYOL for Audio", IEEE/ACM TASLP 2023)."""

from __future__ import annotations

import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted
from skorch.history import History
from torch.nn import functional as F

from skaudiocluster._torch import progress
from skaudiocluster._training import training_epochs
from skaudiocluster.audio import length_batches
from skaudiocluster.transformers._base import GROUP_BY, BaseAudioEmbedder
from skaudiocluster.transformers._byola_net import (
    LOG_EPS,
    MIN_SAMPLES,
    N_FFT,
    SAMPLE_RATE,
    AudioNTT2020,
    LogMelFrontend,
    checkpoint_d,
    encoder_state,
    n_frames,
    padded_waveforms,
)
from skaudiocluster.transformers._byola_pretrain import pretrain
from skaudiocluster.transformers._weights import load_into, load_state_dict, resolve_weights

__all__ = ["BYOLAEmbedder"]

# Smallest log-mel standard deviation fit learns. Silent clips give a constant
# log(eps) (std 0, then NaN embeddings); real audio has a std of a few nepers.
MIN_STD = 1e-3


class BYOLAEmbedder(ClassNamePrefixFeaturesOutMixin, BaseAudioEmbedder):
    """Embed raw audio clips with the BYOL-A v1 encoder (``AudioNTT2020``).

    Each clip is resampled to 16 kHz, turned into a 64-band log-mel (n_fft 1024,
    hop 10 ms, 60-7800 Hz, ``log(mel + eps)``), normalised as ``(lms - mean) / std``
    and encoded by three conv blocks and a frame MLP; the clip embedding is the
    max plus the mean over time of the frame features. Clips of any length are
    batched by similar length; padding is masked, so a clip's embedding does not
    depend on the other clips in its batch.

    The official weights are under NTT's software evaluation licence (evaluation
    use only, no redistribution). They are never bundled: a registered name
    downloads them from the official repository on first use (their source,
    licence, citation and sha256 are
    :data:`~skaudiocluster.transformers._weights.BYOLA_V1_D512` and its siblings).

    Parameters
    ----------
    weights : str, path or None, default="byola-v1-d512"
        A registered name (``"byola-v1-d512"``, ``"byola-v1-d1024"``,
        ``"byola-v1-d2048"``), downloaded into the cache directory on first use
        (``$SKAUDIOCLUSTER_CACHE``, else ``~/.cache/skaudiocluster``); a path to a
        checkpoint (an official file or a BYOL-A training checkpoint: any prefix
        before ``features.`` / ``fc.`` is dropped); or ``None`` for a random
        initialisation drawn from ``random_state``.
    d : int, default=None
        Embedding size. ``None`` takes it from the checkpoint (512 for ``weights=None``);
        a value that contradicts the checkpoint raises a ``ValueError``.
    sample_rate : int, default=16000
        Rate of in-memory arrays in ``X``; files carry their own. Audio is resampled
        to 16 kHz in float (the official converter also quantises to int16, which
        moves embeddings of very quiet recordings by a few percent).
    unit_sec : float, default=None
        Clip framing. ``None`` embeds each whole clip (the README recipe of the
        official code). A float is the official evaluation framing: each clip is
        zero-padded, centred, or centre-cropped to ``unit_sec`` seconds (the official
        code crops at random; this one is deterministic). Clips shorter than 70 ms,
        the encoder's minimum, are always zero-padded, centred, to 70 ms.
    group_by : {"source", "content"}, default="source"
        ``"source"``: the official clip embedding (max + mean of the frame
        features over time), which groups clips by who or what makes the sound.
        ``"content"``: the content view of the frame features before that
        pooling (one per 80 ms), which groups clips by what is said or sung:
        silence trimmed, the clip's mean frame removed, resampled to
        ``CONTENT_FRAMES`` frames, shape (n_clips, 10 * d). Clips under 0.5 s
        give the encoder only a few frames: for short words the MFCC content
        view of :class:`~skaudiocluster.SpectrogramTransformer` holds more. See
        :ref:`group-by`.
    norm_stats : tuple of (float, float), default=None
        Fixed ``(mean, std)`` of the log-mel values. ``None`` learns them in ``fit``:
        the mean and population standard deviation over every log-mel value of the
        training clips (framed as above), as the official evaluation does. Silent
        training clips, whose standard deviation is 0 (below 1e-3), warn and get
        ``std = 1`` (no scaling), rather than NaN embeddings.
    batch_size : int, default=64
        Clips per forward pass when embedding.
    pretrain_max_steps : int or None, default=None
        Optimizer steps of BYOL-A self-supervised training on the clips given to
        ``fit``, rounded up to whole epochs, starting from ``weights``
        (fine-tuning) or from a random init; ``None``: ``pretrain_max_epochs``
        alone; 0 keeps the encoder as loaded.
    pretrain_max_epochs : int or None, default=0
        At most this many epochs of that training (passes over the clips); the
        default 0 keeps the encoder as loaded, as pretrained weights are the
        point of the embedder; ``None``: no cap.
    pretrain_batch_size : int, default=64
        Clips per training step.
    lr : float, default=3e-4
        Adam learning rate of the self-supervised training (cosine-annealed to 0).
    ema_decay : float, default=0.99
        Decay of the target network's exponential moving average.
    checkpoint_dir : str or path, default=None
        Where the self-supervised training saves the encoder after every epoch
        (skorch ``Checkpoint``); ``None`` saves nothing.
    device : str or torch.device, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ...
        Resolved in ``fit``: the encoder then stays on that device.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation and the self-supervised training; an int
        makes CPU runs repeat exactly. torch's global generator is left as it was.
    verbose : int, default=0
        0 is silent; otherwise progress bars while embedding and training.

    Attributes
    ----------
    module_ : torch.nn.Module
        The ``AudioNTT2020`` encoder, in eval mode, on ``device_``. Its state-dict
        keys are the official checkpoint's. It maps a normalised log-mel batch
        ``(B, 1, 64, T)`` to embeddings ``(B, d)``; see :meth:`log_mel`.
    device_ : torch.device
        Where ``module_`` lives and :meth:`transform` runs (``device`` resolved in
        ``fit``; the CPU after unpickling).
    mean_ : float
        Mean of the log-mel values used for normalisation.
    std_ : float
        Standard deviation of the log-mel values used for normalisation.
    n_clips_ : int
        Number of clips seen in ``fit``.
    pretrain_history_ : skorch History
        One row per epoch of the self-supervised training (``epoch``,
        ``train_loss``, ``dur``); empty without pretraining.

    See Also
    --------
    skaudiocluster.transformers.spectrogram.SpectrogramTransformer : log-mel statistics.

    Notes
    -----
    Training the encoder jointly with something else (as ``SPICEClusterer`` does) uses
    a small public interface: :meth:`waveforms` decodes and frames clips at
    :attr:`model_sample_rate`; :meth:`log_mel` maps a batch of them to the normalised
    log-mel ``(B, 1, 64, T)`` and valid frame counts, differentiably and on the
    input's device; ``est.module_(*est.log_mel(waves))`` gives embeddings with
    gradients to ``module_``'s parameters. Call ``module_.train()`` for training and
    ``module_.eval()`` afterwards; :meth:`transform` always runs the encoder in eval
    mode, with each batch norm folded into its convolution.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.transformers.byola import BYOLAEmbedder
    >>> rng = np.random.default_rng(0)
    >>> clips = [rng.normal(scale=0.1, size=n) for n in (8000, 12000, 16000)]
    >>> emb = BYOLAEmbedder(weights=None, random_state=0).fit_transform(clips)
    >>> emb.shape
    (3, 512)
    """

    #: Rate of the clips the encoder takes (:meth:`waveforms`, :meth:`log_mel`).
    model_sample_rate: int = SAMPLE_RATE
    #: Shortest clip the encoder takes (70 ms at 16 kHz).
    min_samples: int = MIN_SAMPLES

    _parameter_constraints: dict = {
        **BaseAudioEmbedder._parameter_constraints,
        "weights": [str, os.PathLike, None],
        "d": [Interval(Integral, 1, None, closed="left"), None],
        "unit_sec": [Interval(Real, 0, None, closed="neither"), None],
        "group_by": [GROUP_BY],
        "norm_stats": ["array-like", None],
        "pretrain_max_steps": [Interval(Integral, 0, None, closed="left"), None],
        "pretrain_max_epochs": [Interval(Integral, 0, None, closed="left"), None],
        "pretrain_batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "ema_decay": [Interval(Real, 0, 1, closed="both")],
        "checkpoint_dir": [str, os.PathLike, None],
        "device": [str, torch.device],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        weights: str | os.PathLike | None = "byola-v1-d512",
        *,
        d: int | None = None,
        sample_rate: int = 16000,
        unit_sec: float | None = None,
        group_by: str = "source",
        norm_stats: tuple[float, float] | None = None,
        batch_size: int = 64,
        pretrain_max_steps: int | None = None,
        pretrain_max_epochs: int | None = 0,
        pretrain_batch_size: int = 64,
        lr: float = 3e-4,
        ema_decay: float = 0.99,
        checkpoint_dir: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        random_state=None,
        verbose: int = 0,
    ):
        self.weights = weights
        self.d = d
        self.sample_rate = sample_rate
        self.unit_sec = unit_sec
        self.group_by = group_by
        self.norm_stats = norm_stats
        self.batch_size = batch_size
        self.pretrain_max_steps = pretrain_max_steps
        self.pretrain_max_epochs = pretrain_max_epochs
        self.pretrain_batch_size = pretrain_batch_size
        self.lr = lr
        self.ema_decay = ema_decay
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self) -> None:
        self._check_norm_stats()

    def _fit_clips(self, clips: list[np.ndarray], seed: int) -> None:
        """Load the encoder, learn the normalisation statistics and optionally pretrain."""
        module = self._load_module()
        norm_stats = self._check_norm_stats()
        if norm_stats is None:
            norm_stats = self._learn_norm_stats(clips, self.device_)
        self.mean_, self.std_ = norm_stats
        self.pretrain_history_ = History()
        if self.pretrain_max_steps != 0 and self.pretrain_max_epochs != 0:
            # an epoch is len(clips) // batch steps (the last incomplete batch is dropped)
            steps_per_epoch = len(clips) // min(self.pretrain_batch_size, len(clips))
            epochs = training_epochs(
                self.pretrain_max_steps, self.pretrain_max_epochs, steps_per_epoch
            )
            self.pretrain_history_ = pretrain(
                module,
                self._normalised_log_mels(clips),
                floor=(float(np.log(LOG_EPS)) - self.mean_) / self.std_,
                epochs=epochs,
                batch_size=self.pretrain_batch_size,
                lr=self.lr,
                ema_decay=self.ema_decay,
                checkpoint_dir=self.checkpoint_dir,
                device=self.device_,
                seed=seed,
                verbose=self.verbose,
            )
        self.module_ = module.to(self.device_).eval()

    def _transform_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        net = self.module_
        was_training = net.training
        net.eval()
        out = np.empty((len(clips), self._n_features_out), dtype=np.float32)
        try:
            with torch.inference_mode():
                for index, lms, lengths in self._log_mel_batches(clips, self.device_, "embedding"):
                    lms = ((lms - self.mean_) / self.std_).unsqueeze(1)
                    out[index] = net(lms, lengths, fold=True).cpu().numpy()
        finally:
            net.train(was_training)
        return out

    def _frame_clips(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """The encoder's frame features (before its max + mean), one per 8 log-mel frames."""
        clips = [_centre(clip, MIN_SAMPLES, crop=False) for clip in clips]
        frames: list[np.ndarray] = [np.empty(0)] * len(clips)
        net = self.module_
        was_training = net.training
        net.eval()
        try:
            with torch.inference_mode():
                for index, lms, lengths in self._log_mel_batches(clips, self.device_, "frames"):
                    lms = ((lms - self.mean_) / self.std_).unsqueeze(1)
                    features, counts = net.frame_features(lms, lengths, fold=True)
                    for row, clip_index in enumerate(index):
                        frames[clip_index] = features[row, : int(counts[row])].cpu().numpy()
        finally:
            net.train(was_training)
        return frames

    def log_mel(
        self, waveforms: torch.Tensor | list, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel of 16 kHz clips, differentiable, on the input's device.

        Parameters
        ----------
        waveforms : torch.Tensor of shape (B, L), or list of 1-D arrays
            16 kHz float clips, each at least :attr:`min_samples` long. A tensor
            holds equal-length clips (differentiably) or zero-padded ones with
            ``lengths``; a list may hold clips of any lengths.
        lengths : torch.Tensor of shape (B,), default=None
            Valid samples of each row of a padded tensor; ``None`` means ``L``.

        Returns
        -------
        lms : torch.Tensor of shape (B, 1, 64, T)
            ``(log(mel + eps) - mean_) / std_``, ready for ``module_``.
        frames : torch.Tensor of shape (B,)
            Valid frames of each clip (``1 + n_samples // 160``), the second
            argument of ``module_``: the frames past a clip's end are padding
            that ``module_`` masks, so a clip's embedding does not depend on its
            batch.
        """
        check_is_fitted(self, "module_")
        if isinstance(waveforms, torch.Tensor) and lengths is None:
            padded = F.pad(waveforms.unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect")
            padded = padded.squeeze(1)
            frames = torch.full((len(waveforms),), n_frames(waveforms.shape[1]))
            device = waveforms.device
        else:
            is_tensor = isinstance(waveforms, torch.Tensor)
            device = waveforms.device if is_tensor else torch.device("cpu")
            if is_tensor:
                waveforms = [w[: int(n)].detach().cpu().numpy() for w, n in zip(waveforms, lengths)]
            padded, frames = padded_waveforms([np.asarray(w, np.float32) for w in waveforms])
            padded = padded.to(device)
        lms = LogMelFrontend().to(device)(padded)
        return ((lms - self.mean_) / self.std_).unsqueeze(1), frames.to(device)

    @property
    def _n_features_out(self) -> int:
        return self.module_.fc[3].out_features

    def _check_clips(self, X) -> list[np.ndarray]:
        """Decoded at 16 kHz, zero-padded (centred) to 70 ms or ``unit_sec``, cropped to it."""
        clips = super()._check_clips(X)
        unit = MIN_SAMPLES if self.unit_sec is None else round(self.unit_sec * SAMPLE_RATE)
        if unit < MIN_SAMPLES:
            raise ValueError(f"unit_sec={self.unit_sec} is shorter than the encoder's 70 ms")
        return [_centre(clip, unit, crop=self.unit_sec is not None) for clip in clips]

    def _check_norm_stats(self) -> tuple[float, float] | None:
        if self.norm_stats is None:
            return None
        stats = np.asarray(self.norm_stats, dtype=np.float64)
        if stats.shape != (2,) or not np.all(np.isfinite(stats)) or stats[1] <= 0:
            raise ValueError(
                f"norm_stats must be (mean, std) with std > 0, got {self.norm_stats!r}"
            )
        return float(stats[0]), float(stats[1])

    def _load_module(self) -> AudioNTT2020:
        if self.weights is None:
            return AudioNTT2020(512 if self.d is None else self.d)
        path = resolve_weights(
            self.weights, progress=self.verbose > 0, family="byola", owner="BYOLAEmbedder"
        )
        state = encoder_state(load_state_dict(path))
        d = checkpoint_d(state) if state else None
        if d is None:
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} holds no BYOL-A encoder tensors "
                "(keys with 'features.' or 'fc.')"
            )
        if self.d is not None and self.d != d:
            raise ValueError(f"d={self.d} but checkpoint {os.fspath(path)!r} has d={d}")
        module = AudioNTT2020(d)
        load_into(module, state, path, "the BYOL-A v1 encoder")
        return module

    def _log_mel_batches(self, clips, device, desc):
        """Yield (indices, raw log-mel (B, 64, T), valid frames) over length-sorted batches."""
        frontend = LogMelFrontend().to(device)
        batches = length_batches([len(clip) for clip in clips], self.batch_size)
        for index in progress(batches, verbose=self.verbose, desc=desc):
            waves, lengths = padded_waveforms([clips[i] for i in index])
            with torch.inference_mode():
                lms = frontend(waves.to(device))
            yield index, lms, lengths.to(device)

    def _normalised_log_mels(self, clips) -> list[torch.Tensor]:
        """``(log-mel - mean_) / std_`` of each clip's valid frames, (64, T_i) on the CPU."""
        log_mels = [None] * len(clips)
        for index, lms, lengths in self._log_mel_batches(clips, torch.device("cpu"), "log-mel"):
            for row, clip_index in enumerate(index):
                log_mels[clip_index] = (lms[row, :, : lengths[row]].clone() - self.mean_) / (
                    self.std_
                )
        return log_mels

    def _learn_norm_stats(self, clips, device) -> tuple[float, float]:
        """Mean and population std of all valid log-mel values, merged batch by batch."""
        count, mean, m2 = 0, 0.0, 0.0
        for _, lms, lengths in self._log_mel_batches(clips, device, "norm stats"):
            valid = (torch.arange(lms.shape[-1], device=device) < lengths[:, None])[:, None, :]
            values = lms.double().masked_select(valid)
            n, batch_mean = values.numel(), float(values.mean())
            batch_m2 = float((values - batch_mean).square().sum())
            delta = batch_mean - mean
            m2 += batch_m2 + delta**2 * count * n / (count + n)
            mean += delta * n / (count + n)
            count += n
        std = float(np.float32(np.sqrt(m2 / count)))
        if not std > MIN_STD:
            warnings.warn(
                f"{type(self).__name__}.fit: the log-mel values of the {len(clips)} training "
                f"clips have standard deviation {std:.3g}: the clips are silent (or constant), "
                "so every clip will embed alike; std_ is set to 1 instead (no scaling). Fit "
                "on clips with sound, or pass norm_stats=(mean, std)",
                UserWarning,
                stacklevel=6,  # the caller of fit
            )
            std = 1.0
        return float(np.float32(mean)), std


def _centre(clip: np.ndarray, size: int, *, crop: bool) -> np.ndarray:
    """Zero-pad ``clip``, centred, to ``size`` samples; centre-crop it too when ``crop``."""
    if len(clip) < size:
        left = (size - len(clip)) // 2
        return np.pad(clip, (left, size - len(clip) - left))
    if crop and len(clip) > size:
        start = (len(clip) - size) // 2
        return clip[start : start + size]
    return clip
