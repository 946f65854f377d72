"""Deep clustering estimators on 2-D features."""

from skaudiocluster.cluster.spice import SPICEClusterer

__all__ = ["SPICEClusterer"]
