"""PaSST audio-transformer embeddings (Koutini et al., Interspeech 2022), HEAR 2021 style."""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from skaudiocluster._torch import progress, to_numpy
from skaudiocluster.audio import check_finite_output
from skaudiocluster.transformers._base import BaseAudioEmbedder
from skaudiocluster.transformers._passt_frontend import (
    SAMPLE_RATE,
    PaSSTFrontend,
    min_samples,
    n_frames,
)
from skaudiocluster.transformers._passt_net import PaSSTConfig, PaSSTNet, config_from_state_dict
from skaudiocluster.transformers._weights import load_into, load_state_dict, resolve_weights

__all__ = ["PaSSTEmbedder"]

WINDOW = 10 * SAMPLE_RATE  # longest input of one forward pass (HEAR wrapper: 10 s)
SCENE_HOP = SAMPLE_RATE * 5 // 2  # 2.5 s between the windows of a longer clip
TIMESTAMP_WINDOW = SAMPLE_RATE * 160 // 1000
TIMESTAMP_HOP = SAMPLE_RATE * 50 // 1000
MIN_FRAMES = 16  # one patch


class PaSSTEmbedder(ClassNamePrefixFeaturesOutMixin, BaseAudioEmbedder):
    """Clip embeddings from PaSST, the patchout audio spectrogram transformer.

    PaSST-S (Koutini et al., "Efficient Training of Audio Transformers with
    Patchout", Interspeech 2022) is a distilled ViT-B over overlapping 16x16
    patches of a 128-band log-mel, trained on AudioSet. Embeddings follow the
    HEAR 2021 wrapper (``hear21passt``): a clip of at most 10 s goes through
    in one pass (a shorter clip simply has fewer time patches and uses the
    first time positional embeddings); a longer clip is reflect-padded by 5 s
    at each end and cut into 10 s windows with a 2.5 s hop whose outputs are
    averaged. Clips shorter than one patch (0.15 s) are zero-padded at the end.

    Parameters
    ----------
    weights : str, path or None, default="passt_s_swa_p16_128_ap476"
        A registered official checkpoint name (downloaded once into the cache
        directory on a machine with internet; offline, the error says where to
        put the file), the path of a PaSST state dict, or ``None`` for random
        weights (tests). The network shape (stride, depth, classes) is read
        from the checkpoint. Registered: ``passt_s_swa_p16_128_ap476``
        (the HEAR 2021 default), ``passt_s_kd_p16_128_ap486``,
        ``passt_l_kd_p16_128_ap47`` (7 blocks) and the stride-16 checkpoints
        ``passt_s_p16_s16_128_ap468``, ``passt_b_f128_p16_s16_ap_459``,
        ``passt_u600_f128_p16_s16_ap_460``, which cut a 10 s clip into 8x62
        instead of 12x99 patches and embed about twice as fast on a CPU (the
        cheaper option; see Notes). Their source, licence (Apache-2.0) and
        citation are the ``PASST_*`` constants of
        :mod:`skaudiocluster.transformers._weights`.
    output : {"features", "logits", "both"}, default="features"
        ``"features"``: the 768-d mean of the class and distillation tokens.
        ``"logits"``: the AudioSet class logits (before the sigmoid).
        ``"both"``: logits followed by features, the HEAR 2021 scene embedding
        (1295-d). The default suits clustering: the logits are an affine map
        of the layer-normalised features, so they add no information, and
        their different scale would re-weight the distances of ``"both"``.
    sample_rate : int, default=32000
        Rate of in-memory arrays in X; audio is resampled to 32 kHz.
    batch_size : int, default=1
        Work per forward pass, in 10 s windows: short clips are grouped by
        length and packed until they hold as many patches as ``batch_size``
        windows of 10 s. On a CPU a larger batch is no faster per clip
        (:ref:`bench-passt`), so the default is 1.
    patchout_time, patchout_freq : int, default=0
        Structured patchout: patch columns / rows dropped at random, only
        while ``module_`` is in training mode (fine-tuning by a caller);
        ``transform`` always uses every patch.
    device : str or torch.device, default="auto"
        Torch device; ``"auto"`` uses CUDA when present, else the CPU. Resolved
        in ``fit``: the network then stays there.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation when ``weights=None`` (torch's global
        generator is left as it was).
    verbose : int, default=0
        Show a progress bar when positive.

    Attributes
    ----------
    module_ : torch.nn.Module
        The PaSST network, in evaluation mode; its state dict has the official
        checkpoint's key names.
    config_ : PaSSTConfig
        Shape of the network (stride, depth, number of classes, ...).
    frontend_ : torch.nn.Module
        The log-mel front end (no parameters).
    device_ : torch.device
        Device the network lives and runs on (the CPU after unpickling).
    n_clips_ : int
        Number of clips seen in ``fit``.

    See Also
    --------
    skaudiocluster.transformers.byola.BYOLAEmbedder : A much faster, smaller embedder.

    Notes
    -----
    Cost grows with the number of patches: a 10 s clip is 12 x 99 patches at
    stride 10 and 8 x 62 at stride 16. On a CPU most of the time goes to the
    linear layers, then attention; the log-mel front end costs next to nothing.
    Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`,
    which never stores the token-by-token score matrix. Profile and CPU seconds
    per clip against ``hear21passt``: :ref:`bench-passt`.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.transformers.passt import PaSSTEmbedder
    >>> clips = [np.zeros(16000, dtype=np.float32), np.ones(8000, dtype=np.float32)]
    >>> embedder = PaSSTEmbedder(weights=None, sample_rate=16000, random_state=0)
    >>> embedder.fit_transform(clips).shape
    (2, 768)
    """

    #: Rate of the audio the network takes.
    model_sample_rate: int = SAMPLE_RATE

    _parameter_constraints: dict = {
        **BaseAudioEmbedder._parameter_constraints,
        "weights": [str, os.PathLike, None],
        "output": [StrOptions({"features", "logits", "both"})],
        "patchout_time": [Interval(Integral, 0, None, closed="left")],
        "patchout_freq": [Interval(Integral, 0, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        weights: str | os.PathLike | None = "passt_s_swa_p16_128_ap476",
        output: str = "features",
        sample_rate: int = SAMPLE_RATE,
        batch_size: int = 1,
        patchout_time: int = 0,
        patchout_freq: int = 0,
        device: str | torch.device = "auto",
        random_state=None,
        verbose: int = 0,
    ):
        self.weights = weights
        self.output = output
        self.sample_rate = sample_rate
        self.batch_size = batch_size
        self.patchout_time = patchout_time
        self.patchout_freq = patchout_freq
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _fit_clips(self, clips: list[np.ndarray], seed: int) -> None:
        """Build the network and load the weights; the clips are checked, not learned from."""
        module = self._random_module() if self.weights is None else self._load_module()
        if self.config_.n_time_patches(n_frames(WINDOW)) > self.config_.n_time_positions:
            raise ValueError(
                f"checkpoint has {self.config_.n_time_positions} time positions, "
                "fewer than a 10 s window needs"
            )
        self.module_ = module.eval().to(self.device_)
        self.frontend_ = PaSSTFrontend().to(self.device_)

    def _transform_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        """Scene embeddings: the mean of each clip's windows (:func:`_scene_windows`)."""
        segments, owners = [], []
        for index, clip in enumerate(clips):
            pieces = _scene_windows(clip)
            segments.extend(pieces)
            owners.extend([index] * len(pieces))
        out = self._embed(segments, "PaSST scene embeddings")
        owners = np.asarray(owners)
        counts = np.bincount(owners, minlength=len(clips))
        sums = np.zeros((len(clips), out.shape[1]))
        np.add.at(sums, owners, out)
        return (sums / counts[:, None]).astype(np.float32)

    def timestamp_embeddings(self, X) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Embeddings every 50 ms, each of a 160 ms window centred there (HEAR 2021).

        The clip is reflect-padded by 80 ms at both ends; window ``i`` is
        centred at ``50 * i`` ms, for ``i = 0 ... n_samples // 1600``
        (at 32 kHz). Each window is one patch column, so these embeddings are
        cheap but local.

        Parameters
        ----------
        X : raw audio
            As for :meth:`transform`.

        Returns
        -------
        embeddings : list of ndarray of shape (n_frames_i, n_features), dtype float32
            One array per clip.
        timestamps_ms : list of ndarray of shape (n_frames_i,), dtype float64
            Centre of each window in milliseconds.
        """
        check_is_fitted(self)
        clips = self._check_clips(X)
        windows = [_timestamp_windows(clip) for clip in clips]
        out = self._embed(
            [w for clip_windows in windows for w in clip_windows], "PaSST timestamp embeddings"
        )
        embeddings = np.split(out, np.cumsum([len(w) for w in windows])[:-1])
        # one row per clip, NaN where any of its frames is not finite, to name the clip
        finite = np.array([np.isfinite(e).all() for e in embeddings])
        check_finite_output(np.where(finite, 0.0, np.nan)[:, None], X, type(self).__name__)
        times = [np.arange(len(w)) * (TIMESTAMP_HOP * 1000 / SAMPLE_RATE) for w in windows]
        return embeddings, times

    @property
    def _n_features_out(self) -> int:
        dims = {"features": self.config_.embed_dim, "logits": self.config_.n_classes}
        dims["both"] = dims["features"] + dims["logits"]
        return dims[self.output]

    def _build(self, config: PaSSTConfig) -> PaSSTNet:
        """An uninitialised network (on the meta device: its tensors are replaced next)."""
        with torch.device("meta"):
            return PaSSTNet(
                config, patchout_time=self.patchout_time, patchout_freq=self.patchout_freq
            )

    def _random_module(self) -> PaSSTNet:
        """The official random init, drawn from ``random_state`` (torch's global RNG untouched)."""
        self.config_ = PaSSTConfig()
        module = self._build(self.config_).to_empty(device="cpu")
        module.reset_parameters()  # from torch's generator, forked and seeded by fit
        return module

    def _load_module(self) -> PaSSTNet:
        path = resolve_weights(
            self.weights, progress=self.verbose > 0, family="passt", owner="PaSSTEmbedder"
        )
        state = load_state_dict(path)
        self.config_ = config_from_state_dict(state)
        module = self._build(self.config_)
        load_into(module, state, path, "PaSST", assign=True)
        return module.float()

    def _embed(self, segments: list[np.ndarray], desc: str) -> np.ndarray:
        """Run the network on 32 kHz segments of at most 10 s; one output row each."""
        config = self.config_
        frames = np.array([n_frames(len(segment)) for segment in segments])
        n_columns = config.n_time_patches(frames)
        window_tokens = config.n_freq_patches * config.n_time_patches(n_frames(WINDOW))
        budget = self.batch_size * window_tokens
        batches = _pack_by_tokens(n_columns * config.n_freq_patches, budget)
        out = np.empty((len(segments), self._n_features_out), dtype=np.float32)
        with torch.inference_mode():
            for batch in progress(batches, verbose=self.verbose, desc=desc, total=len(batches)):
                mel = self._log_mels([segments[i] for i in batch], frames[batch].max())
                columns = n_columns[batch]
                masked = columns.min() < columns.max()
                features, logits = self.module_(mel, torch.from_numpy(columns) if masked else None)
                out[batch] = to_numpy(self._select(features, logits))
        return out

    def _log_mels(self, segments: list[np.ndarray], frames: int) -> torch.Tensor:
        """Log-mels of segments of any length, each computed alone, zero-padded to ``frames``."""
        if len({len(segment) for segment in segments}) == 1:
            return self.frontend_(torch.from_numpy(np.stack(segments)).to(self.device_))
        mels = torch.zeros(len(segments), self.config_.n_mels, frames, device=self.device_)
        for row, segment in enumerate(segments):
            mel = self.frontend_(torch.from_numpy(segment).to(self.device_)[None])[0]
            mels[row, :, : mel.shape[1]] = mel
        return mels

    def _select(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.output == "features":
            return features
        if self.output == "logits":
            return logits
        return torch.cat([logits, features], dim=1)


def _scene_windows(clip: np.ndarray) -> list[np.ndarray]:
    """The pieces a clip is embedded as: itself up to 10 s, else overlapping 10 s windows."""
    if len(clip) < min_samples(MIN_FRAMES):
        return [np.pad(clip, (0, min_samples(MIN_FRAMES) - len(clip)))]
    if len(clip) <= WINDOW:
        return [clip]
    padded = np.pad(clip, WINDOW // 2, mode="reflect")
    starts = range(0, len(clip) // SCENE_HOP * SCENE_HOP + 1, SCENE_HOP)
    return [padded[start : start + WINDOW] for start in starts]


def _timestamp_windows(clip: np.ndarray) -> list[np.ndarray]:
    padded = np.pad(clip, TIMESTAMP_WINDOW // 2, mode="reflect")
    starts = range(0, len(clip) // TIMESTAMP_HOP * TIMESTAMP_HOP + 1, TIMESTAMP_HOP)
    return [padded[start : start + TIMESTAMP_WINDOW] for start in starts]


def _pack_by_tokens(n_tokens: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices sorted by length, cut into batches whose padded size stays within budget.

    A batch costs ``len(batch) * longest``; every batch holds at least one item.
    """
    order = np.argsort(n_tokens, kind="stable")
    batches, start = [], 0
    for stop in range(1, len(order) + 1):
        if stop == len(order) or (stop + 1 - start) * n_tokens[order[stop]] > budget:
            batches.append(order[start:stop])
            start = stop
    return batches
