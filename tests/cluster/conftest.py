"""Fixtures of the clusterer tests."""

from __future__ import annotations

import numpy as np
import pytest

from skaudiocluster.metrics import confidence_auroc

# Issue 30's bar for a confidence that points at mistakes, on real data where the
# clusters are the classes: the ROC AUC for "in its class's matched cluster", and the
# largest share of clips at >= 0.99.
MIN_CONFIDENCE_AUROC = 0.75
MAX_SATURATED = 0.5


@pytest.fixture
def check_confidence():
    """``check(y, fits, name)``: every fit's ``confidence_`` ranks its mistakes, unsaturated."""

    def check(y, fits, name: str) -> None:
        for seed, fit in enumerate(fits):
            auroc = confidence_auroc(y, fit.labels_, fit.confidence_)
            saturated = float(np.mean(fit.confidence_ >= 0.99))
            print(f"{name} seed {seed}: confidence AUROC {auroc:.3f}, >= 0.99 {saturated:.3f}")
            assert auroc >= MIN_CONFIDENCE_AUROC, (seed, auroc)
            assert saturated <= MAX_SATURATED, (seed, saturated)

    return check
