"""Deep clustering estimators on 2-D features."""

import importlib

_WHERE = {
    "DeepDPMClusterer": "deepdpm",
    "SPICEClusterer": "spice",
    "TEMIClusterer": "temi",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'skaudiocluster.cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"skaudiocluster.cluster.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
