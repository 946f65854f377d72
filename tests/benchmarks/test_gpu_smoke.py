"""benchmarks/gpu_smoke.py: the CUDA-absent exit, the comparison rules, a CPU dry run."""

import json
import pickle

import numpy as np
import pytest
import soundfile


@pytest.fixture
def fake_fsdd(tmp_path):
    """Six tone clips named as FSDD's recordings (DIGIT_SPEAKER_INDEX.wav)."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    t = np.arange(4000) / 8000
    for i, speaker in enumerate(["ann", "bob", "cid"] * 2):
        tone = np.sin(2 * np.pi * (300 + 200 * i) * t).astype(np.float32)
        soundfile.write(folder / f"{i % 2}_{speaker}_{i}.wav", tone, 8000)
    return folder


def test_exits_2_with_a_message_without_cuda(gpu_smoke, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_smoke.main([]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err


def test_exits_2_without_the_data_folder(gpu_smoke, tmp_path, capsys):
    assert gpu_smoke.main(["--device", "cpu", "--fsdd", str(tmp_path / "nope")]) == 2
    assert "no FSDD recordings folder" in capsys.readouterr().err


def test_compare_transforms_within_the_stated_tolerance(gpu_smoke):
    cuda = gpu_smoke.TOLERANCES["cuda"]
    reference = {"transform": np.array([[1.0, -2.0], [100.0, 0.0]], dtype=np.float32)}
    close = {"transform": reference["transform"] * (1 + 5e-3)}
    far = {"transform": reference["transform"] + np.array([[0.0, 0.0], [0.0, 0.01]])}
    assert gpu_smoke.compare(reference, close, cuda)[0]
    assert not gpu_smoke.compare(reference, far, cuda)[0]
    assert not gpu_smoke.compare(reference, close, gpu_smoke.TOLERANCES["cpu"])[0]
    assert not gpu_smoke.compare(reference, {"transform": np.zeros((2, 3))}, cuda)[0]


def test_compare_labels_may_flip_only_on_near_ties(gpu_smoke):
    cuda = gpu_smoke.TOLERANCES["cuda"]
    proba = np.array([[0.505, 0.495], [0.9, 0.1]], dtype=np.float32)
    reference = {"proba": proba, "labels": np.array([0, 0])}
    tie_flipped = {"proba": proba + [[-0.006, 0.006], [0, 0]], "labels": np.array([1, 0])}
    ok, message = gpu_smoke.compare(reference, tie_flipped, cuda)
    assert ok and "differ on 1 of 2 rows (0 with a clear margin)" in message
    clear_flipped = {"proba": proba, "labels": np.array([0, 1])}
    assert not gpu_smoke.compare(reference, clear_flipped, cuda)[0]
    drifted = {"proba": proba + [[0, 0], [-0.05, 0.05]], "labels": np.array([0, 0])}
    assert not gpu_smoke.compare(reference, drifted, cuda)[0]


def test_child_reports_each_estimator(gpu_smoke, tmp_path, capsys):
    from skaudiocluster import SpectrogramTransformer

    clips = [np.sin(np.arange(n) / 9.0).astype(np.float32) for n in (8000, 12000)]
    estimator = SpectrogramTransformer(device="cpu").fit(clips)
    (tmp_path / "e.pkl").write_bytes(pickle.dumps(estimator))
    good = {"transform": estimator.transform(clips)}
    bad = {"transform": good["transform"] + 1e-6}
    entries = {
        "same": {"file": "e.pkl", "input": "clips", "outputs": good},
        "shifted": {"file": "e.pkl", "input": "clips", "outputs": bad},
        "missing": {"file": "absent.pkl", "input": "clips", "outputs": good},
    }
    inputs = {"clips": clips, "tolerance": gpu_smoke.TOLERANCES["cpu"], "estimators": entries}
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps(inputs))
    assert gpu_smoke.child(tmp_path) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["ok"] for r in lines} == {"same": True, "shifted": False, "missing": False}
    assert "FileNotFoundError" in lines[2]["message"]


def test_dry_run_fits_pickles_and_reloads_in_a_cpu_only_child(gpu_smoke, fake_fsdd, capsys):
    argv = ["--device", "cpu", "--fsdd", str(fake_fsdd), "--n-clips", "6"]
    assert gpu_smoke.main([*argv, "--only", "SpectrogramTransformer"]) == 0
    out = capsys.readouterr().out
    assert "ok       SpectrogramTransformer reloaded on the CPU: transform max |diff| 0" in out
    assert "all 1 estimators fitted on cpu agree on the CPU" in out


@pytest.mark.slow
def test_dry_run_of_every_estimator_on_fsdd(gpu_smoke, fsdd_dir, byola_d512_weights, capsys):
    argv = ["--device", "cpu", "--fsdd", str(fsdd_dir), "--n-clips", "30"]
    argv += ["--byola-weights", str(byola_d512_weights), "--passt-weights", "one-block"]
    assert gpu_smoke.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("reloaded on the CPU") == 7
    assert "all 7 estimators fitted on cpu agree on the CPU" in out
