"""benchmarks/bench_clusterers.py: the timed stages, the threading child and its summary."""

import json
import subprocess
from types import SimpleNamespace

import pytest
import torch

TINY = {
    "temi": {"max_steps": 25, "n_heads": 2},
    "spice": {"max_epochs": 1, "n_repeats": 1, "semi_max_epochs": 1},
    "deepdpm": {"max_epochs": 2, "steps_per_epoch": 3},
}


@pytest.fixture
def two_threads():
    """Torch on two threads for the test (so one thread in the fit is visible), then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("method", ["temi", "spice", "deepdpm"])
def test_run_one_times_stages_and_fit(bench_clusterers, method, two_threads):
    result = bench_clusterers.run_one(method, 300, 16, 3, 2, TINY[method])
    stages = {f"{stage} s" for stage in bench_clusterers.STAGES.get(method, {})}
    assert stages <= set(result) and all(result[key] >= 0 for key in stages)
    assert result["fit s"] > 0 and result["peak rss MB"] > 0


def test_threading_child_sees_one_thread_and_restores_the_callers(bench_clusterers, two_threads):
    result = bench_clusterers.run_threading_one(
        "temi", "estimator", 200, 16, 3, TINY["temi"], 600.0
    )
    assert result["threads at steps"] == [1]
    assert result["threads after fit"] == 2
    assert not result["capped"] and result["steps"] >= 25
    assert result["fit ms/step"] >= result["ms/step"] > 0


def test_threading_child_stops_at_the_cap_and_removes_its_hook(bench_clusterers, two_threads):
    result = bench_clusterers.run_threading_one("temi", "estimator", 200, 16, 3, TINY["temi"], 0.0)
    assert result["capped"] and result["steps"] == bench_clusterers.MIN_TIMED_STEPS + 1
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    weight.sum().backward()
    optimizer.step()  # would raise the cap if the step hook were still registered
    assert float(weight.detach()) == pytest.approx(0.9)


def test_threading_summary_ratios_and_verdict(bench_clusterers, monkeypatch, capsys):
    timings = {
        "idle": {"1 thread": 10.0, "estimator": 11.0, "torch default": 30.0},
        "busy": {"1 thread": 10.0, "estimator": 13.0, "torch default": 140.0},
    }
    load = {"now": "idle"}

    class FakeProcess:
        def __init__(self, target, daemon):
            load["now"] = "busy"

        def start(self):
            pass

        def terminate(self):
            pass

        def join(self):
            pass

    def fake_run(command, **kwargs):
        setting = command[command.index("--setting") + 1]
        assert kwargs["env"].get("OMP_NUM_THREADS") is None
        result = {
            "fit s": 1.0, "capped": False, "steps": 100, "fit ms/step": 12.0,
            "ms/step": timings[load["now"]][setting], "torch default threads": 2,
            "threads at steps": [2 if setting == "torch default" else 1], "threads after fit": 2,
        }  # fmt: skip
        return SimpleNamespace(returncode=0, stdout=json.dumps(result), stderr="")

    monkeypatch.setattr(bench_clusterers.multiprocessing, "Process", FakeProcess)
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = SimpleNamespace(n=[300], dim=16, n_clusters=3, params="{}", max_seconds=5.0)
    bench_clusterers.threading_benchmark(args, ["temi"])
    out = capsys.readouterr().out
    assert "| busy | temi | torch default | 2 | 100 | 1.0 | 12.0 | 140.0 | 14.00 |" in out
    assert "temi idle: estimator 1.10x, torch default 3.00x" in out
    assert "temi busy: estimator 1.30x, torch default 14.00x" in out
    assert out.rstrip().endswith("MISSED)")
    assert "(target under load: estimator <= 1.2x: ok)" in out
