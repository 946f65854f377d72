"""The skorch side of DeepDPM: the networks, the loss, the net and the split/merge schedule.

:class:`DeepDPMNet` builds and owns the mixture
(:class:`~skaudiocluster.cluster._dpm_mixture.DPMixture`) the networks learn, from
plain hyperparameters (``mixture__*``), on the head's mask of active units (one
mask, which the head owns); its criterion is :class:`DeepDPMLoss`. The
:class:`SplitMergeSchedule` callback gathers the mixture's statistics batch by batch
and, between epochs, runs the M-steps and the split and merge rounds, keeping the
network's head in step with the mixture.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans
from skorch.callbacks import Callback
from skorch.utils import to_tensor
from torch import nn
from torch.nn import functional as F

from skaudiocluster._training import TrainingNet
from skaudiocluster.cluster._dpm_mixture import DPMixture, smoothed_kl, sub_cluster_loss
from skaudiocluster.cluster._niw import prior_from_data, sufficient_stats
from skaudiocluster.cluster._split_merge import merge_pairs, split_decisions

# The head is refitted after a split or merge round on at most this many training rows.
HEAD_FIT_MAX_SAMPLES = 20_000
# The initial K-means is fitted on at most this many rows (as the official init).
KMEANS_MAX_SAMPLES = 200_000


class DeepDPMModule(nn.Module):
    """Clustering net with a masked ``max_clusters``-wide head and per-cluster sub-nets.

    The cluster net is ``Linear(D, h1) - ReLU - ... - Linear(h_last, max_clusters)``
    over ``hidden_dims`` with logits of inactive units set to ``-inf``. The
    sub-clustering nets are one ``Linear(D, sub_hidden) - ReLU - Linear(sub_hidden,
    2)`` per unit; each point goes through the sub-net of its hard cluster (the
    official block-diagonal mask, evaluated only where it is non-zero).

    Parameters
    ----------
    n_features : int
    max_clusters : int
    hidden_dims : sequence of int, default=(50,)
    sub_hidden : int, default=50
        At least 2 (:meth:`point_sub_nets` uses two hidden units).

    Examples
    --------
    >>> import torch
    >>> module = DeepDPMModule(4, max_clusters=6)
    >>> module.active[:2] = True
    >>> logits, sub_logits = module(torch.zeros(3, 4))
    >>> tuple(logits.shape), tuple(sub_logits.shape), bool(logits[:, 2:].isinf().all())
    ((3, 6), (3, 2), True)
    """

    def __init__(
        self,
        n_features: int,
        max_clusters: int,
        hidden_dims: Sequence[int] = (50,),
        sub_hidden: int = 50,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.cluster_net = nn.Sequential(*layers, nn.Linear(width, max_clusters))
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
        """Duplicate the head unit ``source`` into ``target`` (the mixture activates it)."""
        self.head.weight[target] = self.head.weight[source]
        self.head.bias[target] = self.head.bias[source]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked cluster logits (B, max_clusters) and sub-cluster logits (B, 2)."""
        logits = self.cluster_net(x).masked_fill(~self.active, -math.inf)
        clusters = logits.argmax(dim=1)
        hidden = torch.relu(
            torch.einsum("bd,bdh->bh", x, self.sub_w1[clusters]) + self.sub_b1[clusters]
        )
        sub_logits = torch.einsum("bh,bho->bo", hidden, self.sub_w2[clusters])
        return logits, sub_logits + self.sub_b2[clusters]


