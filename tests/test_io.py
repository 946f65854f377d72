"""skaudiocluster._io: outputs are whole or absent, with the umask's mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skaudiocluster import _io
from skaudiocluster._io import atomic_folder, atomic_write, create_temp, host, remove_stale_temps

# File names as users give them: dots (several suffixes), dashes, spaces, non-ASCII.
names = st.text(st.sampled_from("ab.-_ é"), min_size=1, max_size=20).filter(
    lambda name: name.strip(".") and name not in (".", "..")
)


@settings(max_examples=50, deadline=None)
@given(name=names, content=st.binary(max_size=2000), old=st.none() | st.binary(max_size=50))
def test_atomic_write_leaves_exactly_the_new_content(name, content, old):
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / name
        if old is not None:
            target.write_bytes(old)
        with atomic_write(target, "wb") as handle:
            handle.write(content)
        assert target.read_bytes() == content
        assert os.listdir(folder) == [name]


@settings(max_examples=30, deadline=None)
@given(name=names, old=st.none() | st.binary(max_size=50))
def test_an_interrupted_write_leaves_the_target_as_it_was(name, old):
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / name
        if old is not None:
            target.write_bytes(old)
        with pytest.raises(KeyboardInterrupt), atomic_write(target) as handle:
            handle.write("half")
            raise KeyboardInterrupt
        assert os.listdir(folder) == ([] if old is None else [name])
        if old is not None:
            assert target.read_bytes() == old


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_and_folders_get_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_write(tmp_path / "a.csv") as handle:
            handle.write("x")
        with atomic_folder(tmp_path / "report") as folder:
            (folder / "index.html").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == 0o777 & ~umask


def test_the_data_is_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda *a: events.append("replace") or replace(*a))
    with atomic_write(tmp_path / "a.txt") as handle:
        handle.write("x")
    assert events == ["fsync", "replace"]


def test_atomic_write_text_options(tmp_path):
    with atomic_write(tmp_path / "a.csv", newline="", encoding="utf-8") as handle:
        handle.write("é\r\n")
    assert (tmp_path / "a.csv").read_bytes() == "é\r\n".encode()
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(tmp_path / "b.txt", "a"):
            pass
    assert sorted(os.listdir(tmp_path)) == ["a.csv"]


def test_a_failed_write_in_a_missing_folder_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "missing" / "a.txt"):
        pass
    assert os.listdir(tmp_path) == []


def test_atomic_folder_replaces_an_old_folder(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.html").write_text("old")
    with atomic_folder(target) as folder:
        assert folder.parent == tmp_path and folder.name.startswith(".report.")
        (folder / "new.html").write_text("new")
        assert (target / "old.html").exists()  # untouched until the end
    assert os.listdir(target) == ["new.html"]
    assert os.listdir(tmp_path) == ["report"]


def test_an_interrupted_folder_leaves_the_old_one(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.html").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as folder:
        (folder / "new.html").write_text("new")
        raise KeyboardInterrupt
    assert os.listdir(target) == ["old.html"]
    assert os.listdir(tmp_path) == ["report"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.html").write_text("old")
    rename, calls = os.rename, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder into place
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(_io.os, "rename", second_fails)
    with pytest.raises(OSError, match="No space"), atomic_folder(target) as folder:
        (folder / "new.html").write_text("new")
    assert os.listdir(target) == ["old.html"]
    assert os.listdir(tmp_path) == ["report"]


@settings(max_examples=30, deadline=None)
@given(name=names)
def test_remove_stale_temps_reads_back_every_temporary_name(dead_pid, name):
    with tempfile.TemporaryDirectory() as folder:
        descriptor, mine = create_temp(Path(folder) / name)
        os.close(descriptor)
        assert mine.name.startswith(f".{name}.") and mine.name.endswith(".tmp")
        remove_stale_temps(folder, "*.tmp")
        assert mine.exists()  # this process is alive
        killed = mine.with_name(mine.name.replace(f".{os.getpid()}.tmp", f".{dead_pid}.tmp"))
        mine.rename(killed)
        remove_stale_temps(folder, "*.tmp")
        assert not killed.exists()


def test_remove_stale_temps_keeps_what_is_not_ours(tmp_path, dead_pid):
    kept = [
        tmp_path / f"a.x.otherhost.{dead_pid}.tmp",  # another machine's (shared folder)
        tmp_path / f"a.x.{host()}.{os.getppid()}.tmp",  # a live process's
        tmp_path / f"a.{host()}.x.tmp",  # no pid
        tmp_path / "x.tmp",  # another naming
        tmp_path / f"a.x.{host()}.{dead_pid}.npy",  # not matched by the pattern
    ]
    for file in kept:
        file.write_bytes(b"")
    remove_stale_temps(tmp_path, "*.tmp")
    assert all(file.exists() for file in kept)


# ---------------------------------------------------------------------------------------------
# several outputs as one unit (issue 33, row 5), the lock (row 6), what a kill leaves (row 17)


def _old_outputs(folder: Path) -> tuple[Path, Path]:
    csv, report = folder / "a.csv", folder / "report"
    csv.write_text("old csv")
    report.mkdir()
    (report / "index.html").write_text("old report")
    return csv, report


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_row5_outputs_are_renamed_together_or_not_at_all(tmp_path, fault):
    csv, report = _old_outputs(tmp_path)
    with pytest.raises(type(fault)), _io.atomic_outputs():
        with atomic_folder(report) as folder:
            (folder / "index.html").write_text("new report")
        with atomic_write(csv) as handle:
            handle.write("new")
            raise fault
    assert csv.read_text() == "old csv"
    assert (report / "index.html").read_text() == "old report"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "report"]


def test_row5_outputs_are_all_renamed_at_the_end(tmp_path):
    csv, report = _old_outputs(tmp_path)
    (tmp_path / "a.skipped.csv").write_text("stale")
    with _io.atomic_outputs():
        with atomic_folder(report) as folder:
            (folder / "index.html").write_text("new report")
        with atomic_write(csv) as handle:
            handle.write("new csv")
        _io.discard_output(tmp_path / "a.skipped.csv")
        assert csv.read_text() == "old csv"  # nothing renamed before the end
    assert csv.read_text() == "new csv"
    assert (report / "index.html").read_text() == "new report"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "report"]


def test_row5_a_failed_rename_puts_every_output_back(tmp_path, monkeypatch):
    csv, report = _old_outputs(tmp_path)
    rename = os.rename

    def fail_into_csv(src, dst):
        if Path(dst) == csv and str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(_io.os, "rename", fail_into_csv)
    with pytest.raises(OSError, match="No space"), _io.atomic_outputs():
        with atomic_folder(report) as folder:
            (folder / "index.html").write_text("new report")
        with atomic_write(csv) as handle:
            handle.write("new csv")
    assert csv.read_text() == "old csv"
    assert (report / "index.html").read_text() == "old report"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "report"]


def test_row6_a_second_run_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "a.csv"
    with _io.output_lock(out, option="--out"):
        code = (
            "import sys; from skaudiocluster._io import output_lock\n"
            "try:\n"
            f"    with output_lock({str(out)!r}, option='--out'): pass\n"
            "except ValueError as exc:\n"
            "    print(exc); sys.exit(2)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 2
        assert "is being written by another run" in done.stdout
        assert f"process {os.getpid()}" in done.stdout and str(out) in done.stdout
    assert os.listdir(tmp_path) == []


def test_row6_a_dead_processs_lock_is_taken_over(tmp_path, dead_pid):
    out = tmp_path / "a.csv"
    (tmp_path / "a.csv.lock").write_text(f"{host()} {dead_pid}\n")
    with _io.output_lock(out):
        assert (tmp_path / "a.csv.lock").read_text() == f"{host()} {os.getpid()}\n"
    assert os.listdir(tmp_path) == []


def test_row17_a_kill_between_the_renames_is_recovered(tmp_path, dead_pid):
    target = tmp_path / "report"
    old = tmp_path / f".report.0a0b0c0d.{host()}.{dead_pid}.old"
    old.mkdir()
    (old / "index.html").write_text("old report")
    temp = tmp_path / f".report.0a0b0c0d.{host()}.{dead_pid}.tmp"
    temp.mkdir()
    (temp / "index.html").write_text("half")
    stale_csv = tmp_path / f".a.csv.01020304.{host()}.{dead_pid}.tmp"
    stale_csv.write_text("half")
    _io.recover_outputs(target)
    _io.recover_outputs(tmp_path / "a.csv")
    assert (target / "index.html").read_text() == "old report"
    assert sorted(os.listdir(tmp_path)) == ["report"]


def test_row17_a_stale_old_beside_a_final_output_is_removed(tmp_path, dead_pid):
    (tmp_path / "a.csv").write_text("new")
    (tmp_path / f".a.csv.0a0b0c0d.{host()}.{dead_pid}.old").write_text("old")
    live = tmp_path / f".a.csv.0a0b0c0d.{host()}.{os.getppid()}.old"
    live.write_text("a live run's")
    _io.recover_outputs(tmp_path / "a.csv")
    assert sorted(os.listdir(tmp_path)) == sorted(["a.csv", live.name])


def test_row17_the_folder_swap_renames_the_old_one_aside_first(tmp_path, monkeypatch):
    target = tmp_path / "report"
    target.mkdir()
    rename, seen = os.rename, []

    def record(src, dst):
        seen.append(Path(dst).name)
        rename(src, dst)

    monkeypatch.setattr(_io.os, "rename", record)
    with atomic_folder(target):
        pass
    assert seen[0].startswith(".report.") and seen[0].endswith(f".{os.getpid()}.old")
    assert seen[1] == "report"


def test_row5_ctrl_c_during_the_renames_waits_for_them(tmp_path, monkeypatch):
    csv, report = _old_outputs(tmp_path)
    mask = _io.signal.pthread_sigmask

    def interrupt_on_unmask(how, signals):
        previous = mask(how, signals)
        if how == _io.signal.SIG_SETMASK:
            raise KeyboardInterrupt  # the Ctrl-C that was held back
        return previous

    monkeypatch.setattr(_io.signal, "pthread_sigmask", interrupt_on_unmask)
    with pytest.raises(KeyboardInterrupt) as caught, _io.atomic_outputs():
        with atomic_folder(report) as folder:
            (folder / "index.html").write_text("new report")
        with atomic_write(csv) as handle:
            handle.write("new csv")
    assert caught.value.outputs_written
    assert csv.read_text() == "new csv"
    assert (report / "index.html").read_text() == "new report"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "report"]
