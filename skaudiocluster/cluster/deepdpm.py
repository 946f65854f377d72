"""DeepDPM: deep clustering that infers the number of clusters.

Ronen, Finder and Freifeld, "DeepDPM: Deep Clustering With an Unknown Number of
Clusters" (CVPR 2022). A Dirichlet-process Gaussian mixture whose E-step is
amortised by a clustering network, with per-cluster sub-clustering networks that
propose splits; splits and merges are accepted by Metropolis-Hastings ratios of
marginal likelihoods under a Normal-Inverse-Wishart prior (``_niw``,
``_split_merge``). The mixture's parameters and statistics live in ``_dpm_mixture``,
the networks, the skorch net and the epoch schedule in ``_deepdpm_net``.

Changing K with skorch: the head has ``max_clusters`` output units of which the
active ones are unmasked. Parameter shapes then never change, so the optimiser,
skorch's fit loop and pickling all stay valid while
splits activate units and merges mask them; only the optimiser moments of the
touched rows are reset. The cost is a cap on K (``max_clusters``).
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from torch.func import functional_call
from torch.utils.data import BatchSampler, RandomSampler

from skaudiocluster._torch import batched_forward, draw_seeds, to_numpy
from skaudiocluster._training import (
    StopOnNonFiniteLoss,
    epoch_history,
    optimizer_steps,
    progress_callbacks,
)
from skaudiocluster.cluster._base import (
    BUDGET_CONSTRAINTS,
    BaseDeepClusterer,
    check_hidden_dims,
    training_epochs,
)
from skaudiocluster.cluster._deepdpm_net import (
    DeepDPMLoss,
    DeepDPMModule,
    DeepDPMNet,
    SplitMergeSchedule,
)
from skaudiocluster.cluster._dpm_mixture import DPMixture
from skaudiocluster.cluster._k_check import KCheckWarning, check_n_clusters

# Above this dimension covariance_type="auto" uses diagonal covariances: a full
# model keeps 6 * max_clusters D x D statistics and fits D^2 / 2 parameters per
# cluster, which needs thousands of points per cluster at D = 512.
AUTO_DIAGONAL_ABOVE = 64
# On small collections one pass is a handful of steps, too few for the networks to
# follow the mixture between M-steps; an epoch then draws this many batches.
MIN_STEPS_PER_EPOCH = 20
# n_components="auto" (see auto_n_components): one dimension per this many clips, within
# these bounds, from FEW_CLIPS clips up.
CLIPS_PER_DIMENSION = 50
AUTO_MIN_COMPONENTS = 6
AUTO_MAX_COMPONENTS = 32
FEW_CLIPS = 4 * AUTO_MAX_COMPONENTS


def auto_n_components(n_samples: int) -> int:
    """The mixture's dimension under ``n_components="auto"`` for ``n_samples`` clips.

    A split is accepted when the evidence of two Gaussians beats that of one, and
    a full covariance in ``D`` dimensions costs about ``D**2 / 2`` parameters per
    cluster. With too many dimensions for the clips no split pays and one cluster
    is found; with too few, classes that are not Gaussian are cut into pieces.
    One dimension per 50 clips, between 6 and 32, is what worked on speech and
    bird-song embeddings from 150 clips up; below 128 clips (fewer than four per
    dimension at 32) the sets disagreed, so the dimension stays 32 there
    (:ref:`DeepDPM's dimension <bench-deepdpm-auto>`).

    Examples
    --------
    >>> [auto_n_components(n) for n in (60, 300, 1000, 3000)]
    [32, 6, 20, 32]
    """
    if n_samples < FEW_CLIPS:
        return AUTO_MAX_COMPONENTS
    return min(max(n_samples // CLIPS_PER_DIMENSION, AUTO_MIN_COMPONENTS), AUTO_MAX_COMPONENTS)


class DeepDPMClusterer(BaseDeepClusterer):
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
        ``v`` the mean per-feature variance of the preprocessed input: the
        expected cluster spread as a fraction of the data's. The NIW scale is
        ``Psi = prior_sigma_scale * v * (nu - D - 1) * I``. Smaller values let
        clusters be tighter and favour splits.
    weight_smoothing : float, default=0.1
        Dirichlet smoothing of the mixture weights, ``(N_k/N + a) / (1 + K a)``.
    n_components : int, "auto" or None, default="auto"
        Inputs with more features than this are standardised and reduced with
        PCA to ``n_components`` dimensions before ``preprocessing``; ``None``
        keeps every feature. A Gaussian mixture needs few dimensions, the fewer
        the smaller the collection, as every split must pay for a covariance:
        ``"auto"`` grows the dimension with the collection
        (:func:`auto_n_components`: one per 50 clips, between 6 and 32, from 128
        clips up; 32 below), see :ref:`bench-deepdpm-dims`.
    covariance_type : {"auto", "full", "diag"}, default="auto"
        ``"auto"`` uses full covariances up to 64 features (after
        ``n_components``) and diagonal ones above, where a full model has too
        many parameters per cluster; so diagonal covariances are chosen when
        ``n_components`` is ``None`` or above 64 and the input is wider than 64.
    preprocessing : {"l2", "standardize"} or None, default="l2"
        Row L2 normalisation (the official default), per-feature standardisation,
        or nothing, after the PCA of ``n_components``. Applied identically in
        ``predict``.
    hidden_dims : tuple of int, default=(50,)
        Hidden layer widths of the clustering net. Each sub-clustering net has
        one hidden layer of width ``hidden_dims[0]`` (at least 2).
    max_steps : int or None, default=None
        Optimizer steps, rounded up to whole epochs of ``steps_per_epoch``
        steps; ``None``: ``max_epochs`` alone. DeepDPM's budget is epochs, as
        its split/merge schedule counts them.
    max_epochs : int or None, default=150
        At most this many epochs, each an M-step of the mixture (the official
        runs use 500; see ``split_merge_every``). A split round is only held if
        a merge round follows it within the epochs trained.
    split_merge_every : int, default=15
        Epochs between split and merge rounds; the whole schedule scales with it
        (see :class:`~skaudiocluster.cluster._deepdpm_net.SplitMergeSchedule`).
        Half the official schedule (300 epochs, a round every 30): it takes half
        the time and scored as well (:ref:`bench-deepdpm-schedule`).
    batch_size : int, default=128
    steps_per_epoch : int or None, default=None
        Batches drawn per epoch (reshuffling as needed); ``None`` means one pass
        over the data but at least 20 batches.
    lr : float, default=5e-4
        Adam learning rate of the clustering net.
    sub_lr : float, default=5e-3
        Adam learning rate of the sub-clustering nets.
    device : "auto", str or torch.device, default="auto"
        ``"auto"`` is CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        An int makes CPU fits repeat exactly; torch's global generator is left
        untouched.
    n_threads : int or None, default=1
        CPU threads of torch while fitting and predicting (small networks run
        fastest on one); ``None`` keeps torch's setting.
    verbose : int, default=0
        1 shows a progress bar, 2 also skorch's epoch table.
    check_k : bool, default=True
        After training, score k-means partitions of the features the mixture saw
        for K from ``n_clusters_ - 3`` to ``n_clusters_ + 6`` by their
        silhouette less that of one Gaussian of the same mean and covariance,
        and warn (:class:`~skaudiocluster.cluster.KCheckWarning`) when neither
        ``n_clusters_`` nor a neighbour separates them as well as the best K
        (``_k_check.check_n_clusters``; at most 2,000 rows, a few seconds;
        what it catches and misses: :ref:`bench-deepdpm-k-check`).

    Attributes
    ----------
    n_clusters_ : int
        Number of clusters found (units of the head selected by some training point).
    labels_ : ndarray of shape (n_samples,)
    confidence_ : ndarray of shape (n_samples,)
        How surely each training sample sits in its cluster, in [0, 1]: its soft
        assignment to the cluster centres (:meth:`predict_confidence`); the
        lowest are the likely mistakes.
    confidence_model_ : CentroidConfidence
        The cluster centres in ``preprocessor_``'s output and their distance
        scale, from which :meth:`predict_confidence` reads.
    means_ : ndarray of shape (n_clusters_, n_dims)
        Component means in the space the mixture sees (``preprocessor_``'s
        output, ``n_dims`` features).
    covariances_ : ndarray of shape (n_clusters_, n_dims, n_dims)
        Full covariances, or variances of shape (n_clusters_, n_dims) when
        ``covariance_type_ == "diag"``.
    weights_ : ndarray of shape (n_clusters_,)
    covariance_type_ : str
        ``"full"`` or ``"diag"``.
    preprocessor_ : sklearn.pipeline.Pipeline
        The fitted input transform (scaler and PCA when ``n_components``
        applies, then ``preprocessing``).
    module_ : torch.nn.Module
        The trained networks (clustering net and sub-clustering nets), on ``device_``.
    device_ : torch.device
    n_iter_ : int
        Optimizer steps of the fit.
    history_ : skorch.History
        One row per epoch: ``epoch``, ``train_loss``, ``dur``, ``n_clusters`` and
        ``event`` (``"split 2"``, ``"merge 1"`` or ``""``), e.g.
        ``history_[:, "n_clusters"]``.
    k_check_ : KCheck or None
        The check's outcome (``check_k``): the K scored (``candidates``), their
        mean silhouettes (``scores``) and the reference's
        (``reference_scores``), the ``best`` K, the ``plausible`` ones, the
        plausible K nearest ``n_clusters_`` (``suggested``) and whether it
        warned (``warn``); None when ``check_k=False`` or the data are too
        few to score K against a K 2 away.
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
      whose sub-clusters are (re)seeded starts as the cut between them; a
      random one would let the next sub-cluster M-step pull both means onto
      the cluster's.
    * After every round that changed K, the head's active units are refitted
      to the new mixture's responsibilities on up to 20,000 training rows.
      With duplicated units the network splits each pair 50/50 and the M-step,
      which uses the network's assignments, pulls the pair back together.
    * ``Psi`` scales with the data's variance and with ``nu`` (see
      ``prior_sigma_scale``).
    * An epoch has at least 20 batches; its statistics are then rescaled to
      count each point once (the M-step and the split and merge tests weigh
      the evidence of N points, not of the points drawn).
    * Rows of reset units keep Adam's second moments (a split unit takes its
      source's) and lose their momentum only.
    * Units no training point selects at the end are dropped from ``n_clusters_``.

    The networks train in float32; ``predict_proba`` runs the clustering net in
    float64, so that a row's cluster does not depend on the batch it is
    predicted in.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skaudiocluster import DeepDPMClusterer
    >>> X, _ = make_blobs(n_samples=400, centers=4, n_features=3, cluster_std=0.6,
    ...                   random_state=3)
    >>> dpm = DeepDPMClusterer(n_clusters_init=2, max_epochs=18, split_merge_every=3,
    ...                        steps_per_epoch=8, batch_size=32, lr=0.02, sub_lr=0.02,
    ...                        preprocessing="standardize", random_state=0).fit(X)
    >>> dpm.n_clusters_
    4
    """

    _parameter_constraints: dict = {
        **BaseDeepClusterer._parameter_constraints,
        "n_components": [
            *BaseDeepClusterer._parameter_constraints["n_components"],
            StrOptions({"auto"}),
        ],
        "n_clusters_init": [Interval(Integral, 1, None, closed="left")],
        "max_clusters": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "prior_kappa": [Interval(Real, 0, None, closed="neither")],
        "prior_nu": [Interval(Real, 0, None, closed="neither"), None],
        "prior_sigma_scale": [Interval(Real, 0, None, closed="neither")],
        "weight_smoothing": [Interval(Real, 0, None, closed="neither")],
        "covariance_type": [StrOptions({"auto", "full", "diag"})],
        **BUDGET_CONSTRAINTS,
        "split_merge_every": [Interval(Integral, 3, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "sub_lr": [Interval(Real, 0, None, closed="neither")],
        "check_k": ["boolean"],
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
        n_components: int | str | None = "auto",
        covariance_type: str = "auto",
        preprocessing: str | None = "l2",
        hidden_dims: tuple[int, ...] = (50,),
        max_steps: int | None = None,
        max_epochs: int | None = 150,
        split_merge_every: int = 15,
        batch_size: int = 128,
        steps_per_epoch: int | None = None,
        lr: float = 5e-4,
        sub_lr: float = 5e-3,
        device: str | torch.device = "auto",
        random_state=None,
        n_threads: int | None = 1,
        verbose: int = 0,
        check_k: bool = True,
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
        self.preprocessing = preprocessing
        self.hidden_dims = hidden_dims
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.split_merge_every = split_merge_every
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.lr = lr
        self.sub_lr = sub_lr
        self.device = device
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose
        self.check_k = check_k

    def _n_components(self, n_samples: int) -> int | None:
        if self.n_components == "auto":
            return auto_n_components(n_samples)
        return self.n_components

    def _fit_features(self, features: np.ndarray, X, random_state) -> np.ndarray:
        if self.n_clusters_init > self.max_clusters:
            raise ValueError(
                f"n_clusters_init={self.n_clusters_init} exceeds max_clusters={self.max_clusters}"
            )
        hidden_dims = check_hidden_dims(self.hidden_dims)
        if hidden_dims[0] < 2:
            raise ValueError(
                f"hidden_dims[0] must be at least 2 (the sub-clustering nets' width), "
                f"got {self.hidden_dims!r}"
            )
        n_samples, n_features = features.shape
        diagonal = self.covariance_type == "diag" or (
            self.covariance_type == "auto" and n_features > AUTO_DIAGONAL_ABOVE
        )
        self.covariance_type_ = "diag" if diagonal else "full"
        data = torch.from_numpy(features).to(self.device_)
        kmeans_seed, schedule_seed, check_seed = draw_seeds(random_state, 3)

        batch_size = min(self.batch_size, n_samples)
        steps = self.steps_per_epoch or max(-(-n_samples // batch_size), MIN_STEPS_PER_EPOCH)
        net = DeepDPMNet(
            DeepDPMModule,
            criterion=DeepDPMLoss,
            mixture__n_clusters=self.n_clusters_init,
            mixture__seed=kmeans_seed,
            mixture__kappa=self.prior_kappa,
            mixture__nu=self.prior_nu,
            mixture__sigma_scale=self.prior_sigma_scale,
            mixture__diagonal=diagonal,
            mixture__weight_smoothing=self.weight_smoothing,
            module__n_features=n_features,
            module__max_clusters=self.max_clusters,
            module__hidden_dims=hidden_dims,
            module__sub_hidden=hidden_dims[0],
            optimizer=torch.optim.Adam,
            lr=self.lr,
            optimizer__param_groups=[("sub_*", {"lr": self.sub_lr})],
            max_epochs=training_epochs(self.max_steps, self.max_epochs, steps),
            batch_size=batch_size,
            # Whole batches are sampled and indexed at once (no per-row fetch and collate).
            iterator_train__batch_size=None,
            iterator_train__sampler=BatchSampler(
                RandomSampler(range(n_samples), num_samples=steps * batch_size),
                batch_size,
                drop_last=False,
            ),
            train_split=None,
            device=self.device_,
            callbacks=[
                (
                    "split_merge",
                    SplitMergeSchedule(self.split_merge_every, self.alpha, schedule_seed),
                ),
                ("non_finite_loss", StopOnNonFiniteLoss("DeepDPMClusterer")),
                *progress_callbacks(self.verbose, batches_per_epoch=steps, desc="DeepDPMClusterer"),
            ],
            verbose=int(self.verbose >= 2),
        )
        net.fit(data)
        self.module_ = net.module_
        self.history_ = epoch_history([net])
        self.n_iter_ = optimizer_steps([net])
        self._drop_unused_units(net.mixture_, features)
        self.k_check_ = (
            check_n_clusters(features, self.n_clusters_, random_state=check_seed)
            if self.check_k
            else None
        )
        check = self.k_check_
        if self.n_clusters_ == 1 and self.n_clusters_init > 1:
            structure = f" Yet {check.finding()}." if check is not None and check.warn else ""
            warnings.warn(
                f"DeepDPMClusterer found a single cluster in {n_samples} samples: every split "
                f"was rejected. On small or weakly separated collections the split test cannot "
                f"pay for a {n_features}-d {self.covariance_type_} covariance per cluster; "
                f"n_components sets that dimension (fewer dimensions make splits cheaper), or "
                f"give K to a clusterer that takes it (e.g. SPICEClusterer).{structure}",
                KCheckWarning,
                # _fit_features <- fit <- _fit_context <- caller
                stacklevel=4,
            )
        elif check is not None and check.warn:
            warnings.warn(check.message("DeepDPMClusterer"), KCheckWarning, stacklevel=4)
        return features

    def _drop_unused_units(self, mixture: DPMixture, features: np.ndarray):
        """Mask the units no training point selects, so ``n_clusters_`` counts used clusters."""
        slots = mixture.index
        used = self._slot_logits(features).argmax(dim=1).unique().to(slots.device)
        unused = slots[~torch.isin(slots, used)]
        if len(unused):
            mixture.deactivate(unused)  # the module's mask: the mixture works on it
        index = mixture.index
        self.n_clusters_ = len(index)
        self.means_ = to_numpy(mixture.means[index])
        self.covariances_ = to_numpy(mixture.covariances[index])
        self.weights_ = to_numpy(mixture.weights[index])

    def _slot_logits(self, features: np.ndarray) -> torch.Tensor:
        """Masked float64 logits (n, max_clusters) of the clustering net, on the CPU.

        In float64, so that a row's prediction does not depend on its batch.
        """
        net = self.module_.cluster_net
        params = {name: value.detach().double() for name, value in net.named_parameters()}
        logits = batched_forward(
            lambda x: functional_call(net, params, x),
            torch.from_numpy(features).double(),
            device=self.device_,
        )
        return logits.masked_fill(~self.module_.active.cpu(), -math.inf)

    def _proba(self, features: np.ndarray) -> np.ndarray:
        index = self.module_.active.nonzero().flatten().cpu()
        return to_numpy(torch.softmax(self._slot_logits(features)[:, index], dim=1))
