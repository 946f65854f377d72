"""SPICE clustering: prototype pseudo-labels, reliable labels, then FixMatch-style training.

Niu, Shan and Wang, "SPICE: Semantic Pseudo-labeling for Image Clustering", IEEE TIP 2022.
The skorch nets live in ``_spice_net`` (stages on embeddings) and ``_spice_joint``
(the joint encoder and classifier stage on raw audio); the labelling rules in
``_spice_labels``.
"""

from __future__ import annotations

import copy
import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from skaudiocluster._torch import batched_forward, draw_seed, draw_seeds
from skaudiocluster._training import (
    StopOnNonFiniteLoss,
    epoch_history,
    optimizer_steps,
    progress_callbacks,
)
from skaudiocluster.augment import strong_augmentation, weak_augmentation
from skaudiocluster.cluster._base import (
    BUDGET_CONSTRAINTS,
    BaseDeepClusterer,
    check_hidden_dims,
    training_epochs,
)
from skaudiocluster.cluster._consensus import consensus_partition
from skaudiocluster.cluster._heads import MultiHead, copy_head
from skaudiocluster.cluster._spice_joint import ClipDataset, ClipViews, JointNetwork
from skaudiocluster.cluster._spice_labels import IGNORE, reliable_labels
from skaudiocluster.cluster._spice_net import (
    DoubleSoftmaxLoss,
    EmbeddingViews,
    FixMatchLoss,
    FixMatchNet,
    RecordHeadLosses,
    SPICESelfNet,
    fixmatch_batches_per_epoch,
    prototype_batches_per_epoch,
)

__all__ = ["SPICEClusterer"]


