"""embed_files: chunks equal transform; the on-disk cache resumes, is atomic and invalidates."""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from sklearn.exceptions import NotFittedError

import skaudiocluster
from skaudiocluster import BYOLAEmbedder, PaSSTEmbedder, SpectrogramTransformer, embed_files
from skaudiocluster.datasets import make_sound_classes
from skaudiocluster.streaming import chunk_key, embedder_key

N_FILES = 11  # chunk_size=3 gives four chunks, the last one short


@pytest.fixture(scope="module")
def wav_paths(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("wavs")
    clips, _ = make_sound_classes(n_samples=N_FILES, n_classes=3, duration=0.3, random_state=0)
    paths = []
    for index, clip in enumerate(clips):
        # a mix of rates and lengths: files are resampled and batched by length
        rate = 16000 if index % 2 else 8000
        paths.append(str(folder / f"clip{index:02d}.wav"))
        soundfile.write(paths[-1], clip[: len(clip) - 200 * index : 16000 // rate], rate)
    return paths


@pytest.fixture(scope="module")
def spectrogram(wav_paths) -> SpectrogramTransformer:
    return SpectrogramTransformer(n_mels=16).fit(wav_paths[:4])


def _one_block_passt(folder: Path) -> Path:
    """The small PaSST checkpoint of tests/transformers (that folder is no package)."""
    path = Path(__file__).parent / "transformers" / "_passt_checkpoint.py"
    spec = importlib.util.spec_from_file_location("_passt_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_one_block_checkpoint(folder / "passt-depth1.pt")


@pytest.fixture
def count_calls(monkeypatch):
    """Count SpectrogramTransformer.transform calls (patched on the class: the key is unchanged)."""
    calls = []
    original = SpectrogramTransformer.transform

    def counting(self, X):
        calls.append(len(X))
        return original(self, X)

    monkeypatch.setattr(SpectrogramTransformer, "transform", counting)
    return calls


def test_equals_transform_and_is_independent_of_threads(wav_paths, spectrogram):
    expected = spectrogram.transform(wav_paths)
    one = embed_files(wav_paths, spectrogram, chunk_size=3)
    two = embed_files(wav_paths, spectrogram, chunk_size=3, n_jobs=2)
    assert one.dtype == np.float32 and one.shape == expected.shape
    np.testing.assert_allclose(one, expected, atol=1e-6)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize(
    "make",
    [
        lambda _: BYOLAEmbedder(weights=None, random_state=0),
        lambda tmp: PaSSTEmbedder(weights=_one_block_passt(tmp), sample_rate=16000),
        lambda _: SpectrogramTransformer(n_mels=8, pooling=None, n_frames=20),
    ],
    ids=["byola", "passt", "log-mel-images"],
)
def test_every_embedder(make, wav_paths, tmp_path):
    embedder = make(tmp_path).fit(wav_paths[:3])
    paths = wav_paths[:4]
    out = embed_files(paths, embedder, chunk_size=3, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(out, embedder.transform(paths), atol=1e-5)
    np.testing.assert_array_equal(
        embed_files(paths, embedder, chunk_size=3, cache_dir=tmp_path / "cache"), out
    )


def test_resumes_after_sigkill_without_recomputing(wav_paths, spectrogram, tmp_path, count_calls):
    """A run killed (SIGKILL) after some chunks; the re-run computes only the missing ones."""
    fitted = tmp_path / "embedder.pkl"
    fitted.write_bytes(pickle.dumps(spectrogram))
    cache = tmp_path / "cache"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            """
            import pickle, sys, time
            from skaudiocluster import SpectrogramTransformer, embed_files

            original = SpectrogramTransformer.transform

            def slow(self, X):  # slow enough to be killed between chunks
                out = original(self, X)
                time.sleep(0.4)
                return out

            SpectrogramTransformer.transform = slow
            with open(sys.argv[1], "rb") as f:
                embedder = pickle.load(f)
            embed_files(sys.argv[3:], embedder, cache_dir=sys.argv[2], chunk_size=2)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(skaudiocluster.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, str(script), str(fitted), str(cache), *wav_paths], env=env
    )
    n_chunks = -(-N_FILES // 2)
    deadline = time.monotonic() + 120
    try:
        while len(list(cache.glob("*/*.npy"))) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk written in 120 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    cached = list(cache.glob("*/*.npy"))
    assert 2 <= len(cached) < n_chunks
    for file in cached:  # whole chunks only
        assert np.load(file).shape[1] == 32

    resumed = embed_files(wav_paths, spectrogram, cache_dir=cache, chunk_size=2)
    assert len(count_calls) == n_chunks - len(cached)
    np.testing.assert_array_equal(resumed, embed_files(wav_paths, spectrogram, chunk_size=2))


def test_interrupt_keeps_finished_chunks(wav_paths, spectrogram, tmp_path, monkeypatch):
    """Ctrl-C after two chunks propagates; the re-run embeds the other two only."""
    expected = embed_files(wav_paths, spectrogram, chunk_size=3)
    calls = []
    original = SpectrogramTransformer.transform

    def interrupt_third(self, X):
        calls.append(list(X))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, X)

    monkeypatch.setattr(SpectrogramTransformer, "transform", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3)
    assert len(list(tmp_path.glob("*/*.npy"))) == 2
    calls.clear()
    resumed = embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3)
    assert calls == [wav_paths[6:9], wav_paths[9:]]
    np.testing.assert_array_equal(resumed, expected)


def test_a_failed_write_leaves_no_chunk(wav_paths, spectrogram, tmp_path, monkeypatch):
    real_save = np.save

    def half_then_fail(file, array):
        real_save(file, array[: len(array) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        embed_files(wav_paths[:3], spectrogram, cache_dir=tmp_path, chunk_size=3)
    assert list(tmp_path.glob("*/*")) == []


def test_a_corrupt_chunk_is_recomputed(wav_paths, spectrogram, tmp_path, count_calls):
    first = embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3)
    (tmp_path / embedder_key(spectrogram) / f"{chunk_key(wav_paths[3:6])}.npy").write_bytes(b"xx")
    count_calls.clear()
    with pytest.warns(UserWarning, match="cannot be read"):
        again = embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3)
    assert count_calls == [3]
    np.testing.assert_array_equal(again, first)


def test_cache_invalidation(wav_paths, spectrogram, tmp_path, count_calls):
    paths = [str(tmp_path / Path(p).name) for p in wav_paths]
    for source, copy in zip(wav_paths, paths):
        Path(copy).write_bytes(Path(source).read_bytes())
    embed_files(paths[:9], spectrogram, cache_dir=tmp_path / "cache", chunk_size=3)
    assert count_calls == [3, 3, 3]

    count_calls.clear()  # appended files: only the new chunk
    embed_files(paths, spectrogram, cache_dir=tmp_path / "cache", chunk_size=3)
    assert count_calls == [2]

    count_calls.clear()  # a rewritten file: only its chunk
    data, rate = soundfile.read(paths[4])
    soundfile.write(paths[4], data[::-1], rate)
    embed_files(paths, spectrogram, cache_dir=tmp_path / "cache", chunk_size=3)
    assert count_calls == [3]

    count_calls.clear()  # another embedder (parameters or learned state): everything
    refitted = SpectrogramTransformer(n_mels=16).fit(paths[4:8])
    embed_files(paths, refitted, cache_dir=tmp_path / "cache", chunk_size=3)
    assert count_calls == [3, 3, 3, 2]

    count_calls.clear()  # verbose is not part of the key
    spectrogram.set_params(verbose=1)
    try:
        embed_files(paths, spectrogram, cache_dir=tmp_path / "cache", chunk_size=3)
    finally:
        spectrogram.set_params(verbose=0)
    assert count_calls == []


def test_embedder_key():
    clips = [np.random.default_rng(0).normal(scale=0.1, size=4000)]
    byola = BYOLAEmbedder(weights=None, random_state=0).fit(clips)
    key = embedder_key(byola)
    assert embedder_key(pickle.loads(pickle.dumps(byola))) == key
    byola.pretrain_history_.new_epoch()  # training records (timings) are not in the key
    byola.pretrain_history_.record("dur", 1.0)
    assert embedder_key(byola) == key
    with_stats = BYOLAEmbedder(weights=None, random_state=0, norm_stats=(0.0, 2.0))
    assert embedder_key(with_stats.fit(clips)) != key  # learned statistics are
    other_init = BYOLAEmbedder(weights=None, random_state=1).fit(clips)
    assert embedder_key(other_init) != key  # and the weights


def test_memmap(wav_paths, spectrogram, tmp_path, monkeypatch):
    target = tmp_path / "embeddings.npy"
    out = embed_files(wav_paths, spectrogram, chunk_size=4, memmap=target)
    assert isinstance(out, np.memmap) and not out.flags.writeable
    np.testing.assert_array_equal(out, embed_files(wav_paths, spectrogram, chunk_size=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.npy"]
    del out
    target.unlink()

    original = SpectrogramTransformer.transform
    calls = []

    def fail_second(self, X):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(self, X)

    monkeypatch.setattr(SpectrogramTransformer, "transform", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        embed_files(wav_paths, spectrogram, chunk_size=4, memmap=target)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_killed_runs_are_removed(wav_paths, spectrogram, tmp_path, dead_pid):
    from skaudiocluster._io import host
    from skaudiocluster.streaming import embedder_key

    target = tmp_path / "embeddings.npy"
    folder = tmp_path / "cache" / embedder_key(spectrogram)
    folder.mkdir(parents=True)
    dead, alive = dead_pid, os.getppid()
    stale = [
        folder / f"abc.x1.{host()}.{dead}.tmp",
        tmp_path / f".embeddings.npy.{host()}.{dead}.tmp",
    ]
    kept = [
        folder / f"abc.x2.{host()}.{alive}.tmp",  # a live process's
        folder / f"abc.x3.otherhost.{dead}.tmp",  # another machine's (shared folder)
        tmp_path / f".other.npy.{host()}.{dead}.tmp",  # not this output's
    ]
    for file in stale + kept:
        file.write_bytes(b"partial")
    embed_files(wav_paths, spectrogram, chunk_size=4, cache_dir=tmp_path / "cache", memmap=target)
    assert not any(file.exists() for file in stale)
    assert all(file.exists() for file in kept)


def test_progress_bar(wav_paths, spectrogram, capsys):
    embed_files(wav_paths, spectrogram, chunk_size=3, verbose=0)
    assert capsys.readouterr().err == ""
    embed_files(wav_paths, spectrogram, chunk_size=3, verbose=1)
    assert f"{N_FILES}/{N_FILES}" in capsys.readouterr().err


def test_bad_input(wav_paths, spectrogram, tmp_path):
    with pytest.raises(TypeError, match="not a single path"):
        embed_files(wav_paths[0], spectrogram)
    with pytest.raises(ValueError, match="paths is empty"):
        embed_files([], spectrogram)
    with pytest.raises(TypeError, match=r"paths\[1\] is a ndarray"):
        embed_files([wav_paths[0], np.zeros(100)], spectrogram)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        embed_files(wav_paths, spectrogram, chunk_size=0)
    with pytest.raises(NotFittedError, match=r"fit\(paths\[:1000\]\)"):
        embed_files(wav_paths, SpectrogramTransformer())
    missing = str(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="missing.wav' does not exist"):
        embed_files([wav_paths[0], missing], spectrogram, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="missing.wav' does not exist"):
        embed_files([wav_paths[0], missing], spectrogram)


def test_an_unreadable_file_is_named_with_its_chunk(wav_paths, spectrogram, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    paths = [*wav_paths[:3], str(broken)]
    message = r"broken.wav' .*could not be decoded.*in chunk 1, start"
    with pytest.raises(ValueError, match=message):
        embed_files(paths, spectrogram, chunk_size=2, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == 1  # the good chunk is kept
    with pytest.raises(ValueError, match=message):
        embed_files(paths, spectrogram, chunk_size=2, n_jobs=2)


@pytest.mark.parametrize("alteration", ["nan", "changed", "wrong_shape", "no_checksum"])
def test_row8_altered_cache_chunks_are_recomputed_with_a_warning(
    wav_paths, spectrogram, tmp_path, count_calls, alteration
):
    first = embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3)
    chunk = tmp_path / embedder_key(spectrogram) / f"{chunk_key(wav_paths[3:6])}.npy"
    features = np.load(chunk)
    if alteration == "nan":
        features[1, 0] = np.nan
    elif alteration == "changed":
        features[0, 0] += 1.0
    elif alteration == "wrong_shape":
        features = features[:, :-1]
    else:
        chunk.with_suffix(".sha256").unlink()
    np.save(chunk, features)
    count_calls.clear()
    with pytest.warns(UserWarning, match=rf"chunk '.*{chunk.name}' is recomputed"):
        again = embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3)
    assert count_calls == [3]
    np.testing.assert_array_equal(again, first)
    count_calls.clear()  # the recomputed chunk is cached again, whole
    np.testing.assert_array_equal(
        embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3), first
    )
    assert count_calls == []


def test_row8_a_wrong_shaped_chunk_with_a_valid_checksum_is_recomputed(
    wav_paths, spectrogram, tmp_path, count_calls
):
    from skaudiocluster.streaming import _save_chunk

    first = embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3)
    chunk = tmp_path / embedder_key(spectrogram) / f"{chunk_key(wav_paths[:3])}.npy"
    _save_chunk(chunk, np.zeros((3, 5), dtype=np.float32))
    count_calls.clear()
    with pytest.warns(UserWarning, match=r"its rows have shape \(5,\)"):
        again = embed_files(wav_paths, spectrogram, cache_dir=tmp_path, chunk_size=3)
    assert count_calls == [3]
    np.testing.assert_array_equal(again, first)
