"""Regenerate ``tests/transformers/data/speaker_reference.npz``: Resemblyzer's own embeddings.

The parity test of :class:`~skaudiocluster.SpeakerEmbedder` compares against these
numbers. They come from the official implementation, run once in a scratch
environment, never from this package's encoder::

    python -m venv --system-site-packages /work/tmp/rz
    /work/tmp/rz/bin/pip install --no-deps resemblyzer==0.1.4
    /work/tmp/rz/bin/pip install webrtcvad==2.0.10     # a C build; only for emb_webrtc
    # the scratch env also sees the project venv (torch, librosa 0.11.0, scipy, soundfile)
    echo /work/venv/lib/python3.11/site-packages \\
        > /work/tmp/rz/lib/python3.11/site-packages/zz_project.pth
    PYTHONPATH=. SKAUDIOCLUSTER_SHARED=/work/shared OMP_NUM_THREADS=1 \\
        /work/tmp/rz/bin/python benchmarks/make_speaker_reference.py

Recipe (the test rebuilds the same waveforms from the shared FSDD files):

1. Clips: the first two files of each digit of FSDD, by sorted file name (20
   clips), decoded and resampled to 16 kHz by ``skaudiocluster.audio.check_audio``
   (torchaudio); then 4 long clips, each the concatenation of 5 of those in order
   (clips 0-4, 5-9, ...), so that several partial windows and the coverage rule
   are exercised. 24 waveforms in all.
2. Each waveform goes through ``resemblyzer.audio.normalize_volume(wav, -30,
   increase_only=True)``; ``emb`` is ``VoiceEncoder("cpu").embed_utterance`` of
   that (Resemblyzer's mel, partial windows, LSTM and averaging, no trimming).
3. ``emb_webrtc`` is ``embed_utterance`` of ``trim_long_silences`` of it
   (Resemblyzer's WebRTC VAD trimming, mode 3), and ``n_kept_webrtc`` the samples
   that trimming keeps: what our energy rule is compared with.

Saved (numbers only): ``emb`` and ``emb_webrtc`` (24, 256) float32, ``n_samples``
(the 16 kHz lengths) and ``abs_sum`` (sum of |x| of each waveform before volume
normalisation) so the test can check that it rebuilt the same waveforms, and
``n_kept_webrtc``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "transformers" / "data"
N_LONG, LONG_PARTS = 4, 5


def reference_paths(fsdd_dir: Path) -> list[Path]:
    """The first two FSDD files of each digit, by sorted name (the test uses the same rule)."""
    names = sorted(p.name for p in fsdd_dir.glob("*.wav"))
    return [fsdd_dir / n for d in range(10) for n in [x for x in names if x[0] == str(d)][:2]]


def reference_waveforms(fsdd_dir: Path) -> list[np.ndarray]:
    from skaudiocluster.audio import check_audio

    clips = check_audio([str(p) for p in reference_paths(fsdd_dir)], sample_rate=16000)
    long = [np.concatenate(clips[i * LONG_PARTS : (i + 1) * LONG_PARTS]) for i in range(N_LONG)]
    return clips + long


def main() -> None:
    from resemblyzer import VoiceEncoder, audio

    torch.set_num_threads(1)
    fsdd = Path(os.environ["SKAUDIOCLUSTER_SHARED"]) / "data" / "fsdd" / "recordings"
    waves = reference_waveforms(fsdd)
    encoder = VoiceEncoder("cpu", verbose=False)
    emb, emb_webrtc, kept = [], [], []
    for wave in waves:
        normalised = audio.normalize_volume(wave, -30, increase_only=True)
        emb.append(encoder.embed_utterance(normalised))
        trimmed = audio.trim_long_silences(normalised)
        kept.append(len(trimmed))
        emb_webrtc.append(encoder.embed_utterance(trimmed))
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(
        OUT / "speaker_reference.npz",
        emb=np.asarray(emb, dtype=np.float32),
        emb_webrtc=np.asarray(emb_webrtc, dtype=np.float32),
        n_samples=np.asarray([len(w) for w in waves]),
        abs_sum=np.asarray([np.abs(w).astype(np.float64).sum() for w in waves]),
        n_kept_webrtc=np.asarray(kept),
    )
    print(f"wrote {OUT / 'speaker_reference.npz'}: {len(waves)} clips")


if __name__ == "__main__":
    main()
