"""Deterministic PaSST checkpoints for tests (no fixtures: importable from any test file).

``write_one_block_checkpoint(path)`` writes a one-block stride-16 PaSST state dict, small
and fast enough for estimator checks; ``frozen_state_dict`` is the weight rule of the
shared folder's ``reference/README.md``, under which the hear21passt reference outputs
were computed.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import torch

from skaudiocluster.transformers._passt_net import PaSSTConfig, PaSSTNet

#: PaSST-S, stride 10: the network of the hear21passt reference outputs.
FULL = PaSSTConfig()
SCALE_KEYS = ("norm1.weight", "norm2.weight", "norm.weight", "head.0.weight")
#: The network of :func:`write_one_block_checkpoint`.
ONE_BLOCK = PaSSTConfig(stride=16, depth=1, n_time_positions=62)


def frozen_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The reference README's deterministic weights: RandomState(crc32(key)) uniform draws."""
    state = {}
    for key, shape in shapes.items():
        rng = np.random.RandomState(zlib.crc32(key.encode("utf-8")))
        u = rng.uniform(-1.0, 1.0, size=int(np.prod(shape)))
        value = 1.0 + 0.1 * u if key.endswith(SCALE_KEYS) else 0.02 * np.sqrt(3) * u
        state[key] = torch.from_numpy(value.astype(np.float32).reshape(shape))
    return state


def net_shapes(config: PaSSTConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a PaSST network (built on the meta device: no memory)."""
    with torch.device("meta"):
        state = PaSSTNet(config).state_dict()
    return {key: tuple(value.shape) for key, value in state.items()}


def write_checkpoint(path: str | os.PathLike, config: PaSSTConfig = FULL) -> Path:
    """Save the frozen weights of a ``config`` network at ``path``; return the path."""
    path = Path(path)
    torch.save(frozen_state_dict(net_shapes(config)), path)
    return path


def write_one_block_checkpoint(path: str | os.PathLike) -> Path:
    """Save a one-block stride-16 PaSST (about 9 M parameters) at ``path``; return the path.

    ``PaSSTEmbedder(weights=path).fit(clips)`` then reads that shape off the file.
    """
    return write_checkpoint(path, ONE_BLOCK)
