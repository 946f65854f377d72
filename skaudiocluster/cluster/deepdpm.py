"""DeepDPM: deep clustering that infers the number of clusters.

Ronen, Finder and Freifeld, "DeepDPM: Deep Clustering With an Unknown Number of
Clusters" (CVPR 2022). A Dirichlet-process Gaussian mixture whose E-step is
amortised by a clustering network, with per-cluster sub-clustering networks that
propose splits; splits and merges are accepted by Metropolis-Hastings ratios of
marginal likelihoods under a Normal-Inverse-Wishart prior (``_niw``,
``_split_merge``). The mixture's parameters and statistics live in ``_dpm_mixture``.

Changing K with skorch: the head has ``max_clusters`` output units of which the
active ones are unmasked. Parameter shapes then never change, so the optimiser,
skorch's fit loop and pickling all stay valid while
splits activate units and merges mask them; only the optimiser moments of the
touched rows are reset. The cost is a cap on K (``max_clusters``).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.utils import to_tensor
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils.data import BatchSampler, RandomSampler, TensorDataset

from skaudiocluster._torch import resolve_device, seed_torch, to_numpy
from skaudiocluster.cluster._dpm_mixture import DPMixture, smoothed_kl, sub_cluster_loss
from skaudiocluster.cluster._niw import prior_from_data, sufficient_stats
from skaudiocluster.cluster._split_merge import merge_pairs, split_decisions
from skaudiocluster.cluster._training import StopOnNonFiniteLoss, progress_callbacks

# Above this dimension covariance_type="auto" uses diagonal covariances: a full
# model keeps 6 * max_clusters D x D statistics and fits D^2 / 2 parameters per
# cluster, which needs thousands of points per cluster at D = 512.
AUTO_DIAGONAL_ABOVE = 64
# On small collections one pass is a handful of steps, too few for the networks to
# follow the mixture between M-steps; an epoch then draws this many batches.
MIN_STEPS_PER_EPOCH = 20
KMEANS_MAX_SAMPLES = 200_000
HEAD_FIT_MAX_SAMPLES = 20_000
INFERENCE_BATCH = 4096


class DeepDPMModule(nn.Module):
    """Clustering net with a masked ``max_clusters``-wide head and per-cluster sub-nets.

    The cluster net is ``Linear(D, hidden) - ReLU - Linear(hidden, max_clusters)``
    with logits of inactive units set to ``-inf``. The sub-clustering nets are one
    ``Linear(D, sub_hidden) - ReLU - Linear(sub_hidden, 2)`` per unit; each point
    goes through the sub-net of its hard cluster (the official block-diagonal
    mask, evaluated only where it is non-zero).

    Parameters
    ----------
    n_features : int
    max_clusters : int
    hidden : int, default=50
    sub_hidden : int, default=50

    Examples
    --------
    >>> import torch
    >>> module = DeepDPMModule(4, max_clusters=6)
    >>> module.active[:2] = True
    >>> logits, sub_logits = module(torch.zeros(3, 4))
    >>> tuple(logits.shape), tuple(sub_logits.shape), bool(logits[:, 2:].isinf().all())
    ((3, 6), (3, 2), True)
    """

    def __init__(self, n_features: int, max_clusters: int, hidden: int = 50, sub_hidden: int = 50):
        super().__init__()
        self.cluster_net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, max_clusters)
        )
        self.sub_w1 = nn.Parameter(torch.empty(max_clusters, n_features, sub_hidden))
        self.sub_b1 = nn.Parameter(torch.empty(max_clusters, sub_hidden))
        self.sub_w2 = nn.Parameter(torch.empty(max_clusters, sub_hidden, 2))
        self.sub_b2 = nn.Parameter(torch.empty(max_clusters, 2))
        self.register_buffer("active", torch.zeros(max_clusters, dtype=torch.bool))
        self.reset_sub_nets(torch.arange(max_clusters))

    @property
    def head(self) -> nn.Linear:
        return self.cluster_net[-1]

    @torch.no_grad()
    def reset_sub_nets(self, slots: torch.Tensor):
        """Fresh weights for the sub-nets of ``slots`` (:class:`torch.nn.Linear`'s init)."""
        for weight, bias in ((self.sub_w1, self.sub_b1), (self.sub_w2, self.sub_b2)):
            bound = 1.0 / math.sqrt(weight.shape[1])
            weight[slots] = torch.empty_like(weight[slots]).uniform_(-bound, bound)
            bias[slots] = torch.empty_like(bias[slots]).uniform_(-bound, bound)

    @torch.no_grad()
    def point_sub_nets(self, slots: torch.Tensor, sub_means: torch.Tensor, sharpness: float = 4.0):
        """Start the sub-nets of ``slots`` as the split their two sub-cluster means define.

        Two hidden units measure the signed distance from the midpoint along the
        line through the means (1 at a mean) and feed the opposite sub-cluster
        logits with weight ``sharpness``; the other hidden units start with zero
        output weights. A randomly initialised sub-net instead outputs about 1/2
        for both sub-clusters, and the next sub-cluster M-step then moves both
        means to the cluster's mean, where they stay.
        """
        self.reset_sub_nets(slots)
        sub_means = sub_means.to(self.sub_w1.dtype)
        centre = sub_means.mean(dim=1)
        half = (sub_means[:, 1] - sub_means[:, 0]) / 2
        direction = half / (half**2).sum(dim=1, keepdim=True).clamp_min(1e-12)
        offset = (direction * centre).sum(dim=1)
        self.sub_w1[slots, :, 0], self.sub_b1[slots, 0] = direction, -offset
        self.sub_w1[slots, :, 1], self.sub_b1[slots, 1] = -direction, offset
        self.sub_w2[slots] = 0.0
        self.sub_b2[slots] = 0.0
        self.sub_w2[slots, 0, 1] = sharpness
        self.sub_w2[slots, 1, 0] = sharpness

    @torch.no_grad()
    def copy_unit(self, source: int, target: int):
        """Duplicate the head unit ``source`` into ``target`` and activate it."""
        self.head.weight[target] = self.head.weight[source]
        self.head.bias[target] = self.head.bias[source]
        self.active[target] = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked cluster logits (B, max_clusters) and sub-cluster logits (B, 2)."""
        logits = self.cluster_net(x).masked_fill(~self.active, -math.inf)
        clusters = logits.argmax(dim=1)
        hidden = torch.relu(
            torch.einsum("bd,bdh->bh", x, self.sub_w1[clusters]) + self.sub_b1[clusters]
        )
        sub_logits = torch.einsum("bh,bho->bo", hidden, self.sub_w2[clusters])
        return logits, sub_logits + self.sub_b2[clusters]


class DeepDPMNet(NeuralNet):
    """skorch net training the cluster net (KL to the E-step) and the sub-nets (isotropic).

    ``mixture_`` (a :class:`DPMixture`) is attached before training; the
    :class:`SplitMergeSchedule` callback updates it between epochs.
    """

    def get_loss(self, y_pred, y_true=None, X=None, training=False):
        logits, sub_logits = y_pred
        x = to_tensor(X, device=self.device)
        mixture = self.mixture_
        index = mixture.index
        target = mixture.e_step(x)
        loss = smoothed_kl(target, F.log_softmax(logits[:, index], dim=1))
        if getattr(self, "train_sub_nets_", False):
            clusters = logits.detach().argmax(dim=1)
            loss = loss + sub_cluster_loss(x, sub_logits, mixture.sub_means[clusters])
        return loss


def fit_head_to_mixture(
    module: DeepDPMModule, mixture: DPMixture, rows: torch.Tensor, max_iter: int = 100
):
    """Refit the head's active units to the mixture's responsibilities on ``rows``.

    After a split the two new units are copies, and after a merge the kept unit
    covers only half of its cluster; until the network tells the changed
    clusters apart, the M-step (which uses the network's soft assignments) pulls
    split pairs back together. The hidden layer stays fixed, so this is a
    multinomial logistic regression (L-BFGS, the cluster loss) on its features.
    """
    index = mixture.index
    with torch.no_grad():
        hidden = module.cluster_net[:-1](rows)
        target = mixture.e_step(rows).to(hidden.dtype)
    weight = module.head.weight[index].detach().clone().requires_grad_()
    bias = module.head.bias[index].detach().clone().requires_grad_()
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = smoothed_kl(target, F.log_softmax(hidden @ weight.T + bias, dim=1))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        module.head.weight[index] = weight
        module.head.bias[index] = bias


def _reset_adam_rows(optimizer: torch.optim.Optimizer, param: nn.Parameter, rows):
    """Forget Adam's moments for ``rows`` of ``param`` (they now hold new units)."""
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][rows] = 0


class SplitMergeSchedule(Callback):
    """DeepDPM's epoch schedule: statistics, M-steps, and alternating split / merge rounds.

    With ``every = split_merge_every`` (official 30) and epochs counted from 1: the
    cluster net first learns the K-means mixture; M-steps start after epoch
    ``25/30 every``; sub-nets train from epoch ``45/30 every``; proposals happen at
    epochs ``55/30 every + j every`` (splits for even ``j``, merges for odd ``j``);
    the ``5/30 every`` epochs after a proposal skip the M-step. ``every = 30``
    gives the official 25 / 45 / 55, 85, 115... / 5.

    Parameters
    ----------
    every : int
    alpha : float
        Dirichlet-process concentration.
    rng : numpy.random.Generator
        Draws the Metropolis-Hastings acceptances.
    """

    def __init__(self, every: int, alpha: float, rng: np.random.Generator):
        self.every = every
        self.alpha = alpha
        self.rng = rng

    def _at(self, official_epoch: int) -> int:
        return max(1, round(self.every * official_epoch / 30))

    def initialize(self):
        self.m_step_from_ = self._at(25)
        self.sub_from_ = max(self._at(45), self.m_step_from_ + 1)
        self.first_move_ = max(self._at(55), self.sub_from_ + 1)
        self.freeze_ = self._at(5)
        self.frozen_until_ = 0
        return self

    def on_epoch_begin(self, net, **kwargs):
        epoch = len(net.history)
        net.train_sub_nets_ = epoch >= self.sub_from_
        net.mixture_.reset_stats()

    def on_batch_end(self, net, batch=None, training=False, y_pred=None, **kwargs):
        if not training:
            return
        epoch = len(net.history)
        logits, sub_logits = y_pred
        net.mixture_.accumulate(
            to_tensor(batch[0], device=net.device),
            logits,
            sub_logits if net.train_sub_nets_ else None,
            soft=epoch >= self.m_step_from_,
        )

    def on_epoch_end(self, net, **kwargs):
        epoch = len(net.history)
        mixture = net.mixture_
        if epoch >= self.m_step_from_ and epoch > self.frozen_until_:
            mixture.m_step()
            if net.train_sub_nets_:
                collapsed = mixture.sub_m_step()
                net.module_.point_sub_nets(collapsed, mixture.sub_means[collapsed])
        if epoch == self.sub_from_ - 1:
            mixture.seed_sub_clusters(mixture.index)
            net.module_.point_sub_nets(mixture.index, mixture.sub_means[mixture.index])
        event = ""
        if epoch >= self.first_move_ and (epoch - self.first_move_) % self.every == 0:
            is_split = (epoch - self.first_move_) // self.every % 2 == 0
            moved = self._split(net) if is_split else self._merge(net)
            if moved:
                fit_head_to_mixture(net.module_, net.mixture_, net.head_fit_rows_)
                for param in (net.module_.head.weight, net.module_.head.bias):
                    _reset_adam_rows(net.optimizer_, param, mixture.index)
            event = f"{'split' if is_split else 'merge'} {moved}"
            self.frozen_until_ = epoch + self.freeze_
        net.history.record("n_clusters", mixture.n_clusters)
        net.history.record("event", event)

    def _split(self, net) -> int:
        mixture, module = net.mixture_, net.module_
        index = mixture.index
        sub_index = torch.stack([2 * index, 2 * index + 1], dim=1).flatten()
        accept, log_ratio = split_decisions(
            [s[index] for s in mixture.hard],
            [s[sub_index] for s in mixture.sub_hard],
            mixture.prior,
            self.alpha,
            self.rng,
        )
        chosen = np.flatnonzero(accept)
        free = (~mixture.active).nonzero().flatten().tolist()
        if len(chosen) > len(free):
            warnings.warn(
                f"DeepDPM: {len(chosen)} accepted splits but only {len(free)} free units; "
                "raise max_clusters to allow more clusters",
                stacklevel=2,
            )
            chosen = chosen[np.argsort(-log_ratio[chosen])[: len(free)]]
        for k, new_slot in zip(chosen, free):
            slot = int(index[k])
            mixture.split(slot, new_slot)
            module.copy_unit(slot, new_slot)
            self._reset_sub_nets(net, [slot, new_slot])
        return len(chosen)

    def _merge(self, net) -> int:
        mixture, module = net.mixture_, net.module_
        index = mixture.index
        hard = [s[index] for s in mixture.hard]
        means = mixture.means[index]
        pairs = merge_pairs(means, hard, mixture.prior, self.alpha, self.rng)
        for kept, removed in pairs:
            kept, removed = int(index[kept]), int(index[removed])
            mixture.merge(kept, removed)
            module.active[removed] = False
            self._reset_sub_nets(net, [kept])
        return len(pairs)

    @staticmethod
    def _reset_sub_nets(net, slots: list[int]):
        """Point the sub-nets of ``slots`` at their new sub-clusters and forget their moments.

        The head's rows are refitted (and their moments reset) once the round is over.
        """
        module = net.module_
        slots_t = torch.tensor(slots, device=module.active.device)
        module.point_sub_nets(slots_t, net.mixture_.sub_means[slots_t])
        for param in (module.sub_w1, module.sub_b1, module.sub_w2, module.sub_b2):
            _reset_adam_rows(net.optimizer_, param, slots_t)


class DeepDPMClusterer(ClusterMixin, BaseEstimator):
    """DeepDPM: a deep Dirichlet-process Gaussian mixture that infers the number of clusters.

    Starting from a K-means mixture with ``n_clusters_init`` components, a
    clustering network learns the mixture's responsibilities, per-cluster
    sub-clustering networks learn a 2-way split of each cluster, and split and
    merge moves (Metropolis-Hastings under a Normal-Inverse-Wishart prior and a
    Dirichlet process of concentration ``alpha``) change K between epochs.
    ``predict`` is the clustering network's argmax.

    Parameters
    ----------
    n_clusters_init : int, default=3
        Number of K-means clusters to start from (the official README uses 1-10;
        3 is its STL-10 setting). K can grow to ``n_clusters_init * 2 ** (number
        of split rounds)``, so with few epochs start close to the expected K.
    max_clusters : int, default=100
        Width of the network head: the largest K reachable.
    alpha : float, default=10.0
        Dirichlet-process concentration; larger values favour more clusters.
    prior_kappa : float, default=1e-4
        NIW pseudo-count on the means (tiny: means follow the data).
    prior_nu : float or None, default=None
        NIW degrees of freedom, above ``D + 1`` (full) or 2 (diagonal); ``None``
        means ``D + 2`` (full) or 3 (diagonal), the weakest prior with a mean.
        Larger values hold cluster covariances closer to the prior's, which
        stops a Gaussian mixture from cutting non-Gaussian classes into pieces.
    prior_sigma_scale : float, default=0.05
        Prior mean of a cluster covariance, ``prior_sigma_scale * v * I`` with
        ``v`` the mean per-feature variance of the transformed input: the
        expected cluster spread as a fraction of the data's. The NIW scale is
        ``Psi = prior_sigma_scale * v * (nu - D - 1) * I``. Smaller values let
        clusters be tighter and favour splits.
    weight_smoothing : float, default=0.1
        Dirichlet smoothing of the mixture weights, ``(N_k/N + a) / (1 + K a)``.
    n_components : int or None, default=32
        Inputs with more features than this are standardised and reduced with
        PCA to ``n_components`` dimensions before ``transform_input``; ``None``
        keeps every feature. A Gaussian mixture needs few dimensions: on FSDD's
        512-d BYOL-A embeddings it finds the 6 speakers after PCA to 32 (full
        covariances) but 24 clusters on all 512 (diagonal ones).
    covariance_type : {"auto", "full", "diag"}, default="auto"
        ``"auto"`` uses full covariances up to 64 features (after
        ``n_components``) and diagonal ones above, where a full model has too
        many parameters per cluster; so diagonal covariances are chosen when
        ``n_components`` is ``None`` or above 64 and the input is wider than 64.
    transform_input : {"l2", "standard", "none"}, default="l2"
        Row L2 normalisation (the official default), per-feature standardisation,
        or nothing. Applied identically in ``predict``.
    hidden_size : int, default=50
        Hidden width of the clustering net and of each sub-clustering net.
    max_epochs : int, default=300
        Passes over the data (the official runs use 500).
    split_merge_every : int, default=30
        Epochs between split and merge rounds; the whole schedule scales with it
        (see :class:`SplitMergeSchedule`).
    batch_size : int, default=128
    steps_per_epoch : int or None, default=None
        Batches drawn per epoch (reshuffling as needed); ``None`` means one pass
        over the data but at least 20 batches.
    lr : float, default=5e-4
        Adam learning rate of the clustering net.
    sub_lr : float, default=5e-3
        Adam learning rate of the sub-clustering nets.
    device : str, default="auto"
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
        1 shows a progress bar per epoch, 2 also skorch's epoch table.

    Attributes
    ----------
    n_clusters_ : int
        Number of clusters found (units of the head selected by some training point).
    labels_ : ndarray of shape (n_samples,)
    means_ : ndarray of shape (n_clusters_, n_dims)
        Component means in the space the mixture sees (``input_transformer_``'s
        output, ``n_dims`` features).
    covariances_ : ndarray of shape (n_clusters_, n_dims, n_dims)
        Full covariances, or variances of shape (n_clusters_, n_dims) when
        ``covariance_type_ == "diag"``.
    weights_ : ndarray of shape (n_clusters_,)
    covariance_type_ : str
        ``"full"`` or ``"diag"``.
    input_transformer_ : sklearn.pipeline.Pipeline
        The fitted preprocessing (scaler and PCA when ``n_components`` applies,
        then ``transform_input``).
    module_ : DeepDPMModule
    net_ : DeepDPMNet
    history_ : skorch.History
        Per epoch: ``train_loss``, ``n_clusters`` and ``event`` (split/merge counts),
        e.g. ``history_[:, "n_clusters"]``.
    n_features_in_ : int

    Notes
    -----
    Departures from the official code, each for a stated reason:

    * Statistics (weighted counts, sums, outer products) are accumulated per
      batch, so an epoch is linear in N (the official per-batch concatenation is
      quadratic); Cholesky factors are computed once per epoch.
    * The marginal likelihood centres the scatter on the sample mean (the exact
      NIW evidence); posterior means use the raw soft count ``N_k``.
    * New sub-clusters are seeded from the halves of each cluster along its
      principal axis (no pass over the points, official: 1-D 2-means); a merged
      cluster's sub-clusters are the two clusters it was made from. A sub-net
      whose sub-clusters are (re)seeded starts as the cut between them
      (:meth:`DeepDPMModule.point_sub_nets`); a random one would let the next
      sub-cluster M-step pull both means onto the cluster's.
    * After every round that changed K, the head's active units are refitted
      to the new mixture's responsibilities (:func:`fit_head_to_mixture`).
      With duplicated units the network splits each pair 50/50 and the M-step,
      which uses the network's assignments, pulls the pair back together.
    * ``Psi`` scales with the data's variance and with ``nu`` (see
      ``prior_sigma_scale``).
    * An epoch has at least 20 batches, and training runs on one CPU thread.
    * Units no training point selects at the end are dropped from ``n_clusters_``.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skaudiocluster import DeepDPMClusterer
    >>> X, _ = make_blobs(n_samples=400, centers=4, n_features=3, cluster_std=0.6,
    ...                   random_state=3)
    >>> dpm = DeepDPMClusterer(n_clusters_init=2, max_epochs=18, split_merge_every=3,
    ...                        steps_per_epoch=8, batch_size=32, lr=0.02, sub_lr=0.02,
    ...                        transform_input="standard", random_state=0).fit(X)
    >>> dpm.n_clusters_
    4
    """

    _parameter_constraints: dict = {
        "n_clusters_init": [Interval(Integral, 1, None, closed="left")],
        "max_clusters": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "prior_kappa": [Interval(Real, 0, None, closed="neither")],
        "prior_nu": [Interval(Real, 0, None, closed="neither"), None],
        "prior_sigma_scale": [Interval(Real, 0, None, closed="neither")],
        "weight_smoothing": [Interval(Real, 0, None, closed="neither")],
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "covariance_type": [StrOptions({"auto", "full", "diag"})],
        "transform_input": [StrOptions({"l2", "standard", "none"})],
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "split_merge_every": [Interval(Integral, 3, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "sub_lr": [Interval(Real, 0, None, closed="neither")],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_clusters_init: int = 3,
        *,
        max_clusters: int = 100,
        alpha: float = 10.0,
        prior_kappa: float = 1e-4,
        prior_nu: float | None = None,
        prior_sigma_scale: float = 0.05,
        weight_smoothing: float = 0.1,
        n_components: int | None = 32,
        covariance_type: str = "auto",
        transform_input: str = "l2",
        hidden_size: int = 50,
        max_epochs: int = 300,
        split_merge_every: int = 30,
        batch_size: int = 128,
        steps_per_epoch: int | None = None,
        lr: float = 5e-4,
        sub_lr: float = 5e-3,
        device: str = "auto",
        random_state=None,
        verbose: int = 0,
    ):
        self.n_clusters_init = n_clusters_init
        self.max_clusters = max_clusters
        self.alpha = alpha
        self.prior_kappa = prior_kappa
        self.prior_nu = prior_nu
        self.prior_sigma_scale = prior_sigma_scale
        self.weight_smoothing = weight_smoothing
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.transform_input = transform_input
        self.hidden_size = hidden_size
        self.max_epochs = max_epochs
        self.split_merge_every = split_merge_every
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.lr = lr
        self.sub_lr = sub_lr
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the mixture and its networks to ``X`` (n_samples, n_features).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self : DeepDPMClusterer
        """
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        if self.n_clusters_init > self.max_clusters:
            raise ValueError(
                f"n_clusters_init={self.n_clusters_init} exceeds max_clusters={self.max_clusters}"
            )
        seed = seed_torch(self.random_state)
        device = resolve_device(self.device)
        self.input_transformer_ = self._make_input_transformer(X, seed).fit(X)
        Xt = self.input_transformer_.transform(X).astype(np.float32)
        n_samples, n_features = Xt.shape
        diagonal = self.covariance_type == "diag" or (
            self.covariance_type == "auto" and n_features > AUTO_DIAGONAL_ABOVE
        )
        self.covariance_type_ = "diag" if diagonal else "full"
        data = torch.from_numpy(Xt).to(device)
        prior = prior_from_data(
            data,
            kappa=self.prior_kappa,
            nu=self.prior_nu,
            sigma_scale=self.prior_sigma_scale,
            diagonal=diagonal,
        )
        mixture = DPMixture(prior, self.max_clusters, self.weight_smoothing)
        n_init = min(self.n_clusters_init, n_samples)
        init_labels = torch.as_tensor(_kmeans_labels(Xt, n_init, seed), device=device)
        one_hot = F.one_hot(init_labels.long(), n_init).to(torch.float64)
        mixture.set_clusters(
            torch.arange(one_hot.shape[1], device=device),
            sufficient_stats(data, one_hot, diagonal=diagonal),
        )

        schedule = SplitMergeSchedule(
            self.split_merge_every, self.alpha, np.random.default_rng(seed)
        )
        self.net_ = self._make_net(n_samples, n_features, schedule, device)
        self.net_.initialize()
        self.net_.module_.active.copy_(mixture.active)
        self.net_.mixture_ = mixture
        sample = np.random.default_rng(seed).permutation(n_samples)[:HEAD_FIT_MAX_SAMPLES]
        self.net_.head_fit_rows_ = data[torch.as_tensor(np.sort(sample), device=device)]
        # Rows and a dummy target; batches are fancy-indexed whole (see _make_net).
        rows = TensorDataset(data, torch.zeros(n_samples, device=device))
        with _one_cpu_thread(device):
            self.net_.partial_fit(rows, None)  # fit() would re-initialise the module
        del self.net_.head_fit_rows_  # training data has no place in the fitted estimator

        self.module_ = self.net_.module_
        self.history_ = self.net_.history
        self._drop_unused_units(Xt)
        self.labels_ = self.predict(X)
        return self

    def _make_input_transformer(self, X: np.ndarray, seed: int):
        steps = []
        if self.n_components is not None and X.shape[1] > self.n_components:
            n_components = min(self.n_components, X.shape[0])
            steps += [StandardScaler(), PCA(n_components, svd_solver="full", random_state=seed)]
        last = {"l2": Normalizer, "standard": StandardScaler, "none": FunctionTransformer}
        return make_pipeline(*steps, last[self.transform_input]())

    def _make_net(
        self, n_samples: int, n_features: int, schedule: SplitMergeSchedule, device
    ) -> DeepDPMNet:
        batch_size = min(self.batch_size, n_samples)
        steps = self.steps_per_epoch or max(-(-n_samples // batch_size), MIN_STEPS_PER_EPOCH)
        return DeepDPMNet(
            DeepDPMModule,
            module__n_features=n_features,
            module__max_clusters=self.max_clusters,
            module__hidden=self.hidden_size,
            module__sub_hidden=self.hidden_size,
            criterion=nn.Identity,
            optimizer=torch.optim.Adam,
            lr=self.lr,
            optimizer__param_groups=[("sub_*", {"lr": self.sub_lr})],
            max_epochs=self.max_epochs,
            batch_size=batch_size,
            # Whole batches are sampled and indexed at once (no per-row fetch and collate).
            iterator_train__batch_size=None,
            iterator_train__sampler=BatchSampler(
                RandomSampler(range(n_samples), num_samples=steps * batch_size),
                batch_size,
                drop_last=False,
            ),
            train_split=None,
            device=str(device),
            callbacks=[
                ("split_merge", schedule),
                ("nonfinite", StopOnNonFiniteLoss("DeepDPMClusterer")),
                *progress_callbacks(self.verbose),
            ],
            verbose=int(self.verbose >= 2),
        )

    def _drop_unused_units(self, Xt: np.ndarray):
        """Mask the units no training point selects, so ``n_clusters_`` counts used clusters."""
        mixture = self.net_.mixture_
        slots = mixture.index
        used = np.unique(self._slot_logits(Xt).argmax(axis=1))
        unused = slots[~torch.isin(slots, torch.as_tensor(used, device=slots.device))]
        if len(unused):
            mixture.deactivate(unused)
            self.module_.active[unused] = False
        index = mixture.index
        self.n_clusters_ = len(index)
        self.means_ = to_numpy(mixture.means[index])
        self.covariances_ = to_numpy(mixture.covariances[index])
        self.weights_ = to_numpy(mixture.weights[index])

    @torch.no_grad()
    def _slot_logits(self, Xt: np.ndarray) -> np.ndarray:
        # In float64, so that a row's prediction does not depend on its batch.
        net = self.module_.cluster_net
        params = {name: value.double() for name, value in net.named_parameters()}
        data = torch.from_numpy(Xt).to(self.module_.active.device, torch.float64)
        chunks = [functional_call(net, params, x) for x in torch.split(data, INFERENCE_BATCH)]
        logits = torch.cat(chunks).masked_fill(~self.module_.active, -math.inf)
        return logits.detach().cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Soft assignments of the clustering network, shape (n_samples, n_clusters_).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters_)
        """
        check_is_fitted(self)
        # float64 throughout: scikit-learn's float32 transforms round a value
        # differently depending on where it sits in memory.
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Xt = self.input_transformer_.transform(X)
        index = self.module_.active.nonzero().flatten().cpu().numpy()
        logits = torch.from_numpy(self._slot_logits(Xt)[:, index])
        return to_numpy(torch.softmax(logits, dim=1))

    def predict(self, X) -> np.ndarray:
        """Cluster of each sample: the argmax of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.predict_proba(X).argmax(axis=1)


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Train on one CPU thread: the networks and batches are so small that torch's
    intra-op threads cost more than they save (15x the CPU time on a busy 2-core
    machine); the previous setting is restored afterwards."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _kmeans_labels(X: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """K-means labels of all rows, fitted on at most 200,000 of them (as the official init)."""
    rng = np.random.default_rng(seed)
    sample = X if len(X) <= KMEANS_MAX_SAMPLES else X[rng.choice(len(X), KMEANS_MAX_SAMPLES)]
    kmeans = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(sample)
    return kmeans.predict(X)