class DeepDPMLoss(nn.Module):
    """DeepDPM's loss: ``KL(E-step || cluster net)``, plus the isotropic sub-cluster loss.

    Examples
    --------
    >>> import torch
    >>> target = torch.tensor([[0.5, 0.5]])
    >>> float(DeepDPMLoss()(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 3), target))
    0.0
    """

    def forward(
        self,
        logits: torch.Tensor,
        sub_logits: torch.Tensor,
        x: torch.Tensor,
        target: torch.Tensor,
        sub_means: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of a batch.

        ``logits`` (B, K) are the cluster net's over the active clusters,
        ``target`` (B, K) the mixture's responsibilities; ``sub_means`` (B, 2, D)
        the sub-cluster means of each point's cluster, or ``None`` while the
        mixture has no sub-clusters (the sub-nets are then not trained).
        """
        loss = smoothed_kl(target, F.log_softmax(logits, dim=1))
        if sub_means is not None:
            loss = loss + sub_cluster_loss(x, sub_logits, sub_means)
        return loss


class DeepDPMNet(TrainingNet):
    """skorch net fitting a :class:`DeepDPMModule` to a mixture (its criterion: DeepDPMLoss).

    ``fit(X)`` builds the mixture ``mixture_`` on ``X`` (:meth:`initialize_mixture`)
    after the module: its E-step is what the cluster net learns, its
    sub-clusters what the sub-nets learn (once it has them), and
    :class:`SplitMergeSchedule` updates it during training. The mixture works on
    the module's ``active`` buffer itself, so a split or merge changes the one
    mask that the head and the mixture read.

    Parameters
    ----------
    *args, **kwargs
        :class:`skorch.NeuralNet`'s, and the mixture's hyperparameters as
        ``mixture__<name>`` (:meth:`initialize_mixture`).
    """

    prefixes_ = [*TrainingNet.prefixes_, "mixture"]

    def fit(self, X, y=None, **fit_params):
        self.initialize()
        self.initialize_mixture(X)
        return self.partial_fit(X, y, **fit_params)

    def initialize_mixture(self, X) -> DeepDPMNet:
        """Build ``mixture_`` on the training data ``X`` from the ``mixture__*`` parameters.

        ``n_clusters`` K-means clusters (``seed``) of ``X`` start the mixture,
        under the data-driven NIW prior (``kappa``, ``nu``, ``sigma_scale``,
        ``diagonal``; :func:`~skaudiocluster.cluster._niw.prior_from_data`) with
        weight smoothing ``weight_smoothing``.
        """
        params = self.get_params_for("mixture")
        data = to_tensor(X, device=self.device)
        diagonal = params["diagonal"]
        prior = prior_from_data(
            data,
            kappa=params["kappa"],
            nu=params["nu"],
            sigma_scale=params["sigma_scale"],
            diagonal=diagonal,
        )
        active = self.module_.active
        self.mixture_ = DPMixture(prior, len(active), params["weight_smoothing"], active=active)
        n_init = min(params["n_clusters"], len(data))
        labels = kmeans_labels(data.cpu().numpy(), n_init, params["seed"])
        one_hot = F.one_hot(torch.as_tensor(labels, device=data.device).long(), n_init)
        self.mixture_.set_clusters(
            torch.arange(n_init, device=data.device),
            sufficient_stats(data, one_hot.to(torch.float64), diagonal=diagonal),
        )
        return self

    def get_loss(self, y_pred, y_true=None, X=None, training=False):
        logits, sub_logits = y_pred
        x = to_tensor(X, device=self.device)
        mixture = self.mixture_
        sub_means = None
        if mixture.has_sub_clusters:
            sub_means = mixture.sub_means[logits.detach().argmax(dim=1)]
        return self.criterion_(
            logits[:, mixture.index], sub_logits, x, mixture.e_step(x), sub_means
        )


def kmeans_labels(X: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """K-means labels of all rows, fitted on at most 200,000 of them (as the official init)."""
    sample_seed, kmeans_seed = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(sample_seed)
    sample = X if len(X) <= KMEANS_MAX_SAMPLES else X[rng.choice(len(X), KMEANS_MAX_SAMPLES)]
    kmeans = KMeans(n_clusters, n_init=3, random_state=int(kmeans_seed.generate_state(1)[0]))
    return kmeans.fit(sample).predict(X)


def fit_head_to_mixture(
    module: DeepDPMModule, mixture: DPMixture, rows: torch.Tensor, max_iter: int = 100
):
    """Refit the head's active units to the mixture's responsibilities on ``rows``.

    After a split the two new units are copies, and after a merge the kept unit
    covers only half of its cluster; until the network tells the changed
    clusters apart, the M-step (which uses the network's soft assignments) pulls
    split pairs back together. The hidden layers stay fixed, so this is a
    multinomial logistic regression (L-BFGS, the cluster loss) on their features.
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


def reset_adam_rows(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, rows, sources=None
) -> None:
    """Forget Adam's momentum for ``rows`` of ``param`` (they now hold new or refitted units).

    The second moments are kept (``sources`` given: copied from those rows, e.g. a
    split unit's from the unit it was copied from). Zeroing them too while the
    step count stays would undo the bias correction: the next steps would be
    ``sqrt(1 / (1 - beta2)) ~ 30`` times the gradient's scale in ``exp_avg``'s
    units, 3-6x Adam's usual step.
    """
    state = optimizer.state.get(param, {})
    if "exp_avg" in state:
        state["exp_avg"][rows] = 0
    if sources is not None and "exp_avg_sq" in state:
        state["exp_avg_sq"][rows] = state["exp_avg_sq"][sources]


class SplitMergeSchedule(Callback):
    """DeepDPM's epoch schedule: statistics, M-steps, and alternating split / merge rounds.

    With ``every`` (official 30) and epochs counted from 1: the cluster net
    first learns the K-means mixture; M-steps start after epoch ``25/30
    every``; sub-nets train from epoch ``45/30 every`` (the mixture's
    sub-clusters are seeded at the end of the epoch before); proposals happen at
    epochs ``55/30 every + j every`` (splits for even ``j``, merges for odd
    ``j``); the ``5/30 every`` epochs after a proposal skip the M-step. ``every =
    30`` gives the official 25 / 45 / 55, 85, 115... / 5.

    The mixture is the net's (``net.mixture_``). At the start of training up to
    ``head_fit_size`` training rows are drawn (``seed``) for :func:`fit_head_to_mixture`; they are
    dropped when training ends. Every epoch records ``n_clusters`` and ``event``
    (``"split 2"``, ``"merge 0"`` or ``""``) in the net's history.

    Parameters
    ----------
    every : int
    alpha : float
        Dirichlet-process concentration.
    seed : int
        Seeds the Metropolis-Hastings acceptances and the head-refit rows.
    head_fit_size : int, default=20000
    """

    def __init__(
        self, every: int, alpha: float, seed: int, head_fit_size: int = HEAD_FIT_MAX_SAMPLES
    ):
        self.every = every
        self.alpha = alpha
        self.seed = seed
        self.head_fit_size = head_fit_size

    def _at(self, official_epoch: int) -> int:
        return max(1, round(self.every * official_epoch / 30))

    def initialize(self):
        self.m_step_from_ = self._at(25)
        self.sub_from_ = max(self._at(45), self.m_step_from_ + 1)
        self.first_move_ = max(self._at(55), self.sub_from_ + 1)
        self.freeze_ = self._at(5)
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.frozen_until_ = 0
        moves_seed, rows_seed = np.random.SeedSequence(self.seed).spawn(2)  # two streams
        self.rng_ = np.random.default_rng(moves_seed)
        data = to_tensor(X, device=net.device)
        self.n_samples_ = len(data)
        sample = np.random.default_rng(rows_seed).permutation(len(data))[: self.head_fit_size]
        self.head_fit_rows_ = data[torch.as_tensor(np.sort(sample), device=data.device)]

    def on_train_end(self, net, **kwargs):
        del self.head_fit_rows_, self.rng_  # no copy of the training data outlives the fit

    def on_epoch_begin(self, net, **kwargs):
        net.mixture_.reset_stats()

    def on_batch_end(self, net, batch=None, training=False, y_pred=None, **kwargs):
        if not training:
            return
        epoch = len(net.history)
        mixture = net.mixture_
        logits, sub_logits = y_pred
        mixture.accumulate(
            to_tensor(batch[0], device=net.device),
            logits,
            sub_logits if mixture.has_sub_clusters else None,
            soft=epoch >= self.m_step_from_,
        )

    def on_epoch_end(self, net, **kwargs):
        epoch = len(net.history)
        mixture = net.mixture_
        mixture.count_once(self.n_samples_)
        if epoch >= self.m_step_from_ and epoch > self.frozen_until_:
            mixture.m_step()
            if mixture.has_sub_clusters:
                collapsed = mixture.sub_m_step()
                net.module_.point_sub_nets(collapsed, mixture.sub_means[collapsed])
        if epoch == self.sub_from_ - 1:
            mixture.seed_sub_clusters(mixture.index)
            net.module_.point_sub_nets(mixture.index, mixture.sub_means[mixture.index])
        event = ""
        if self._proposes(epoch, net.max_epochs):
            is_split = (epoch - self.first_move_) // self.every % 2 == 0
            moved = self._split(net) if is_split else self._merge(net)
            if moved:
                fit_head_to_mixture(net.module_, mixture, self.head_fit_rows_)
                for param in (net.module_.head.weight, net.module_.head.bias):
                    reset_adam_rows(net.optimizer_, param, mixture.index)
            event = f"{'split' if is_split else 'merge'} {moved}"
            self.frozen_until_ = epoch + self.freeze_
        net.history.record("n_clusters", mixture.n_clusters)
        net.history.record("event", event)

    def _proposes(self, epoch: int, max_epochs: int) -> bool:
        """Whether ``epoch`` ends with a split or merge round.

        A split round needs a merge round after it (``every`` epochs later, within
        ``max_epochs``): otherwise its splits would never face a merge test.
        """
        if epoch < self.first_move_ or (epoch - self.first_move_) % self.every:
            return False
        is_split = (epoch - self.first_move_) // self.every % 2 == 0
        return not is_split or epoch + self.every <= max_epochs

    def _split(self, net) -> int:
        mixture, module = net.mixture_, net.module_
        index = mixture.index
        sub_index = torch.stack([2 * index, 2 * index + 1], dim=1).flatten()
        accept, log_ratio = split_decisions(
            [s[index] for s in mixture.hard],
            [s[sub_index] for s in mixture.sub_hard],
            mixture.prior,
            self.alpha,
            self.rng_,
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
            for param in (module.head.weight, module.head.bias):
                reset_adam_rows(net.optimizer_, param, [new_slot], [slot])
            self._reset_sub_nets(net, [slot, new_slot], [slot, slot])
        return len(chosen)

    def _merge(self, net) -> int:
        mixture = net.mixture_
        index = mixture.index
        hard = [s[index] for s in mixture.hard]
        means = mixture.means[index]
        pairs = merge_pairs(means, hard, mixture.prior, self.alpha, self.rng_)
        for kept, removed in pairs:
            kept, removed = int(index[kept]), int(index[removed])
            mixture.merge(kept, removed)
            self._reset_sub_nets(net, [kept], [kept])
        return len(pairs)

    @staticmethod
    def _reset_sub_nets(net, slots: list[int], sources: list[int]):
        """Point the sub-nets of ``slots`` at their new sub-clusters and forget their momentum.

        Their second moments come from the sub-nets of ``sources``. The head's rows
        are refitted (and their momentum reset) once the round is over.
        """
        module = net.module_
        slots_t = torch.tensor(slots, device=module.active.device)
        sources_t = torch.tensor(sources, device=module.active.device)
        module.point_sub_nets(slots_t, net.mixture_.sub_means[slots_t])
        for param in (module.sub_w1, module.sub_b1, module.sub_w2, module.sub_b2):
            reset_adam_rows(net.optimizer_, param, slots_t, sources_t)
