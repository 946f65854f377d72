"""Raw audio in, 2-D embeddings out."""

import importlib

_WHERE = {
    "BYOLAEmbedder": "byola",
    "PaSSTEmbedder": "passt",
    "SpectrogramTransformer": "spectrogram",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'skaudiocluster.transformers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"skaudiocluster.transformers.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
