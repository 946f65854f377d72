"""Deep clustering of sound collections behind a scikit-learn API."""

from skaudiocluster.audio import check_audio
from skaudiocluster.cluster.deepdpm import DeepDPMClusterer
from skaudiocluster.cluster.spice import SPICEClusterer
from skaudiocluster.cluster.temi import TEMIClusterer
from skaudiocluster.datasets import (
    load_audio_folder,
    load_dcase2018_task5,
    load_fsdd,
    make_sound_classes,
)
from skaudiocluster.metrics import (
    CLUSTERING_SCORERS,
    ClusteringScorer,
    ClusteringScores,
    TransductiveSplit,
    get_clustering_scorer,
    hungarian_accuracy,
    hungarian_mapping,
    matched_confusion_matrix,
)
from skaudiocluster.plot import plot_cluster_map, plot_confusion_matrix, plot_history
from skaudiocluster.transformers.byola import BYOLAEmbedder
from skaudiocluster.transformers.passt import PaSSTEmbedder
from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

__version__ = "0.1.0.dev0"

__all__ = [
    "check_audio",
    "DeepDPMClusterer",
    "SPICEClusterer",
    "TEMIClusterer",
    "load_audio_folder",
    "load_dcase2018_task5",
    "load_fsdd",
    "make_sound_classes",
    "CLUSTERING_SCORERS",
    "ClusteringScorer",
    "ClusteringScores",
    "TransductiveSplit",
    "get_clustering_scorer",
    "hungarian_accuracy",
    "hungarian_mapping",
    "matched_confusion_matrix",
    "plot_cluster_map",
    "plot_confusion_matrix",
    "plot_history",
    "SpectrogramTransformer",
    "PaSSTEmbedder",
    "BYOLAEmbedder",
]
