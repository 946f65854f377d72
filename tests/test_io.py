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


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


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
