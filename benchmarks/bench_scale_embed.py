"""Embedding a large file list with bounded memory: clips/s and peak RSS of embed_files.

The clips are the 3,000 FSDD recordings (``$SKAUDIOCLUSTER_SHARED/data/fsdd/recordings``)
repeated up to ``--n-clips`` paths, each repeat decoded again (``--source fsdd``), or
200 synthetic clips of ``make_sound_classes`` written as 1 s 16 kHz WAV files and repeated
(``--source synthetic``). Each embedder runs in a fresh process, so its peak RSS
(``ru_maxrss``) is its own; a second run from the full cache gives the resume cost.

    python benchmarks/bench_scale_embed.py --n-clips 20000 --embedders spectrogram byola

``embed_rows(n_clips, ...)`` returns the same figures as a list of dicts (for bench_scale.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMBEDDERS = ("spectrogram", "byola")
N_SYNTHETIC = 200
FIT_CLIPS = 500  # embedders learn their statistics once, on the first clips


def embed_rows(
    n_clips: int = 20000,
    *,
    embedders: tuple[str, ...] = ("spectrogram",),
    source: str = "auto",
    chunk_size: int = 256,
    n_jobs: int = 2,
    threads: int = 1,
) -> list[dict]:
    """One row per embedder: seconds, clips/s, peak RSS, cached re-run seconds.

    ``source="auto"`` uses FSDD where ``$SKAUDIOCLUSTER_SHARED`` is set, else synthetic
    clips; ``threads`` is torch's thread count in the measuring process, ``n_jobs`` the
    chunks embedded at once (threads).
    """
    shared = os.environ.get("SKAUDIOCLUSTER_SHARED")
    if source == "auto":
        source = "fsdd" if shared else "synthetic"
    rows = []
    with tempfile.TemporaryDirectory() as work:
        paths_file = Path(work) / "paths.txt"
        paths_file.write_text("\n".join(_paths(source, n_clips, Path(work), shared)))
        for name in embedders:
            job = {
                "embedder": name,
                "paths_file": str(paths_file),
                "cache_dir": str(Path(work) / f"cache-{name}"),
                "chunk_size": chunk_size,
                "n_jobs": n_jobs,
                "threads": threads,
                "shared": shared,
            }
            done = subprocess.run(
                [sys.executable, __file__, "--measure", json.dumps(job)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"source": source, **row})
    return rows


def _paths(source: str, n_clips: int, work: Path, shared: str | None) -> list[str]:
    if source == "fsdd":
        if not shared:
            raise ValueError("source='fsdd' needs $SKAUDIOCLUSTER_SHARED")
        from skaudiocluster.datasets import load_fsdd

        unique, _ = load_fsdd(Path(shared) / "data" / "fsdd" / "recordings")
    elif source == "synthetic":
        import soundfile

        from skaudiocluster.datasets import make_sound_classes

        n_unique = min(N_SYNTHETIC, n_clips)
        clips, _ = make_sound_classes(n_samples=n_unique, duration=1.0, random_state=0)
        unique = []
        for index, clip in enumerate(clips):
            unique.append(str(work / f"synthetic{index:03d}.wav"))
            soundfile.write(unique[-1], clip, 16000)
    else:
        raise ValueError(f"source must be 'auto', 'fsdd' or 'synthetic', got {source!r}")
    return [unique[i % len(unique)] for i in range(n_clips)]


def _embedder(name: str, shared: str | None):
    if name == "spectrogram":
        from skaudiocluster import SpectrogramTransformer

        return SpectrogramTransformer(device="cpu")
    if name == "byola":
        from skaudiocluster import BYOLAEmbedder

        weights = None
        if shared:
            weights = Path(shared) / "weights" / "AudioNTT2020-BYOLA-64x96d512.pth"
        # 32 clips per forward pass: the encoder's activations, not the chunks, set the peak
        # RSS (two threads at the default 64 peaked at 1.8-2.0 GB, 1.2-1.4 GB between chunks)
        return BYOLAEmbedder(weights=weights, batch_size=32, device="cpu", random_state=0)
    raise ValueError(f"unknown embedder {name!r}; choose from {EMBEDDERS}")


def _measure(job: dict) -> dict:
    """Run in a fresh process: fit on the first clips, embed all, re-run from the cache."""
    import torch

    from skaudiocluster import embed_files

    torch.set_num_threads(job["threads"])
    paths = Path(job["paths_file"]).read_text().splitlines()
    embedder = _embedder(job["embedder"], job["shared"]).fit(paths[:FIT_CLIPS])
    kwargs = dict(cache_dir=job["cache_dir"], chunk_size=job["chunk_size"], n_jobs=job["n_jobs"])
    start = time.perf_counter()
    X = embed_files(paths, embedder, **kwargs)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    again = embed_files(paths, embedder, **kwargs)
    cached_seconds = time.perf_counter() - start
    assert (again == X).all()
    return {
        "embedder": job["embedder"],
        "n_clips": len(paths),
        "dim": X.shape[1],
        "chunk_size": job["chunk_size"],
        "n_jobs": job["n_jobs"],
        "torch_threads": job["threads"],
        # Unrounded: a small run takes hundredths of a second (rounded only when printed).
        "seconds": seconds,
        "clips_per_s": len(paths) / seconds,
        "cached_rerun_s": cached_seconds,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-clips", type=int, default=20000)
    parser.add_argument("--embedders", nargs="+", default=["spectrogram"], choices=EMBEDDERS)
    parser.add_argument("--source", default="auto", choices=["auto", "fsdd", "synthetic"])
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(json.loads(args.measure))))
        return
    rows = embed_rows(
        args.n_clips,
        embedders=tuple(args.embedders),
        source=args.source,
        chunk_size=args.chunk_size,
        n_jobs=args.n_jobs,
        threads=args.threads,
    )
    print(f"load average {os.getloadavg()[0]:.1f}")
    for row in rows:
        print("  ".join(f"{key}={_cell(value)}" for key, value in row.items()))


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
