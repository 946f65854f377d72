"""benchmarks/run_dcase.py end to end: table columns, CSV rows, unavailable rows, PNG plots."""

import csv

import numpy as np
import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER = "| features | reducer | clusterer | NMI | ARI | ACC | K | fit s | status |"


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def table_rows(text):
    """The markdown table's body rows as lists of cells."""
    lines = text[text.index(HEADER) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def assert_valid_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def test_synthetic_table_csv_and_unavailable_rows(run_dcase, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--n-samples", "60", "--n-classes", "3",
        "--features", "spectrogram", "byola",
        "--byola-weights", str(tmp_path / "missing.pth"),
        "--reducers", "none", "pca",
        "--clusterers", "kmeans", "agglomerative", "dbscan", "dpgmm",
        "--seeds", "0", "1", "--no-plots", "--out", str(out),
    ]  # fmt: skip
    assert run_dcase.main(argv) == 0
    printed = capsys.readouterr().out
    assert HEADER in printed
    assert (out / "results.md").read_text().strip() in printed

    rows = table_rows(printed)
    assert len(rows) == 2 * 2 * 4
    spectrogram = {(r[1], r[2]): r for r in rows if r[0] == "spectrogram"}
    clusterers = ("kmeans", "agglomerative", "dbscan", "dpgmm")
    assert set(spectrogram) == {(red, clu) for red in ("none", "pca") for clu in clusterers}
    kmeans = spectrogram[("none", "kmeans")]
    assert kmeans[-1] == "ok" and "±" in kmeans[3]  # two seeds: mean ± std
    assert all(r[-1] == "unavailable [1]" for r in rows if r[0] == "byola")
    assert "[1] unavailable: ValueError: weights=" in printed

    results = read_csv(out / "results.csv")
    assert list(results[0]) == run_dcase.COLUMNS
    assert len(results) == 16
    ok = [r for r in results if r["status"] == "ok"]
    assert len(ok) == 8
    for row in ok:
        assert 0.0 <= float(row["nmi_mean"]) <= 1.0
        assert -1.0 <= float(row["ari_mean"]) <= 1.0
        assert 0.0 < float(row["acc_mean"]) <= 1.0
        assert float(row["fit_time_s"]) >= 0 and float(row["k_mean"]) >= 1
        assert row["n_seeds"] == "2"
    k_of = {(r["reducer"], r["clusterer"]): float(r["k_mean"]) for r in ok}
    assert k_of[("none", "kmeans")] == 3.0
    # log-mel statistics separate three sound kinds far better than chance
    nmi = {(r["reducer"], r["clusterer"]): float(r["nmi_mean"]) for r in ok}
    assert nmi[("none", "kmeans")] > 0.3

    runs = read_csv(out / "runs.csv")
    assert len(runs) == 32 and {r["seed"] for r in runs} == {"0", "1"}


def test_embeddings_are_cached(run_dcase, tmp_path, capsys):
    argv = [
        "--n-samples", "30", "--n-classes", "3", "--features", "spectrogram",
        "--reducers", "none", "--clusterers", "kmeans", "--no-plots",
        "--out", str(tmp_path),
    ]  # fmt: skip
    run_dcase.main(argv)
    first = read_csv(tmp_path / "results.csv")[0]["embed_time_s"]
    run_dcase.main([*argv[:-5], "--clusterers", "agglomerative", "--no-plots", "--out",
                    str(tmp_path)])  # fmt: skip
    # the second run loads the cached embedding with the time it took the first time
    assert read_csv(tmp_path / "results.csv")[0]["embed_time_s"] == first
    assert any((tmp_path / "cache").rglob("output.pkl"))


def test_subset_is_stratified_and_seeded(run_dcase, fsdd_dir):
    args = run_dcase.build_parser().parse_args(["--fsdd", str(fsdd_dir), "--subset", "60"])
    X, y, name = run_dcase.load_data(args)
    X2, _, _ = run_dcase.load_data(args)
    assert len(X) == 60 and X == X2 and "subset of 60" in name
    assert sorted(np.unique(y, return_counts=True)[1].tolist()) == [10] * 6


def test_rejects_two_data_sets(run_dcase, tmp_path):
    with pytest.raises(SystemExit, match="choose one data set"):
        run_dcase.main(["--fsdd", str(tmp_path), "--folder", str(tmp_path)])


@pytest.mark.slow
def test_synthetic_plots(run_dcase, tmp_path):
    pytest.importorskip("matplotlib")
    argv = [
        "--n-samples", "90", "--n-classes", "3", "--features", "spectrogram",
        "--reducers", "none", "umap", "--clusterers", "kmeans", "meanshift", "deepdpm",
        "--quick", "--out", str(tmp_path),
    ]  # fmt: skip
    assert run_dcase.main(argv) == 0
    results = read_csv(tmp_path / "results.csv")
    # deep clusterers reduce their input themselves: they run after "none" only
    pipelines = {(r["reducer"], r["clusterer"]) for r in results}
    assert pipelines == {(red, clu) for red in ("none", "umap") for clu in ("kmeans", "meanshift")
                         } | {("none", "deepdpm")}  # fmt: skip
    assert {r["status"] for r in results} == {"ok"}, results
    for name in ("cluster_map.png", "confusion_matrix.png"):
        assert_valid_png(tmp_path / name)


@pytest.mark.slow
def test_fsdd_300_clips(run_dcase, fsdd_dir, byola_d512_weights, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = [
        "--fsdd", str(fsdd_dir), "--target", "speaker", "--subset", "300",
        "--byola-weights", str(byola_d512_weights),
        "--features", "spectrogram", "byola", "--reducers", "none", "pca",
        "--clusterers", "kmeans", "agglomerative", "temi", "--quick",
        "--out", str(tmp_path),
    ]  # fmt: skip
    assert run_dcase.main(argv) == 0
    printed = capsys.readouterr().out
    assert "FSDD by speaker, stratified subset of 300" in printed
    rows = table_rows(printed)
    assert len(rows) == 2 * (2 * 2 + 1)
    assert {r[-1] for r in rows} == {"ok"}, rows
    results = {(r["features"], r["reducer"], r["clusterer"]): r
               for r in read_csv(tmp_path / "results.csv")}  # fmt: skip
    # pretrained BYOL-A groups FSDD by speaker (0.82 NMI on all 3,000 clips)
    assert float(results[("byola", "none", "kmeans")]["nmi_mean"]) > 0.6
    assert float(results[("byola", "none", "kmeans")]["k_mean"]) == 6
    for name in ("cluster_map.png", "confusion_matrix.png"):
        assert_valid_png(tmp_path / name)
