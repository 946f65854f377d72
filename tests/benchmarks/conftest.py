"""The benchmark scripts, each loaded once per module as a Python module."""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as the module ``name`` (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_clusterers() -> ModuleType:
    return load_script("bench_clusterers")


@pytest.fixture(scope="module")
def bench_quality() -> ModuleType:
    return load_script("bench_quality")


@pytest.fixture(scope="module")
def gpu_smoke() -> ModuleType:
    return load_script("gpu_smoke")


@pytest.fixture(scope="module")
def run_dcase() -> ModuleType:
    return load_script("run_dcase")
