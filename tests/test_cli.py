import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from skaudiocluster.cli import main


def test_cluster_writes_one_row_per_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "clips"
    (folder / "nested").mkdir(parents=True)
    for i in range(12):
        freq = 300 if i % 2 else 2000
        t = np.arange(4000) / 8000
        tone = np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
        soundfile.write(folder / ("nested" if i < 3 else ".") / f"c{i}.wav", tone, 8000)
    out = tmp_path / "assignments.csv"
    assert main(["cluster", str(folder), "--n-clusters", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and set(rows[0]) == {"path", "cluster", "confidence"}
    by_freq = {}
    for row in rows:
        index = int(row["path"].rsplit("c", 1)[1].split(".")[0])
        by_freq.setdefault(index % 2, set()).add(row["cluster"])
    assert by_freq[0].isdisjoint(by_freq[1])
    assert "12 files, 2 clusters" in capsys.readouterr().out


def test_cluster_reports_a_clear_error_for_a_missing_folder(tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_demo_prints_a_score_table(capsys, monkeypatch):
    import skaudiocluster.cli as cli

    fast = {k: v for k, v in cli._clusterers(3, 0).items() if k in ("kmeans", "agglomerative")}
    monkeypatch.setattr(cli, "_clusterers", lambda n, r, quick=False: fast)
    assert main(["demo", "--n-samples", "60", "--n-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "| pipeline | K found | NMI | ARI | accuracy |" in out
    assert out.count("-> kmeans") == 1 and out.count("-> agglomerative") == 1


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_ctrl_c_while_training_exits_130_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "clips"
    folder.mkdir()
    t = np.arange(4000) / 8000
    for i in range(40):
        tone = np.sin(2 * np.pi * (200 + 50 * (i % 4)) * t) + 0.05 * rng.standard_normal(t.size)
        soundfile.write(folder / f"c{i}.wav", tone, 8000)
    out = tmp_path / "out" / "X.csv"
    out.parent.mkdir()
    command = [sys.executable, "-m", "skaudiocluster.cli", "cluster", str(folder)]
    command += ["--clusterer", "deepdpm", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait on CPU time, not wall time, so a busy machine cannot make the signal land
        # during the imports: those plus embedding 40 clips take under 6 CPU seconds, and
        # DeepDPM's 300 default epochs about a minute more.
        deadline = time.monotonic() + 120
        while proc.poll() is None and _cpu_seconds(proc.pid) < 9.0:
            assert time.monotonic() < deadline, "the CLI never got to training"
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before the signal:\n{proc.stderr.read()}"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "skaudiocluster cluster: interrupted, nothing written"
    assert list(out.parent.iterdir()) == []
