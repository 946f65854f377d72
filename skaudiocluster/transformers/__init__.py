"""Raw audio in, 2-D embeddings out."""

from skaudiocluster.transformers.byola import BYOLAEmbedder
from skaudiocluster.transformers.passt import PaSSTEmbedder
from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

__all__ = [
    "BYOLAEmbedder",
    "SpectrogramTransformer",
    "PaSSTEmbedder",
]
