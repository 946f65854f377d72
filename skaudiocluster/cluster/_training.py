"""skorch pieces shared by the deep clusterers: progress and loss guards."""

from __future__ import annotations

import math

from skorch.callbacks import Callback, ProgressBar


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(Callback):
    """Raise a clear error as soon as a batch loss is NaN or infinite."""

    def __init__(self, estimator_name: str = "training"):
        self.estimator_name = estimator_name

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        loss = net.history[-1, "batches", -1].get("train_loss" if training else "valid_loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"{self.estimator_name}: the loss became {loss} at epoch {len(net.history)}; "
                "lower the learning rate or standardise the input features"
            )


def progress_callbacks(verbose: int) -> list[tuple[str, Callback]]:
    """Callbacks for skorch's ``callbacks=`` showing a progress bar when ``verbose``."""
    return [("progress", ProgressBar())] if verbose else []
