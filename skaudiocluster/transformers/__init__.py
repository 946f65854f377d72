"""Raw audio in, 2-D embeddings out."""

from skaudiocluster._lazy import lazy_exports

_WHERE = {
    "BYOLAEmbedder": "byola",
    "BirdNETEmbedder": "birdnet",
    "PaSSTEmbedder": "passt",
    "SpeakerEmbedder": "speaker",
    "SpectrogramTransformer": "spectrogram",
    "UnverifiedWeightsWarning": "_weights",
    "resolve_birdnet_weights": "_birdnet_model",
    "resolve_weights": "_weights",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
