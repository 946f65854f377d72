"""Deep clustering of sound collections behind a scikit-learn API.

Public names are imported on first use, so ``import skaudiocluster`` does not
load torch.
"""

from __future__ import annotations

from skaudiocluster._lazy import lazy_exports

__version__ = "0.1.0.dev0"

_WHERE = {
    "check_audio": "audio",
    "DeepDPMClusterer": "cluster.deepdpm",
    "KCheckWarning": "cluster._k_check",
    "centroid_confidence": "cluster._confidence",
    "SPICEClusterer": "cluster.spice",
    "TEMIClusterer": "cluster.temi",
    "TemporalClusterer": "cluster.temporal",
    "load_audio_folder": "datasets",
    "load_dcase2018_task5": "datasets",
    "load_fsdd": "datasets",
    "make_sound_classes": "datasets",
    "CLUSTERING_SCORERS": "metrics",
    "ClusteringScorer": "metrics",
    "ClusteringScores": "metrics",
    "TransductiveSplit": "metrics",
    "get_clustering_scorer": "metrics",
    "confidence_auroc": "metrics",
    "hungarian_accuracy": "metrics",
    "hungarian_mapping": "metrics",
    "matched_confusion_matrix": "metrics",
    "plot_cluster_map": "plot",
    "plot_confusion_matrix": "plot",
    "plot_history": "plot",
    "embed_files": "streaming",
    "SpectrogramTransformer": "transformers.spectrogram",
    "PaSSTEmbedder": "transformers.passt",
    "BYOLAEmbedder": "transformers.byola",
    "BirdNETEmbedder": "transformers.birdnet",
    "SpeakerEmbedder": "transformers.speaker",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