class SPICEClusterer(BaseDeepClusterer):
    """SPICE deep clustering on embeddings: prototype pseudo-labels, then semi-supervision.

    Fitting runs SPICE's stages on 2-D features (for example BYOL-A embeddings),
    preprocessed as ``preprocessing`` and ``n_components`` say (by default inputs
    wider than 64 features are standardised and reduced to their first 64 principal
    components, then L2-normalised):

    1. **SPICE-Self.** ``n_heads`` MLP heads ``Linear-ReLU-Linear-softmax`` are trained
       on prototype pseudo-labels: in each chunk of ``labelling_size`` samples, the
       ``center_ratio * M / K`` most confident samples of a cluster are averaged into a
       prototype and the ``M / K`` samples nearest to it (cosine) get that cluster's label;
       each head is trained on its labels with the cross-entropy of its *probabilities*
       (the paper's double softmax). After every epoch each head's loss on its own
       pseudo-labels of the whole set is computed, and the epoch of the lowest loss over
       the run is kept, as in the official code; no ground truth is used. The heads of
       that epoch are then combined (``head_selection="consensus"``): k-means on every
       head's probabilities side by side
       (:func:`~skaudiocluster.cluster._consensus.consensus_partition`, as
       :class:`~skaudiocluster.cluster.TEMIClusterer` does), whose soft assignments are
       the confidences of stage 2. ``head_selection="best"`` keeps the lowest-loss head,
       as the paper does.
    2. **Reliable labels.** A sample is reliable when at least ``min_agreement`` of its
       ``n_neighbors`` cosine neighbours share its cluster and its confidence exceeds
       ``min_confidence``. Every reliable sample is kept (SPICE cuts every cluster to the
       smallest reliable set, so one weak cluster starved all the others); see
       :func:`~skaudiocluster.cluster._spice_labels.reliable_labels` for the guard used
       when a cluster has too few reliable samples.
    3. **SPICE-Semi** (when ``semi_max_steps > 0``). A fresh MLP classifier is trained
       for ``semi_max_steps`` optimiser steps (whatever ``n_samples``) with a FixMatch
       objective: cross-entropy on the reliable labels, each labelled batch drawn evenly
       over the clusters, plus, on every sample, cross-entropy of a strong view against
       the hard prediction on a weak view when that prediction is at least ``threshold``
       confident. The exponential moving average of its weights (``ema_decay``,
       FixMatch's evaluation model) is the fitted classifier.

    With an ``encoder`` (a :class:`~skaudiocluster.transformers.byola.BYOLAEmbedder`),
    ``fit`` takes raw audio: the encoder (cloned to ``encoder_``; seeded from
    ``random_state`` when its own ``random_state`` is None) embeds the clips, stages
    1-3 run on those embeddings as above, and then stage 3 continues (``joint_max_steps``,
    ``joint_max_epochs``) on the audio itself, training the encoder (learning rate
    ``encoder_lr``; its batch-norm statistics stay frozen) and the classifier together.
    Its weak views are random crops of 90-100 % of each clip with +/- 3 dB gain; the
    strong views crop 60-100 %, change the gain by up to +/- 6 dB, fade in and out and
    mix in white noise at 10-30 dB SNR (:mod:`skaudiocluster.augment`). The paper trains
    this stage from scratch for about a million steps on a GPU; here it starts from the
    stage-3 classifier trained on the embeddings, so a few epochs on a CPU suffice.
    Parameters of the encoder route as ``encoder__<name>``. ``predict`` then embeds new
    clips with the fine-tuned encoder.

    Budgets and defaults. Both embedding stages are budgeted in optimiser steps, not
    epochs, so a collection of 60 clips trains as long as one of 3,000: the paper's 30
    epochs gave a fresh stage-3 classifier about 100 steps at 300 clips, and with
    ``n_samples <= labelling_size`` its 30 SPICE-Self epochs refreshed the pseudo-labels
    only 30 times (200-360 in the official runs). ``max_steps=1500`` with
    ``n_repeats=2`` (the paper: 8) refreshes them every 48 steps at 3,000 clips (31
    refreshes) and every 2-6 steps at 60-300 clips; ``semi_max_steps=1000`` with the
    official EMA evaluation model (decay 0.99 here against 0.999 over FixMatch's 2**20
    steps). What these budgets score, small collections included:
    :ref:`bench-spice-budget`.

    Departure from the paper: SPICE makes its weak and strong views by augmenting images
    and re-running the frozen encoder at every step. On fixed embeddings there is no
    signal left to augment and re-embedding every step would cost as much as the paper's
    encoder passes, so the views here are made in embedding space: Gaussian noise plus
    feature dropout on the features, mild (``weak_*``) and heavy (``strong_*``), then
    scaled back to each row's norm (unit rows with the default ``"l2"``). The prototype
    similarities still use the clean features, as in the paper (inner products: cosines
    for L2-normalised features).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters; the training set needs at least ``2 * n_clusters`` samples.
    encoder : embedder or None, default=None
        Audio encoder with the encoder-training interface of
        :class:`~skaudiocluster.transformers._base.BaseAudioEmbedder` (``waveforms``,
        ``log_mel``, ``module_``), such as a ``BYOLAEmbedder``; ``None`` means ``X``
        holds embeddings already.
    n_heads : int, default=10
        SPICE-Self heads trained together.
    head_selection : {"consensus", "best"}, default="consensus"
        How SPICE-Self's heads give the pseudo-labels of stage 2: the k-means consensus
        of all heads at the lowest-loss epoch, or that epoch's lowest-loss head (the
        paper). The label-free loss does not always rank the heads, so the consensus
        follows the seed less than any one head does
        (:ref:`head selection <bench-spice-head-selection>`). The joint stage on raw
        audio needs stage 3 with ``"consensus"``.
    hidden_dims : tuple of int, default=(512,)
        Hidden widths of the heads and of the stage-3 classifier.
    preprocessing : {"l2", "standardize"} or None, default="l2"
        Last step of the input transform: L2-normalise rows, standardise features, or
        nothing (see :func:`~skaudiocluster.cluster._base.make_preprocessor`).
    n_components : int or None, default=64
        Inputs with more features are standardised and projected on this many principal
        components (at most ``n_samples``); ``None`` skips the projection.
    max_steps : int or None, default=1500
        SPICE-Self optimiser steps, rounded up to whole epochs (an epoch labels every big
        batch and replays its labels ``n_repeats`` times), whatever ``n_samples``, so
        that small collections train as long as large ones (:ref:`bench-spice-budget`);
        ``None``: ``max_epochs`` alone.
    max_epochs : int or None, default=None
        At most this many SPICE-Self epochs; ``None``: no cap.
    labelling_size : int, default=5000
        Samples pseudo-labelled together, from which each cluster's prototype is drawn
        (clipped to ``n_samples``): a labelling chunk, not a training mini-batch.
    batch_size : int, default=128
        Mini-batch size of head training.
    n_repeats : int, default=2
        Training passes over each labelling chunk's pseudo-labels.
    lr : float, default=5e-3
        Adam learning rate of the heads.
    center_ratio : float, default=0.5
        Fraction of ``M / K`` confident samples averaged into each prototype.
    double_softmax : bool, default=True
        Use SPICE's cross-entropy on softmax outputs; ``False`` gives plain cross-entropy.
    weak_noise, weak_dropout : float, default=0.2, 0.1
        Noise norm (relative to the row's norm) and feature dropout of the weak views.
    strong_noise, strong_dropout : float, default=0.6, 0.4
        The same for the strong views.
    n_neighbors : int, default=100
        Neighbours (self included) checked by the reliability rule; clipped to
        ``n_samples // (4 * n_clusters)`` so a neighbourhood stays well inside a cluster of
        average size.
    min_agreement : float, default=0.9
        Fraction of neighbours that must share a sample's cluster for it to be reliable.
    min_confidence : float, default=0.99
        Confidence a reliable sample's prediction must exceed.
    min_reliable : int, default=10
        Reliable samples each cluster is guaranteed (topped up with its most consistent
        members, with a warning).
    semi_max_steps : int or None, default=1000
        Stage-3 optimiser steps (rounded up to whole epochs of at most 50 steps); 0 keeps
        SPICE-Self; ``None``: ``semi_max_epochs`` alone.
    semi_max_epochs : int or None, default=None
        At most this many stage-3 passes over all samples as unlabelled data (then run
        as such passes); 0 keeps SPICE-Self; ``None``: no cap.
    ema_decay : float, default=0.99
        Decay of the stage-3 weight average kept as the classifier; 0 keeps the last
        weights.
    semi_lr : float, default=1e-3
        Adam learning rate of stage 3.
    semi_batch_size : int, default=64
        Labelled samples per stage-3 step.
    unlabelled_ratio : int, default=7
        Unlabelled samples per labelled one in each stage-3 step.
    threshold : float, default=0.95
        FixMatch confidence threshold.
    unlabelled_weight : float, default=1.0
        Weight of FixMatch's unlabelled loss.
    joint_max_steps : int or None, default=None
        With ``encoder``: optimiser steps of joint encoder and classifier training on raw
        audio, rounded up to whole epochs; ``None``: ``joint_max_epochs`` alone.
    joint_max_epochs : int or None, default=3
        At most this many joint epochs (passes over the clips as unlabelled data), few
        because every step runs the encoder on a CPU; 0 skips the joint stage.
    encoder_lr : float, default=1e-5
        Adam learning rate of the encoder in joint training.
    joint_batch_size : int, default=16
        Labelled clips per joint step (with ``unlabelled_ratio`` times as many unlabelled).
    max_audio_seconds : float, default=2.0
        Longest crop of a clip in joint training.
    device : str or torch.device, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, batching and views (and an unseeded ``encoder``); an int
        makes CPU runs repeat exactly. The caller's global torch random state is left
        untouched.
    n_threads : int or None, default=1
        CPU threads of torch while fitting and predicting (small heads run fastest on
        one); ``None`` keeps torch's setting.
    verbose : int, default=0
        Progress bars when positive.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample.
    confidence_ : ndarray of shape (n_samples,)
        How surely each training sample sits in its cluster, in [0, 1]: its soft
        assignment to the cluster centres (:meth:`predict_confidence`); the
        lowest are the likely mistakes.
    confidence_model_ : CentroidConfidence
        The cluster centres in ``preprocessor_``'s output and their distance
        scale, from which :meth:`predict_confidence` reads.
    labels_reliable_ : ndarray of shape (n_samples,), bool
        Training samples whose SPICE-Self label was kept as a stage-3 target.
    self_labels_ : ndarray of shape (n_samples,)
        Clusters found by SPICE-Self (the consensus or the selected head) before stage 3.
    n_neighbors_ : int
        Neighbours used by the reliability rule.
    best_head_ : int
        Index of the lowest-loss SPICE-Self head (the selected one with
        ``head_selection="best"``).
    consensus_ : Consensus or None
        Without stage 3 and with ``head_selection="consensus"``: the k-means centres of
        the heads' probabilities, which predict; ``None`` otherwise.
    best_epoch_ : int
        SPICE-Self epoch (1-based) of the lowest loss, whose heads are used.
    head_losses_ : ndarray of shape (n_heads,)
        Label-free selection loss of every head at ``best_epoch_``.
    module_ : torch.nn.Module
        Network from preprocessed embeddings to logits ``(n_heads, n_samples,
        n_clusters)``: the stage-3 classifier (one head), or without stage 3 every
        SPICE-Self head (read through ``consensus_``) or the selected one.
    preprocessor_ : sklearn Pipeline
        The fitted input transform.
    n_iter_ : int
        Optimiser steps of the fit, all stages summed.
    history_ : skorch History
        One row per epoch of every stage run (``stage`` is ``"self"``, ``"semi"`` or
        ``"joint"``) with ``train_loss`` and ``dur``; SPICE-Self rows also hold
        ``head_losses``.
    encoder_ : embedder
        With ``encoder``: the fitted (and jointly trained) encoder.
    n_features_in_ : int
        Without ``encoder``: number of features seen in ``fit``.
    device_ : torch.device
        Where the networks live.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn.metrics import adjusted_rand_score
    >>> from skaudiocluster.cluster import SPICEClusterer
    >>> X, y = make_blobs(n_samples=600, centers=3, n_features=16, random_state=0)
    >>> spice = SPICEClusterer(n_clusters=3, n_heads=2, hidden_dims=(32,), max_steps=200,
    ...                        n_repeats=4, semi_max_steps=100, semi_batch_size=32,
    ...                        semi_lr=1e-2, unlabelled_ratio=2, random_state=0)
    >>> adjusted_rand_score(y, spice.fit_predict(X))
    1.0
    >>> spice.history_[:, "stage"].count("semi")  # 100 steps: two epochs of 50
    2
    """

    _parameter_constraints: dict = {
        **BaseDeepClusterer._parameter_constraints,
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "encoder": [HasMethods(["fit", "transform", "waveforms", "log_mel"]), None],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "head_selection": [StrOptions({"consensus", "best"})],
        **BUDGET_CONSTRAINTS,
        "labelling_size": [Interval(Integral, 2, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_repeats": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "center_ratio": [Interval(Real, 0, 1, closed="right")],
        "double_softmax": ["boolean"],
        "weak_noise": [Interval(Real, 0, None, closed="left")],
        "weak_dropout": [Interval(Real, 0, 1, closed="left")],
        "strong_noise": [Interval(Real, 0, None, closed="left")],
        "strong_dropout": [Interval(Real, 0, 1, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "min_agreement": [Interval(Real, 0, 1, closed="both")],
        "min_confidence": [Interval(Real, 0, 1, closed="left")],
        "min_reliable": [Interval(Integral, 1, None, closed="left")],
        "semi_max_steps": [Interval(Integral, 0, None, closed="left"), None],
        "semi_max_epochs": [Interval(Integral, 0, None, closed="left"), None],
        "ema_decay": [Interval(Real, 0, 1, closed="left")],
        "semi_lr": [Interval(Real, 0, None, closed="neither")],
        "semi_batch_size": [Interval(Integral, 1, None, closed="left")],
        "unlabelled_ratio": [Interval(Integral, 1, None, closed="left")],
        "threshold": [Interval(Real, 0, 1, closed="both")],
        "unlabelled_weight": [Interval(Real, 0, None, closed="left")],
        "joint_max_steps": [Interval(Integral, 0, None, closed="left"), None],
        "joint_max_epochs": [Interval(Integral, 0, None, closed="left"), None],
        "encoder_lr": [Interval(Real, 0, None, closed="neither")],
        "joint_batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_audio_seconds": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        encoder: BaseEstimator | None = None,
        n_heads: int = 10,
        head_selection: str = "consensus",
        hidden_dims: tuple[int, ...] = (512,),
        preprocessing: str | None = "l2",
        n_components: int | None = 64,
        max_steps: int | None = 1500,
        max_epochs: int | None = None,
        labelling_size: int = 5000,
        batch_size: int = 128,
        n_repeats: int = 2,
        lr: float = 5e-3,
        center_ratio: float = 0.5,
        double_softmax: bool = True,
        weak_noise: float = 0.2,
        weak_dropout: float = 0.1,
        strong_noise: float = 0.6,
        strong_dropout: float = 0.4,
        n_neighbors: int = 100,
        min_agreement: float = 0.9,
        min_confidence: float = 0.99,
        min_reliable: int = 10,
        semi_max_steps: int | None = 1000,
        semi_max_epochs: int | None = None,
        ema_decay: float = 0.99,
        semi_lr: float = 1e-3,
        semi_batch_size: int = 64,
        unlabelled_ratio: int = 7,
        threshold: float = 0.95,
        unlabelled_weight: float = 1.0,
        joint_max_steps: int | None = None,
        joint_max_epochs: int | None = 3,
        encoder_lr: float = 1e-5,
        joint_batch_size: int = 16,
        max_audio_seconds: float = 2.0,
        device: str | torch.device = "auto",
        random_state=None,
        n_threads: int | None = 1,
        verbose: int = 0,
    ):
        self.n_clusters = n_clusters
        self.encoder = encoder
        self.n_heads = n_heads
        self.head_selection = head_selection
        self.hidden_dims = hidden_dims
        self.preprocessing = preprocessing
        self.n_components = n_components
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.labelling_size = labelling_size
        self.batch_size = batch_size
        self.n_repeats = n_repeats
        self.lr = lr
        self.center_ratio = center_ratio
        self.double_softmax = double_softmax
        self.weak_noise = weak_noise
        self.weak_dropout = weak_dropout
        self.strong_noise = strong_noise
        self.strong_dropout = strong_dropout
        self.n_neighbors = n_neighbors
        self.min_agreement = min_agreement
        self.min_confidence = min_confidence
        self.min_reliable = min_reliable
        self.semi_max_steps = semi_max_steps
        self.semi_max_epochs = semi_max_epochs
        self.ema_decay = ema_decay
        self.semi_lr = semi_lr
        self.semi_batch_size = semi_batch_size
        self.unlabelled_ratio = unlabelled_ratio
        self.threshold = threshold
        self.unlabelled_weight = unlabelled_weight
        self.joint_max_steps = joint_max_steps
        self.joint_max_epochs = joint_max_epochs
        self.encoder_lr = encoder_lr
        self.joint_batch_size = joint_batch_size
        self.max_audio_seconds = max_audio_seconds
        self.device = device
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    def _min_samples(self) -> int:
        # Stage 2 and the prototypes need room for two samples per cluster.
        return 2 * self.n_clusters

    def _fit_encoder(self, X, random_state) -> None:
        """Clone ``encoder`` to ``encoder_`` (seeded from ``random_state`` if unseeded), fit it."""
        if self.encoder is None:
            return
        if self._runs_joint() and not self._runs_semi() and self.head_selection != "best":
            raise ValueError(  # checked before the clips are embedded
                "the joint stage trains one classifier: with semi_max_steps=0 (or "
                'semi_max_epochs=0) it needs head_selection="best"'
            )
        encoder, encoder_seed = clone(self.encoder), draw_seed(random_state)
        if getattr(encoder, "random_state", 0) is None:
            encoder.set_params(random_state=encoder_seed)
        self.encoder_ = encoder.fit(X)

    def _embeddings(self, X, *, reset: bool) -> np.ndarray:
        if self.encoder is None:
            return super()._embeddings(X, reset=reset)
        embeddings = np.asarray(self.encoder_.transform(X), dtype=np.float64)
        if reset and len(embeddings) < self._min_samples():
            raise ValueError(
                f"{type(self).__name__} with n_clusters={self.n_clusters} needs at least "
                f"{self._min_samples()} clips, got {len(embeddings)}"
            )
        return embeddings

    def _fit_features(self, features: np.ndarray, X, random_state) -> np.ndarray:
        hidden_dims = check_hidden_dims(self.hidden_dims)
        self_seed, consensus_seed, semi_seed, joint_seed = draw_seeds(random_state, 4)
        self_net = self._fit_self(features, hidden_dims, self_seed)
        # The best (epoch, head) by the label-free loss, as in SPICE's official code.
        best = dict(self_net.callbacks_)["head_losses"]
        self.best_epoch_, self.best_head_ = best.best_epoch_, best.best_head_
        self.head_losses_ = np.asarray(self_net.history[best.best_epoch_ - 1, "head_losses"])
        self_net.module_.load_state_dict(best.best_state_)
        consensus = self.head_selection == "consensus"
        heads = self_net.module_
        if not consensus:
            heads = copy_head(heads, self.best_head_, **_head_kwargs(hidden_dims))
        self.module_ = heads.eval()
        head_probs = _head_probs(self.module_, features, self.device_)
        self.consensus_ = None
        if consensus:
            self.consensus_ = consensus_partition(
                head_probs, self.n_clusters, random_state=consensus_seed
            )
        proba = self._combine_heads(head_probs)
        self.self_labels_ = proba.argmax(axis=1)
        # A neighbourhood larger than a typical cluster could never agree with itself.
        n_samples = len(features)
        self.n_neighbors_ = min(self.n_neighbors, max(1, n_samples // (4 * self.n_clusters)))
        self.labels_reliable_ = reliable_labels(
            features,
            proba,
            n_neighbors=self.n_neighbors_,
            min_agreement=self.min_agreement,
            min_confidence=self.min_confidence,
            min_per_cluster=self.min_reliable,
            device=self.device_,
        )
        targets = np.where(self.labels_reliable_, self.self_labels_, IGNORE).astype(np.int64)
        nets, stages = [self_net], ["self"]
        if self._runs_semi():
            semi_net = self._fit_semi(features, targets, hidden_dims, semi_seed)
            module = semi_net.module_ if semi_net.ema_module_ is None else semi_net.ema_module_
            self.module_ = module.requires_grad_(True).eval()  # trainable for the joint stage
            self.consensus_ = None  # the classifier predicts alone
            nets.append(semi_net)
            stages.append("semi")
        if self._runs_joint():
            nets.append(self._fit_joint(X, targets, joint_seed))
            stages.append("joint")
            features = self._preprocess(self._embeddings(X, reset=False))
        self.history_ = epoch_history(nets, stage=stages)
        self.n_iter_ = optimizer_steps(nets)
        return features

    def _runs_semi(self) -> bool:
        return self.semi_max_steps != 0 and self.semi_max_epochs != 0

    def _runs_joint(self) -> bool:
        return self.encoder is not None and self.joint_max_steps != 0 and self.joint_max_epochs != 0

    def _proba(self, features: np.ndarray) -> np.ndarray:
        return self._combine_heads(_head_probs(self.module_, features, self.device_))

    def _combine_heads(self, head_probs: np.ndarray) -> np.ndarray:
        """``(n_heads, n, K)`` head probabilities -> ``(n, K)``: the consensus or the one head."""
        if self.consensus_ is None:
            return head_probs[0]
        return self.consensus_.predict_proba(head_probs).astype(np.float32)

    def _views(self) -> tuple[dict, dict]:
        return (
            {"noise": self.weak_noise, "dropout": self.weak_dropout},
            {"noise": self.strong_noise, "dropout": self.strong_dropout},
        )

    def _callbacks(self, stage: str, batches_per_epoch: int) -> list:
        return [
            ("non_finite_loss", StopOnNonFiniteLoss(f"{type(self).__name__} ({stage})")),
            *progress_callbacks(self.verbose, batches_per_epoch, desc=stage),
        ]

    def _fit_self(self, features: np.ndarray, hidden_dims: tuple[int, ...], seed: int):
        """SPICE-Self: ``n_heads`` heads trained on their prototype pseudo-labels."""
        weak_view, strong_view = self._views()
        steps = prototype_batches_per_epoch(
            len(features),
            self.n_clusters,
            labelling_size=self.labelling_size,
            batch_size=self.batch_size,
            n_repeats=self.n_repeats,
        )
        n_epochs = training_epochs(self.max_steps, self.max_epochs, steps)
        net = SPICESelfNet(
            MultiHead,
            module__in_features=features.shape[1],
            module__n_clusters=self.n_clusters,
            module__n_heads=self.n_heads,
            **{f"module__{key}": value for key, value in _head_kwargs(hidden_dims).items()},
            criterion=DoubleSoftmaxLoss,
            criterion__double_softmax=self.double_softmax,
            optimizer=torch.optim.Adam,
            lr=self.lr,
            max_epochs=n_epochs,
            batch_size=self.batch_size,
            labelling_size=self.labelling_size,
            n_repeats=self.n_repeats,
            center_ratio=self.center_ratio,
            weak_view=weak_view,
            strong_view=strong_view,
            seed=seed,
            train_split=None,
            device=self.device_,
            callbacks=[
                (
                    "head_losses",
                    RecordHeadLosses(
                        center_ratio=self.center_ratio, double_softmax=self.double_softmax
                    ),
                ),
                *self._callbacks("SPICE-Self", steps),
            ],
            verbose=0,
        )
        return net.fit(features)

    def _fixmatch_params(self) -> dict:
        return {
            "criterion": FixMatchLoss,
            "criterion__threshold": self.threshold,
            "criterion__unlabelled_weight": self.unlabelled_weight,
            "optimizer": torch.optim.Adam,
            "lr": self.semi_lr,
            "unlabelled_ratio": self.unlabelled_ratio,
            "train_split": None,
            "device": self.device_,
            "verbose": 0,
        }

    def _fit_semi(
        self, features: np.ndarray, targets: np.ndarray, hidden_dims: tuple[int, ...], seed: int
    ):
        """SPICE-Semi on embeddings: a fresh classifier, FixMatch on embedding views."""
        pass_steps = fixmatch_batches_per_epoch(
            len(features), batch_size=self.semi_batch_size, unlabelled_ratio=self.unlabelled_ratio
        )
        if self.semi_max_steps is None or (
            self.semi_max_epochs is not None
            and self.semi_max_epochs * pass_steps <= self.semi_max_steps
        ):  # the epoch cap binds: whole passes over the samples
            n_epochs, steps = training_epochs(None, self.semi_max_epochs, pass_steps), None
        else:
            n_epochs, steps = semi_schedule(self.semi_max_steps)
        net = FixMatchNet(
            MultiHead,
            module__in_features=features.shape[1],
            module__n_clusters=self.n_clusters,
            module__n_heads=1,
            **{f"module__{key}": value for key, value in _head_kwargs(hidden_dims).items()},
            max_epochs=n_epochs,
            steps_per_epoch=steps,
            ema_decay=self.ema_decay,
            batch_size=self.semi_batch_size,
            views=EmbeddingViews(*self._views()),
            seed=seed,
            callbacks=self._callbacks("SPICE-Semi", steps or pass_steps),
            **self._fixmatch_params(),
        )
        return net.fit(features, targets)

    def _fit_joint(self, X, targets: np.ndarray, seed: int):
        """Stage 3 again on raw audio, on copies of the encoder's network and of ``module_``.

        The trained copies replace ``module_`` and, through the encoder's
        :meth:`~skaudiocluster.transformers._base.BaseAudioEmbedder.with_module`,
        ``encoder_`` (a new fitted embedder).
        """
        encoder = self.encoder_
        clips = encoder.waveforms(X)
        crop = {
            "max_samples": round(self.max_audio_seconds * encoder.model_sample_rate),
            "min_samples": encoder.min_samples,
        }
        encoder_device = next(encoder.module_.parameters()).device
        network = JointNetwork(
            copy.deepcopy(encoder.module_), copy.deepcopy(self.module_), self.preprocessor_
        )
        steps = fixmatch_batches_per_epoch(
            len(clips), batch_size=self.joint_batch_size, unlabelled_ratio=self.unlabelled_ratio
        )
        net = FixMatchNet(
            network,
            optimizer__param_groups=[("encoder.*", {"lr": self.encoder_lr})],
            max_epochs=training_epochs(self.joint_max_steps, self.joint_max_epochs, steps),
            batch_size=self.joint_batch_size,
            views=ClipViews(
                weak_augmentation(**crop), strong_augmentation(**crop), encoder.log_mel
            ),
            seed=seed,
            callbacks=self._callbacks("joint SPICE-Semi", steps),
            **self._fixmatch_params(),
        )
        net.fit(ClipDataset(clips, targets))
        network.eval()
        # the encoder's network back where the encoder's own methods expect it
        self.encoder_ = encoder.with_module(network.encoder.to(encoder_device))
        self.module_ = network.classifier
        return net

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


def semi_schedule(max_steps: int, max_steps_per_epoch: int = 50) -> tuple[int, int]:
    """Epochs and steps per epoch of stage 3 for a budget of ``max_steps`` optimiser steps.

    Epochs of at most ``max_steps_per_epoch`` steps, as many as needed; the total is
    ``max_steps`` rounded up to whole epochs (less than one step per epoch added).

    Examples
    --------
    >>> semi_schedule(1000), semi_schedule(30), semi_schedule(1010)
    ((20, 50), (1, 30), (21, 49))
    """
    n_epochs = math.ceil(max_steps / max_steps_per_epoch)
    return n_epochs, math.ceil(max_steps / n_epochs)


def _head_kwargs(hidden_dims: tuple[int, ...]) -> dict:
    """Architecture of SPICE's heads and classifier (``MultiHead`` arguments)."""
    return {"hidden_dims": hidden_dims, "activation": "relu", "init_std": None}


def _head_probs(module: torch.nn.Module, features: np.ndarray, device: torch.device):
    """Softmax of every head's logits on ``features``: float32 (n_heads, n_samples, K)."""
    logits = batched_forward(module, features, device=device, dim=1)
    return logits.softmax(dim=-1).numpy()
