"""Raw audio in, 2-D embeddings out."""

from skaudiocluster._lazy import lazy_exports

_WHERE = {
    "BYOLAEmbedder": "byola",
    "BirdNETEmbedder": "birdnet",
    "PaSSTEmbedder": "passt",
    "SpectrogramTransformer": "spectrogram",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
