"""What every estimator of the package promises: scikit-learn's estimator checks, a fit that
leaves torch's global random state and thread setting alone, Ctrl-C that propagates and
leaves the estimator unfitted, and pickles that predict the same in a CPU-only process.

Each estimator appears once, in ``ESTIMATORS``, with budgets small enough that the whole
file runs in about a minute on two busy cores (a third of it imports: torch, and the
CPU-only child process).
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from sklearn.base import ClusterMixin, clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet

from skaudiocluster import (
    BYOLAEmbedder,
    DeepDPMClusterer,
    PaSSTEmbedder,
    SpeakerEmbedder,
    SpectrogramTransformer,
    SPICEClusterer,
    TEMIClusterer,
    TemporalClusterer,
    _torch,
)
from skaudiocluster.transformers._base import BaseAudioEmbedder
from skaudiocluster.transformers._passt_net import PaSSTConfig, PaSSTNet

# Budgets this small leave TEMI with fewer clusters than asked and SPICE without reliable
# pseudo-labels; both say so, as they should, and that is not what this file tests.
pytestmark = [
    pytest.mark.filterwarnings("ignore:TEMIClusterer put the training data in only:UserWarning"),
    pytest.mark.filterwarnings("ignore:reliable pseudo-labels:UserWarning"),
]

# --- the table -----------------------------------------------------------------------------


def _tiny_passt_checkpoint() -> str:
    """A one-block, 64-wide PaSST state dict, in a file of a fixed name (stable test ids)."""
    folder = Path(tempfile.gettempdir()) / f"skaudiocluster-tests-{getpass.getuser()}"
    path = folder / "passt-stride16-depth1-width64.pt"
    if not path.is_file():
        config = PaSSTConfig(
            stride=16, depth=1, n_time_positions=62, embed_dim=64, n_heads=1, n_classes=10
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            state = PaSSTNet(config).state_dict()
        folder.mkdir(exist_ok=True)
        partial = folder / f"{path.name}.{os.getpid()}.partial"
        torch.save(state, partial)
        os.replace(partial, path)  # atomic: a concurrent session reads a whole file
    return str(path)


PASST_CHECKPOINT = _tiny_passt_checkpoint()

ESTIMATORS = [
    SpectrogramTransformer(n_fft=16, hop_length=4, n_mels=4, sample_rate=8000),
    BYOLAEmbedder(weights=None, random_state=0),
    PaSSTEmbedder(weights=PASST_CHECKPOINT, sample_rate=8000, random_state=0),
    SpeakerEmbedder(weights=None, sample_rate=8000, random_state=0),
    TEMIClusterer(
        n_clusters=3,
        n_heads=2,
        hidden_dims=(16,),
        bottleneck_dim=8,
        max_steps=1,
        random_state=0,
    ),
    SPICEClusterer(
        n_clusters=3,
        n_heads=2,
        hidden_dims=(16,),
        n_components=8,
        max_epochs=1,
        n_repeats=1,
        semi_max_epochs=1,
        n_neighbors=5,
        random_state=0,
    ),
    DeepDPMClusterer(
        max_epochs=3,
        split_merge_every=3,
        steps_per_epoch=2,
        batch_size=32,
        lr=0.02,
        sub_lr=0.02,
        preprocessing="standardize",
        random_state=0,
    ),
    # one frame per row: the checks' inputs have any number of features
    TemporalClusterer(
        n_clusters=3, n_frames=1, n_heads=2, hidden_dims=(8,), max_steps=2, random_state=0
    ),
]
CLUSTERERS = [est for est in ESTIMATORS if isinstance(est, ClusterMixin)]


def _id(estimator) -> str:
    return type(estimator).__name__


# Raw audio has no number of features: a 2-D array is a batch of equal-length clips, and
# clips of any other length are valid input to transform.
_RAW_AUDIO = {
    "check_n_features_in": "raw audio: a clip's length is not a number of features",
    "check_n_features_in_after_fitting": (
        "raw audio: clips of another length are valid after fit, no error is raised"
    ),
    "check_transformer_general": (
        "raw audio: the check also wants an error for clips of another length"
    ),
    "check_transformer_general(readonly_memmap=True)": (
        "raw audio: the check also wants an error for clips of another length"
    ),
}


def expected_failed_checks(estimator) -> dict[str, str]:
    """Checks each estimator fails, and why (the deep clusterers fail none)."""
    if isinstance(estimator, BaseAudioEmbedder):
        return _RAW_AUDIO
    return {}


@parametrize_with_checks(
    ESTIMATORS, expected_failed_checks=expected_failed_checks, xfail_strict=True
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# --- data ----------------------------------------------------------------------------------


def _clips(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        0.1 * rng.standard_normal(int(rng.integers(2000, 6000))).astype(np.float32)
        for _ in range(n)
    ]


def _blobs(n: int = 60) -> np.ndarray:
    return make_blobs(n_samples=n, centers=3, n_features=6, random_state=0)[0]


def _data(estimator):
    return _blobs() if isinstance(estimator, ClusterMixin) else _clips()


def _device(estimator) -> torch.device:
    return getattr(estimator, "device_", torch.device("cpu"))  # the spectrogram has none


def _output(estimator, X) -> np.ndarray:
    if hasattr(estimator, "predict_proba"):
        return estimator.predict_proba(X)
    return estimator.transform(X)


# --- global random state and threads -------------------------------------------------------


@pytest.mark.parametrize(
    "estimator",
    [*ESTIMATORS, PaSSTEmbedder(weights=None, sample_rate=8000, random_state=0)],
    ids=lambda est: _id(est) + ("(weights=None)" if getattr(est, "weights", 1) is None else ""),
)
def test_fit_leaves_global_random_states_alone(estimator):
    X = _data(estimator)
    torch_before = torch.random.get_rng_state()
    numpy_before = np.random.get_state()
    clone(estimator).fit(X)
    assert torch.equal(torch.random.get_rng_state(), torch_before)
    numpy_after = np.random.get_state()
    assert_array_equal(numpy_after[1], numpy_before[1])
    assert numpy_after[2] == numpy_before[2]


@pytest.fixture
def training_threads(monkeypatch):
    """Torch's thread count at every backward pass of the test (any training loop)."""
    seen = []
    backward = torch.Tensor.backward

    def spy(tensor, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return backward(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", spy)
    return seen


@pytest.mark.parametrize("estimator", CLUSTERERS, ids=_id)
def test_clusterers_train_on_one_thread_and_restore_the_callers(
    estimator, two_threads, training_threads
):
    clone(estimator).fit(_blobs())
    assert training_threads and set(training_threads) == {1}
    assert torch.get_num_threads() == 2


# --- Ctrl-C --------------------------------------------------------------------------------


@contextlib.contextmanager
def sigint_during_training(monkeypatch, *, delay: float = 0.3, nth_net: int = 1):
    """Send a real SIGINT ``delay`` seconds into the training of the ``nth_net`` skorch net.

    The signal comes from another thread, as a Ctrl-C does, and raises
    ``KeyboardInterrupt`` only while a skorch ``fit_loop`` runs; one that comes later (training
    ended first) is swallowed and processed before the block ends, so it cannot reach the
    test session. Yields a record: ``started`` (when the timer started, None if training was
    never reached) and ``landed`` (the signal raised inside training).
    """
    record = types.SimpleNamespace(started=None, fired=False, handled=False, landed=False)
    nets = []

    def fire():
        record.fired = True
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(delay, fire)
    notify = NeuralNet.notify

    def start_timer(net, method_name, **kwargs):
        if method_name == "on_train_begin" and not any(net is seen for seen in nets):
            nets.append(net)
        if method_name == "on_batch_end" and record.started is None and len(nets) >= nth_net:
            record.started = time.monotonic()
            timer.start()
        return notify(net, method_name, **kwargs)

    def handler(signum, frame):
        record.handled = True
        while frame is not None and frame.f_code is not NeuralNet.fit_loop.__code__:
            frame = frame.f_back
        if frame is not None:
            record.landed = True
            raise KeyboardInterrupt

    monkeypatch.setattr(NeuralNet, "notify", start_timer)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield record
    finally:
        timer.cancel()
        if record.started is not None:
            timer.join()
        deadline = time.monotonic() + 5
        while record.fired and not record.handled and time.monotonic() < deadline:
            time.sleep(0.01)  # let a signal in flight reach the handler above
        signal.signal(signal.SIGINT, previous)


# Each fit would train for 10-30 s on this data; the signal lands 0.3 s into the stage.
_SPICE = dict(n_heads=2, hidden_dims=(16,), n_neighbors=5, random_state=0)
LONG_FITS = [
    pytest.param(
        TEMIClusterer(n_clusters=3, n_heads=2, hidden_dims=(16,), max_steps=1000, random_state=0),
        1,
        id="TEMIClusterer",
    ),
    pytest.param(
        SPICEClusterer(3, n_components=8, max_steps=None, max_epochs=200, **_SPICE),
        1,
        id="SPICEClusterer-self",
    ),
    pytest.param(
        SPICEClusterer(
            3,
            n_components=8,
            max_epochs=1,
            n_repeats=1,
            semi_max_steps=None,
            semi_max_epochs=500,
            **_SPICE,
        ),
        2,
        id="SPICEClusterer-semi",
    ),
    pytest.param(
        SPICEClusterer(
            2,
            encoder=BYOLAEmbedder(weights=None),
            n_components=4,
            max_epochs=1,
            n_repeats=1,
            semi_max_epochs=1,
            joint_max_epochs=30,
            joint_batch_size=4,
            unlabelled_ratio=2,
            **_SPICE,
        ),
        3,
        id="SPICEClusterer-joint",
    ),
    pytest.param(
        DeepDPMClusterer(max_epochs=300, steps_per_epoch=2, batch_size=32, random_state=0),
        1,
        id="DeepDPMClusterer",
    ),
    pytest.param(
        BYOLAEmbedder(weights=None, pretrain_max_epochs=20, pretrain_batch_size=2, random_state=0),
        1,
        id="BYOLAEmbedder-pretraining",
    ),
]


def _trains_on_audio(estimator) -> bool:
    return isinstance(estimator, BYOLAEmbedder) or getattr(estimator, "encoder", None) is not None


@pytest.mark.parametrize("estimator, nth_net", LONG_FITS)
def test_sigint_during_training_propagates_and_leaves_it_unfitted(
    estimator, nth_net, monkeypatch, two_threads
):
    estimator = clone(estimator)
    X = _clips(8) if _trains_on_audio(estimator) else _blobs(120)
    rng_before = torch.random.get_rng_state()
    with (
        sigint_during_training(monkeypatch, nth_net=nth_net) as record,
        pytest.raises(KeyboardInterrupt),
    ):
        estimator.fit(X)
    assert record.started is not None, f"the fit never reached training net {nth_net}"
    assert record.landed, "the signal did not land inside training"
    with pytest.raises(NotFittedError):
        check_is_fitted(estimator)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.get_num_threads() == 2


# --- pickles -------------------------------------------------------------------------------


_CHILD = textwrap.dedent("""
    import pickle, sys
    import numpy as np
    import torch

    assert not torch.cuda.is_available()
    folder = sys.argv[1]
    X_clips = pickle.load(open(f"{folder}/X_clips.pkl", "rb"))
    X_blobs = pickle.load(open(f"{folder}/X_blobs.pkl", "rb"))
    outputs = {}
    for name in sys.argv[2:]:
        est = pickle.load(open(f"{folder}/{name}.pkl", "rb"))
        assert getattr(est, "device_", torch.device("cpu")).type == "cpu", est.device_
        X = X_blobs if hasattr(est, "predict_proba") else X_clips
        out = est.predict_proba(X) if hasattr(est, "predict_proba") else est.transform(X)
        outputs[name] = out
        if hasattr(est, "predict"):
            outputs[name + ".predict"] = est.predict(X)
    np.savez(f"{folder}/outputs.npz", **outputs)
""")


@pytest.fixture(scope="module")
def fitted():
    return {_id(est): clone(est).fit(_data(est)) for est in ESTIMATORS}


@pytest.fixture(scope="module")
def cpu_only_outputs(fitted, tmp_path_factory):
    """Every fitted estimator pickled, then loaded and run in one CPU-only child process."""
    folder = tmp_path_factory.mktemp("pickles")
    for name, est in fitted.items():
        (folder / f"{name}.pkl").write_bytes(pickle.dumps(est))
    (folder / "X_clips.pkl").write_bytes(pickle.dumps(_clips()))
    (folder / "X_blobs.pkl").write_bytes(pickle.dumps(_blobs()))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), *fitted],
        check=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    return dict(np.load(folder / "outputs.npz"))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=_id)
