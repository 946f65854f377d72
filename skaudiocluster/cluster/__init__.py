"""Deep clustering estimators on 2-D features."""

from skaudiocluster._lazy import lazy_exports

_WHERE = {
    "centroid_confidence": "_confidence",
    "DeepDPMClusterer": "deepdpm",
    "KCheckWarning": "_k_check",
    "SPICEClusterer": "spice",
    "TEMIClusterer": "temi",
    "TemporalClusterer": "temporal",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
