"""Silence trimming of SpeakerEmbedder: the energy rule against WebRTC's VAD, on FSDD by speaker.

Embeds the 3,000 FSDD clips with ``trim_db`` 40 (the default), 30 and ``None``, and,
where ``resemblyzer`` and ``webrtcvad`` import (a scratch environment, see
``benchmarks/make_speaker_reference.py``), the clips trimmed by Resemblyzer's own
``trim_long_silences`` after its volume normalisation, embedded with ``trim_db=None``.
Prints the NMI by speaker of k-means and of UMAP (10-D, umap-learn's defaults
otherwise) + k-means for seeds 0-2, on one thread::

    PYTHONPATH=. SKAUDIOCLUSTER_SHARED=../shared OMP_NUM_THREADS=1 \\
        /work/tmp/rz/bin/python benchmarks/bench_speaker_trimming.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def nmi_rows(X: np.ndarray, y: np.ndarray, seeds=(0, 1, 2)) -> tuple[float, list[float]]:
    """k-means NMI (seed 0; it does not move with the seed here) and UMAP + k-means per seed."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi
    from umap import UMAP

    k = len(np.unique(y))
    kmeans = nmi(y, KMeans(k, n_init=10, random_state=seeds[0]).fit_predict(X))
    umap = []
    for seed in seeds:
        Z = UMAP(n_components=10, random_state=seed, n_jobs=1).fit_transform(X)
        umap.append(nmi(y, KMeans(k, n_init=10, random_state=seed).fit_predict(Z)))
    return kmeans, umap


def main() -> None:
    import torch

    from skaudiocluster.audio import check_audio
    from skaudiocluster.datasets import load_fsdd
    from skaudiocluster.transformers.speaker import SpeakerEmbedder

    torch.set_num_threads(1)
    shared = Path(os.environ.get("SKAUDIOCLUSTER_SHARED", "../shared"))
    paths, speaker = load_fsdd(shared / "data/fsdd/recordings", target="speaker")
    weights = shared / "weights/resemblyzer-ge2e-pretrained.pt"
    waves = check_audio(list(paths), sample_rate=16000)
    variants = {f"energy rule, trim_db={db}": db for db in (40.0, 30.0, None)}
    try:
        from resemblyzer import audio

        trimmed = [
            audio.trim_long_silences(audio.normalize_volume(w, -30, increase_only=True))
            for w in waves
        ]
        empty = sum(len(w) == 0 for w in trimmed)
        print(f"WebRTC trimming leaves {empty} of {len(waves)} clips empty")
        variants["WebRTC VAD (Resemblyzer's trim_long_silences)"] = "webrtc"
    except ImportError as exc:
        print(f"no WebRTC row: {exc}")
    for name, trim in variants.items():
        clips = waves
        if trim == "webrtc":  # an empty clip is embedded as silence, as Resemblyzer does
            clips = [w if len(w) else np.zeros(1, np.float32) for w in trimmed]
            trim = None
        est = SpeakerEmbedder(weights, trim_db=trim).fit(clips[:2])
        start = time.perf_counter()
        X = est.transform(clips)
        seconds = time.perf_counter() - start
        kmeans, umap = nmi_rows(X, speaker)
        print(
            f"{name}: k-means {kmeans:.3f}, UMAP + k-means {np.mean(umap):.3f} "
            f"({', '.join(f'{v:.3f}' for v in umap)}); embedded in {seconds:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
