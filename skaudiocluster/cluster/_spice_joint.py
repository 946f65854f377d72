"""SPICE's joint stage on raw audio: the encoder and the classifier trained together.

Uses only the public joint-training interface of
:class:`~skaudiocluster.transformers.byola.BYOLAEmbedder`: :meth:`waveforms` for the
clips, :meth:`log_mel` for the views' normalised log-mel and frame counts, and
``module_`` for the encoder. :class:`JointNetwork` puts the encoder, the fitted
preprocessing (frozen, as one affine map, :func:`affine_preprocessing`) and the
classifier in one module; :class:`~skaudiocluster.cluster._spice_net.FixMatchNet`
trains it on :class:`ClipDataset` with :class:`ClipViews`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from torch import nn
from torch.nn import functional as F

from skaudiocluster.augment import AudioAugmentation


def affine_preprocessing(preprocessor: Pipeline) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """A fitted preprocessing pipeline as ``x @ W + b``, then an optional row L2 normalisation.

    Handles the pipelines of :func:`~skaudiocluster.cluster._base.make_preprocessor`:
    any sequence of :class:`~sklearn.preprocessing.StandardScaler` and
    :class:`~sklearn.decomposition.PCA` steps (whitened or not), identity
    :class:`~sklearn.preprocessing.FunctionTransformer` steps, and a final L2
    :class:`~sklearn.preprocessing.Normalizer`.

    Parameters
    ----------
    preprocessor : fitted Pipeline

    Returns
    -------
    weight : tensor of shape (n_features_in, n_out), float32
    bias : tensor of shape (n_out,), float32
    normalize : bool
        Whether rows are L2-normalised after the affine map.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skaudiocluster.cluster._base import make_preprocessor
    >>> X = np.random.RandomState(0).normal(size=(50, 6))
    >>> pipeline = make_preprocessor("l2", 3, X.shape, seed=0).fit(X)
    >>> weight, bias, normalize = affine_preprocessing(pipeline)
    >>> mapped = torch.nn.functional.normalize(torch.as_tensor(X) @ weight.double() + bias, dim=1)
    >>> normalize, np.allclose(mapped.numpy(), pipeline.transform(X), atol=1e-6)
    (True, True)
    """
    n_features = preprocessor.n_features_in_
    weight, bias = np.eye(n_features), np.zeros(n_features)
    steps = [step for _, step in preprocessor.steps]
    normalize = False
    for position, step in enumerate(steps):
        if isinstance(step, Normalizer):
            if step.norm != "l2" or position != len(steps) - 1:
                raise ValueError("only a final L2 Normalizer has an affine-then-L2 form")
            normalize = True
            continue
        if isinstance(step, StandardScaler):
            scale = np.ones(weight.shape[1]) if step.scale_ is None else step.scale_
            mean = np.zeros(weight.shape[1]) if step.mean_ is None else step.mean_
            step_weight, step_bias = np.diag(1.0 / scale), -mean / scale
        elif isinstance(step, PCA):
            step_weight = step.components_.T
            step_bias = -step.mean_ @ step.components_.T
            if step.whiten:
                scale = np.sqrt(step.explained_variance_)
                scale = np.maximum(scale, np.finfo(scale.dtype).eps)
                step_weight, step_bias = step_weight / scale, step_bias / scale
        elif isinstance(step, FunctionTransformer) and step.func is None:
            continue
        else:
            raise TypeError(f"no affine form for the preprocessing step {step!r}")
        weight, bias = weight @ step_weight, bias @ step_weight + step_bias
    return (
        torch.as_tensor(weight, dtype=torch.float32),
        torch.as_tensor(bias, dtype=torch.float32),
        normalize,
    )


class JointNetwork(nn.Module):
    """(log-mel, frames) -> encoder -> frozen preprocessing -> classifier logits.

    The preprocessing is the fitted scikit-learn pipeline as one affine map (buffers,
    not trained) and an optional L2 normalisation, so the classifier sees what it was
    trained on. ``encoder`` and ``classifier`` are the fitted modules themselves:
    training this network trains them in place.

    Parameters
    ----------
    encoder : nn.Module
        ``encoder(lms, frames)`` -> embeddings ``(B, d)`` (``BYOLAEmbedder.module_``).
    classifier : nn.Module
        Preprocessed embeddings ``(B, D)`` -> logits ``(1, B, K)``.
    preprocessor : fitted Pipeline
        The preprocessing of the encoder's embeddings (:func:`affine_preprocessing`).
    """

    def __init__(self, encoder: nn.Module, classifier: nn.Module, preprocessor: Pipeline):
        super().__init__()
        self.encoder = encoder
        weight, bias, self.normalize = affine_preprocessing(preprocessor)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.classifier = classifier

    def train(self, mode: bool = True) -> JointNetwork:
        # The encoder's batch-norm statistics stay the pretrained ones: batches of strong
        # views (noise, fades) would drag them away from the clean audio seen at predict.
        super().train(mode)
        for module in self.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, lms: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        features = self.encoder(lms, frames) @ self.weight + self.bias
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return self.classifier(features)


class ClipDataset(torch.utils.data.Dataset):
    """Clips of any lengths and their pseudo-labels, as ``X`` and ``y`` for ``FixMatchNet.fit``.

    Parameters
    ----------
    clips : sequence of 1-D float32 arrays
        16 kHz waveforms (``BYOLAEmbedder.waveforms``).
    targets : array of shape (n_clips,), int
        Pseudo-labels, ``IGNORE`` for unreliable clips.
    """

    def __init__(self, clips: Sequence[np.ndarray], targets: np.ndarray):
        if len(clips) != len(targets):
            raise ValueError(f"{len(clips)} clips but {len(targets)} targets")
        self.X = clips
        self.y = np.asarray(targets)

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.X[index], int(self.y[index])


class ClipViews:
    """FixMatch inputs from clips: log-mel of weak labelled, weak and strong unlabelled views.

    ``views(clips, labelled, unlabelled, generator)`` augments ``clips[i]`` for the
    labelled indices with ``weak``, then the unlabelled ones with ``weak`` and with
    ``strong``, and returns ``log_mel(list_of_views)``: ``(lms, frames)`` on the CPU.

    Parameters
    ----------
    weak, strong : AudioAugmentation
    log_mel : callable
        ``BYOLAEmbedder.log_mel`` of the fitted encoder.
    """

    def __init__(self, weak: AudioAugmentation, strong: AudioAugmentation, log_mel: Callable):
        self.weak = weak
        self.strong = strong
        self.log_mel = log_mel

    def __call__(self, clips, labelled, unlabelled, generator) -> tuple[torch.Tensor, torch.Tensor]:
        groups = [(labelled, self.weak), (unlabelled, self.weak), (unlabelled, self.strong)]
        views = [
            augment(torch.from_numpy(np.asarray(clips[i])), generator=generator).numpy()
            for index, augment in groups
            for i in index.tolist()
        ]
        return self.log_mel(views)
