"""SPICE clustering: prototype pseudo-labels, reliable labels, then FixMatch-style training.

Niu, Shan and Wang, "SPICE: Semantic Pseudo-labeling for Image Clustering", IEEE TIP 2022.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context, clone
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.utils import to_tensor
from torch import nn
from torch.nn import functional as F

from skaudiocluster._torch import DEVICE_OPTIONS, make_generator, resolve_device, seed_torch
from skaudiocluster.audio import check_audio
from skaudiocluster.augment import strong_augmentation, weak_augmentation
from skaudiocluster.cluster._heads import MultiHead, copy_head
from skaudiocluster.cluster._spice_labels import (
    double_softmax_cross_entropy,
    fixmatch_loss,
    flatten_selection,
    reliable_labels,
    select_prototype_samples,
)
from skaudiocluster.cluster._training import StopOnNonFiniteLoss, progress_callbacks
from skaudiocluster.transformers._byola_net import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    LogMelFrontend,
    padded_waveforms,
)
from skaudiocluster.transformers.byola import BYOLAEmbedder

__all__ = ["SPICEClusterer"]

_INFERENCE_CHUNK = 4096


def embedding_view(
    x: torch.Tensor, *, noise: float, dropout: float, generator: torch.Generator
) -> torch.Tensor:
    """A randomly perturbed copy of L2-normalised embeddings (rows stay unit length).

    Gaussian noise of expected norm ``noise`` (relative to the unit rows) is added, a
    fraction ``dropout`` of the coordinates is zeroed (inverted scaling), and rows are
    re-normalised.

    Examples
    --------
    >>> import torch
    >>> x = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    >>> view = embedding_view(x, noise=0.2, dropout=0.1, generator=torch.Generator())
    >>> torch.allclose(view.norm(dim=1), torch.ones(4))
    True
    """
    out = x
    if noise:
        scale = noise / x.shape[-1] ** 0.5
        out = out + scale * torch.randn(x.shape, generator=generator).to(x.device)
    if dropout:
        keep = torch.rand(x.shape, generator=generator).to(x.device) >= dropout
        out = out * keep / (1.0 - dropout)
    return F.normalize(out, dim=-1)


class _PrototypeBatches:
    """SPICE-Self's training batches for one epoch, labelled by the heads on the fly.

    Shuffled big batches of ``big_batch_size`` samples are scored by every head on weak
    views; each head's prototype pseudo-labels are then replayed ``n_repeats`` times in
    shuffled mini-batches of strong views. Yields ``(x, y)`` with ``x`` of shape
    ``(batch, n_heads, D)`` (head ``h`` trains on ``x[:, h]``) and ``y`` ``(batch, n_heads)``.
    """

    def __init__(self, net: _SPICESelfNet, features: torch.Tensor):
        self.net = net
        self.features = features
        self.generator = make_generator(net.seed)

    def __iter__(self):
        net, features, gen = self.net, self.features, self.generator
        n_samples = len(features)
        big = min(net.big_batch_size, n_samples)
        order = torch.randperm(n_samples, generator=gen)
        for start in range(0, n_samples - big + 1, big):
            clean = features[order[start : start + big]]
            weak = embedding_view(clean, **net.weak_view, generator=gen)
            with torch.no_grad():
                net.module_.eval()
                proba = net.module_(weak.to(net.device)).softmax(dim=-1).cpu()
            selected = select_prototype_samples(
                proba, clean, center_ratio=net.center_ratio, select_ratio=1.0
            )
            indices, labels = flatten_selection(selected)  # (H, L)
            n_heads, length = indices.shape
            for _ in range(net.n_repeats):
                shuffle = torch.argsort(torch.rand(n_heads, length, generator=gen), dim=1)
                for low in range(0, length, net.batch_size):
                    cols = shuffle[:, low : low + net.batch_size]
                    x = embedding_view(
                        clean[indices.gather(1, cols)], **net.strong_view, generator=gen
                    )
                    yield x.transpose(0, 1), labels.gather(1, cols).T


class _SPICESelfNet(NeuralNet):
    """skorch net training SPICE-Self's cluster heads on prototype pseudo-labels."""

    def __init__(
        self,
        *args,
        big_batch_size=5000,
        n_repeats=8,
        center_ratio=0.5,
        double_softmax=True,
        weak_view=None,
        strong_view=None,
        seed=0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.big_batch_size = big_batch_size
        self.n_repeats = n_repeats
        self.center_ratio = center_ratio
        self.double_softmax = double_softmax
        self.weak_view = weak_view
        self.strong_view = strong_view
        self.seed = seed

    def get_iterator(self, dataset, training=False):
        if training:
            return _PrototypeBatches(self, torch.as_tensor(dataset.X))
        return super().get_iterator(dataset, training=training)

    def infer(self, x, **fit_params):
        # Batches arrive as (batch, n_heads, D): head h trains on its own samples.
        return self.module_(x.to(self.device).transpose(0, 1))

    def get_loss(self, y_pred, y_true, X=None, training=False):
        target = y_true.to(self.device).T
        losses = double_softmax_cross_entropy(y_pred, target, double_softmax=self.double_softmax)
        return losses.mean()

    def head_losses(self, features: torch.Tensor) -> np.ndarray:
        """Each head's loss on its own prototype pseudo-labels of the whole set (clean views)."""
        logits = _forward(self.module_, features, self.device)  # (H, N, K)
        selected = select_prototype_samples(
            logits.softmax(dim=-1), features, center_ratio=self.center_ratio
        )
        indices, labels = flatten_selection(selected)
        own = logits.gather(1, indices.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        losses = double_softmax_cross_entropy(own, labels, double_softmax=self.double_softmax)
        return losses.numpy()


class _RecordHeadLosses(Callback):
    """Record every head's label-free selection loss in the history after each epoch."""

    def on_epoch_end(self, net, dataset_train=None, **kwargs):
        losses = net.head_losses(torch.as_tensor(dataset_train.X))
        net.history.record("head_losses", losses.tolist())


class _FixMatchBatches:
    """FixMatch batches for one epoch: all samples unlabelled, reliable ones also labelled.

    Each step takes ``unlabelled_ratio * batch_size`` unlabelled samples (a shuffled pass
    over the whole set) and ``batch_size`` labelled ones (cycling through the reliable
    set) and yields ``(inputs, (n_labelled, targets))``: ``inputs`` is one batch of weak
    labelled views, weak unlabelled views and strong unlabelled views, in that order,
    made by the net's ``make_batch``.
    """

    def __init__(self, net: _FixMatchNet, n_samples: int):
        self.net = net
        self.n_samples = n_samples
        self.generator = make_generator(net.seed)

    def __iter__(self):
        net, gen = self.net, self.generator
        labelled, labels = torch.as_tensor(net.labelled), torch.as_tensor(net.labels)
        unlabelled_batch = net.batch_size * net.unlabelled_ratio
        order = torch.randperm(self.n_samples, generator=gen)
        labelled_batches = _cycling_batches(len(labelled), net.batch_size, gen)
        for low in range(0, self.n_samples, unlabelled_batch):
            picked = next(labelled_batches)
            inputs = net.make_batch(labelled[picked], order[low : low + unlabelled_batch], gen)
            yield inputs, (len(picked), labels[picked])


def _cycling_batches(n_items: int, batch_size: int, generator: torch.Generator):
    """Endless batches of indices below ``n_items``, each item once per shuffled round."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n_items, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


class _FixMatchNet(NeuralNet):
    """skorch net for SPICE-Semi on embeddings: reliable labels plus FixMatch consistency.

    ``fit`` takes sample indices; ``data`` holds the preprocessed embeddings.
    """

    def __init__(
        self,
        *args,
        data=None,
        labelled=None,
        labels=None,
        unlabelled_ratio=7,
        threshold=0.95,
        unlabelled_weight=1.0,
        weak_view=None,
        strong_view=None,
        seed=0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.data = data
        self.labelled = labelled
        self.labels = labels
        self.unlabelled_ratio = unlabelled_ratio
        self.threshold = threshold
        self.unlabelled_weight = unlabelled_weight
        self.weak_view = weak_view
        self.strong_view = strong_view
        self.seed = seed

    def get_iterator(self, dataset, training=False):
        if training:
            return _FixMatchBatches(self, len(dataset))
        return super().get_iterator(dataset, training=training)

    def make_batch(self, labelled, unlabelled, generator):
        """Weak labelled, weak unlabelled and strong unlabelled embedding views, stacked."""
        views = [
            (labelled, self.weak_view),
            (unlabelled, self.weak_view),
            (unlabelled, self.strong_view),
        ]
        return torch.cat(
            [embedding_view(self.data[index], **view, generator=generator) for index, view in views]
        )

    def infer(self, x, **fit_params):
        x = to_tensor(x, device=self.device)
        out = self.module_(*x) if isinstance(x, (tuple, list)) else self.module_(x)
        return out[0]

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        inputs, (n_labelled, targets) = batch
        # One forward pass over all views, as FixMatch does, so batch statistics see them all.
        logits = self.infer(inputs)
        weak, strong = logits[n_labelled:].chunk(2)
        loss = fixmatch_loss(
            logits[:n_labelled],
            targets.to(self.device),
            weak,
            strong,
            threshold=self.threshold,
            unlabelled_weight=self.unlabelled_weight,
        )
        loss.backward()
        return {"loss": loss, "y_pred": logits}


class _JointFixMatchNet(_FixMatchNet):
    """SPICE-Semi training an audio encoder and the classifier together.

    ``data`` is the list of 16 kHz clips (1-D tensors); views are made with the
    ``weak_view`` / ``strong_view`` :class:`~skaudiocluster.augment.AudioAugmentation`.
    """

    def make_batch(self, labelled, unlabelled, generator):
        """Padded waveforms and valid frame counts of the three groups of views."""
        views = [
            (labelled, self.weak_view),
            (unlabelled, self.weak_view),
            (unlabelled, self.strong_view),
        ]
        clips = [
            view(self.data[i], generator=generator).numpy()
            for index, view in views
            for i in index.tolist()
        ]
        return padded_waveforms(clips)


class _JointNetwork(nn.Module):
    """Waveforms -> BYOL-A log-mel -> encoder -> frozen standardise / PCA / L2 -> classifier.

    The preprocessing is the fitted scikit-learn pipeline written as one affine map
    (buffers, not trained), so the classifier sees exactly what it was trained on.
    """

    def __init__(self, embedder, preprocessor, classifier: MultiHead):
        super().__init__()
        self.frontend = LogMelFrontend()
        self.encoder = embedder.module_
        self.norm_stats = (embedder.mean_, embedder.std_)
        weight, bias = _affine_preprocessing(preprocessor)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.classifier = classifier

    def train(self, mode: bool = True) -> _JointNetwork:
        # The encoder's batch-norm statistics stay the pretrained ones: batches of strong
        # views (noise, fades) would drag them away from the clean audio seen at predict.
        super().train(mode)
        for module in self.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mean, std = self.norm_stats
        lms = (self.frontend(waves) - mean) / std
        embeddings = self.encoder(lms.unsqueeze(1), lengths)
        return self.classifier(F.normalize(embeddings @ self.weight + self.bias, dim=-1))


def _affine_preprocessing(preprocessor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` with ``x @ W + b`` equal to the pipeline's standardise-then-PCA step."""
    scaler = preprocessor.named_steps["standardscaler"]
    weight = np.diag(1.0 / scaler.scale_)
    bias = -scaler.mean_ / scaler.scale_
    pca = preprocessor.named_steps.get("pca")
    if pca is not None:
        weight = weight @ pca.components_.T
        bias = (bias - pca.mean_) @ pca.components_.T
    return (
        torch.as_tensor(weight, dtype=torch.float32),
        torch.as_tensor(bias, dtype=torch.float32),
    )


def _forward(module: nn.Module, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits of ``module`` on ``features`` in chunks, in eval mode, on the CPU."""
    module.eval()
    with torch.inference_mode():
        chunks = [
            module(features[low : low + _INFERENCE_CHUNK].to(device)).cpu()
            for low in range(0, len(features), _INFERENCE_CHUNK)
        ]
    return torch.cat(chunks, dim=-2)


class SPICEClusterer(ClusterMixin, BaseEstimator):
    """SPICE deep clustering on embeddings: prototype pseudo-labels, then semi-supervision.

    Fitting runs SPICE's stages on 2-D features (for example BYOL-A embeddings):

    1. **SPICE-Self.** Inputs are standardised, reduced with PCA to ``n_components`` and
       L2-normalised. ``n_heads`` MLP heads ``Linear-ReLU-Linear-softmax`` are trained
       on prototype pseudo-labels: in each big batch of ``big_batch_size`` samples, the
       ``center_ratio * M / K`` most confident samples of a cluster are averaged into a
       prototype and the ``M / K`` samples nearest to it (cosine) get that cluster's label;
       each head is trained on its labels with the cross-entropy of its *probabilities*
       (the paper's double softmax). After training, the head with the lowest loss on its
       own pseudo-labels of the whole set is kept; no ground truth is used.
    2. **Reliable labels.** A sample is reliable when at least ``min_agreement`` of its
       ``n_neighbors`` cosine neighbours share its cluster and its confidence exceeds
       ``min_confidence``; clusters are balanced (see
       :func:`~skaudiocluster.cluster._spice_labels.reliable_labels` for the guard used
       when a cluster has too few reliable samples).
    3. **SPICE-Semi** (when ``semi_max_epochs > 0``). A fresh MLP classifier is trained
       with a FixMatch objective: cross-entropy on the reliable labels plus, on every
       sample, cross-entropy of a strong view against the hard prediction on a weak view
       when that prediction is at least ``threshold`` confident.

    With an ``encoder`` (a :class:`~skaudiocluster.transformers.byola.BYOLAEmbedder`),
    ``fit`` takes raw audio: the encoder (cloned to ``encoder_``) embeds the clips, stages
    1-3 run on those embeddings as above, and then stage 3 continues for
    ``joint_max_epochs`` on the audio itself, training the encoder (learning rate
    ``encoder_lr``) and the classifier together. Its weak views are random crops of
    90-100 % of each clip with +/- 3 dB gain; the strong views crop 60-100 %, change the
    gain by up to +/- 6 dB, fade in and out and mix in white noise at 10-30 dB SNR
    (:mod:`skaudiocluster.augment`). The paper trains this stage from scratch for about a
    million steps on a GPU; here it starts from the stage-3 classifier trained on the
    embeddings, so a few epochs on a CPU suffice. Parameters of the encoder route as
    ``encoder__<name>``. ``predict`` then embeds new clips with the fine-tuned encoder.

    Departure from the paper: SPICE makes its weak and strong views by augmenting images
    and re-running the frozen encoder at every step. On fixed embeddings there is no
    signal left to augment and re-embedding every step would cost as much as the paper's
    encoder passes, so the views here are made in embedding space: Gaussian noise plus
    feature dropout on the unit-length features, mild (``weak_*``) and heavy
    (``strong_*``), then re-normalised. The prototype similarities still use the clean
    features, as in the paper.

    Parameters
    ----------
    n_clusters : int, default=8
    encoder : BYOLAEmbedder or None, default=None
        Audio encoder; ``None`` means ``X`` holds embeddings already.
    n_heads : int, default=10
        SPICE-Self heads trained together; the lowest-loss one is kept.
    hidden_dim : int, default=512
        Hidden width of the heads and of the stage-3 classifier.
    n_components : int or None, default=64
        PCA dimension of the standardised inputs (clipped to the data); ``None`` skips PCA.
    max_epochs : int, default=30
        SPICE-Self epochs (each replays every big batch ``n_repeats`` times).
    big_batch_size : int, default=5000
        Samples per prototype-labelling big batch (clipped to ``n_samples``).
    batch_size : int, default=128
        Mini-batch size of head training.
    n_repeats : int, default=8
        Training passes over each big batch's pseudo-labels.
    lr : float, default=5e-3
        Adam learning rate of the heads.
    center_ratio : float, default=0.5
        Fraction of ``M / K`` confident samples averaged into each prototype.
    double_softmax : bool, default=True
        Use SPICE's cross-entropy on softmax outputs; ``False`` gives plain cross-entropy.
    weak_noise, weak_dropout : float, default=0.2, 0.1
        Noise norm (relative to unit rows) and feature dropout of the weak views.
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
    semi_max_epochs : int, default=100
        Stage-3 epochs (passes over all samples as unlabelled data); 0 keeps SPICE-Self.
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
    joint_max_epochs : int, default=3
        With ``encoder``: epochs of joint encoder and classifier training on raw audio.
    encoder_lr : float, default=1e-5
        Adam learning rate of the encoder in joint training.
    joint_batch_size : int, default=16
        Labelled clips per joint step (with ``unlabelled_ratio`` times as many unlabelled).
    max_audio_seconds : float, default=2.0
        Longest crop of a clip in joint training.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, batching and views; an int makes CPU runs repeat exactly.
    verbose : int, default=0
        Progress bars when positive.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample.
    labels_reliable_ : ndarray of shape (n_samples,), bool
        Training samples whose SPICE-Self label was kept as a stage-3 target.
    self_labels_ : ndarray of shape (n_samples,)
        Clusters found by SPICE-Self (the selected head) before stage 3.
    n_neighbors_ : int
        Neighbours used by the reliability rule.
    best_head_ : int
        Index of the selected SPICE-Self head.
    head_losses_ : ndarray of shape (n_heads,)
        Final label-free selection loss of every head.
    module_ : torch.nn.Module
        Network from preprocessed embeddings to logits ``(1, n_samples, n_clusters)``:
        the stage-3 classifier, or the selected SPICE-Self head without stage 3.
    preprocessor_ : sklearn Pipeline
        Fitted standardisation, PCA and L2 normalisation.
    history_ : dict
        skorch ``History`` of each stage run, under ``"self"``, ``"semi"`` and ``"joint"``.
    encoder_ : BYOLAEmbedder
        With ``encoder``: the fitted (and jointly trained) encoder.
    n_features_in_ : int
        Without ``encoder``: number of features seen in ``fit``.
    device_ : torch.device

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skaudiocluster.cluster import SPICEClusterer
    >>> X, y = make_blobs(n_samples=120, centers=3, n_features=8, random_state=0)
    >>> spice = SPICEClusterer(n_clusters=3, n_heads=2, hidden_dim=16, max_epochs=2,
    ...                        semi_max_epochs=2, n_neighbors=10, random_state=0)
    >>> spice.fit_predict(X).shape
    (120,)
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "encoder": [BYOLAEmbedder, None],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "hidden_dim": [Interval(Integral, 1, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "big_batch_size": [Interval(Integral, 2, None, closed="left")],
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
        "semi_max_epochs": [Interval(Integral, 0, None, closed="left")],
        "semi_lr": [Interval(Real, 0, None, closed="neither")],
        "semi_batch_size": [Interval(Integral, 1, None, closed="left")],
        "unlabelled_ratio": [Interval(Integral, 1, None, closed="left")],
        "threshold": [Interval(Real, 0, 1, closed="both")],
        "unlabelled_weight": [Interval(Real, 0, None, closed="left")],
        "joint_max_epochs": [Interval(Integral, 0, None, closed="left")],
        "encoder_lr": [Interval(Real, 0, None, closed="neither")],
        "joint_batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_audio_seconds": [Interval(Real, 0, None, closed="neither")],
        "device": [StrOptions(set(DEVICE_OPTIONS)), str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        encoder: BYOLAEmbedder | None = None,
        n_heads: int = 10,
        hidden_dim: int = 512,
        n_components: int | None = 64,
        max_epochs: int = 30,
        big_batch_size: int = 5000,
        batch_size: int = 128,
        n_repeats: int = 8,
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
        semi_max_epochs: int = 100,
        semi_lr: float = 1e-3,
        semi_batch_size: int = 64,
        unlabelled_ratio: int = 7,
        threshold: float = 0.95,
        unlabelled_weight: float = 1.0,
        joint_max_epochs: int = 3,
        encoder_lr: float = 1e-5,
        joint_batch_size: int = 16,
        max_audio_seconds: float = 2.0,
        device: str = "auto",
        random_state=None,
        verbose: int = 0,
    ):
        self.n_clusters = n_clusters
        self.encoder = encoder
        self.n_heads = n_heads
        self.hidden_dim = hidden_dim
        self.n_components = n_components
        self.max_epochs = max_epochs
        self.big_batch_size = big_batch_size
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
        self.semi_max_epochs = semi_max_epochs
        self.semi_lr = semi_lr
        self.semi_batch_size = semi_batch_size
        self.unlabelled_ratio = unlabelled_ratio
        self.threshold = threshold
        self.unlabelled_weight = unlabelled_weight
        self.joint_max_epochs = joint_max_epochs
        self.encoder_lr = encoder_lr
        self.joint_batch_size = joint_batch_size
        self.max_audio_seconds = max_audio_seconds
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit SPICE; ``y`` is ignored.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or raw audio with ``encoder``
            Embeddings; with an ``encoder``, the clips it accepts (arrays or paths).
        y : None
            Ignored.

        Returns
        -------
        self : SPICEClusterer
        """
        self.device_ = resolve_device(self.device)
        seed = seed_torch(self.random_state)
        rng = np.random.RandomState(seed)
        if self.encoder is None:
            embeddings = validate_data(self, X, dtype=[np.float32, np.float64])
        else:
            self.encoder_ = clone(self.encoder).fit(X)
            embeddings = self.encoder_.transform(X)
        n_samples = embeddings.shape[0]
        if n_samples < 2 * self.n_clusters:
            raise ValueError(
                f"n_samples={n_samples} should be >= 2 * n_clusters={2 * self.n_clusters}"
            )
        self.preprocessor_ = self._make_preprocessor(embeddings, seed).fit(embeddings)
        features = torch.as_tensor(self.preprocessor_.transform(embeddings), dtype=torch.float32)

        heads, self.head_losses_, history = self._fit_self(features, seed)
        self.history_ = {"self": history}
        self.best_head_ = int(np.argmin(self.head_losses_))
        head = copy_head(heads, self.best_head_, **self._head_kwargs())
        proba = _forward(head, features, self.device_)[0].softmax(dim=-1).numpy()
        self.self_labels_ = proba.argmax(axis=1)
        # A neighbourhood larger than a typical cluster could never agree with itself.
        self.n_neighbors_ = min(self.n_neighbors, max(1, n_samples // (4 * self.n_clusters)))
        self.labels_reliable_ = reliable_labels(
            features.numpy(),
            proba,
            n_neighbors=self.n_neighbors_,
            min_agreement=self.min_agreement,
            min_confidence=self.min_confidence,
            min_per_cluster=self.min_reliable,
            random_state=rng,
            device=self.device_,
        )
        self.module_ = head
        if self.semi_max_epochs:
            self.module_, self.history_["semi"] = self._fit_semi(features, seed)
        if self.encoder is not None and self.joint_max_epochs:
            self.history_["joint"] = self._fit_joint(X, seed)
            features = self._features(X)
        self.labels_ = self._logits(features).argmax(axis=1)
        return self

    def predict(self, X) -> np.ndarray:
        """Cluster index of each sample of ``X`` (embeddings, or clips with ``encoder``).

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.predict_proba(X).argmax(axis=1)

    def predict_proba(self, X) -> np.ndarray:
        """Cluster probabilities of each sample of ``X`` (embeddings, or clips with ``encoder``).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters), float32
        """
        check_is_fitted(self)
        logits = torch.as_tensor(self._logits(self._features(X)))
        return torch.softmax(logits, dim=1).numpy()

    def _features(self, X) -> torch.Tensor:
        """Preprocessed embeddings of new data."""
        if self.encoder is None:
            embeddings = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        else:
            embeddings = self.encoder_.transform(X)
        return torch.as_tensor(self.preprocessor_.transform(embeddings), dtype=torch.float32)

    def _make_preprocessor(self, X, seed: int):
        steps = [StandardScaler()]
        if self.n_components is not None:
            n_components = min(self.n_components, *X.shape)
            steps.append(PCA(n_components, svd_solver="covariance_eigh", random_state=seed))
        return make_pipeline(*steps, Normalizer())

    def _head_kwargs(self) -> dict:
        return {"hidden_dims": (self.hidden_dim,), "activation": "relu", "init_std": None}

    def _views(self) -> dict:
        return {
            "weak_view": {"noise": self.weak_noise, "dropout": self.weak_dropout},
            "strong_view": {"noise": self.strong_noise, "dropout": self.strong_dropout},
        }

    def _fit_self(self, features: torch.Tensor, seed: int):
        net = _SPICESelfNet(
            MultiHead,
            module__in_features=features.shape[1],
            module__n_clusters=self.n_clusters,
            module__n_heads=self.n_heads,
            **{f"module__{key}": value for key, value in self._head_kwargs().items()},
            criterion=nn.CrossEntropyLoss,  # unused: get_loss computes the per-head loss
            optimizer=torch.optim.Adam,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            big_batch_size=self.big_batch_size,
            n_repeats=self.n_repeats,
            center_ratio=self.center_ratio,
            double_softmax=self.double_softmax,
            seed=seed,
            train_split=None,
            device=self.device_,
            callbacks=[
                ("head_losses", _RecordHeadLosses()),
                ("finite", StopOnNonFiniteLoss("SPICEClusterer (SPICE-Self)")),
                *progress_callbacks(self.verbose),
            ],
            verbose=0,
            **self._views(),
        )
        net.fit(features.numpy())
        return net.module_, np.asarray(net.history[-1, "head_losses"]), net.history

    def _fit_semi(self, features: torch.Tensor, seed: int):
        labelled = np.flatnonzero(self.labels_reliable_)
        net = _FixMatchNet(
            MultiHead,
            module__in_features=features.shape[1],
            module__n_clusters=self.n_clusters,
            module__n_heads=1,
            **{f"module__{key}": value for key, value in self._head_kwargs().items()},
            criterion=nn.CrossEntropyLoss,  # unused: train_step_single computes FixMatch
            optimizer=torch.optim.Adam,
            lr=self.semi_lr,
            max_epochs=self.semi_max_epochs,
            batch_size=self.semi_batch_size,
            data=features,
            labelled=labelled,
            labels=self.self_labels_[labelled],
            unlabelled_ratio=self.unlabelled_ratio,
            threshold=self.threshold,
            unlabelled_weight=self.unlabelled_weight,
            seed=seed,
            train_split=None,
            device=self.device_,
            callbacks=[
                ("finite", StopOnNonFiniteLoss("SPICEClusterer (SPICE-Semi)")),
                *progress_callbacks(self.verbose),
            ],
            verbose=0,
            **self._views(),
        )
        net.fit(np.arange(len(features)))
        return net.module_, net.history

    def _fit_joint(self, X, seed: int):
        """Stage 3 again on raw audio, training ``encoder_.module_`` and ``module_`` in place."""
        clips = [
            torch.from_numpy(clip)
            for clip in check_audio(
                X, sample_rate=self.encoder_.sample_rate, target_rate=SAMPLE_RATE
            )
        ]
        crop = {
            "max_samples": round(self.max_audio_seconds * SAMPLE_RATE),
            "min_samples": MIN_SAMPLES,
        }
        labelled = np.flatnonzero(self.labels_reliable_)
        network = _JointNetwork(self.encoder_, self.preprocessor_, self.module_)
        net = _JointFixMatchNet(
            network,
            criterion=nn.CrossEntropyLoss,  # unused: train_step_single computes FixMatch
            optimizer=torch.optim.Adam,
            optimizer__param_groups=[("encoder.*", {"lr": self.encoder_lr})],
            lr=self.semi_lr,
            max_epochs=self.joint_max_epochs,
            batch_size=self.joint_batch_size,
            data=clips,
            labelled=labelled,
            labels=self.self_labels_[labelled],
            unlabelled_ratio=self.unlabelled_ratio,
            threshold=self.threshold,
            unlabelled_weight=self.unlabelled_weight,
            weak_view=weak_augmentation(**crop),
            strong_view=strong_augmentation(**crop),
            seed=seed,
            train_split=None,
            device=self.device_,
            callbacks=[
                ("finite", StopOnNonFiniteLoss("SPICEClusterer (joint SPICE-Semi)")),
                *progress_callbacks(self.verbose),
            ],
            verbose=0,
        )
        net.fit(np.arange(len(clips)))
        network.eval()
        self.encoder_.module_.cpu()  # where BYOLAEmbedder.transform expects it
        return net.history

    def _logits(self, features: torch.Tensor) -> np.ndarray:
        return _forward(self.module_, features, self.device_)[0].numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags
