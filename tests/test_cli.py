import csv

import numpy as np
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
