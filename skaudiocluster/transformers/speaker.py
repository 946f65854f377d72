"""Speaker embeddings: the GE2E d-vector encoder of Resemblyzer (Wan et al., ICASSP 2018)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from numbers import Real

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils._param_validation import Interval

from skaudiocluster._torch import progress
from skaudiocluster.transformers._base import BaseAudioEmbedder
from skaudiocluster.transformers._speaker_net import (
    SAMPLE_RATE,
    SEGMENT,
    GE2EEncoder,
    MelFrontend,
    encoder_state,
    normalise_volume,
    segment,
    voiced_mask,
    window_starts,
)
from skaudiocluster.transformers._weights import load_into, load_state_dict, resolve_weights

__all__ = ["SpeakerEmbedder"]


class SpeakerEmbedder(ClassNamePrefixFeaturesOutMixin, BaseAudioEmbedder):
    """Embed recordings by who speaks: one L2-normalised 256-d GE2E d-vector per clip.

    The speaker encoder of Resemblyzer 0.1.4 (a GE2E-trained 3-layer LSTM),
    re-implemented in PyTorch; ``resemblyzer`` itself is not needed. Each clip is
    resampled to 16 kHz, raised to -30 dBFS if quieter, trimmed of long silences,
    turned into 40-band mel power frames (25 ms every 10 ms) and cut into 1.6 s
    partial windows (1.3 per second, the last kept if it covers 75% of its window;
    a shorter clip gets one zero-padded window). Each window gives a unit vector;
    the clip's embedding is their mean, normalised again. Windows of all clips are
    batched together, ``batch_size`` at a time, so a long recording never holds more
    than one batch of windows in memory.

    Silence trimming differs from Resemblyzer's: it uses an energy rule in place of
    WebRTC's voice activity detector (a C extension): a 30 ms window is voiced when
    its power is within ``trim_db`` decibels of the clip's loudest window; the
    smoothing (majority over 8 windows) and the 180 ms of silence kept around speech
    are Resemblyzer's. The user guide (:doc:`/embedders`) gives the measured effect.

    The published weights are Apache-2.0; the registered name downloads them from
    Resemblyzer's repository on first use (sha256 checked on download and on load
    from the cache; see :data:`~skaudiocluster.transformers._weights.GE2E_RESEMBLYZER`).

    Parameters
    ----------
    weights : str, path or None, default="speaker-ge2e-resemblyzer"
        The registered name ``"speaker-ge2e-resemblyzer"``, downloaded into the cache
        directory on first use (``$SKAUDIOCLUSTER_CACHE``, else
        ``~/.cache/skaudiocluster``); a path to a checkpoint (Resemblyzer's
        ``pretrained.pt``, or a plain state dict with the ``lstm.*`` and ``linear.*``
        tensors); or ``None`` for a random initialisation drawn from ``random_state``.
    sample_rate : int, default=16000
        Rate of in-memory arrays in ``X``; files carry their own. Audio is resampled
        to 16 kHz with torchaudio (Resemblyzer uses librosa's resampler).
    trim_db : float or None, default=40.0
        Silence trimming: 30 ms windows more than ``trim_db`` decibels below the
        clip's loudest window are silence, and silences longer than 180 ms are cut.
        ``None`` keeps every sample.
    rate : float, default=1.3
        Partial windows per second of audio (0.625 to 100).
    min_coverage : float, default=0.75
        Share of the last partial window that must hold audio for it to be kept
        (a clip shorter than one window always gets one).
    batch_size : int, default=32
        Partial windows per forward pass.
    device : str or torch.device, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ...
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation of ``weights=None``.
    verbose : int, default=0
        0 is silent; otherwise a progress bar over the clips while embedding.

    Attributes
    ----------
    module_ : torch.nn.Module
        The encoder (``lstm``, ``linear``), in eval mode on ``device_``: it maps mel
        power frames ``(B, 160, 40)`` to unit vectors ``(B, 256)``.
    device_ : torch.device
        Where ``module_`` runs (the CPU after unpickling).
    n_clips_ : int
        Number of clips seen in ``fit``.

    See Also
    --------
    skaudiocluster.transformers.byola.BYOLAEmbedder : general-purpose audio embeddings.

    Notes
    -----
    Reference: L. Wan, Q. Wang, A. Papir and I. L. Moreno, "Generalized End-to-End
    Loss for Speaker Verification", ICASSP 2018. On the same 16 kHz waveforms
    (volume-normalised, untrimmed) the embeddings match Resemblyzer's
    ``VoiceEncoder.embed_utterance`` to 1e-4 (``tests/transformers/test_speaker.py``).

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.transformers.speaker import SpeakerEmbedder
    >>> rng = np.random.default_rng(0)
    >>> clips = [rng.normal(scale=0.1, size=n) for n in (8000, 12000, 40000)]
    >>> emb = SpeakerEmbedder(weights=None, random_state=0).fit_transform(clips)
    >>> emb.shape
    (3, 256)
    >>> np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    True
    """

    #: Rate of the clips the encoder takes.
    model_sample_rate: int = SAMPLE_RATE

    _parameter_constraints: dict = {
        **BaseAudioEmbedder._parameter_constraints,
        "weights": [str, os.PathLike, None],
        "trim_db": [Interval(Real, 0, None, closed="neither"), None],
        "rate": [Interval(Real, 0.625, 100, closed="both")],
        "min_coverage": [Interval(Real, 0, 1, closed="right")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        weights: str | os.PathLike | None = "speaker-ge2e-resemblyzer",
        *,
        sample_rate: int = 16000,
        trim_db: float | None = 40.0,
        rate: float = 1.3,
        min_coverage: float = 0.75,
        batch_size: int = 32,
        device: str | torch.device = "auto",
        random_state=None,
        verbose: int = 0,
    ):
        self.weights = weights
        self.sample_rate = sample_rate
        self.trim_db = trim_db
        self.rate = rate
        self.min_coverage = min_coverage
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _fit_clips(self, clips: list[np.ndarray], seed: int) -> None:
        """Load the encoder (nothing is learned from the clips)."""
        self.module_ = self._load_module().to(self.device_).eval()

    def _transform_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        net = self.module_
        was_training = net.training
        net.eval()
        frontend = MelFrontend().to(self.device_)
        dim = net.linear.out_features
        sums = torch.zeros((len(clips), dim), dtype=torch.float32, device=self.device_)
        try:
            with torch.inference_mode():
                for owners, segments in self._window_batches(clips):
                    vectors = net(frontend(torch.from_numpy(segments).to(self.device_)))
                    index = torch.from_numpy(owners).to(self.device_)
                    sums.index_add_(0, index, vectors)
        finally:
            net.train(was_training)
        # the mean of a clip's window vectors, renormalised: the sum's direction is the same
        return torch.nn.functional.normalize(sums, dim=1).cpu().numpy()

    def preprocess(self, clip: np.ndarray) -> np.ndarray:
        """A 16 kHz clip as the encoder's windows read it: volume-normalised, then trimmed.

        Parameters
        ----------
        clip : ndarray of shape (n_samples,)
            Mono float audio at 16 kHz (one item of :meth:`waveforms`).

        Returns
        -------
        clip : ndarray of shape (n_kept,), dtype float32
            Raised to -30 dBFS if quieter; with ``trim_db`` set, silences longer than
            180 ms removed.
        """
        clip = normalise_volume(np.asarray(clip, dtype=np.float32))
        if self.trim_db is not None:
            clip = clip[voiced_mask(clip, self.trim_db)]
        return clip

    @property
    def _n_features_out(self) -> int:
        return self.module_.linear.out_features

    def _window_batches(self, clips: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (owning clip of each window, (B, SEGMENT) window samples), B <= batch_size."""
        owners = np.empty(self.batch_size, dtype=np.int64)
        segments = np.empty((self.batch_size, SEGMENT), dtype=np.float32)
        filled = 0
        for i in progress(range(len(clips)), verbose=self.verbose, desc="embedding"):
            clip = self.preprocess(clips[i])
            for start in window_starts(len(clip), self.rate, self.min_coverage):
                owners[filled] = i
                segments[filled] = segment(clip, int(start))
                filled += 1
                if filled == self.batch_size:
                    yield owners.copy(), segments.copy()
                    filled = 0
        if filled:
            yield owners[:filled].copy(), segments[:filled].copy()

    def _load_module(self) -> GE2EEncoder:
        if self.weights is None:
            return GE2EEncoder()
        path = resolve_weights(
            self.weights, progress=self.verbose > 0, family="speaker", owner="SpeakerEmbedder"
        )
        module = GE2EEncoder()
        load_into(module, encoder_state(load_state_dict(path)), path, "the GE2E speaker encoder")
        return module
