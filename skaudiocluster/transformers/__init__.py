"""Raw audio in, 2-D embeddings out."""

from skaudiocluster._lazy import lazy_exports

_WHERE = {
    "BYOLAEmbedder": "byola",
    "BirdNETEmbedder": "birdnet",
    "CONTENT_FRAMES": "_content",
    "PaSSTEmbedder": "passt",
    "SpeakerEmbedder": "speaker",
    "SpectrogramTransformer": "spectrogram",
    "UnverifiedWeightsWarning": "_weights",
    "content_view": "_content",
    "resolve_birdnet_weights": "_birdnet_model",
    "resolve_weights": "_weights",
    "trim_silence": "_content",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
