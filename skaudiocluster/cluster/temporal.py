"""A deep clusterer of frame sequences that learns invariance to timing.

The heads of :class:`TEMIClusterer` and :class:`SPICEClusterer` see one vector per
clip, and learn from the same nearest-neighbour graph UMAP lays out. This one
reads the content view (``group_by="content"``) as the sequence of frames it is,
and adds information neither UMAP nor k-means uses: that a word said a little
later, faster or with a frame lost is still the same word. SCAN's objective
(Van Gansbeke et al., ECCV 2020) with two kinds of positives per clip: views of
its own frame sequence re-timed (:func:`~skaudiocluster.cluster._temporal_net.timing_views`)
and its nearest neighbours.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from skaudiocluster._torch import batched_forward, draw_seeds, progress, to_numpy
from skaudiocluster.cluster._base import (
    BUDGET_CONSTRAINTS,
    BaseDeepClusterer,
    check_hidden_dims,
    training_epochs,
)
from skaudiocluster.cluster._consensus import consensus_partition, head_agreement
from skaudiocluster.cluster._neighbors import cosine_knn, umap_knn
from skaudiocluster.cluster._temporal_net import TemporalModule, scan_loss, timing_views

__all__ = ["TemporalClusterer"]


class TemporalClusterer(BaseDeepClusterer):
    """Cluster content-view rows by what happens in them, whenever it happens.

    Each row of ``X`` is a clip's sequence of ``n_frames`` frames, flattened frame
    by frame (the output of an embedder with ``group_by="content"``).
    ``n_heads`` small temporal networks (two convolutions along time, the mean
    and the maximum over time, a hidden layer, a linear head), independent but
    trained together, learn with SCAN's loss: each clip's assignment must agree
    with that of a re-timed view of its own frames (another start and span, a
    tempo curve, masked frames) and with that of one of its ``n_neighbors``
    nearest neighbours, while the batch's mean assignment stays spread over the
    clusters. The clusters are the networks' consensus (k-means on their
    concatenated probabilities), steadier than any one network.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    n_frames : int, default=10
        Frames per row; ``n_features`` must be a multiple of it. The content
        view's frame count, ``skaudiocluster.transformers.CONTENT_FRAMES``.
    n_heads : int, default=5
        Independent networks trained together; their consensus is steadier than
        any one of them.
    n_neighbors : int, default=10
        Nearest neighbours a clip is paired with.
    neighbors : {"cosine", "umap"}, default="cosine"
        Where neighbours are mined: ``"umap"``, in the UMAP layout of the
        preprocessed rows that UMAP + k-means clusters (its graph follows each
        word's manifold); ``"cosine"``, by cosine similarity of the rows.
    entropy_weight : float, default=5.0
        Weight of the entropy of the mean assignment: larger keeps clusters
        closer in size (SCAN uses 2-5).
    hidden_dims : tuple of int, default=(32,)
        Width of the convolutions and of the hidden layer (one value).
    preprocessing : {"standardize", "l2"} or None, default=None
        Input transform before the frames are read back. ``None`` keeps the
        features' own scale: in cepstral features the low coefficients (the
        spectral envelope) vary most and weigh most, as they do for k-means and
        UMAP on the same rows; ``"standardize"`` scales every (frame, feature)
        column alike, which keeps the sequence but gives the fine detail equal
        weight (:ref:`bench-content-view`).
    max_steps : int or None, default=1000
        Training budget in optimizer steps, rounded up to a whole epoch (see
        :ref:`vocabulary`).
    max_epochs : int or None, default=None
        At most this many passes over the data; ``None``: no cap.
    batch_size : int, default=256
        Clips per training step (at most the number of clips).
    lr : float, default=1e-3
        Adam learning rate.
    device : str or torch.device, default="auto"
        ``"auto"``: CUDA when present, else the CPU.
    n_threads : int or None, default=1
        CPU threads torch uses while fitting and predicting (``None``: torch's own
        setting).
    random_state : int, RandomState instance or None, default=None
        Seeds the networks, the neighbours, the views, the batches and the consensus.
    verbose : int, default=0
        Progress bar over the training steps when positive.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training row.
    confidence_ : ndarray of shape (n_samples,)
        How surely each training row sits in its cluster (see ``predict_confidence``).
    module_ : TemporalModule
        The trained network (eval mode).
    consensus_ : Consensus
        The heads' consensus, which ``predict_proba`` reads.
    head_agreement_ : ndarray of shape (n_heads,)
        Mean NMI of each network's partition with the other networks'.
    loss_curve_ : list of float
        Training loss of every step.
    n_iter_ : int
        Optimizer steps taken.
    n_features_in_ : int
        Number of features seen in ``fit``.

    See Also
    --------
    skaudiocluster.SpectrogramTransformer : ``group_by="content"`` gives its input.

    Examples
    --------
    >>> import numpy as np
    >>> from skaudiocluster.cluster import TemporalClusterer
    >>> rng = np.random.default_rng(0)
    >>> up, down = np.linspace(-1, 1, 10), np.linspace(1, -1, 10)
    >>> X = np.vstack([np.repeat(np.vstack([up, down]), 20, axis=0)])
    >>> X = np.repeat(X[:, :, None], 2, axis=2).reshape(40, 20)
    >>> X = X + rng.normal(scale=0.1, size=X.shape)
    >>> labels = TemporalClusterer(2, max_steps=50, random_state=0).fit_predict(X)
    >>> len(set(labels[:20])), len(set(labels[20:])), bool(labels[0] != labels[-1])
    (1, 1, True)
    """

    _parameter_constraints: dict = {
        # no n_components: a PCA would mix the frames
        **{
            name: constraint
            for name, constraint in BaseDeepClusterer._parameter_constraints.items()
            if name != "n_components"
        },
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_frames": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "neighbors": [StrOptions({"umap", "cosine"})],
        "entropy_weight": [Interval(Real, 0, None, closed="left")],
        **BUDGET_CONSTRAINTS,
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_frames: int = 10,
        n_heads: int = 5,
        n_neighbors: int = 10,
        neighbors: str = "cosine",
        entropy_weight: float = 5.0,
        hidden_dims: tuple[int, ...] = (32,),
        preprocessing: str | None = None,
        max_steps: int | None = 1000,
        max_epochs: int | None = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        device: str | torch.device = "auto",
        n_threads: int | None = 1,
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ):
        self.n_clusters = n_clusters
        self.n_frames = n_frames
        self.n_heads = n_heads
        self.n_neighbors = n_neighbors
        self.neighbors = neighbors
        self.entropy_weight = entropy_weight
        self.hidden_dims = hidden_dims
        self.preprocessing = preprocessing
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    def _n_components(self, n_samples: int) -> None:
        return None

    def _min_samples(self) -> int:
        return max(2, self.n_clusters)

    def _fit_features(
        self, features: np.ndarray, X, random_state: np.random.RandomState
    ) -> np.ndarray:
        """Mine neighbours, then train the temporal heads with SCAN's loss."""
        n_samples, n_features = features.shape
        if n_features % self.n_frames:
            raise ValueError(
                f"X has {n_features} features, not a multiple of n_frames={self.n_frames}: "
                'its rows must be frame sequences (an embedder with group_by="content")'
            )
        dims = check_hidden_dims(self.hidden_dims)
        if len(dims) != 1:
            raise ValueError(f"hidden_dims takes one width, got {self.hidden_dims!r}")
        device = self.device_
        neighbor_seed, init_seed, view_seed, consensus_seed = draw_seeds(random_state, 4)
        n_neighbors = min(self.n_neighbors, n_samples - 1)
        if self.neighbors == "umap":
            neighbors = umap_knn(features, n_neighbors, random_state=neighbor_seed)
        else:
            neighbors, _ = cosine_knn(features, n_neighbors, device=device)
        neighbors = torch.from_numpy(np.asarray(neighbors)).to(device)
        frames = torch.from_numpy(self._sequences(features)).to(device)

        torch.manual_seed(init_seed)
        module = TemporalModule(frames.shape[2], dims[0], self.n_clusters, self.n_heads)
        module = module.to(device).train()
        optimizer = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=1e-4)
        batch_size = min(self.batch_size, n_samples)
        steps_per_epoch = n_samples // batch_size
        n_epochs = training_epochs(self.max_steps, self.max_epochs, steps_per_epoch)
        generator = torch.Generator(device=device).manual_seed(view_seed)
        self.loss_curve_ = []
        steps = progress(range(n_epochs * steps_per_epoch), verbose=self.verbose, desc="training")
        for step in steps:
            if step % steps_per_epoch == 0:
                order = torch.randperm(n_samples, generator=generator, device=device)
            batch = order[(step % steps_per_epoch) * batch_size :][:batch_size]
            pick = torch.randint(n_neighbors, (len(batch),), generator=generator, device=device)
            anchor = frames[batch]
            partner = frames[neighbors[batch, pick]]
            logits = module(torch.cat([anchor, timing_views(anchor, generator), partner]))
            anchor_logits, view_logits, partner_logits = logits.chunk(3, dim=1)
            loss = scan_loss(anchor_logits, [view_logits, partner_logits], self.entropy_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.loss_curve_.append(loss.item())
        self.n_iter_ = len(self.loss_curve_)
        self.module_ = module.eval()

        head_probs = self._head_probs(features)
        self.head_agreement_ = head_agreement(head_probs)
        self.consensus_ = consensus_partition(
            head_probs, self.n_clusters, random_state=consensus_seed
        )
        return features

    def _sequences(self, features: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(features.reshape(len(features), self.n_frames, -1))

    def _head_probs(self, features: np.ndarray) -> np.ndarray:
        """Probabilities of every head, ``(n_heads, n_samples, n_clusters)``."""
        probs = batched_forward(
            lambda x: self.module_(x).softmax(dim=-1),
            self._sequences(features),
            device=self.device_,
            dim=1,
        )
        return to_numpy(probs)

    def _proba(self, features: np.ndarray) -> np.ndarray:
        return self.consensus_.predict_proba(self._head_probs(features)).astype(np.float32)
