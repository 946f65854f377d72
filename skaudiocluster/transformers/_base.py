"""The one contract of the embedders, as ``BaseDeepClusterer`` is for the deep clusterers.

:class:`BaseAudioEmbedder` owns what every embedder does the same way: raw audio
checked and decoded by :func:`skaudiocluster.audio.check_audio` (at the model's
rate), one fit protocol (the device resolved as ``device_``, a seed drawn from
``random_state``, torch's global generators forked, ``KeyboardInterrupt`` and
errors leaving the estimator as it was), ``fit_transform`` decoding each clip
once, outputs checked finite naming the bad clip, scikit-learn tags for raw-audio
input, and pickles whose tensors live on the CPU.

A subclass implements :meth:`BaseAudioEmbedder._fit_clips` (load or learn the
model from decoded clips) and :meth:`BaseAudioEmbedder._transform_clips` (embed
decoded clips). One with time-resolved features also implements
:meth:`BaseAudioEmbedder._frame_clips` and declares ``group_by``: the base then
gives it the content view (:mod:`skaudiocluster.transformers._content`).
"""

from __future__ import annotations

import copy
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from skaudiocluster._torch import (
    cpu_state,
    deepcopy_on_device,
    draw_seed,
    fit_context,
    resolve_device,
)
from skaudiocluster.audio import check_audio, check_finite_output
from skaudiocluster.transformers._content import content_view, trim_silence

__all__ = ["GROUP_BY", "BaseAudioEmbedder"]

#: The values of ``group_by``, the one choice of what clips are grouped by.
GROUP_BY = StrOptions({"source", "content"})


