"""skaudiocluster._torch: device, seeding, threads, fit protection, batched inference, CPU state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skaudiocluster import _torch
from skaudiocluster._torch import (
    INFERENCE_BATCH,
    batched_forward,
    cpu_state,
    draw_seed,
    fit_context,
    forked_rng,
    make_generator,
    resolve_device,
    to_numpy,
    torch_threads,
    unfitted_on_error,
)

CPU = torch.device("cpu")
# torch ops are slow on a loaded machine; hypothesis' default 200 ms deadline would flake.
torch_settings = settings(deadline=None, max_examples=40)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- resolve_device ------------------------------------------------------------------------


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == CPU


def test_auto_is_cuda_when_cuda_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("device", ["cpu", CPU])
def test_cpu_string_and_device_resolve_to_the_cpu(device):
    resolved = resolve_device(device)
    assert isinstance(resolved, torch.device) and resolved == CPU


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", "Auto"])
def test_invalid_device_string_is_a_value_error(device):
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda")])
def test_cuda_without_cuda_is_a_value_error(no_cuda, device):
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(device)


# --- draw_seed / make_generator ------------------------------------------------------------


@given(st.integers(0, 2**32 - 1))
def test_draw_seed_repeats_for_an_int_and_fits_a_torch_seed(random_state):
    seed = draw_seed(random_state)
    assert type(seed) is int and 0 <= seed < 2**31 - 1
    assert draw_seed(random_state) == seed


def test_draw_seed_advances_a_random_state_instance():
    rng = np.random.RandomState(0)
    first, second = draw_seed(rng), draw_seed(rng)
    assert first == draw_seed(0) and second != first


def test_draw_seed_none_draws_from_numpys_global_generator():
    saved = np.random.get_state()
    try:
        np.random.seed(3)
        first = draw_seed(None)
        np.random.seed(3)
        assert draw_seed(None) == first
        assert draw_seed(None) != first
    finally:
        np.random.set_state(saved)


def test_draw_seed_leaves_torchs_global_state_alone():
    before = torch.random.get_rng_state()
    draw_seed(None)
    draw_seed(5)
    assert torch.equal(torch.random.get_rng_state(), before)


@given(st.integers(0, 2**31 - 2))
def test_make_generator_is_a_seeded_cpu_generator(seed):
    a = torch.rand(3, generator=make_generator(seed))
    b = torch.rand(3, generator=make_generator(seed))
    assert make_generator(seed).device == CPU and torch.equal(a, b)


# --- forked_rng ----------------------------------------------------------------------------


@torch_settings
@given(st.integers(0, 2**31 - 2), st.integers(0, 2**31 - 2))
def test_forked_rng_draws_depend_on_the_seed_alone(seed, caller_seed):
    with torch.random.fork_rng(devices=[]):  # the test's own seeding stays in the test
        _check_forked_draws(seed, caller_seed)


def _check_forked_draws(seed, caller_seed):
    torch.manual_seed(caller_seed)
    caller_state = torch.random.get_rng_state()
    with forked_rng(seed, CPU):
        inside = torch.randn(4)
    assert torch.equal(torch.random.get_rng_state(), caller_state)
    torch.manual_seed(caller_seed + 1)  # another caller state: same draws inside
    with forked_rng(seed, CPU):
        again = torch.randn(4)
    assert torch.equal(inside, again)


def test_forked_rng_different_seeds_differ():
    with forked_rng(0, CPU):
        a = torch.randn(8)
    with forked_rng(1, CPU):
        b = torch.randn(8)
    assert not torch.equal(a, b)


def test_forked_rng_restores_the_callers_state_when_the_block_raises():
    before = torch.random.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"), forked_rng(0, CPU):
        torch.randn(10)
        raise RuntimeError("boom")
    assert torch.equal(torch.random.get_rng_state(), before)
    # and the caller's stream goes on as if nothing happened
    expected = torch.randn(3, generator=torch.Generator().set_state(before))
    assert torch.equal(torch.randn(3), expected)


def test_forked_rng_on_a_cuda_device_without_gpus_forks_the_cpu_only():
    # device_count() is 0 here: nothing to fork on the GPU side, and no CUDA call is made.
    before = torch.random.get_rng_state()
    with forked_rng(7, torch.device("cuda")):
        torch.randn(2)
    assert torch.equal(torch.random.get_rng_state(), before)


# --- torch_threads -------------------------------------------------------------------------


def test_torch_threads_sets_and_restores(two_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_torch_threads_restores_when_the_block_raises(two_threads):
    with pytest.raises(KeyboardInterrupt), torch_threads(1):
        raise KeyboardInterrupt
    assert torch.get_num_threads() == 2


def test_torch_threads_none_leaves_the_setting_alone(two_threads):
    with torch_threads(None):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


# --- unfitted_on_error / fit_context -------------------------------------------------------


class Estimator:
    def __init__(self):
        self.alpha = 1.0


def _half_fit(est: Estimator, exc: BaseException):
    est.labels_ = np.arange(3)
    est.alpha = 2.0
    raise exc


@pytest.mark.parametrize("exc", [ValueError("bad"), KeyboardInterrupt(), NotImplementedError()])
def test_unfitted_on_error_puts_attributes_back_and_reraises(exc):
    est = Estimator()
    with pytest.raises(type(exc)), unfitted_on_error(est):
        _half_fit(est, exc)
    assert vars(est) == {"alpha": 1.0}


def test_unfitted_on_error_keeps_a_previous_fit():
    est = Estimator()
    est.labels_ = previous = np.zeros(3)
    with pytest.raises(KeyboardInterrupt), unfitted_on_error(est):
        _half_fit(est, KeyboardInterrupt())
    assert est.labels_ is previous and est.alpha == 1.0


def test_unfitted_on_error_keeps_what_a_successful_block_set():
    est = Estimator()
    with unfitted_on_error(est):
        est.labels_ = np.arange(3)
    assert hasattr(est, "labels_")


def test_fit_context_forks_the_rng_uses_one_thread_and_protects(two_threads):
    est = Estimator()
    before = torch.random.get_rng_state()
    with pytest.raises(KeyboardInterrupt), fit_context(est, 0, CPU):
        assert torch.get_num_threads() == 1
        est.weights_ = torch.randn(3)
        raise KeyboardInterrupt
    assert vars(est) == {"alpha": 1.0}
    assert torch.get_num_threads() == 2
    assert torch.equal(torch.random.get_rng_state(), before)
    with fit_context(est, 0, CPU):
        first = torch.randn(3)
    with fit_context(est, 0, CPU, n_threads=None):
        assert torch.get_num_threads() == 2
        assert torch.equal(torch.randn(3), first)


def test_fit_context_leaves_threads_alone_off_the_cpu(two_threads):
    with fit_context(Estimator(), 0, torch.device("cuda"), n_threads=1):
        assert torch.get_num_threads() == 2


# --- batched_forward -----------------------------------------------------------------------


def _affine(x: torch.Tensor) -> torch.Tensor:
    weight = torch.arange(6, dtype=torch.float32).reshape(3, 2) / 7
    return x @ weight - 0.5


@torch_settings
@given(n_rows=st.integers(0, 60), batch_size=st.integers(1, 70), numpy=st.booleans())
def test_batched_forward_equals_the_unbatched_forward(n_rows, batch_size, numpy):
    features = torch.linspace(-3, 3, n_rows * 3).reshape(n_rows, 3)
    out = batched_forward(
        _affine, features.numpy() if numpy else features, device=CPU, batch_size=batch_size
    )
    assert out.device == CPU and out.shape == (n_rows, 2)
    assert torch.equal(out, _affine(features))


@torch_settings
@given(n_rows=st.integers(1, 40), batch_size=st.integers(1, 50))
def test_batched_forward_concatenates_along_dim(n_rows, batch_size):
    features = torch.randn(n_rows, 3, generator=make_generator(n_rows))

    def heads(x):  # (n_heads, batch, k), as a multi-head clusterer returns
        return torch.stack([_affine(x), -_affine(x)])

    out = batched_forward(heads, features, device=CPU, batch_size=batch_size, dim=1)
    assert torch.equal(out, heads(features))


def test_batched_forward_calls_once_per_batch_without_autograd():
    calls = []
    layer = torch.nn.Linear(3, 2)

    def forward(x):
        calls.append(len(x))
        return layer(x)

    out = batched_forward(forward, torch.ones(10, 3), device=CPU, batch_size=4)
    assert calls == [4, 4, 2]
    assert not out.requires_grad


def test_batched_forward_default_batch_is_inference_batch():
    calls = []
    batched_forward(
        lambda x: calls.append(len(x)) or x, torch.ones(INFERENCE_BATCH + 1, 1), device=CPU
    )
    assert calls == [INFERENCE_BATCH, 1]


def test_to_numpy_gives_float32_or_keeps_integers():
    assert to_numpy(torch.ones(2, dtype=torch.float64, requires_grad=True)).dtype == np.float32
    assert to_numpy(torch.arange(3)).dtype == np.int64


# --- cpu_state -----------------------------------------------------------------------------


def test_cpu_state_keeps_cpu_values_as_they_are():
    module, tensor = torch.nn.Linear(2, 2), torch.ones(3)
    state = {"module_": module, "centers_": tensor, "device_": CPU, "n_clusters": 3}
    moved = cpu_state(state)
    assert moved == state and moved is not state
    assert moved["module_"] is module and moved["centers_"] is tensor


def test_cpu_state_moves_learned_non_cpu_values_and_leaves_parameters(monkeypatch):
    # No GPU here: tensors on the meta device stand in for CUDA ones.
    copies = []
    monkeypatch.setattr(_torch, "_cpu_copy", lambda value: copies.append(value) or "on cpu")
    off_cpu = torch.empty(2, device="meta")
    module = torch.nn.Linear(2, 2)
    module.register_buffer("stat", torch.empty(2, device="meta"))  # a buffer off the CPU
    state = {
        "centers_": off_cpu,
        "module_": module,
        "device_": torch.device("cuda", 1),
        "init": off_cpu,  # a parameter: the user's, left as given
        "device": "cuda",
        "cpu_": torch.ones(1),
        "history_": [1, 2],
    }
    moved = cpu_state(state)
    assert moved["centers_"] == "on cpu" and moved["module_"] == "on cpu"
    assert copies == [off_cpu, module]
    assert moved["device_"] == CPU
    assert moved["init"] is off_cpu and moved["device"] == "cuda"
    assert moved["cpu_"] is state["cpu_"] and moved["history_"] is state["history_"]
    assert state["centers_"] is off_cpu and state["device_"] == torch.device("cuda", 1)


def test_cpu_copy_detaches_tensors_and_copies_modules():
    tensor = torch.ones(2, requires_grad=True)
    copied = _torch._cpu_copy(tensor)
    assert copied.device == CPU and not copied.requires_grad
    module = torch.nn.Linear(2, 2)
    clone = _torch._cpu_copy(module)
    assert clone is not module
    assert all(torch.equal(a, b) for a, b in zip(clone.parameters(), module.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_state_moves_cuda_tensors_and_modules():
    module = torch.nn.Linear(2, 2).cuda()
    state = cpu_state({"module_": module, "centers_": torch.ones(2, device="cuda")})
    assert all(p.device == CPU for p in state["module_"].parameters())
    assert state["centers_"].device == CPU
    assert next(module.parameters()).device.type == "cuda"  # the fitted model is untouched


_INTERRUPTED_FIT = """
import os, signal, sys, threading, time
import torch
from skaudiocluster._torch import fit_context

class Estimator:
    pass

def fit():
    with fit_context(Estimator(), 0, torch.device("cpu")):
        weight = torch.nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.Adam([weight], lr=0.1)  # torch's lazy compiler import
        weight.square().sum().backward()
        optimizer.step()

threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    fit()
    time.sleep(30)  # the interrupt comes during the sleep when the fit was faster
except KeyboardInterrupt:
    print("interrupted")
fit()
import sympy
sympy.core, sympy.printing
print("refit ok")
"""


@pytest.mark.parametrize("delay", [0.3, 0.9])
def test_row3_ctrl_c_during_torchs_lazy_compiler_import_leaves_later_fits_working(delay):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_FIT, str(delay)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.split() == ["interrupted", "refit", "ok"], result.stderr[-2000:]
