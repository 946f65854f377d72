"""Deep clustering of sound collections behind a scikit-learn API."""

from skaudiocluster.audio import check_audio

__version__ = "0.1.0.dev0"

__all__ = [
    "check_audio",
]