class BaseAudioEmbedder(TransformerMixin, BaseEstimator):
    """Base class of the embedders: raw audio in, one float32 row per clip out.

    Subclasses declare their own parameters on top of
    ``BaseAudioEmbedder._parameter_constraints`` and store them in ``__init__``
    unchanged. Shared parameters:

    * ``sample_rate`` : int, rate of the in-memory arrays of ``X`` (files carry
      their own); clips are resampled to :attr:`model_sample_rate`.
    * ``batch_size`` : int, clips (or windows) per forward pass.
    * ``verbose`` : int, progress bars when positive.

    Optional, used when the subclass has them: ``device`` (resolved in ``fit`` as
    ``device_``; the CPU otherwise, and no ``device_``), ``random_state``
    (drawn into one seed per fit; a subclass without it gets seed 0) and
    ``group_by`` (``{"source", "content"}``, default ``"source"``): ``"source"``
    gives the subclass's pooled clip vector (who or what makes the sound: speaker,
    species, instrument); ``"content"`` gives the content view of its frame
    features (what is said or sung, in order, with the clip's own mean removed;
    see :func:`skaudiocluster.transformers.content_view`), ``CONTENT_FRAMES``
    frames per clip flattened frame by frame.

    Every fit runs :meth:`_fit_clips` inside :func:`skaudiocluster._torch.fit_context`:
    torch's global generators are forked and seeded (the caller's are untouched),
    torch keeps its thread setting (:attr:`_fit_threads`), and an exception,
    ``KeyboardInterrupt`` included, puts back the attributes the estimator had.

    Encoder training. A clusterer that trains an embedder's network jointly with
    its own (``SPICEClusterer(encoder=...)``) uses :meth:`waveforms`,
    :meth:`log_mel`, :attr:`model_sample_rate`, :attr:`min_samples` and the
    fitted ``module_``: ``est.module_(*est.log_mel(batch))`` gives embeddings with
    gradients to ``module_``'s parameters. It trains a copy of ``module_`` and
    gets the embedder of the trained copy from :meth:`with_module`, a new fitted
    embedder: the one it trained from is left as it was. An embedder that does
    not support it raises ``NotImplementedError`` from :meth:`log_mel`.

    Attributes
    ----------
    n_clips_ : int
        Number of clips seen in ``fit``.
    device_ : torch.device
        Where the model runs (embedders with a ``device`` parameter only; the CPU
        after unpickling).

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.transformers._base import BaseAudioEmbedder
    >>> class Loudness(BaseAudioEmbedder):
    ...     def __init__(self, sample_rate=16000, batch_size=1, verbose=0):
    ...         self.sample_rate = sample_rate
    ...         self.batch_size = batch_size
    ...         self.verbose = verbose
    ...
    ...     def _fit_clips(self, clips, seed):
    ...         self.peak_ = max(float(np.abs(clip).max()) for clip in clips)
    ...
    ...     def _transform_clips(self, clips):
    ...         rms = [np.sqrt(np.mean(clip**2)) / self.peak_ for clip in clips]
    ...         return np.asarray(rms, dtype=np.float32)[:, None]
    >>> Loudness().fit_transform([np.full(800, 0.5), np.ones(400)])
    array([[0.5],
           [1. ]], dtype=float32)
    """

    _parameter_constraints: dict = {
        "sample_rate": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
    }

    #: Shortest clip (in samples at :attr:`model_sample_rate`) :meth:`waveforms` returns.
    min_samples: int = 1
    #: Torch CPU threads while fitting (``None``: torch's own setting, left alone).
    _fit_threads: int | None = None
    #: Attributes left out of pickles (rebuilt on first use, e.g. a native interpreter).
    _transient: tuple[str, ...] = ()

    @property
    def model_sample_rate(self) -> int:
        """Rate of the clips the model takes; here ``sample_rate`` (subclasses fix their own)."""
        return self.sample_rate

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load or learn the model from the clips in ``X``.

        Parameters
        ----------
        X : list of 1-D arrays, 2-D array or list of paths
            Raw audio clips (see :func:`skaudiocluster.audio.check_audio`).
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted embedder.
        """
        self._check_params()
        self._check_group_by()
        self._fit_decoded(self._check_clips(X))
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None) -> np.ndarray:
        """Fit on ``X`` and embed it, decoding (and resampling) each clip once.

        Parameters
        ----------
        X : list of 1-D arrays, 2-D array or list of paths
            Raw audio clips.
        y : None
            Ignored.

        Returns
        -------
        X_new : ndarray of shape (n_clips, n_features), dtype float32
            Equal to ``fit(X).transform(X)``.
        """
        self._check_params()
        self._check_group_by()
        clips = self._check_clips(X)
        self._fit_decoded(clips)
        return self._checked_output(clips, X)

    def transform(self, X) -> np.ndarray:
        """Embed the clips in ``X``.

        Parameters
        ----------
        X : list of 1-D arrays, 2-D array or list of paths
            Raw audio clips of any length (rate ``sample_rate`` for arrays).

        Returns
        -------
        X_new : ndarray of shape (n_clips, n_features), dtype float32
            One row per clip, in input order.

        Raises
        ------
        ValueError
            If an output row is not finite; the message names the clip.
        """
        check_is_fitted(self)
        return self._checked_output(self._check_clips(X), X)

    def waveforms(self, X) -> list[np.ndarray]:
        """The clips of ``X`` as the model takes them: mono float32 at :attr:`model_sample_rate`.

        Parameters
        ----------
        X : list of 1-D arrays, 2-D array or list of paths
            Raw audio clips (rate ``sample_rate`` for arrays).

        Returns
        -------
        clips : list of ndarray
            One 1-D array per clip, at least :attr:`min_samples` long.
        """
        return self._check_clips(X)

    def frames(self, X) -> list[np.ndarray]:
        """Time-resolved features of each clip, the input of the content view.

        Parameters
        ----------
        X : list of 1-D arrays, 2-D array or list of paths
            Raw audio clips (rate ``sample_rate`` for arrays).

        Returns
        -------
        frames : list of ndarray of shape (n_frames_i, n_features_per_frame)
            One float32 array per clip, frames in time order (not trimmed).

        Raises
        ------
        NotImplementedError
            If the embedder has no time-resolved features.
        """
        check_is_fitted(self)
        return self._frame_clips(self._check_clips(X))

    def log_mel(
        self, waveforms: torch.Tensor | list, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The fitted ``module_``'s input for a batch of :meth:`waveforms`, differentiably.

        Parameters
        ----------
        waveforms : torch.Tensor of shape (B, L), or list of 1-D arrays
            Clips at :attr:`model_sample_rate`; a tensor holds equal-length clips,
            or zero-padded ones with ``lengths``.
        lengths : torch.Tensor of shape (B,), default=None
            Valid samples of each row of a padded tensor; ``None`` means ``L``.

        Returns
        -------
        inputs : tuple of torch.Tensor
            The arguments of ``module_``, on the input's device.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot be trained as an encoder (it has no log_mel)"
        )

    def with_module(self, module: torch.nn.Module) -> BaseAudioEmbedder:
        """A new fitted embedder: a copy of this one whose network ``module_`` is ``module``.

        How a clusterer that trains this embedder's network (see Encoder training
        above) installs the trained copy. Everything else is deep-copied, so the
        two embedders share no state; ``module`` itself is taken as it is (put in
        eval mode), on its own device.

        Parameters
        ----------
        module : torch.nn.Module
            A network of ``module_``'s architecture, e.g. a trained copy of it.

        Returns
        -------
        embedder : BaseAudioEmbedder
            Fitted, of the same class and parameters.
        """
        check_is_fitted(self)
        return copy.deepcopy(self, memo={id(self.module_): module.eval()})

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # raw audio: a 2-D array is a batch of equal-length clips (other inputs: lists)
        tags.input_tags.two_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def __getstate__(self) -> dict:
        # learned modules and devices to the CPU: a GPU fit unpickles anywhere
        state = cpu_state(super().__getstate__())
        for name in self._transient:
            state.pop(name, None)
        return state

    def __deepcopy__(self, memo: dict):
        # only pickling moves to the CPU: a deep copy keeps the device (transients dropped)
        state = super().__getstate__()
        for name in self._transient:
            state.pop(name, None)
        return deepcopy_on_device(self, state, memo)

    # -- what subclasses implement or may override ----------------------------------------------

    def _check_params(self) -> None:
        """Check parameter combinations ``_parameter_constraints`` cannot (before decoding)."""

    def _check_group_by(self) -> None:
        if getattr(self, "group_by", "source") == "content" and not self._has_frames():
            raise ValueError(f"{type(self).__name__} has no content view (no frame features)")

    def _has_frames(self) -> bool:
        return type(self)._frame_clips is not BaseAudioEmbedder._frame_clips

    def _check_clips(self, X) -> list[np.ndarray]:
        """Validate and decode ``X``: mono float32 clips at :attr:`model_sample_rate`."""
        return check_audio(X, sample_rate=self.sample_rate, target_rate=self.model_sample_rate)

    def _fit_decoded(self, clips: list[np.ndarray]) -> None:
        params = self.get_params(deep=False)
        device = resolve_device(params.get("device", "cpu"))
        seed = draw_seed(params["random_state"]) if "random_state" in params else 0
        with fit_context(self, seed, device, n_threads=self._fit_threads):
            if "device" in params:
                self.device_ = device
            self._fit_clips(clips, seed)
            self.n_clips_ = len(clips)

    def _checked_output(self, clips: list[np.ndarray], X) -> np.ndarray:
        if getattr(self, "group_by", "source") == "content":
            rate = self.model_sample_rate
            frames = self._frame_clips([trim_silence(clip, rate) for clip in clips])
            _warn_if_single_frames(frames, type(self).__name__)
            out = content_view(frames)
        else:
            out = self._transform_clips(clips)
        return check_finite_output(out, X, type(self).__name__)

    def _fit_clips(self, clips: list[np.ndarray], seed: int) -> None:
        """Load or learn the model from decoded ``clips``, setting the learned attributes.

        Runs inside the fit context, after ``device_`` is set; ``seed`` is the
        fit's seed (torch's global generators are already seeded with it).
        """
        raise NotImplementedError

    def _transform_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        """Embeddings ``(n_clips, n_features)`` of decoded ``clips`` (float32; checked after)."""
        raise NotImplementedError

    def _frame_clips(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Frame features ``(n_frames_i, d)`` of each decoded clip, in time order."""
        raise NotImplementedError(f"{type(self).__name__} has no frame features")


def _warn_if_single_frames(frames: list[np.ndarray], owner: str) -> None:
    """Warn when clips have one frame: their content row is 0 (the frame minus itself)."""
    single = sum(len(sequence) < 2 for sequence in frames)
    if single:
        warnings.warn(
            f"{owner}: {single} of {len(frames)} clips give one frame after trimming, and "
            'one frame minus its own mean is 0: their group_by="content" rows hold nothing. '
            "Use an embedder with shorter frames (SpectrogramTransformer: 10 ms) or "
            'group_by="source"',
            UserWarning,
            stacklevel=4,
        )