def test_pickle_loads_in_a_cpu_only_process_and_predicts_the_same(
    estimator, fitted, cpu_only_outputs
):
    name = _id(estimator)
    est = fitted[name]
    reloaded = pickle.loads(pickle.dumps(est))
    X = _data(estimator)
    # on the child's one thread: float32 sums split over other thread counts round differently
    with _one_thread():
        expected = _output(reloaded, X)
        assert_array_equal(cpu_only_outputs[name], expected)
        if _device(est).type == "cpu":  # a GPU fit predicts the same on the CPU up to rounding
            assert_array_equal(_output(est, X), expected)
        if hasattr(est, "predict"):
            assert_array_equal(cpu_only_outputs[name + ".predict"], reloaded.predict(X))


@contextlib.contextmanager
def _one_thread():
    """torch, BLAS and OpenMP on one thread, as in a child with ``OMP_NUM_THREADS=1``."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _state_problems(state: dict, path: str, seen: set) -> list[str]:
    """Where a pickling state holds tensors that a GPU fit would pickle on the GPU.

    ``cpu_state`` moves the tensors and modules that are values of learned keys; a tensor
    anywhere else (in a list, a dict, a plain object) or on another device is a problem.
    A nested object of this package pickles through its own ``__getstate__``.
    """
    problems = []
    for key, value in state.items():
        where = f"{path}.{key}"
        if isinstance(value, (torch.Tensor, torch.nn.Module)):
            tensors = (
                [value]
                if isinstance(value, torch.Tensor)
                else [*value.parameters(), *value.buffers()]
            )
            if not key.endswith("_"):
                problems.append(f"{where} holds tensors but is not a learned attribute")
            problems += [f"{where} is on {t.device}" for t in tensors if t.device.type != "cpu"]
        elif isinstance(value, torch.device) and value.type != "cpu":
            problems.append(f"{where} is {value}")
        else:
            problems += _nested_problems(value, where, seen)
    return problems


def _nested_problems(value, path: str, seen: set) -> list[str]:
    if id(value) in seen or isinstance(value, (str, bytes, int, float, np.ndarray, np.generic)):
        return []
    seen.add(id(value))
    if isinstance(value, (torch.Tensor, torch.nn.Module)):
        return [f"{path} nests tensors where cpu_state does not move them"]
    getstate = getattr(type(value), "__getstate__", None)
    if (getattr(getstate, "__module__", None) or "").startswith("skaudiocluster"):
        return _state_problems(value.__getstate__(), path, seen)
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = enumerate(value)
    elif getstate is not None and getstate is not getattr(object, "__getstate__", None):
        state = value.__getstate__()
        items = state.items() if isinstance(state, dict) else []
    elif hasattr(value, "__dict__"):
        items = vars(value).items()
    else:
        return []
    return [p for key, item in items for p in _nested_problems(item, f"{path}[{key!r}]", seen)]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=_id)
def test_getstate_holds_cpu_tensors_where_cpu_state_moves_them(estimator, fitted):
    est = fitted[_id(estimator)]
    assert _state_problems(est.__getstate__(), _id(estimator), set()) == []


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=_id)
def test_getstate_moves_the_learned_tensors_of_a_gpu_fit(estimator, fitted, monkeypatch):
    # No GPU here: meta tensors stand in for CUDA ones, and _cpu_copy records what it moves.
    est = copy.copy(fitted[_id(estimator)])
    monkeypatch.setattr(_torch, "_cpu_copy", lambda value: ("moved", value))
    off_cpu = {}
    for key, value in vars(est).items():
        if isinstance(value, torch.Tensor):
            off_cpu[key] = torch.empty(0, device="meta")
        elif isinstance(value, torch.nn.Module):
            off_cpu[key] = torch.nn.Linear(1, 1, device="meta")
    vars(est).update(off_cpu)
    if hasattr(est, "device_"):
        est.device_ = torch.device("cuda")
    state = est.__getstate__()
    assert state.get("device_", torch.device("cpu")) == torch.device("cpu")
    for key, value in off_cpu.items():
        moved = state[key]
        assert isinstance(moved, tuple) and moved[1] is value, f"{key} would be pickled on the GPU"
