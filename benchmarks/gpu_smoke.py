"""GPU smoke test: fit every estimator on CUDA, pickle it, reload it where CUDA is hidden, compare.

On a CUDA machine this fits, on a small set of real clips (``--n-clips`` FSDD
recordings from ``--fsdd``, default ``$SKAUDIOCLUSTER_SHARED/data/fsdd/recordings``)
and with ``device="cuda"``:

* ``SpectrogramTransformer``,
* ``BYOLAEmbedder`` (``--byola-weights``, default the shared d512 checkpoint when
  present, else a random init; one epoch of BYOL-A pretraining either way),
* ``PaSSTEmbedder`` when ``--passt-weights`` is given (``one-block``: a random
  one-block stride-16 PaSST, which exercises the code path in seconds),
* ``TEMIClusterer``, ``SPICEClusterer`` and ``DeepDPMClusterer`` on the BYOL-A
  embeddings, and ``SPICEClusterer(encoder=BYOLAEmbedder(...))`` on the clips
  (joint encoder training), all with small training budgets.

Each fitted estimator is pickled; a child process started with
``CUDA_VISIBLE_DEVICES=""`` (so torch sees no GPU) unpickles it and recomputes
``transform`` or ``predict_proba`` and ``predict`` on the same inputs. The whole
run takes well under 5 minutes on a GPU. Compared, with ``--device cuda``:

* transforms: ``|cpu - gpu| <= 1e-3 + 1e-2 * |gpu|`` element-wise (cuDNN runs
  convolutions in TF32 by default, about three significant digits);
* ``predict_proba``: largest absolute difference at most 1e-2;
* ``predict``: identical on every row whose top-two GPU probabilities differ by
  more than 2e-2 (closer rows may flip between devices, and are counted).

With ``--device cpu`` (a dry run of every code path, for machines without a
GPU) everything runs on the CPU and the reloaded estimators must agree exactly.

Usage::

    python benchmarks/gpu_smoke.py
    python benchmarks/gpu_smoke.py --passt-weights passt_s_swa_p16_128_ap476
    python benchmarks/gpu_smoke.py --device cpu --n-clips 60      # dry run, no GPU needed
    python benchmarks/gpu_smoke.py --device cpu --passt-weights one-block --only PaSSTEmbedder

Exit status: 0 when every estimator fits, reloads on the CPU and agrees; 1 when
one fails or disagrees; 2 when CUDA is not available (without ``--device cpu``)
or the data folder is missing -- with a message saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SHARED = Path(
    os.environ.get("SKAUDIOCLUSTER_SHARED", Path(__file__).resolve().parents[2] / "shared")
)
DEFAULT_FSDD = SHARED / "data" / "fsdd" / "recordings"
DEFAULT_BYOLA = SHARED / "weights" / "AudioNTT2020-BYOLA-64x96d512.pth"
N_SPEAKERS = 6  # FSDD's speakers: the clusterers look for that many clusters

# Tolerances of the GPU -> CPU comparison (see the module docstring); a dry run is exact.
TOLERANCES = {
    "cuda": {"rtol": 1e-2, "atol": 1e-3, "proba_atol": 1e-2},
    "cpu": {"rtol": 0.0, "atol": 0.0, "proba_atol": 0.0},
}
TARGET_SECONDS = 300


def estimators(device: str, args: argparse.Namespace) -> dict[str, tuple[str, Callable]]:
    """name -> (input, factory): input is "clips" (audio paths) or "embeddings" (BYOL-A's)."""
    from skaudiocluster import (
        BYOLAEmbedder,
        DeepDPMClusterer,
        PaSSTEmbedder,
        SpectrogramTransformer,
        SPICEClusterer,
        TEMIClusterer,
    )

    byola = {"weights": args.byola_weights, "device": device, "random_state": 0}
    spice_budget = {
        "max_steps": None,
        "max_epochs": 3,
        "n_repeats": 2,
        "semi_max_steps": None,
        "semi_max_epochs": 5,
    }
    table = {
        "SpectrogramTransformer": ("clips", lambda: SpectrogramTransformer(device=device)),
        "BYOLAEmbedder": ("clips", lambda: BYOLAEmbedder(**byola, pretrain_max_epochs=1)),
        "TEMIClusterer": (
            "embeddings",
            lambda: TEMIClusterer(N_SPEAKERS, max_steps=200, device=device, random_state=0),
        ),
        "SPICEClusterer": (
            "embeddings",
            lambda: SPICEClusterer(N_SPEAKERS, **spice_budget, device=device, random_state=0),
        ),
        "SPICEClusterer(encoder=BYOLAEmbedder)": (
            "clips",
            lambda: SPICEClusterer(
                N_SPEAKERS,
                encoder=BYOLAEmbedder(**byola),
                **spice_budget,
                joint_max_epochs=1,
                device=device,
                random_state=0,
            ),
        ),
        "DeepDPMClusterer": (
            "embeddings",
            lambda: DeepDPMClusterer(
                max_epochs=30, split_merge_every=6, device=device, random_state=0
            ),
        ),
    }
    if args.passt_weights:
        table["PaSSTEmbedder"] = (
            "clips",
            lambda: PaSSTEmbedder(weights=args.passt_weights, device=device, random_state=0),
        )
    if args.only:
        unknown = set(args.only) - set(table)
        if unknown:
            raise SystemExit(f"gpu_smoke: --only {sorted(unknown)}: not among {list(table)}")
        # the clusterers on embeddings need BYOL-A's
        needed = {"BYOLAEmbedder"} if any(table[n][0] == "embeddings" for n in args.only) else set()
        table = {name: entry for name, entry in table.items() if name in {*args.only, *needed}}
    return table


def one_block_passt(path: Path) -> str:
    """Write a randomly initialised one-block stride-16 PaSST checkpoint; return its path."""
    import torch

    from skaudiocluster._torch import forked_rng
    from skaudiocluster.transformers._passt_net import PaSSTConfig, PaSSTNet

    with forked_rng(0, torch.device("cpu")):
        net = PaSSTNet(PaSSTConfig(stride=16, depth=1, n_time_positions=62))
    torch.save(net.state_dict(), path)
    return str(path)


def outputs(estimator, X) -> dict[str, np.ndarray]:
    """What a fitted estimator computes: its transform, or its cluster probabilities and labels."""
    if hasattr(estimator, "transform"):
        return {"transform": np.asarray(estimator.transform(X))}
    return {"proba": np.asarray(estimator.predict_proba(X)), "labels": estimator.predict(X)}


def compare(reference: dict, reloaded: dict, tolerance: dict) -> tuple[bool, str]:
    """Whether the reloaded outputs agree with the reference; a one-line account."""
    if "transform" in reference:
        ref, new = reference["transform"], reloaded["transform"]
        if ref.shape != new.shape:
            return False, f"transform shape {new.shape} != {ref.shape}"
        error = np.abs(new - ref)
        bound = tolerance["atol"] + tolerance["rtol"] * np.abs(ref)
        ok = bool(np.all(error <= bound))
        return ok, f"transform max |diff| {error.max():.3g} (rtol {tolerance['rtol']:g})"
    proba, labels = reference["proba"], reference["labels"]
    if reloaded["proba"].shape != proba.shape:
        return False, f"proba shape {reloaded['proba'].shape} != {proba.shape}"
    proba_error = float(np.abs(reloaded["proba"] - proba).max())
    top_two = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.c_[proba * 0, proba]
    clear = (top_two[:, 1] - top_two[:, 0]) > 2 * tolerance["proba_atol"]
    differ = reloaded["labels"] != labels
    ok = proba_error <= tolerance["proba_atol"] and not np.any(differ & clear)
    return ok, (
        f"proba max |diff| {proba_error:.3g}; labels differ on {int(differ.sum())} of "
        f"{len(labels)} rows ({int((differ & clear).sum())} with a clear margin)"
    )


def child(folder: Path) -> int:
    """Unpickle every estimator in ``folder`` with CUDA hidden and compare; print JSON lines."""
    import torch

    if torch.cuda.is_available():
        print("gpu_smoke child: CUDA is visible; expected CUDA_VISIBLE_DEVICES=''", file=sys.stderr)
        return 2
    with open(folder / "inputs.pkl", "rb") as handle:
        inputs = pickle.load(handle)
    for name, entry in inputs["estimators"].items():
        start = time.perf_counter()
        try:
            with open(folder / entry["file"], "rb") as handle:
                estimator = pickle.load(handle)
            device = getattr(estimator, "device_", None)
            reloaded = outputs(estimator, inputs[entry["input"]])
            ok, message = compare(entry["outputs"], reloaded, inputs["tolerance"])
            if device is not None and torch.device(device).type != "cpu":
                ok, message = False, f"device_ is {device} after unpickling; {message}"
        except Exception as exc:  # a smoke test reports every failure and goes on
            ok, message = False, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        print(json.dumps({"name": name, "ok": ok, "message": message, "seconds": seconds}))
    return 0


def fit_and_pickle(args: argparse.Namespace, folder: Path) -> tuple[dict, list[str]]:
    """Fit every estimator on ``args.device``, pickle each into ``folder``; references kept."""
    from skaudiocluster.datasets import load_fsdd

    paths, _ = load_fsdd(args.fsdd, target="speaker")
    step = max(len(paths) // args.n_clips, 1)
    clips = paths[::step][: args.n_clips]
    inputs = {"clips": clips, "tolerance": TOLERANCES[args.device_type], "estimators": {}}
    failures = []
    table = estimators(args.device, args)
    # BYOL-A first: its embeddings are the clusterers' input
    for index, (name, (kind, make)) in enumerate(table.items()):
        start = time.perf_counter()
        try:
            if kind == "embeddings" and "embeddings" not in inputs:
                raise RuntimeError("no BYOL-A embeddings (BYOLAEmbedder failed)")
            X = inputs[kind]
            estimator = make().fit(X)
            reference = outputs(estimator, X)
            if name == "BYOLAEmbedder":
                inputs["embeddings"] = reference["transform"]
            file = f"estimator{index}.pkl"
            with open(folder / file, "wb") as handle:
                pickle.dump(estimator, handle)
            # pickling must leave the live estimator where it was
            ok, message = compare(reference, outputs(estimator, X), TOLERANCES["cpu"])
            if not ok:
                raise RuntimeError(f"outputs changed by pickling: {message}")
            inputs["estimators"][name] = {"file": file, "input": kind, "outputs": reference}
            print(f"fitted   {name} on {args.device} in {time.perf_counter() - start:.1f} s")
        except Exception as exc:
            failures.append(f"{name}: fit on {args.device} failed: {type(exc).__name__}: {exc}")
            print(f"FAILED   {failures[-1]}")
    with open(folder / "inputs.pkl", "wb") as handle:
        pickle.dump(inputs, handle)
    return inputs, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd", type=Path, default=DEFAULT_FSDD, help="FSDD recordings folder")
    parser.add_argument("--n-clips", type=int, default=120)
    parser.add_argument(
        "--byola-weights",
        default=str(DEFAULT_BYOLA) if DEFAULT_BYOLA.exists() else None,
        help="BYOL-A checkpoint (name or path); default the shared d512 file, else random init",
    )
    parser.add_argument(
        "--passt-weights",
        default=None,
        help='PaSST checkpoint (name or path, or "one-block" for a small random one); else skipped',
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="check only these estimators")
    parser.add_argument(
        "--device", default="cuda", help='"cuda" (default), "cuda:N", or "cpu" for a dry run'
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args.child)

    import torch

    args.device_type = torch.device(args.device).type
    if args.device_type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_smoke: CUDA is not available (torch.cuda.is_available() is False): run this "
            "on a machine with a GPU, or pass --device cpu for a dry run on the CPU",
            file=sys.stderr,
        )
        return 2
    if not args.fsdd.is_dir():
        print(f"gpu_smoke: no FSDD recordings folder at {args.fsdd} (see --fsdd)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print(f"{args.n_clips} FSDD clips from {args.fsdd}; BYOL-A weights: {args.byola_weights}")
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        if args.passt_weights == "one-block":
            args.passt_weights = one_block_passt(Path(tmp) / "passt-one-block.pt")
        inputs, failures = fit_and_pickle(args, Path(tmp))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        command = [sys.executable, __file__, "--child", tmp]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        failures.append(f"the CPU-only child failed:\n{done.stderr[-3000:]}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for result in results:
        status = "ok      " if result["ok"] else "MISMATCH"
        print(f"{status} {result['name']} reloaded on the CPU: {result['message']}")
        if not result["ok"]:
            failures.append(f"{result['name']}: {result['message']}")
    missing = set(inputs["estimators"]) - {r["name"] for r in results}
    failures += [f"{name}: not checked by the CPU-only child" for name in sorted(missing)]
    seconds = time.perf_counter() - start
    late = args.device_type == "cuda" and seconds > TARGET_SECONDS
    print(f"{seconds:.0f} s in all" + (f" (target: under {TARGET_SECONDS} s)" if late else ""))
    if failures:
        print(f"gpu_smoke: {len(failures)} failure(s):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print(f"gpu_smoke: all {len(results)} estimators fitted on {args.device} agree on the CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
