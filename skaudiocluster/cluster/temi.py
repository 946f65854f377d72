"""TEMI: an ensemble of self-distilled cluster heads on frozen embeddings.

Adaloglou et al., "Exploring the Limits of Deep Image Clustering using Pretrained
Models" (BMVC 2023). Each sample is paired with one of its cosine nearest
neighbours; student heads learn to agree with an EMA teacher on the pair through
a teacher-ensemble-weighted beta pointwise mutual information (``_temi_loss``).
"""

from __future__ import annotations

import copy
import math
import warnings
from functools import partial
from numbers import Integral, Real

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch import NeuralNet
from skorch.callbacks import Callback, LRScheduler
from torch import nn
from torch.nn import functional as F

from skaudiocluster._torch import make_generator, resolve_device, seed_torch, to_numpy
from skaudiocluster.cluster._heads import MultiHead
from skaudiocluster.cluster._neighbors import cosine_knn
from skaudiocluster.cluster._temi_loss import temi_loss, updated_prior
from skaudiocluster.cluster._training import StopOnNonFiniteLoss, progress_callbacks

# DINO's trick kept by TEMI: the last layer gets no update during the first epoch.
FREEZE_LAST_LAYER_EPOCHS = 1
_INFERENCE_BATCH = 4096


class NeighborPairs(torch.utils.data.Dataset):
    """Pairs ``(x_i, x_j)`` with ``j`` drawn uniformly from the neighbours of ``i``.

    The partner is re-drawn every time ``i`` is visited. ``__getitems__`` serves a
    whole batch at once (the :class:`~torch.utils.data.DataLoader` uses it).

    Parameters
    ----------
    features : tensor of shape (n_samples, n_features)
    neighbors : tensor of shape (n_samples, n_neighbors), int64
        Neighbour table without the anchors themselves.
    seed : int
        Seed of the generator drawing the partners.

    Examples
    --------
    >>> import torch
    >>> pairs = NeighborPairs(torch.eye(3), torch.tensor([[1], [2], [0]]), seed=0)
    >>> anchors, partners = pairs.__getitems__([0, 2])
    >>> partners
    tensor([[0., 1., 0.],
            [1., 0., 0.]])
    """

    def __init__(self, features: torch.Tensor, neighbors: torch.Tensor, seed: int):
        self.features = features
        self.neighbors = neighbors
        self.generator = make_generator(seed)

    def __len__(self) -> int:
        return len(self.features)

    def partners(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices of one random neighbour of each anchor in ``indices``."""
        choice = torch.randint(self.neighbors.shape[1], (len(indices),), generator=self.generator)
        return self.neighbors[indices, choice]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return self.features[indices], self.features[self.partners(indices)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        anchor, partner = self.__getitems__([index])
        return anchor[0], partner[0]


def _keep_batch(batch):
    """``collate_fn`` for :class:`NeighborPairs`, whose ``__getitems__`` already batches."""
    return batch


class TEMIModule(nn.Module):
    """Student heads, their EMA teacher copy and the EMA cluster prior of each head.

    Parameters
    ----------
    heads : MultiHead
        The student heads; the teacher starts as an exact copy of them.

    Examples
    --------
    >>> import torch
    >>> module = TEMIModule(MultiHead(8, n_clusters=3, n_heads=2, hidden_dims=(16,)))
    >>> module(torch.randn(4, 8)).shape
    torch.Size([2, 4, 3])
    """

    def __init__(self, heads: MultiHead):
        super().__init__()
        self.student = heads
        self.teacher = copy.deepcopy(heads).requires_grad_(False)
        prior = torch.full((heads.n_heads, heads.n_clusters), 1.0 / heads.n_clusters)
        self.register_buffer("prior", prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``(n_heads, batch, n_clusters)``: what prediction uses."""
        return self.teacher(x)


class TEMICriterion(nn.Module):
    """Per-head TEMI loss (:func:`~skaudiocluster.cluster._temi_loss.temi_loss`) as a module.

    Parameters
    ----------
    beta : float, default=0.6
    student_temperature : float, default=0.1
    teacher_temperature : float, default=0.1
    prior_momentum : float, default=0.9

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(2, 5, 3)
    >>> TEMICriterion()(logits, logits, logits, logits, torch.full((2, 3), 1 / 3))
    tensor([-0.2930, -0.2930])
    """

    def __init__(
        self,
        beta: float = 0.6,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.1,
        prior_momentum: float = 0.9,
    ):
        super().__init__()
        self.beta = beta
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.prior_momentum = prior_momentum

    def teacher_probs(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(teacher_logits / self.teacher_temperature, dim=-1)

    def updated_prior(
        self, prior: torch.Tensor, teacher_a: torch.Tensor, teacher_b: torch.Tensor
    ) -> torch.Tensor:
        return updated_prior(
            prior, self.teacher_probs(teacher_a), self.teacher_probs(teacher_b), self.prior_momentum
        )

    def forward(self, student_a, student_b, teacher_a, teacher_b, prior) -> torch.Tensor:
        return temi_loss(
            student_a,
            student_b,
            teacher_a,
            teacher_b,
            prior,
            beta=self.beta,
            student_temperature=self.student_temperature,
            teacher_temperature=self.teacher_temperature,
        )


class TEMINet(NeuralNet):
    """skorch net training :class:`TEMIModule` on batches of :class:`NeighborPairs`.

    One step: student and teacher logits of both views, EMA prior update, per-head
    loss (recorded in the batch history as ``head_losses``), backward on the mean
    over heads. Only student parameters are optimised; the teacher follows them
    through :class:`TeacherEMA`.
    """

    def get_all_learnable_params(self):
        yield from self.module_.student.named_parameters(prefix="student")

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        anchors, partners = (view.to(self.device) for view in batch)
        both = torch.cat([anchors, partners])
        student = self.module_.student(both)
        with torch.no_grad():
            teacher = self.module_.teacher(both)
        y_pred = (*student.chunk(2, dim=1), *teacher.chunk(2, dim=1))
        loss = self.get_loss(y_pred, None, X=batch, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": student}

    def get_loss(self, y_pred, y_true=None, X=None, training=False):
        student_a, student_b, teacher_a, teacher_b = y_pred
        prior = self.module_.prior
        if training:
            with torch.no_grad():
                prior.copy_(self.criterion_.updated_prior(prior, teacher_a, teacher_b))
        head_losses = self.criterion_(student_a, student_b, teacher_a, teacher_b, prior)
        if training:
            self.history.record_batch("head_losses", to_numpy(head_losses).tolist())
        return head_losses.mean()


class TeacherEMA(Callback):
    """After every optimizer step, ``teacher <- m * teacher + (1 - m) * student``.

    ``m`` follows a cosine schedule from ``momentum`` to ``final_momentum`` over
    ``total_steps`` (DINO / TEMI).

    Parameters
    ----------
    momentum : float
    total_steps : int
    final_momentum : float, default=1.0
    """

    def __init__(self, momentum: float, total_steps: int, final_momentum: float = 1.0):
        self.momentum = momentum
        self.total_steps = total_steps
        self.final_momentum = final_momentum

    def momentum_at(self, step: int) -> float:
        progress = min(step / max(self.total_steps - 1, 1), 1.0)
        span = self.final_momentum - self.momentum
        return self.final_momentum - span * (math.cos(math.pi * progress) + 1) / 2

    def on_train_begin(self, net, **kwargs):
        self.step_ = 0

    def on_batch_end(self, net, training=False, **kwargs):
        if not training:
            return
        m = self.momentum_at(self.step_)
        student = list(net.module_.student.parameters())
        teacher = list(net.module_.teacher.parameters())
        with torch.no_grad():
            torch._foreach_mul_(teacher, m)
            torch._foreach_add_(teacher, student, alpha=1.0 - m)
        self.step_ += 1


class FreezeLastLayer(Callback):
    """Drop the last layer's gradients during the first ``n_epochs`` epochs."""

    def __init__(self, n_epochs: int = FREEZE_LAST_LAYER_EPOCHS):
        self.n_epochs = n_epochs

    def on_grad_computed(self, net, named_parameters, **kwargs):
        if len(net.history) <= self.n_epochs:
            for parameter in net.module_.student.last_layer.parameters():
                parameter.grad = None


class HeadLossHistory(Callback):
    """Record each head's epoch-mean loss as ``head_losses`` in the epoch history."""

    def on_epoch_end(self, net, **kwargs):
        losses = np.asarray(net.history[-1, "batches", :, "head_losses"], dtype=np.float64)
        net.history.record("head_losses", losses.mean(axis=0).tolist())


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``final_ratio``.

    Examples
    --------
    >>> warmup_cosine(0, warmup_steps=10, total_steps=100, final_ratio=0.1)
    0.1
    >>> warmup_cosine(100, warmup_steps=10, total_steps=100, final_ratio=0.1)
    0.1
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return final_ratio + (1 - final_ratio) * (math.cos(math.pi * progress) + 1) / 2


def training_budget(
    n_samples: int, batch_size: int, min_steps: int, min_epochs: int
) -> tuple[int, int]:
    """Epochs and optimizer steps: ``max(min_epochs, ceil(min_steps / steps_per_epoch))`` epochs.

    An epoch is ``n_samples // batch_size`` steps (the last partial batch is
    dropped), so a small collection is seen for many epochs until it has had
    ``min_steps`` optimizer steps, while a large one trains for ``min_epochs``.

    Examples
    --------
    >>> training_budget(3000, 256, min_steps=4000, min_epochs=20)
    (364, 4004)
    >>> training_budget(100_000, 256, min_steps=4000, min_epochs=20)
    (20, 7800)
    """
    steps_per_epoch = max(n_samples // batch_size, 1)
    n_epochs = max(min_epochs, math.ceil(min_steps / steps_per_epoch))
    return n_epochs, n_epochs * steps_per_epoch


class TEMIClusterer(ClusterMixin, BaseEstimator):
    """TEMI deep clustering heads trained on fixed embeddings.

    Every sample ``x`` is paired with one of its ``n_neighbors`` cosine nearest
    neighbours ``x'``. ``n_heads`` student MLP heads are trained so that their
    assignments of ``x`` agree with those of ``x'`` by an EMA teacher copy,
    through the beta pointwise mutual information over an EMA cluster prior,
    symmetrised over the pair and weighted by the teacher ensemble's agreement
    ``w(x, x')`` (Adaloglou et al., BMVC 2023). Clusters are predicted by the
    teacher of the head with the lowest final training loss, which needs no labels.

    Training budget: runs last ``max(min_epochs, ceil(min_steps / (n_samples //
    batch_size)))`` epochs, so a small collection still gets ``min_steps``
    optimizer steps (on 3,000 clips an epoch is only ~11 steps, and TEMI needs
    thousands) while a large one is seen ``min_epochs`` times. The learning rate
    warms up linearly over the first ``warmup`` fraction of the steps, then
    decays along a cosine to a tenth of ``lr``; the teacher momentum rises from
    ``teacher_momentum`` to 1 along a cosine.

    Parameters
    ----------
    n_clusters : int, default=8
    n_heads : int, default=16
        Independent heads trained together (TEMI's README value). Heads of one
        fit land at very different optima (NMI 0.60-0.88 on FSDD speakers) and
        the lowest final loss picks out the best of them, so many small heads
        make the result far less dependent on the seed than a few large ones.
    n_neighbors : int or "auto", default="auto"
        Neighbours to draw partners from. ``"auto"`` is
        ``clip(n_samples // (4 * n_clusters), 5, 50)``, so that the neighbourhood
        stays well inside a cluster on small collections (50 is TEMI's default).
    beta : float, default=0.6
        Exponent of the joint ``(q_s q_t)^beta`` in the pmi (TEMI default).
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
    preprocessing : {"pca_l2", "standardize", "l2"} or None, default="pca_l2"
        Input transform learned in ``fit``: ``"pca_l2"`` standardises, projects on
        ``n_components`` principal components and L2-normalises the rows (it
        helped every head on audio embeddings); ``"standardize"`` is TEMI's
        ``--embed_norm``; ``"l2"`` normalises rows only; ``None`` keeps the input.
    n_components : int, default=64
        PCA dimensions for ``"pca_l2"`` (clipped to the data's rank bound).
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
    predict_with : {"best", "ensemble"}, default="best"
        ``"best"`` uses the teacher of the lowest-loss head; ``"ensemble"``
        averages all teacher heads after matching their cluster indices to the
        best head's on the training data.
    device : str or torch.device, default="auto"
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, pair sampling and shuffling: CPU runs repeat exactly.
    verbose : int, default=0
        ``> 0`` shows a progress bar per epoch.

    Attributes
    ----------
    module_ : TEMIModule
        Trained student and teacher heads and the EMA priors.
    preprocessor_ : sklearn Pipeline or None
        Fitted input transform.
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample.
    best_head_ : int
        Head with the lowest final-epoch training loss.
    head_losses_ : ndarray of shape (n_heads,)
        Final-epoch training loss of each head.
    head_permutations_ : ndarray of shape (n_heads, n_clusters)
        Column order mapping each head's clusters onto the best head's.
    prior_ : ndarray of shape (n_clusters,)
        EMA cluster prior of the best head.
    n_effective_clusters_ : float
        ``exp(entropy(prior_))``: how many clusters the prior actually spreads over.
    history_ : list of dict
        Per-epoch ``train_loss`` (mean over heads), ``head_losses`` and duration.
    n_neighbors_, batch_size_ : int
        Values used.
    n_iter_ : int
        Epochs run.
    n_steps_ : int
        Optimizer steps run.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` has string feature names.

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
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "beta": [Interval(Real, 0, 1, closed="right")],
        "student_temperature": [Interval(Real, 0, None, closed="neither")],
        "teacher_temperature": [Interval(Real, 0, None, closed="neither")],
        "prior_momentum": [Interval(Real, 0, 1, closed="both")],
        "teacher_momentum": [Interval(Real, 0, 1, closed="both")],
        "hidden_dims": [tuple, list],
        "bottleneck_dim": [Interval(Integral, 1, None, closed="left")],
        "preprocessing": [StrOptions({"pca_l2", "standardize", "l2"}), None],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "min_steps": [Interval(Integral, 1, None, closed="left")],
        "min_epochs": [Interval(Integral, 1, None, closed="left")],
        "warmup": [Interval(Real, 0, 1, closed="left")],
        "predict_with": [StrOptions({"best", "ensemble"})],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_heads: int = 16,
        n_neighbors: int | str = "auto",
        beta: float = 0.6,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.1,
        prior_momentum: float = 0.9,
        teacher_momentum: float = 0.996,
        hidden_dims: tuple[int, ...] = (128,),
        bottleneck_dim: int = 64,
        preprocessing: str | None = "pca_l2",
        n_components: int = 64,
        batch_size: int | str = "auto",
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        min_steps: int = 4000,
        min_epochs: int = 20,
        warmup: float = 0.1,
        predict_with: str = "best",
        device: str | torch.device = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.n_neighbors = n_neighbors
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

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Mine neighbours of ``X`` and train the heads.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings, one row per clip.
        y : ignored

        Returns
        -------
        self : TEMIClusterer
        """
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        n_samples = X.shape[0]
        seed = seed_torch(self.random_state)
        device = resolve_device(self.device)
        self.preprocessor_ = self._make_preprocessor(X.shape, seed)
        features = X if self.preprocessor_ is None else self.preprocessor_.fit_transform(X)
        features = np.ascontiguousarray(features, dtype=np.float32)

        if self.n_neighbors == "auto":
            self.n_neighbors_ = int(np.clip(n_samples // (4 * self.n_clusters), 5, 50))
        else:
            self.n_neighbors_ = self.n_neighbors
        self.n_neighbors_ = min(self.n_neighbors_, n_samples - 1)
        neighbors, _ = cosine_knn(features, self.n_neighbors_, device=device)

        if self.batch_size == "auto":
            self.batch_size_ = min(256, max(32, n_samples // 8), n_samples)
        else:
            self.batch_size_ = min(self.batch_size, n_samples)
        self.n_iter_, self.n_steps_ = training_budget(
            n_samples, self.batch_size_, self.min_steps, self.min_epochs
        )
        net = self._make_net(features.shape[1], seed, device)
        pairs = NeighborPairs(torch.from_numpy(features), torch.from_numpy(neighbors), seed)
        net.fit(pairs, None)

        self.module_ = net.module_.eval()
        self.history_ = [
            {key: value for key, value in row.items() if key != "batches"} for row in net.history
        ]
        self.head_losses_ = np.asarray(self.history_[-1]["head_losses"])
        self.best_head_ = int(np.argmin(self.head_losses_))
        self.prior_ = to_numpy(self.module_.prior[self.best_head_]).astype(np.float64)
        entropy = -np.sum(self.prior_ * np.log(np.clip(self.prior_, 1e-12, None)))
        self.n_effective_clusters_ = float(np.exp(entropy))

        head_probs = self._teacher_probs(features)
        self.head_permutations_ = _match_heads(head_probs, self.best_head_)
        self.labels_ = self._combine(head_probs).argmax(axis=1)
        self._warn_if_collapsed()
        return self

    def predict(self, X) -> np.ndarray:
        """Cluster of each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.predict_proba(X).argmax(axis=1)

    def predict_proba(self, X) -> np.ndarray:
        """Soft cluster assignments of the teacher (``predict_with`` decides which heads).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        features = X if self.preprocessor_ is None else self.preprocessor_.transform(X)
        return self._combine(self._teacher_probs(np.asarray(features, dtype=np.float32)))

    def _make_preprocessor(self, shape: tuple[int, int], seed: int):
        if self.preprocessing is None:
            return None
        if self.preprocessing == "l2":
            return make_pipeline(Normalizer())
        if self.preprocessing == "standardize":
            return make_pipeline(StandardScaler())
        n_components = min(self.n_components, *shape)
        return make_pipeline(StandardScaler(), PCA(n_components, random_state=seed), Normalizer())

    def _make_net(self, n_features: int, seed: int, device: torch.device) -> TEMINet:
        heads = MultiHead(
            n_features,
            self.n_clusters,
            self.n_heads,
            tuple(self.hidden_dims),
            self.bottleneck_dim,
            cosine_last_layer=True,
        )
        schedule = partial(
            warmup_cosine,
            warmup_steps=max(int(self.warmup * self.n_steps_), 1),
            total_steps=self.n_steps_,
            final_ratio=0.1,
        )
        callbacks = [
            ("teacher_ema", TeacherEMA(self.teacher_momentum, self.n_steps_)),
            ("freeze_last_layer", FreezeLastLayer()),
            (
                "lr_schedule",
                LRScheduler(
                    torch.optim.lr_scheduler.LambdaLR, lr_lambda=schedule, step_every="batch"
                ),
            ),
            ("head_losses", HeadLossHistory()),
            ("non_finite_loss", StopOnNonFiniteLoss(type(self).__name__)),
            *progress_callbacks(self.verbose),
        ]
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
            iterator_train__collate_fn=_keep_batch,
            iterator_train__generator=make_generator(seed + 1),
            train_split=None,
            callbacks=callbacks,
            device=device,
            verbose=0,
        )

    def _teacher_probs(self, features: np.ndarray) -> np.ndarray:
        """Teacher probabilities of every head, shape ``(n_heads, n_samples, n_clusters)``."""
        device = next(self.module_.parameters()).device
        temperature = self.teacher_temperature
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(features), _INFERENCE_BATCH):
                batch = torch.from_numpy(features[start : start + _INFERENCE_BATCH]).to(device)
                chunks.append(to_numpy(F.softmax(self.module_(batch) / temperature, dim=-1)))
        return np.concatenate(chunks, axis=1)

    def _combine(self, head_probs: np.ndarray) -> np.ndarray:
        if self.predict_with == "best":
            return head_probs[self.best_head_]
        aligned = [
            probs[:, order]
            for probs, order in zip(head_probs, self.head_permutations_, strict=True)
        ]
        return np.mean(aligned, axis=0)

    def _warn_if_collapsed(self):
        n_used = len(np.unique(self.labels_))
        if n_used < self.n_clusters / 2:
            warnings.warn(
                f"{type(self).__name__} put the training data in only {n_used} of "
                f"{self.n_clusters} clusters (effective number of clusters of the prior: "
                f"{self.n_effective_clusters_:.1f}); the data may hold fewer groups, or try "
                "more steps, another lr or fewer n_neighbors",
                UserWarning,
                stacklevel=3,
            )


def _match_heads(head_probs: np.ndarray, reference: int) -> np.ndarray:
    """Per head, the column order that best matches its clusters to the reference head's."""
    n_heads, _, n_clusters = head_probs.shape
    reference_labels = head_probs[reference].argmax(axis=1)
    orders = np.empty((n_heads, n_clusters), dtype=np.int64)
    for head in range(n_heads):
        overlap = np.zeros((n_clusters, n_clusters))
        np.add.at(overlap, (reference_labels, head_probs[head].argmax(axis=1)), 1)
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        orders[head, rows] = cols
    return orders
