"""benchmarks/bench_quality.py: stratified subsets, the summary table and ``--merge``."""

import csv

import numpy as np


def test_stratified_subset_keeps_class_proportions(bench_quality):
    y = np.repeat(["a", "b", "c"], [60, 30, 10])
    index = bench_quality.stratified_subset(y, 20, seed=0)
    assert len(index) == 20 and np.all(np.diff(index) > 0)
    assert sorted(np.unique(y[index], return_counts=True)[1].tolist()) == [2, 6, 12]
    assert not np.array_equal(index, bench_quality.stratified_subset(y, 20, seed=1))


def _run(method, seed, nmi, n=100):
    return {
        "set": "fsdd-speaker",
        "feature": "byola",
        "method": method,
        "seed": seed,
        "n": n,
        "nmi": nmi,
        "ari": nmi / 2,
        "acc": 0.5,
        "k": 6,
        "fit_s": 1.0,
    }


def test_merge_tabulates_runs_of_several_files(bench_quality, tmp_path, capsys):
    files = []
    for name, runs in {
        "classical": [_run("kmeans", 0, 0.8), _run("kmeans", 1, 0.6)],
        "deep": [_run("temi", 0, 0.9), _run("temi", 0, 0.5, n=60)],
    }.items():
        files.append(tmp_path / f"{name}.csv")
        with open(files[-1], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(runs[0]))
            writer.writeheader()
            writer.writerows(runs)
    bench_quality.main(["--merge", *map(str, files)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| fsdd")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    # full-size rows first, classical before deep; subsets get their own row
    assert [row[1:4] for row in cells] == [
        ["100", "byola", "kmeans"],
        ["100", "byola", "temi"],
        ["60", "byola", "temi"],
    ]
    assert cells[0][4] == "0.700 ± 0.100"
    assert cells[2][4] == "0.500 ± 0.000"
