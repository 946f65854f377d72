"""Deep clustering estimators on 2-D features."""

from skaudiocluster.cluster.deepdpm import DeepDPMClusterer
from skaudiocluster.cluster.spice import SPICEClusterer
from skaudiocluster.cluster.temi import TEMIClusterer

__all__ = ["DeepDPMClusterer", "SPICEClusterer", "TEMIClusterer"]
