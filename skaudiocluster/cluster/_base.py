"""The one contract of the deep clusterers, as ``_BaseKMeans`` is for scikit-learn's k-means.

:class:`BaseDeepClusterer` owns what every deep clusterer does the same way:
parameter names and validation of the shared parameters, the input transform
(``preprocessing`` + ``n_components`` -> ``preprocessor_``), the device
(``device`` -> ``device_``), seeding through a forked torch generator (the
caller's global random state is untouched), ``n_threads`` CPU threads while training
(restored after), ``KeyboardInterrupt`` and errors leaving the estimator
unfitted, ``predict`` as the argmax of ``predict_proba``, the confidence of each
assignment (``confidence_``, ``predict_confidence``), and pickles whose tensors
live on the CPU.

A subclass implements :meth:`BaseDeepClusterer._fit_features` (train on the
preprocessed float32 features) and :meth:`BaseDeepClusterer._proba` (cluster
probabilities of preprocessed features).

Dtype policy: inputs are validated and preprocessed in float64 (scikit-learn's
float32 transforms round a value differently depending on where it sits in
memory), the networks run in float32, and ``predict_proba`` returns float32.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from skaudiocluster._torch import (
    cpu_state,
    deepcopy_on_device,
    draw_seed,
    fit_context,
    resolve_device,
    torch_threads,
)
from skaudiocluster._training import training_epochs
from skaudiocluster.cluster._confidence import fit_centroid_confidence

__all__ = [
    "BUDGET_CONSTRAINTS",
    "BaseDeepClusterer",
    "check_hidden_dims",
    "fit_preprocessor",
    "make_preprocessor",
    "training_epochs",
    "transform_rows",
]

# Inputs with more rows are preprocessed this many rows at a time, so that no step makes
# N x D float64 temporaries (12 GB at 1M x 512); smaller inputs go through whole, as before.
PREPROCESS_ROWS = 65_536


def make_preprocessor(
    preprocessing: str | None, n_components: int | None, shape: tuple[int, int], seed: int
) -> Pipeline:
    """The input transform of the deep clusterers (unfitted).

    With ``n_components`` set, features are standardised, and inputs with more
    than ``n_components`` features are then projected on their first
    ``n_components`` principal components (at most ``n_samples``). Then rows are
    L2-normalised (``"l2"``), features standardised (``"standardize"``; after a
    PCA this whitens), or left as they are (``None``). ``preprocessing=None,
    n_components=None`` keeps the input unchanged.

    Examples
    --------
    >>> make_preprocessor("l2", 64, (1000, 512), seed=0)
    Pipeline(steps=[('standardscaler', StandardScaler()),
                    ('pca', PCA(n_components=64, random_state=0)),
                    ('normalizer', Normalizer())])
    >>> make_preprocessor("standardize", 64, (1000, 8), seed=0)
    Pipeline(steps=[('standardscaler', StandardScaler())])
    >>> make_preprocessor(None, None, (1000, 8), seed=0)
    Pipeline(steps=[('functiontransformer', FunctionTransformer())])
    """
    n_samples, n_features = shape
    steps: list = []
    if n_components is not None:
        steps.append(StandardScaler())
        if n_features > n_components:
            steps.append(PCA(min(n_components, n_samples), random_state=seed))
    if preprocessing == "l2":
        steps.append(Normalizer())
    elif preprocessing == "standardize" and not (steps and isinstance(steps[-1], StandardScaler)):
        steps.append(StandardScaler())
    return make_pipeline(*(steps or [FunctionTransformer()]))


def fit_preprocessor(preprocessor: Pipeline, embeddings: np.ndarray) -> Pipeline:
    """``preprocessor.fit(embeddings)``, step by step in row chunks above ``PREPROCESS_ROWS``.

    Steps with ``partial_fit`` (the scalers) see the rows chunk by chunk; the PCA is
    fitted on the whole output of the steps before it (its covariance solver makes
    no copy of it).

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(100, 8))
    >>> fit_preprocessor(make_preprocessor("l2", 4, X.shape, seed=0), X).transform(X).shape
    (100, 4)
    """
    if len(embeddings) <= PREPROCESS_ROWS:
        return preprocessor.fit(embeddings)
    data = embeddings
    for position, (_, step) in enumerate(preprocessor.steps):
        if hasattr(step, "partial_fit"):
            for start in range(0, len(data), PREPROCESS_ROWS):
                step.partial_fit(data[start : start + PREPROCESS_ROWS])
        else:
            step.fit(data)
        if position < len(preprocessor.steps) - 1:
            data = transform_rows(step, data, data.dtype)
    return preprocessor


def transform_rows(transformer, data: np.ndarray, dtype) -> np.ndarray:
    """``transformer.transform(data)`` as ``dtype``, ``PREPROCESS_ROWS`` rows at a time.

    Examples
    --------
    >>> transform_rows(Normalizer(), np.array([[3.0, 4.0]]), np.float32)
    array([[0.6, 0.8]], dtype=float32)
    """
    if len(data) <= PREPROCESS_ROWS:
        return np.asarray(transformer.transform(data), dtype=dtype)
    first = transformer.transform(data[:PREPROCESS_ROWS])
    out = np.empty((len(data), first.shape[1]), dtype=dtype)
    out[:PREPROCESS_ROWS] = first
    for start in range(PREPROCESS_ROWS, len(data), PREPROCESS_ROWS):
        out[start : start + PREPROCESS_ROWS] = transformer.transform(
            data[start : start + PREPROCESS_ROWS]
        )
    return out


# The training budget every deep clusterer shares (a stage prefixes both names, e.g.
# ``semi_max_steps``): optimizer steps, capped at whole passes over the data; the
# epochs a budget gives are ``training_epochs(max_steps, max_epochs, steps_per_epoch)``.
BUDGET_CONSTRAINTS: dict = {
    "max_steps": [Interval(Integral, 1, None, closed="left"), None],
    "max_epochs": [Interval(Integral, 1, None, closed="left"), None],
}


def check_hidden_dims(hidden_dims) -> tuple[int, ...]:
    """``hidden_dims`` as a tuple of positive ints, or a ``ValueError`` that says what is wrong.

    Examples
    --------
    >>> check_hidden_dims([128, 64])
    (128, 64)
    """
    try:
        dims = tuple(hidden_dims)
    except TypeError:  # a bare int: say what is expected, not "not iterable"
        dims = ()
    if not dims or not all(isinstance(d, Integral) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"hidden_dims must be a non-empty tuple of ints, got {hidden_dims!r}")
    if min(dims) < 1:
        raise ValueError(f"hidden_dims must hold positive widths, got {hidden_dims!r}")
    return tuple(int(d) for d in dims)


class BaseDeepClusterer(ClusterMixin, BaseEstimator):
    """Base class of the deep clusterers: shared parameters, fit protocol, predict, pickling.

    Subclasses declare their own parameters on top of
    ``BaseDeepClusterer._parameter_constraints`` and store them in
    ``__init__`` unchanged. Shared parameters and what they mean:

    * ``hidden_dims`` : tuple of int, hidden layer widths of the networks.
    * ``preprocessing`` : {"l2", "standardize"} or None, and ``n_components`` :
      int or None, the input transform (:func:`make_preprocessor`), fitted as
      ``preprocessor_``.
    * ``device`` : "auto", a string or a :class:`torch.device`; resolved as ``device_``.
    * ``random_state`` : int, RandomState instance or None; an int makes CPU fits
      repeat exactly.
    * ``n_threads`` : int or None, default 1; CPU threads torch uses in ``fit`` and
      ``predict`` (restored after). One thread, because the networks and batches are
      small: torch's default of one thread per core spends more on synchronisation
      than it saves, most of all on a busy machine (:ref:`bench-threads`). ``None``
      keeps torch's setting.
    * ``verbose`` : int; progress bars when positive.

    A subclass that trains declares its budget with :data:`BUDGET_CONSTRAINTS`
    (``max_steps``, ``max_epochs``; :func:`training_epochs`) and sets ``n_iter_``,
    the optimizer steps its fit took (every stage summed).
    """

    _parameter_constraints: dict = {
        "hidden_dims": [tuple, list],
        "preprocessing": [StrOptions({"l2", "standardize"}), None],
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
    }

    # Not skipped: a clusterer may own an encoder (SPICE), whose parameters the user set.
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the clusterer on ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings, one row per clip.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted clusterer.
        """
        device = resolve_device(self.device)
        # The one source of the fit's randomness: every independent stream gets a child seed.
        random_state = check_random_state(self.random_state)
        with fit_context(self, draw_seed(random_state), device, n_threads=self.n_threads):
            self.device_ = device
            check_hidden_dims(self.hidden_dims)
            self._fit_encoder(X, random_state)
            embeddings = self._embeddings(X, reset=True)
            self.preprocessor_ = fit_preprocessor(
                make_preprocessor(
                    self.preprocessing,
                    self._n_components(len(embeddings)),
                    embeddings.shape,
                    draw_seed(random_state),
                ),
                embeddings,
            )
            features = self._preprocess(embeddings)
            del embeddings  # a float64 copy of X: not held while training
            features = self._fit_features(features, X, random_state)
            self.labels_ = self._proba(features).argmax(axis=1)
            self.confidence_model_ = fit_centroid_confidence(features, self.labels_)
            self.confidence_ = self.confidence_model_(features, self.labels_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Soft cluster assignments of each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters), float32
            Rows sum to 1.
        """
        check_is_fitted(self)
        with torch_threads(self.n_threads if self.device_.type == "cpu" else None):
            return self._proba(self._preprocess(self._embeddings(X, reset=False)))

    def predict_confidence(self, X) -> np.ndarray:
        """How surely each row of ``X`` sits in its cluster (:meth:`predict`), in [0, 1].

        The soft assignment of the row to the training clusters' centres, in the
        space the networks see (``preprocessor_``'s output), read at the
        predicted cluster (:func:`~skaudiocluster.cluster.centroid_confidence`).
        Unlike :meth:`predict_proba`, whose trained softmax is near 1 for almost
        every row, it ranks the likely mistakes (rows between two clusters) last.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        confidence : ndarray of shape (n_samples,), float64
        """
        check_is_fitted(self)
        with torch_threads(self.n_threads if self.device_.type == "cpu" else None):
            features = self._preprocess(self._embeddings(X, reset=False))
            labels = self._proba(features).argmax(axis=1)
        return self.confidence_model_(features, labels)

    def predict(self, X) -> np.ndarray:
        """Cluster of each row of ``X``: the argmax of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.predict_proba(X).argmax(axis=1)

    def __getstate__(self) -> dict:
        return cpu_state(super().__getstate__())

    def __deepcopy__(self, memo: dict):
        # only pickling moves to the CPU: a deep copy keeps the device
        return deepcopy_on_device(self, super().__getstate__(), memo)

    # -- what subclasses implement or may override ----------------------------------------------

    def _fit_encoder(self, X, random_state: np.random.RandomState) -> None:
        """Fit the encoder a clusterer owns (as ``encoder_``) on the raw input ``X`` of ``fit``.

        Called in ``fit`` before anything is embedded, with the fit's
        ``random_state``; a clusterer without an encoder does nothing here.
        """

    def _embeddings(self, X, *, reset: bool) -> np.ndarray:
        """``X`` validated as a float64 2-D array (a clusterer owning an encoder embeds here)."""
        min_samples = self._min_samples() if reset else 1
        return validate_data(self, X, dtype=np.float64, reset=reset, ensure_min_samples=min_samples)

    def _min_samples(self) -> int:
        """Fewest training rows the algorithm accepts (``predict`` takes any number)."""
        return 2

    def _n_components(self, n_samples: int) -> int | None:
        """The PCA dimension ``make_preprocessor`` gets for ``n_samples`` training rows."""
        return self.n_components

    def _preprocess(self, embeddings: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(transform_rows(self.preprocessor_, embeddings, np.float32))

    def _fit_features(
        self, features: np.ndarray, X, random_state: np.random.RandomState
    ) -> np.ndarray:
        """Train on the preprocessed ``features`` (float32); ``X`` is the raw input of ``fit``.

        Runs inside the fit context (torch's generators forked and seeded from
        ``random_state``, ``n_threads`` CPU threads). ``random_state`` is the
        fit's one :class:`~numpy.random.RandomState`: draw one child seed from it
        (:func:`~skaudiocluster._torch.draw_seed`) for each independent random
        stream (batches, views, k-means...), never one seed for two. Returns the
        training features the fitted model labels (usually ``features``
        itself) for ``labels_``.
        """
        raise NotImplementedError

    def _proba(self, features: np.ndarray) -> np.ndarray:
        """Cluster probabilities ``(n_samples, n_clusters)`` of preprocessed features."""
        raise NotImplementedError
