"""
Grid search: held-out and transductive
======================================

How many clusters, and which settings of the pipeline? This notebook searches
a spectrogram -> PCA -> K-means pipeline over K three ways and draws the three
curves side by side:

* **held-out** (inductive): fit on two folds, ``predict`` the third, score it
  against the labels;
* **transductive**: fit and score on the same clips, the usual question in
  clustering ("how well is *this* collection partitioned?");
* **unsupervised**: the same transductive search scored by the silhouette of
  the features K-means saw, which needs no labels at all.

The clips are synthetic (:func:`~skaudiocluster.make_sound_classes`) so the
notebook runs in seconds on a CPU; swap in
:func:`~skaudiocluster.load_audio_folder` for your own collection.
"""

# %%
# Data and pipeline
# -----------------
# Six kinds of sound, 40 clips each. The pipeline caches its embedding step
# (``memory=``), so the search embeds each training set once, not once per K.
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skaudiocluster import (
    CLUSTERING_SCORERS,
    ClusteringScores,
    SpectrogramTransformer,
    TransductiveSplit,
    make_sound_classes,
)

wavs, y = make_sound_classes(n_samples=240, n_classes=6, duration=0.5, random_state=0)
pipe = Pipeline(
    [
        ("embed", SpectrogramTransformer()),
        ("scale", StandardScaler()),
        ("reduce", PCA(16, random_state=0)),
        ("cluster", KMeans(n_init=10, random_state=0)),
    ],
    memory=tempfile.mkdtemp(),
)
grid = {"cluster__n_clusters": list(range(2, 11))}

# %%
# Held-out scoring
# ----------------
# :class:`~skaudiocluster.ClusteringScores` predicts once per fold and returns
# NMI, ARI and Hungarian accuracy together; ``refit`` names the one that picks
# the best candidate.
scores = ClusteringScores(["nmi", "ari", "hungarian_accuracy"])
held_out = GridSearchCV(
    pipe, grid, scoring=scores, refit="nmi", cv=StratifiedKFold(3, shuffle=True, random_state=0)
)
held_out.fit(wavs, y)
print("held-out best:", held_out.best_params_, f"NMI {held_out.best_score_:.3f}")

# %%
# Transductive scoring
# --------------------
# :class:`~skaudiocluster.TransductiveSplit` yields one split whose training
# and test sets are both the whole collection.
transductive = GridSearchCV(pipe, grid, scoring=scores, refit="nmi", cv=TransductiveSplit())
transductive.fit(wavs, y)
print("transductive best:", transductive.best_params_, f"NMI {transductive.best_score_:.3f}")

# %%
# Without labels
# --------------
# Silhouette judges the partition of the features K-means saw, so ``fit``
# gets no ``y``.
unsupervised = GridSearchCV(
    pipe, grid, scoring=CLUSTERING_SCORERS["silhouette"], cv=TransductiveSplit()
)
unsupervised.fit(wavs)
print("silhouette best:", unsupervised.best_params_)

# %%
# The three curves
# ----------------
# Held-out and transductive NMI need not peak at the same K: the held-out
# clusters are fitted on two thirds of the clips. Silhouette favours compact,
# well separated clusters and tends to prefer a small K on overlapping sound
# classes: read it as a whole curve rather than only at its maximum.
ks = np.array(grid["cluster__n_clusters"])
fig, nmi_axis = plt.subplots(figsize=(6, 3.5))
for search, label in ((held_out, "held-out NMI"), (transductive, "transductive NMI")):
    mean = search.cv_results_["mean_test_nmi"]
    std = search.cv_results_["std_test_nmi"]
    nmi_axis.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=label)
nmi_axis.axvline(6, color="grey", linestyle=":", label="true number of classes")
nmi_axis.set_xlabel("K (n_clusters)")
nmi_axis.set_ylabel("NMI")
silhouette_axis = nmi_axis.twinx()
silhouette_axis.plot(
    ks, unsupervised.cv_results_["mean_test_score"], "k--", marker="s", label="silhouette"
)
silhouette_axis.set_ylabel("silhouette")
lines = nmi_axis.get_legend_handles_labels()
more = silhouette_axis.get_legend_handles_labels()
nmi_axis.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()
