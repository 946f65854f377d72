"""TEMI: an ensemble of self-distilled cluster heads on frozen embeddings.

Adaloglou et al., "Exploring the Limits of Deep Image Clustering using Pretrained
Models" (BMVC 2023). The loss lives in ``_temi_loss``, the skorch net in ``_temi_net``.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, StrOptions

from skaudiocluster._torch import batched_forward, draw_seeds, to_numpy
from skaudiocluster._training import epoch_history, optimizer_steps
from skaudiocluster.cluster._base import BUDGET_CONSTRAINTS, BaseDeepClusterer
from skaudiocluster.cluster._consensus import (
    coassociation_partition,
    consensus_partition,
    head_agreement,
)
from skaudiocluster.cluster._neighbors import cosine_knn, umap_knn
from skaudiocluster.cluster._temi_net import NeighborPairs, make_net, training_budget

__all__ = ["TEMIClusterer"]


class TEMIClusterer(BaseDeepClusterer):
    """TEMI deep clustering heads trained on fixed embeddings.

    Every sample ``x`` is paired with one of its ``n_neighbors`` nearest neighbours
    ``x'``, mined once on the rows of ``X``. ``n_heads`` student MLP heads learn to
    agree on ``x`` with an EMA teacher's assignment of ``x'``, through the beta
    pointwise mutual information over an EMA cluster prior, weighted by the teacher
    ensemble's agreement on the pair (Adaloglou et al., BMVC 2023). The clusters are
    the heads' label-free consensus: k-means on their concatenated teacher
    probabilities (:func:`~skaudiocluster.cluster._consensus.consensus_partition`)
    or, with ``overclustering`` > 1, an average-linkage cut of how often the heads
    put two samples together (:func:`~skaudiocluster.cluster._consensus.coassociation_partition`).
    The learning rate warms up over ``warmup`` of the steps, then decays along a cosine
    to ``lr / 10``; the teacher's EMA decay rises to 1 along a cosine; the heads' last
    layers are frozen for the first epoch (DINO's trick). Figures: :ref:`bench-temi`.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters; ``fit`` needs at least that many samples.
    n_heads : int, default=8
        Heads trained together; their consensus is steadier than any one head, and
        8 score as TEMI's 16 in half the time (:ref:`bench-temi-heads`).
    overclustering : float, default=1.0
        Each head has ``round(overclustering * n_clusters)`` clusters (at most
        ``n_samples``), merged by co-association; above 1 it helps many small classes
        and cuts large ones apart (:ref:`bench-temi-overclustering`).
    n_neighbors : int or "auto", default="auto"
        Neighbours to draw partners from (at most ``n_samples - 1``); ``"auto"``,
        ``clip(n_samples // (4 * n_head_clusters_), 5, 50)``, keeps them in one
        cluster on small collections (50 is TEMI's).
    neighbors : {"cosine", "umap"}, default="cosine"
        Mine by cosine among the rows of ``X``, or in their 10-D UMAP layout
        (:func:`~skaudiocluster.cluster._neighbors.umap_knn`), which follows
        manifolds but costs hours on a million rows (:ref:`bench-temi-neighbors`).
    beta : float, default=0.6
        Exponent of the joint ``(q_s q_t)^beta`` in the pmi: TEMI's default, which no
        other value beat on every set (:ref:`bench-temi-beta`).
    student_temperature, teacher_temperature : float, default=0.1
        Softmax temperatures (TEMI's defaults).
    prior_momentum, ema_decay : float, default=0.9, 0.996
        EMA momentum of the cluster prior, and the initial EMA decay of the teacher's
        weights, which rises to 1 (TEMI's).
    hidden_dims : tuple of int, default=(128,)
        Hidden widths of each head (GELU after each); TEMI's 512 suit 768-d image
        features on GPUs, a quarter lets many heads train on a CPU.
    bottleneck_dim : int, default=64
        Width of the linear bottleneck before the cosine last layer.
    preprocessing : {"l2", "standardize"} or None, default="l2"
        Row L2 normalisation (the cosine geometry the neighbours are mined in),
        TEMI's ``--embed_norm`` standardisation, or nothing; after ``n_components``.
    n_components : int or None, default=64
        Wider inputs are standardised and projected on this many principal
        components (at most ``n_samples``), which keeps small heads fast; ``None``
        never projects (:ref:`bench-temi-n-components`).
    batch_size : int or "auto", default="auto"
        ``"auto"`` is ``min(256, max(32, n_samples // 8), n_samples)``.
    lr, weight_decay : float, default=3e-3, 1e-4
        Peak AdamW learning rate (TEMI's 1e-4 per 256 learns too slowly on audio
        embeddings) and weight decay (not on biases and weight-norm magnitudes).
    max_steps : int, "auto" or None, default="auto"
        Optimizer steps, rounded up to whole epochs of ``n_samples // batch_size_``
        steps, so that a small collection trains as long as a large one
        (:ref:`bench-temi-budget`); ``"auto"`` is ``max(4000, 20 epochs)``, where the
        20 passes only exceed 4,000 steps above about 51,000 rows at batch 256.
    max_epochs : int or None, default=None
        At most this many epochs (passes over the data); ``None``: no cap.
    warmup : float, default=0.1
        Fraction of the steps with a linear learning-rate warm-up.
    predict_with : {"consensus", "best"}, default="consensus"
        ``"consensus"``: soft assignment to the consensus clusters (with
        ``overclustering`` > 1, by co-association); ``"best"``: the lowest-loss
        head's teacher, the official rule, which picks worse heads
        (:ref:`bench-temi-heads`).
    device : "auto", str or torch.device, default="auto"
        ``"auto"`` is CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, pairs and shuffling: CPU runs repeat exactly; torch's
        global random state is left untouched.
    n_threads : int or None, default=1
        Torch's CPU threads in fit and predict (small heads run fastest on one); ``None``: torch's.
    verbose : int, default=0
        ``> 0`` shows a progress bar.

    Attributes
    ----------
    labels_, confidence_ : ndarray of shape (n_samples,)
        Cluster of each training sample, and how surely it sits there, in [0, 1]
        (:meth:`predict_confidence`: the lowest are the likely mistakes).
    confidence_model_ : CentroidConfidence
        Cluster centres in ``preprocessor_``'s output and their distance scale.
    consensus_ : Consensus or CoAssociation
        The heads' consensus and the training partition it defines.
    module_, preprocessor_, device_ : TEMIModule, Pipeline, torch.device
        Student and teacher heads with their EMA priors, the fitted input transform,
        and the device the heads live on.
    best_head_, n_head_clusters_ : int
        Head of the lowest final-epoch loss; clusters of each head.
    head_losses_, head_agreement_ : ndarray of shape (n_heads,)
        Final-epoch loss of each head; its mean NMI with the other heads.
    prior_ : ndarray of shape (n_head_clusters_,)
        EMA cluster prior of the best head; ``n_effective_clusters_`` is
        ``exp(entropy(prior_))``.
    history_ : skorch.History
        Per epoch: ``train_loss`` (mean over heads), ``head_losses``, ``dur``, ...
    n_neighbors_, batch_size_, n_iter_ : int
        Neighbours, batch size and optimizer steps used (epochs: ``len(history_)``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` has string feature names.

    See Also
    --------
    SPICEClusterer, DeepDPMClusterer : the package's other deep clusterers.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skaudiocluster.cluster import TEMIClusterer
    >>> X, y = make_blobs(200, n_features=8, centers=3, random_state=0)
    >>> temi = TEMIClusterer(n_clusters=3, n_heads=2, hidden_dims=(32,), bottleneck_dim=16,
    ...                      max_steps=100, random_state=0).fit(X)
    >>> temi.labels_.shape
    (200,)
    >>> temi.predict_proba(X[:2]).shape
    (2, 3)
    """

    _parameter_constraints: dict = {
        **BaseDeepClusterer._parameter_constraints,
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "overclustering": [Interval(Real, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "neighbors": [StrOptions({"cosine", "umap"})],
        "beta": [Interval(Real, 0, 1, closed="right")],
        "student_temperature": [Interval(Real, 0, None, closed="neither")],
        "teacher_temperature": [Interval(Real, 0, None, closed="neither")],
        "prior_momentum": [Interval(Real, 0, 1, closed="both")],
        "ema_decay": [Interval(Real, 0, 1, closed="both")],
        "bottleneck_dim": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        **BUDGET_CONSTRAINTS,
        "max_steps": [*BUDGET_CONSTRAINTS["max_steps"], StrOptions({"auto"})],
        "warmup": [Interval(Real, 0, 1, closed="left")],
        "predict_with": [StrOptions({"consensus", "best"})],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_heads: int = 8,
        overclustering: float = 1.0,
        n_neighbors: int | str = "auto",
        neighbors: str = "cosine",
        beta: float = 0.6,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.1,
        prior_momentum: float = 0.9,
        ema_decay: float = 0.996,
        hidden_dims: tuple[int, ...] = (128,),
        bottleneck_dim: int = 64,
        preprocessing: str | None = "l2",
        n_components: int | None = 64,
        batch_size: int | str = "auto",
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        max_steps: int | str | None = "auto",
        max_epochs: int | None = None,
        warmup: float = 0.1,
        predict_with: str = "consensus",
        device: str | torch.device = "auto",
        random_state: int | np.random.RandomState | None = None,
        n_threads: int | None = 1,
        verbose: int = 0,
    ):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.overclustering = overclustering
        self.n_neighbors = n_neighbors
        self.neighbors = neighbors
        self.beta = beta
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.prior_momentum = prior_momentum
        self.ema_decay = ema_decay
        self.hidden_dims = hidden_dims
        self.bottleneck_dim = bottleneck_dim
        self.preprocessing = preprocessing
        self.n_components = n_components
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.warmup = warmup
        self.predict_with = predict_with
        self.device = device
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    def _fit_features(self, features: np.ndarray, X, random_state) -> np.ndarray:
        """Mine the neighbours of the preprocessed ``features`` and train the heads."""
        umap_seed, pairs_seed, batches_seed, consensus_seed = draw_seeds(random_state, 4)
        n_samples = len(features)
        if self.n_clusters > n_samples:
            raise ValueError(
                f"n_clusters={self.n_clusters} is more than the {n_samples} samples to "
                f"cluster; {type(self).__name__} needs n_clusters <= n_samples"
            )
        self.n_head_clusters_ = min(round(self.overclustering * self.n_clusters), n_samples)
        if self.n_head_clusters_ > self.n_clusters and self.predict_with != "consensus":
            raise ValueError(
                f"predict_with={self.predict_with!r} reads one head's clusters, which number "
                f"{self.n_head_clusters_} with overclustering={self.overclustering}; use "
                'predict_with="consensus" or overclustering=1'
            )
        if self.n_neighbors == "auto":
            n_neighbors = int(np.clip(n_samples // (4 * self.n_head_clusters_), 5, 50))
        else:
            n_neighbors = self.n_neighbors
        self.n_neighbors_ = min(n_neighbors, n_samples - 1)
        # Mined on the embeddings themselves, as TEMI mines them on the pretrained
        # features; the heads then train on the preprocessed features.
        embeddings = check_array(X, dtype=np.float32)
        if self.neighbors == "umap":
            neighbors = umap_knn(embeddings, self.n_neighbors_, random_state=umap_seed)
        else:
            neighbors, _ = cosine_knn(embeddings, self.n_neighbors_, device=self.device_)

        self.batch_size_, steps_per_epoch, n_epochs = training_budget(
            n_samples, self.batch_size, self.max_steps, self.max_epochs
        )
        net = make_net(self, features.shape[1], batches_seed, n_epochs, steps_per_epoch)
        pairs = NeighborPairs(torch.from_numpy(features), torch.from_numpy(neighbors), pairs_seed)
        net.fit(pairs, None)
        self.n_iter_ = optimizer_steps([net])

        self.module_ = net.module_.eval()
        self.history_ = epoch_history([net])
        self.head_losses_ = np.asarray(self.history_[-1, "head_losses"], dtype=np.float64)
        self.best_head_ = int(np.argmin(self.head_losses_))
        self.prior_ = to_numpy(self.module_.prior[self.best_head_]).astype(np.float64)
        entropy = -np.sum(self.prior_ * np.log(np.clip(self.prior_, 1e-12, None)))
        self.n_effective_clusters_ = float(np.exp(entropy))

        head_probs = self._head_probs(features)
        self.head_agreement_ = head_agreement(head_probs)
        over = self.n_head_clusters_ > self.n_clusters
        partition = coassociation_partition if over else consensus_partition
        self.consensus_ = partition(head_probs, self.n_clusters, random_state=consensus_seed)
        self._warn_if_collapsed(self._combine(head_probs).argmax(axis=1))
        return features

    def _proba(self, features: np.ndarray) -> np.ndarray:
        """Teacher probabilities (``predict_with`` decides which heads), ``(n, n_clusters)``."""
        return self._combine(self._head_probs(features))

    def _head_probs(self, features: np.ndarray) -> np.ndarray:
        """Teacher probabilities of every head, ``(n_heads, n_samples, n_head_clusters_)``."""
        probs = batched_forward(
            lambda x: self.module_.teacher_probs(x, self.teacher_temperature),
            features,
            device=self.device_,
            dim=1,
        )
        return to_numpy(probs)

    def _combine(self, head_probs: np.ndarray) -> np.ndarray:
        if self.predict_with == "consensus":
            return self.consensus_.predict_proba(head_probs).astype(np.float32)
        return head_probs[self.best_head_]

    def _warn_if_collapsed(self, labels: np.ndarray) -> None:
        n_used = len(np.unique(labels))
        if n_used < self.n_clusters / 2:
            warnings.warn(
                f"{type(self).__name__} put the training data in only {n_used} of "
                f"{self.n_clusters} clusters (effective number of clusters of the prior: "
                f"{self.n_effective_clusters_:.1f}); the data may hold fewer groups, or try "
                "more steps, another lr or fewer n_neighbors",
                UserWarning,
                # _warn_if_collapsed <- _fit_features <- fit <- _fit_context <- caller
                stacklevel=5,
            )
