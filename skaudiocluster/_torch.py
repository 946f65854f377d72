"""Torch plumbing shared by every estimator: device, local seeding, threads, batched inference."""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from sklearn.utils import check_random_state

T = TypeVar("T")

# Rows per forward pass when an estimator predicts: large enough to amortise the
# Python overhead, small enough to keep a 512-d batch of activations in cache.
INFERENCE_BATCH = 4096


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn a ``device`` parameter into a :class:`torch.device`.

    ``"auto"`` means CUDA when a GPU is visible, else the CPU. Any string torch
    understands (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is passed through; asking
    for CUDA on a machine without it raises a ``ValueError``.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device={device!r} is not a valid torch device") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    return resolved


def draw_seed(random_state: int | np.random.RandomState | None) -> int:
    """One int seed for a whole fit, drawn from ``random_state`` (scikit-learn's convention).

    ``None`` draws from NumPy's global generator, so runs differ; an int makes
    them repeat. The seed then feeds :func:`forked_rng` and every local
    :class:`torch.Generator` of the fit.

    Examples
    --------
    >>> draw_seed(0) == draw_seed(0)
    True
    """
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def draw_seeds(random_state: np.random.RandomState, n: int) -> list[int]:
    """``n`` child seeds drawn from ``random_state``, one per independent random stream of a fit.

    Examples
    --------
    >>> a, b = draw_seeds(np.random.RandomState(0), 2)
    >>> a != b
    True
    """
    return [draw_seed(random_state) for _ in range(n)]


def make_generator(seed: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with ``seed`` (for samplers, loaders)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@contextlib.contextmanager
def forked_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's default generators with ``seed`` inside the block, restore them after.

    Code inside (weight initialisation, dropout) draws from a stream that depends
    on ``seed`` alone, and the caller's global torch state is exactly as before.

    Examples
    --------
    >>> import torch
    >>> before = torch.random.get_rng_state()
    >>> with forked_rng(0, torch.device("cpu")):
    ...     a = torch.rand(1)
    >>> with forked_rng(0, torch.device("cpu")):
    ...     b = torch.rand(1)
    >>> bool(a == b), bool((torch.random.get_rng_state() == before).all())
    (True, True)
    """
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run the block with ``n_threads`` intra-op CPU threads; restore the caller's number after.

    ``None`` leaves the setting alone. The deep clusterers' networks and batches
    are small: torch's default (one thread per core) costs more in
    synchronisation than it saves, and on a busy machine a step took 14 times
    longer than on one thread.
    """
    if n_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def unfitted_on_error(estimator: object) -> Iterator[None]:
    """If the block raises (``KeyboardInterrupt`` included), put back ``estimator``'s attributes.

    A fit that is interrupted or fails half way then leaves no learned
    attribute behind: a fresh estimator stays unfitted, a refitted one keeps
    its previous fit, and the exception propagates.
    """
    state = dict(vars(estimator))
    try:
        yield
    except BaseException:
        vars(estimator).clear()
        vars(estimator).update(state)
        raise


_COMPILER_IMPORTED = False


def import_torch_compiler() -> None:
    """Import ``torch._dynamo`` (and with it sympy) once, deferring Ctrl-C until it is done.

    Torch imports its compiler modules lazily, in the first optimizer a process
    builds. A ``KeyboardInterrupt`` in the middle of that import leaves sympy or
    ``torch._dynamo`` half-initialised in :data:`sys.modules`, and every later fit
    of the process fails (``module 'sympy' has no attribute 'core'``). Importing
    them here, with SIGINT held back until the import finishes (a second or
    two), closes that window: the interrupt is delivered right after.
    """
    global _COMPILER_IMPORTED
    if _COMPILER_IMPORTED:
        return
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main else None
    if previous is None:  # another thread (SIGINT never interrupts it), or a C-level handler
        import torch._dynamo  # noqa: F401
    else:
        received = []
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
        try:
            import torch._dynamo  # noqa: F401
        finally:
            signal.signal(signal.SIGINT, previous)
        if received:
            _COMPILER_IMPORTED = True
            signal.raise_signal(signal.SIGINT)  # to the restored handler
    _COMPILER_IMPORTED = True


@contextlib.contextmanager
def fit_context(
    estimator: object, seed: int, device: torch.device, *, n_threads: int | None = 1
) -> Iterator[None]:
    """Everything a torch ``fit`` runs inside: :func:`unfitted_on_error`, :func:`forked_rng`
    and, on the CPU, :func:`torch_threads` (one thread by default; ``None`` keeps torch's).
    Torch's compiler modules are imported first (:func:`import_torch_compiler`)."""
    import_torch_compiler()
    with contextlib.ExitStack() as stack:
        stack.enter_context(unfitted_on_error(estimator))
        stack.enter_context(forked_rng(seed, device))
        stack.enter_context(torch_threads(n_threads if device.type == "cpu" else None))
        yield


def batched_forward(
    function: Callable[[torch.Tensor], torch.Tensor],
    features: np.ndarray | torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = INFERENCE_BATCH,
    dim: int = 0,
) -> torch.Tensor:
    """``function`` applied to ``features`` in row batches on ``device``, results on the CPU.

    Runs under :func:`torch.inference_mode`; results are concatenated along
    ``dim`` (the batch axis of ``function``'s output: 1 for ``(n_heads, batch,
    ...)`` outputs).

    Examples
    --------
    >>> import torch
    >>> out = batched_forward(lambda x: 2 * x, torch.ones(5, 2), device=torch.device("cpu"),
    ...                       batch_size=2)
    >>> tuple(out.shape), float(out.sum())
    ((5, 2), 20.0)
    """
    features = torch.as_tensor(features)
    with torch.inference_mode():
        chunks = [function(chunk.to(device)).cpu() for chunk in torch.split(features, batch_size)]
    return torch.cat(chunks, dim=dim)


def progress(
    iterable: Iterable[T], *, verbose: int, desc: str, total: int | None = None
) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar when ``verbose > 0``, else return it unchanged."""
    if not verbose:
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, leave=False))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Detach a tensor to a float32 (or integer) NumPy array on the CPU."""
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array


def cpu_state(state: dict) -> dict:
    """A copy of a pickling ``state`` dict with its learned tensors and modules on the CPU.

    Learned attributes (names ending in ``_``) that are tensors or modules are
    copied to the CPU and a learned ``torch.device`` becomes the CPU; parameters
    are left as they are. A model fitted on a GPU then unpickles on a machine
    without one, and predicts on the CPU.
    """
    moved = {}
    for key, value in state.items():
        if not key.endswith("_"):
            pass
        elif isinstance(value, (torch.Tensor, torch.nn.Module)):
            on_cpu = all(t.device.type == "cpu" for t in _tensors(value))
            value = value if on_cpu else _cpu_copy(value)
        elif isinstance(value, torch.device):
            value = torch.device("cpu")
        moved[key] = value
    return moved


def deepcopy_on_device(estimator, state: dict, memo: dict):
    """A deep copy of ``estimator`` from its ``state``, tensors left on their devices.

    For ``__deepcopy__``: :func:`copy.deepcopy` would otherwise go through
    ``__getstate__``, whose :func:`cpu_state` is for pickling, and bring a GPU fit
    back on the CPU (with ``device_`` saying ``cpu``).

    Examples
    --------
    >>> import copy
    >>> from sklearn.base import BaseEstimator
    >>> class Est(BaseEstimator):
    ...     def __getstate__(self):
    ...         return cpu_state(super().__getstate__())
    ...     def __deepcopy__(self, memo):
    ...         return deepcopy_on_device(self, BaseEstimator.__getstate__(self), memo)
    >>> est = Est()
    >>> est.device_ = torch.device("meta")
    >>> copy.deepcopy(est).device_
    device(type='meta')
    """
    cls = type(estimator)
    new = cls.__new__(cls)
    memo[id(estimator)] = new
    new.__setstate__(copy.deepcopy(state, memo))
    return new


def _tensors(value: torch.Tensor | torch.nn.Module) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    else:
        yield from value.parameters()
        yield from value.buffers()


def _cpu_copy(value: torch.Tensor | torch.nn.Module):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return copy.deepcopy(value).cpu()
