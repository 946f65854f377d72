"""The PaSST network: a distilled ViT over overlapping log-mel patches.

Parameter names and shapes are those of the official checkpoints
(``kkoutini/PaSST`` releases), so their state dicts load with ``strict=True``.
Written from the architecture description in Koutini et al. (2022), not from
the official code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PaSSTConfig", "PaSSTNet", "config_from_state_dict"]

PATCH = 16


@dataclass(frozen=True)
class PaSSTConfig:
    """Shape of a PaSST network.

    ``stride`` is the patch stride in both mel and time (10 for PaSST-S, 16
    for the cheaper ``*_s16`` checkpoints); ``n_time_positions`` the number of
    time positional embeddings (99 for 10 s at stride 10, 62 at stride 16).
    """

    stride: int = 10
    depth: int = 12
    n_classes: int = 527
    n_time_positions: int = 99
    n_mels: int = 128
    embed_dim: int = 768
    n_heads: int = 12
    mlp_ratio: int = 4

    @property
    def n_freq_patches(self) -> int:
        return (self.n_mels - PATCH) // self.stride + 1

    def n_time_patches(self, n_frames: int) -> int:
        """Patch columns for a log-mel of ``n_frames`` frames."""
        return (n_frames - PATCH) // self.stride + 1


def config_from_state_dict(state: dict[str, torch.Tensor]) -> PaSSTConfig:
    """Read the network shape off a checkpoint's tensors (stride, depth, classes, positions)."""
    try:
        _, embed_dim, n_freq, _ = state["freq_new_pos_embed"].shape
        n_time = state["time_new_pos_embed"].shape[-1]
        n_classes = state["head.1.weight"].shape[0]
        patch_shape = tuple(state["patch_embed.proj.weight"].shape)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a PaSST checkpoint: missing or malformed tensor {exc}") from exc
    if patch_shape[1:] != (1, PATCH, PATCH):
        raise ValueError(f"not a PaSST checkpoint: patch_embed.proj.weight has shape {patch_shape}")
    strides = [s for s in range(1, PATCH + 1) if (128 - PATCH) // s + 1 == n_freq]
    if not strides:
        raise ValueError(f"not a PaSST checkpoint: {n_freq} frequency positions fit no stride")
    # Blocks counted by a tensor each has, so a stray extra key is reported as unexpected
    # rather than as a deeper network's missing blocks.
    blocks = re.compile(r"blocks\.(\d+)\.norm1\.weight$")
    depth = 1 + max((int(m.group(1)) for m in map(blocks.match, state) if m), default=-1)
    # Several strides can give the same number of frequency rows; PaSST's are 10..16.
    return PaSSTConfig(
        stride=max(strides),
        depth=depth,
        n_classes=n_classes,
        n_time_positions=n_time,
        embed_dim=embed_dim,
        n_heads=embed_dim // 64,
    )


class PatchEmbed(nn.Module):
    def __init__(self, config: PaSSTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, config.embed_dim, PATCH, stride=config.stride)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.proj(mel.unsqueeze(1))


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, n_tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, n_tokens, 3, self.n_heads, dim // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # Fused attention never stores the (heads, tokens, tokens) score matrix,
        # which is what makes large batches slow with the explicit formula.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, n_tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: PaSSTConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.n_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, config.mlp_ratio * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class PaSSTNet(nn.Module):
    """PaSST: log-mel ``(batch, n_mels, n_frames)`` to ``(features, logits)``.

    ``features`` (batch, 768) is the mean of the class and distillation tokens
    after the final LayerNorm; ``logits`` (batch, n_classes) is ``head(features)``.
    Clips shorter than the checkpoint's window use the first time positional
    embeddings only.

    Structured patchout (Koutini et al.) drops ``patchout_time`` random patch
    columns and ``patchout_freq`` random patch rows, only in training mode;
    evaluation always sees every patch.
    """

    def __init__(
        self,
        config: PaSSTConfig = PaSSTConfig(),
        *,
        patchout_time: int = 0,
        patchout_freq: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.patchout_time = patchout_time
        self.patchout_freq = patchout_freq
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, dim, config.n_freq_patches, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, config.n_time_positions))
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, config.n_classes))
        # Present in the checkpoints, unused by the distilled model's forward.
        self.head_dist = nn.Linear(dim, config.n_classes)

    def reset_parameters(self) -> None:
        """Random init as in the official code: normal with std 0.02, biases 0, LayerNorms 1/0.

        The official truncated normal cuts at +-2 (absolute), 100 standard
        deviations out, so a plain normal draw has the same distribution and is
        twice as fast.
        """
        for tensor in (
            self.cls_token,
            self.dist_token,
            self.new_pos_embed,
            self.freq_new_pos_embed,
            self.time_new_pos_embed,
        ):
            nn.init.normal_(tensor, std=0.02)
        self.patch_embed.proj.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(
        self, mel: torch.Tensor, n_columns: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of log-mels.

        ``n_columns`` (batch,) gives each item's number of valid patch columns
        when shorter log-mels were zero-padded to a common length; padded
        columns are then masked out of attention, so each item's output equals
        its unpadded one.
        """
        x = self.patch_embed(mel)
        n_time = x.shape[-1]
        if n_time > self.config.n_time_positions:
            raise ValueError(
                f"input has {n_time} patch columns but the model has only "
                f"{self.config.n_time_positions} time positions; cut it into windows"
            )
        x = x + self.time_new_pos_embed[..., :n_time] + self.freq_new_pos_embed
        valid = None
        if n_columns is not None:
            valid = torch.arange(n_time, device=x.device) < n_columns.to(x.device)[:, None]
        if self.training:
            x, valid = self._structured_patchout(x, valid)
        batch, dim, n_freq, n_time = x.shape
        x = x.flatten(2).transpose(1, 2)  # tokens ordered frequency-major: f * n_time + t
        tokens = torch.cat([self.cls_token, self.dist_token], dim=1) + self.new_pos_embed
        x = torch.cat([tokens.expand(batch, -1, -1), x], dim=1)
        mask = None
        if valid is not None:
            keep = torch.cat([valid.new_ones(batch, 2), valid.repeat(1, n_freq)], dim=1)
            mask = keep[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        features = (x[:, 0] + x[:, 1]) / 2
        return features, self.head(features)

    def _structured_patchout(
        self, x: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n_freq, n_time = x.shape[-2:]
        if self.patchout_time:
            keep = torch.randperm(n_time, device=x.device)[: max(1, n_time - self.patchout_time)]
            keep = keep.sort().values
            x = x[..., keep]
            valid = None if valid is None else valid[:, keep]
        if self.patchout_freq:
            keep = torch.randperm(n_freq, device=x.device)[: max(1, n_freq - self.patchout_freq)]
            x = x[:, :, keep.sort().values]
        return x, valid
