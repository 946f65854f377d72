"""TEMI: an ensemble of self-distilled cluster heads on frozen embeddings.

Adaloglou et al., "Exploring the Limits of Deep Image Clustering using Pretrained
Models" (BMVC 2023). Each sample is paired with one of its cosine nearest
neighbours; student heads learn to agree with an EMA teacher on the pair through
a teacher-ensemble-weighted beta pointwise mutual information (``_temi_loss``).
The skorch net, its module and callbacks live in ``_temi_net``.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, StrOptions

from skaudiocluster._torch import batched_forward, make_generator, to_numpy
from skaudiocluster._training import epoch_history
from skaudiocluster.cluster._base import BaseDeepClusterer
from skaudiocluster.cluster._consensus import (
    coassociation_partition,
    consensus_partition,
    head_agreement,
)
from skaudiocluster.cluster._heads import MultiHead
from skaudiocluster.cluster._neighbors import cosine_knn, umap_knn
from skaudiocluster.cluster._temi_net import (
    NeighborPairs,
    TEMICriterion,
    TEMIModule,
    TEMINet,
    keep_batch,
    training_budget,
    training_callbacks,
)
from skaudiocluster.metrics import hungarian_mapping

__all__ = ["TEMIClusterer"]


class TEMIClusterer(BaseDeepClusterer):
    """TEMI deep clustering heads trained on fixed embeddings.

    Every sample ``x`` is paired with one of its ``n_neighbors`` cosine nearest
    neighbours ``x'``. ``n_heads`` student MLP heads are trained so that their
    assignments of ``x`` agree with those of ``x'`` by an EMA teacher copy,
    through the beta pointwise mutual information over an EMA cluster prior,
    symmetrised over the pair and weighted by the teacher ensemble's agreement
    ``w(x, x')`` (Adaloglou et al., BMVC 2023). Clusters are the consensus of
    the heads: k-means on the concatenated teacher probabilities of all heads
    (:func:`~skaudiocluster.cluster._consensus.consensus_partition`), which
    needs no labels and does not depend on any one head.

    Why a consensus: heads of one fit land at very different optima (NMI
    0.61-0.89 on FSDD speakers, BYOL-A, seed 0) and the lowest final loss, the
    label-free rule of the official code, picked a 0.871 head there (0.789 among
    the first 8 heads) where the consensus of the same heads scored 0.902 (0.903
    with 8 heads). ``predict_with="best"`` keeps the lowest-loss head. At the
    defaults (consensus of 8 heads) FSDD speakers score NMI 0.941 / 0.910 /
    0.938 over seeds 0-2 (mean 0.930; it was 0.861 +- 0.024 with the lowest-loss
    head of 16), 0.895 on stratified 300-clip subsets (KMeans 0.803) and 0.881
    on 60-clip ones (KMeans 0.748); Bengalese finch syllables 0.941 / 0.981 /
    0.981 (0.948 before, 1 seed).

    Over-clustering (``overclustering`` > 1): every head then has
    ``round(overclustering * n_clusters)`` clusters, and the consensus merges
    them into ``n_clusters`` by their co-association -- two samples are as close
    as the fraction of heads that put them together, cut by average linkage
    (:func:`~skaudiocluster.cluster._consensus.coassociation_partition`).
    Heads with K clusters can settle in a local optimum that cuts one class in
    two and merges one half with another class (seen on Bengalese finch
    syllables, seed 0: NMI 0.941); heads with 2K clusters cut classes in
    different places, and the pieces of a class stay together in the
    co-association.

    Neighbours are mined once, before training, by cosine similarity among the
    rows of ``X`` themselves (as TEMI mines them on the pretrained embeddings;
    ``neighbors="umap"`` mines them in a UMAP layout of those rows instead);
    the heads then train on the preprocessed features (``preprocessing`` and
    ``n_components``: by default the 64 standardised principal components,
    L2-normalised). The pairs stay fixed during training. (Mining after the PCA
    gave the same neighbour label purity on FSDD speakers: 0.964 vs 0.965.)

    Training budget: runs last ``max(min_epochs, ceil(min_steps / (n_samples //
    batch_size)))`` epochs, so a small collection still gets ``min_steps``
    optimizer steps (on 3,000 clips an epoch is only ~11 steps, and TEMI needs
    thousands) while a large one is seen ``min_epochs`` times. The learning rate
    warms up linearly over the first ``warmup`` fraction of the steps, then
    decays along a cosine to a tenth of ``lr``; the teacher momentum rises from
    ``teacher_momentum`` to 1 along a cosine. The last layer of every head gets
    no update during the first epoch (DINO's trick, kept by TEMI).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters; ``fit`` needs at least that many samples.
    n_heads : int, default=8
        Independent heads trained together (TEMI's README uses 16). With the
        consensus, 8 heads score as 16 do (NMI 0.903 vs 0.902 on FSDD speakers)
        in half the time.
    overclustering : float, default=1.0
        Clusters of each head per wanted cluster: the heads have
        ``round(overclustering * n_clusters)`` clusters (at most ``n_samples``) and
        the consensus merges them into ``n_clusters`` (see above); 1 trains heads
        of ``n_clusters`` and takes the k-means consensus. Measured by
        ``benchmarks/bench_quality.py`` (row ``temi-over``, BYOL-A, NMI, 3 seeds),
        ``overclustering=2`` against the default: Bengalese finch syllables
        0.983 +- 0.001 against 0.968 +- 0.019 (UMAP + k-means: 0.985), Arabic
        keywords 0.406 +- 0.009 against 0.359 +- 0.008 (UMAP + k-means: 0.377),
        FSDD digits 0.177 +- 0.005 against 0.189 +- 0.023, FSDD speakers
        0.911 +- 0.025 against 0.930 +- 0.014 (Ward: 0.926). It helps
        collections of many small classes and costs speakers, whose heads of
        12 clusters cut speakers across one another (1.5 kept the speakers,
        0.931, and lost the finch's seed 0, 0.930; 3 lost the speakers,
        0.75-0.85), so it is not the default. It needs
        ``predict_with="consensus"``.
    n_neighbors : int or "auto", default="auto"
        Neighbours to draw partners from. ``"auto"`` is
        ``clip(n_samples // (4 * n_head_clusters_), 5, 50)``, so that the
        neighbourhood stays well inside a head's cluster on small collections (50
        is TEMI's default). At most ``n_samples - 1``.
    neighbors : {"cosine", "umap"}, default="cosine"
        Where the neighbours are mined. ``"cosine"``: cosine similarity among the
        rows of ``X``. ``"umap"``: Euclidean distance in the 10-D UMAP layout of
        ``X`` that UMAP + k-means clusters (``min_dist=0``, seeded by
        ``random_state``;
        :func:`~skaudiocluster.cluster._neighbors.umap_knn`), whose graph keeps
        neighbours on their manifold. On BYOL-A embeddings (``bench_quality``,
        NMI, 3 seeds) it raised TEMI on FSDD speakers from 0.930 to 0.938, FSDD
        digits from 0.189 to 0.212 and Arabic keywords from 0.359 to 0.396, ahead
        of the best classical pipeline on all three (0.926, 0.161, 0.377), and
        lowered it on Bengalese finch syllables from 0.968 to 0.949 (UMAP +
        k-means: 0.985). It is not the default for that set and for its cost:
        UMAP's fit adds 23 s to a fit on 3,000 x 512 on one thread (plus 30 s of
        import and numba compilation once per process) and grows to hours on a
        million rows.
    beta : float, default=0.6
        Exponent of the joint ``(q_s q_t)^beta`` in the pmi (TEMI default). On
        BYOL-A embeddings (NMI, seeds 0-2; the default 0.6 scores FSDD speakers
        0.930, FSDD digits 0.189, Bengalese finch syllables 0.968 +- 0.019 and
        Arabic keywords 0.359), 1.0 (the plain pmi) raised the finch to
        0.981 +- 0.001 and the keywords to 0.377 and lowered the speakers to
        0.922 and the digits to 0.165 (with ``min_steps=2000`` it too missed the
        finch at one seed, 0.940, where 0.6 found it at all three); 0.8 gave the
        finch 0.968 +- 0.020 and the keywords 0.367; 0.4 gave 0.954 and 0.320
        (heads of NMI ~0.7 on the finch).
    student_temperature, teacher_temperature : float, default=0.1
        Softmax temperatures (TEMI defaults).
    prior_momentum : float, default=0.9
        EMA momentum of the cluster prior (TEMI default).
    teacher_momentum : float, default=0.996
        Initial EMA momentum of the teacher (TEMI default), raised to 1 along a cosine.
    hidden_dims : tuple of int, default=(128,)
        Hidden layer widths of each head (GELU after each). TEMI's heads are
        ``(512,)`` with a 256 bottleneck, sized for 768-d image features on GPUs;
        on 64 PCA dimensions a quarter of that per head lets 16 heads train on a
        CPU in about the time 4 large heads take.
    bottleneck_dim : int, default=64
        Width of the linear bottleneck before the cosine last layer.
    preprocessing : {"l2", "standardize"} or None, default="l2"
        Input transform after the optional projection (see ``n_components``):
        ``"l2"`` normalises the rows (after the projection it helped every head
        on audio embeddings); ``"standardize"`` is TEMI's ``--embed_norm``;
        ``None`` adds nothing.
    n_components : int or None, default=64
        Inputs with more features than this are standardised and projected on
        their first ``n_components`` principal components (at most
        ``n_samples``) before ``preprocessing``; ``None`` never projects. 128
        components (NMI, seeds 0-2) moved the finch to 0.960 +- 0.014 and the
        keywords to 0.376 +- 0.019 (64: 0.968 +- 0.019, 0.359 +- 0.008), within
        the seeds' spread, and fit 10-15% slower.
    batch_size : int or "auto", default="auto"
        ``"auto"`` is ``min(256, max(32, n_samples // 8), n_samples)``.
    lr : float, default=3e-3
        Peak AdamW learning rate (TEMI's README value, 1e-4 per 256, learned
        nothing within a practical number of steps on audio embeddings).
    weight_decay : float, default=1e-4
        AdamW weight decay on weights (not on biases and weight-norm magnitudes).
    min_steps : int, default=4000
        Minimum number of optimizer steps (see the training budget above). On
        FSDD the loss still falls after 1,600 steps (NMI 0.67) and heads reach
        NMI 0.88-0.90 after 4,000.
    min_epochs : int, default=20
        Minimum number of epochs (see the training budget above).
    warmup : float, default=0.1
        Fraction of the steps with a linear learning-rate warm-up.
    predict_with : {"consensus", "best", "ensemble"}, default="consensus"
        ``"consensus"`` assigns a sample to the nearest consensus centre of its
        concatenated teacher probabilities (soft assignments: softmax of minus
        the squared distances over the mean squared training distance), or, with
        ``overclustering`` > 1, to the cluster it is most co-associated with;
        ``"best"`` uses the teacher of the lowest-loss head; ``"ensemble"``
        averages all teacher heads after matching their cluster indices to the
        best head's on the training data.
    device : "auto", str or torch.device, default="auto"
        ``"auto"`` is CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, pair sampling and shuffling: CPU runs repeat exactly.
        torch's global random state is left untouched.
    verbose : int, default=0
        ``> 0`` shows a progress bar per epoch.

    Attributes
    ----------
    module_ : TEMIModule
        Trained student and teacher heads and the EMA priors, on ``device_``.
    preprocessor_ : sklearn Pipeline
        Fitted input transform.
    device_ : torch.device
        Device the heads live and predict on.
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample.
    confidence_ : ndarray of shape (n_samples,)
        How surely each training sample sits in its cluster, in [0, 1]: its soft
        assignment to the cluster centres (:meth:`predict_confidence`); the
        lowest are the likely mistakes.
    confidence_model_ : CentroidConfidence
        The cluster centres in ``preprocessor_``'s output and their distance
        scale, from which :meth:`predict_confidence` reads.
    best_head_ : int
        Head with the lowest final-epoch training loss.
    head_losses_ : ndarray of shape (n_heads,)
        Final-epoch training loss of each head.
    n_head_clusters_ : int
        Clusters of each head: ``round(overclustering * n_clusters)``, at most
        ``n_samples``.
    head_permutations_ : ndarray of shape (n_heads, n_head_clusters_)
        Column order mapping each head's clusters onto the best head's.
    head_agreement_ : ndarray of shape (n_heads,)
        Mean NMI of each head's training partition with the other heads'.
    consensus_ : Consensus or CoAssociation
        k-means centres of the concatenated teacher probabilities, or (with
        ``overclustering`` > 1) the co-association clusters of the heads, and
        the training partition they define.
    prior_ : ndarray of shape (n_head_clusters_,)
        EMA cluster prior of the best head.
    n_effective_clusters_ : float
        ``exp(entropy(prior_))``: how many clusters the prior actually spreads over.
    history_ : skorch.History
        One row per epoch: ``epoch``, ``train_loss`` (mean over heads),
        ``head_losses`` (epoch mean of each head), ``dur`` and
        ``train_batch_count``.
    n_neighbors_, batch_size_ : int
        Values used.
    n_iter_ : int
        Epochs run.
    n_steps_ : int
        Optimizer steps run.
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
    ...                      min_steps=100, random_state=0).fit(X)
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
        "teacher_momentum": [Interval(Real, 0, 1, closed="both")],
        "bottleneck_dim": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "min_steps": [Interval(Integral, 1, None, closed="left")],
        "min_epochs": [Interval(Integral, 1, None, closed="left")],
        "warmup": [Interval(Real, 0, 1, closed="left")],
        "predict_with": [StrOptions({"consensus", "best", "ensemble"})],
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
        teacher_momentum: float = 0.996,
        hidden_dims: tuple[int, ...] = (128,),
        bottleneck_dim: int = 64,
        preprocessing: str | None = "l2",
        n_components: int | None = 64,
        batch_size: int | str = "auto",
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        min_steps: int = 4000,
        min_epochs: int = 20,
        warmup: float = 0.1,
        predict_with: str = "consensus",
        device: str | torch.device = "auto",
        random_state: int | np.random.RandomState | None = None,
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
        self.teacher_momentum = teacher_momentum
        self.hidden_dims = hidden_dims
        self.bottleneck_dim = bottleneck_dim
        self.preprocessing = preprocessing
        self.n_components = n_components
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.min_steps = min_steps
        self.min_epochs = min_epochs
        self.warmup = warmup
        self.predict_with = predict_with
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _fit_features(self, features: np.ndarray, X, seed: int) -> np.ndarray:
        """Mine the neighbours of the preprocessed ``features`` and train the heads."""
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
            neighbors = umap_knn(embeddings, self.n_neighbors_, random_state=seed)
        else:
            neighbors, _ = cosine_knn(embeddings, self.n_neighbors_, device=self.device_)

        if self.batch_size == "auto":
            self.batch_size_ = min(256, max(32, n_samples // 8), n_samples)
        else:
            self.batch_size_ = min(self.batch_size, n_samples)
        self.n_iter_, self.n_steps_ = training_budget(
            n_samples, self.batch_size_, self.min_steps, self.min_epochs
        )
        net = self._make_net(
            features.shape[1], seed, batches_per_epoch=n_samples // self.batch_size_
        )
        net.fit(NeighborPairs(torch.from_numpy(features), torch.from_numpy(neighbors), seed), None)

        self.module_ = net.module_.eval()
        self.history_ = epoch_history([net])
        self.head_losses_ = np.asarray(self.history_[-1, "head_losses"], dtype=np.float64)
        self.best_head_ = int(np.argmin(self.head_losses_))
        self.prior_ = to_numpy(self.module_.prior[self.best_head_]).astype(np.float64)
        entropy = -np.sum(self.prior_ * np.log(np.clip(self.prior_, 1e-12, None)))
        self.n_effective_clusters_ = float(np.exp(entropy))

        head_probs = self._head_probs(features)
        self.head_agreement_ = head_agreement(head_probs)
        self.head_permutations_ = _match_heads(head_probs, self.best_head_)
        if self.n_head_clusters_ > self.n_clusters:
            self.consensus_ = coassociation_partition(
                head_probs, self.n_clusters, random_state=seed
            )
        else:
            self.consensus_ = consensus_partition(head_probs, self.n_clusters, random_state=seed)
        self._warn_if_collapsed(self._combine(head_probs).argmax(axis=1))
        return features

    def _proba(self, features: np.ndarray) -> np.ndarray:
        """Teacher probabilities (``predict_with`` decides which heads), ``(n, n_clusters)``."""
        return self._combine(self._head_probs(features))

    def _make_net(self, n_features: int, seed: int, *, batches_per_epoch: int) -> TEMINet:
        heads = MultiHead(
            n_features,
            self.n_head_clusters_,
            self.n_heads,
            tuple(self.hidden_dims),
            self.bottleneck_dim,
            cosine_last_layer=True,
        )
        callbacks = training_callbacks(
            teacher_momentum=self.teacher_momentum,
            total_steps=self.n_steps_,
            warmup_steps=max(int(self.warmup * self.n_steps_), 1),
            name=type(self).__name__,
            verbose=self.verbose,
            batches_per_epoch=batches_per_epoch,
        )
        no_decay = {"weight_decay": 0.0}
        return TEMINet(
            TEMIModule(heads),
            criterion=TEMICriterion,
            criterion__beta=self.beta,
            criterion__student_temperature=self.student_temperature,
            criterion__teacher_temperature=self.teacher_temperature,
            criterion__prior_momentum=self.prior_momentum,
            optimizer=torch.optim.AdamW,
            optimizer__weight_decay=self.weight_decay,
            optimizer__param_groups=[("*bias", no_decay), ("*magnitude", no_decay)],
            lr=self.lr,
            max_epochs=self.n_iter_,
            batch_size=self.batch_size_,
            iterator_train__shuffle=True,
            iterator_train__drop_last=True,
            iterator_train__collate_fn=keep_batch,
            iterator_train__generator=make_generator(seed + 1),
            train_split=None,
            callbacks=callbacks,
            device=self.device_,
            verbose=0,
        )

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
        if self.predict_with == "best":
            return head_probs[self.best_head_]
        aligned = [
            probs[:, order]
            for probs, order in zip(head_probs, self.head_permutations_, strict=True)
        ]
        return np.mean(aligned, axis=0)

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


def _match_heads(head_probs: np.ndarray, reference: int) -> np.ndarray:
    """Per head, the column order that best matches its clusters to the reference head's.

    ``order[c]`` is the head's cluster matched to the reference's cluster ``c``
    (:func:`~skaudiocluster.metrics.hungarian_mapping` on the argmax labels);
    clusters that either head leaves empty are paired in increasing order.
    """
    n_heads, _, n_clusters = head_probs.shape
    reference_labels = head_probs[reference].argmax(axis=1)
    orders = np.empty((n_heads, n_clusters), dtype=np.int64)
    for head in range(n_heads):
        mapping = hungarian_mapping(reference_labels, head_probs[head].argmax(axis=1))
        order = np.full(n_clusters, -1, dtype=np.int64)
        for cluster, matched in mapping.items():
            order[matched] = cluster
        unmatched = np.setdiff1d(np.arange(n_clusters), order)
        order[order < 0] = unmatched
        orders[head] = order
    return orders
