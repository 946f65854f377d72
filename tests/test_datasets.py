from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from skaudiocluster.datasets import (
    SOUND_KINDS,
    load_audio_folder,
    load_dcase2018_task5,
    load_fsdd,
    make_sound_classes,
)

# ------------------------------------------------------------------ make_sound_classes


@settings(max_examples=15, deadline=None)
@given(
    n_samples=st.integers(1, 40),
    n_classes=st.integers(1, len(SOUND_KINDS)),
    duration=st.floats(0.05, 0.4),
    sample_rate=st.sampled_from([8000, 16000, 22050]),
    seed=st.integers(0, 2**31 - 1),
)
def test_make_sound_classes_shapes_labels_and_range(
    n_samples, n_classes, duration, sample_rate, seed
):
    X, y = make_sound_classes(
        n_samples,
        n_classes,
        duration,
        sample_rate,
        pitch_range=(100.0, 1000.0),
        random_state=seed,
    )
    n = int(round(duration * sample_rate))
    assert len(X) == len(y) == n_samples
    assert all(clip.dtype == np.float32 and clip.shape == (n,) for clip in X)
    assert all(np.isfinite(clip).all() and np.abs(clip).max() <= 1.0 for clip in X)
    assert all(np.abs(clip).max() > 0 for clip in X)
    assert y.dtype == np.int64
    counts = np.bincount(y, minlength=n_classes)
    assert len(counts) == n_classes
    assert counts.max() - counts.min() <= 1


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_make_sound_classes_repeats_with_random_state(seed):
    X1, y1 = make_sound_classes(12, 4, 0.2, random_state=seed)
    X2, y2 = make_sound_classes(12, 4, 0.2, random_state=np.random.RandomState(seed))
    np.testing.assert_array_equal(y1, y2)
    for a, b in zip(X1, X2):
        np.testing.assert_array_equal(a, b)


def test_make_sound_classes_seeds_differ():
    X1, _ = make_sound_classes(5, 2, 0.2, random_state=0)
    X2, _ = make_sound_classes(5, 2, 0.2, random_state=1)
    assert not np.array_equal(X1[0], X2[0])


def test_make_sound_classes_clips_vary_within_a_class():
    X, y = make_sound_classes(40, 2, 0.5, random_state=0)
    rms = np.array([np.sqrt(np.mean(clip**2)) for clip in X])
    for label in (0, 1):
        within = rms[y == label]
        assert within.max() / within.min() > 1.5, "loudness should vary within a class"


def test_make_sound_classes_is_hard_but_learnable():
    """Log-mel statistics + k-means must land far from chance and far from perfect."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.pipeline import make_pipeline

    from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

    X, y = make_sound_classes(300, 6, random_state=0)
    labels = make_pipeline(
        SpectrogramTransformer(), KMeans(6, n_init=10, random_state=0)
    ).fit_predict(X)
    assert 0.3 < normalized_mutual_info_score(y, labels) < 0.85


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_classes": len(SOUND_KINDS) + 1}, "n_classes"),
        ({"n_samples": 0}, "n_samples"),
        ({"pitch_range": (500.0, 100.0)}, "pitch_range"),
        ({"pitch_range": (0.0, 100.0)}, "pitch_range"),
        ({"loudness_db": (-20.0,)}, "loudness_db"),
        ({"pitch_range": (100.0, 7000.0)}, "Nyquist"),
    ],
)
def test_make_sound_classes_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sound_classes(**kwargs)


# ------------------------------------------------------------------ load_audio_folder


def _write_silence(path: Path, n: int = 800, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(n, dtype=np.float32), rate)


def test_load_audio_folder_labels_from_sub_folders(tmp_path):
    for name in ("dog/b.wav", "dog/nested/a.flac", "cat/c.wav"):
        _write_silence(tmp_path / name)
    (tmp_path / "cat" / "notes.txt").write_text("not audio")
    (tmp_path / "README").write_text("not audio either")
    X, y = load_audio_folder(tmp_path)
    assert X == sorted(X)
    assert all(isinstance(p, str) for p in X)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in X] == [
        "cat/c.wav",
        "dog/b.wav",
        "dog/nested/a.flac",
    ]
    assert y.tolist() == ["cat", "dog", "dog"]


def test_load_audio_folder_extensions(tmp_path):
    _write_silence(tmp_path / "a" / "x.wav")
    _write_silence(tmp_path / "b" / "y.flac")
    X, y = load_audio_folder(tmp_path, extensions=(".FLAC",))
    assert y.tolist() == ["b"]


def test_load_audio_folder_rejects_unlabelled_files(tmp_path):
    _write_silence(tmp_path / "loose.wav")
    _write_silence(tmp_path / "a" / "x.wav")
    with pytest.raises(ValueError, match="loose.wav"):
        load_audio_folder(tmp_path)


def test_load_audio_folder_rejects_folder_without_audio(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        load_audio_folder(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        load_audio_folder(tmp_path / "missing")


# ------------------------------------------------------------------ load_fsdd


def test_load_fsdd_real_recordings(fsdd_dir):
    X, digit = load_fsdd(fsdd_dir)
    X_speaker, speaker = load_fsdd(str(fsdd_dir), target="speaker")
    assert len(X) == 3000 and X == X_speaker == sorted(X)
    assert digit.dtype == np.int64
    assert sorted(set(digit.tolist())) == list(range(10))
    assert len(set(speaker.tolist())) == 6
    for path, d, s in zip(X[::250], digit[::250], speaker[::250]):
        assert Path(path).name.startswith(f"{d}_{s}_")
        assert Path(path).is_file()


def test_load_fsdd_finds_recordings_in_the_dataset_root(fsdd_dir, tmp_path):
    X, y = load_fsdd(fsdd_dir.parent)
    assert (X, y.tolist()) == (load_fsdd(fsdd_dir)[0], load_fsdd(fsdd_dir)[1].tolist())
    _write_silence(tmp_path / "recordings" / "3_theo_1.wav")
    (tmp_path / "README.md").write_text("FSDD")
    X, y = load_fsdd(tmp_path, target="speaker")
    assert [Path(p).name for p in X] == ["3_theo_1.wav"] and y.tolist() == ["theo"]


def test_load_fsdd_says_where_the_recordings_are(tmp_path):
    (tmp_path / "recordings").mkdir()
    with pytest.raises(ValueError, match=r"no \.wav files in '.*recordings'.*recordings/ folder"):
        load_fsdd(tmp_path)


def test_load_fsdd_rejects_foreign_files(tmp_path):
    _write_silence(tmp_path / "0_jackson_0.wav")
    _write_silence(tmp_path / "hello.wav")
    with pytest.raises(ValueError, match="DIGIT_SPEAKER_INDEX"):
        load_fsdd(tmp_path)


def test_load_fsdd_rejects_empty_folder_and_bad_target(tmp_path):
    with pytest.raises(ValueError, match="no .wav files"):
        load_fsdd(tmp_path)
    _write_silence(tmp_path / "0_jackson_0.wav")
    with pytest.raises(ValueError, match="target"):
        load_fsdd(tmp_path, target="gender")


# ------------------------------------------------------------------ load_dcase2018_task5

_DCASE_ROWS = [
    ("audio/DevNode1_ex1_1.wav", "absence", "absence_s1"),
    ("audio/DevNode2_ex1_1.wav", "absence", "absence_s1"),
    ("audio/DevNode1_ex7_3.wav", "vacuum_cleaner", "vacuum_cleaner_s1"),
    ("audio/DevNode3_ex12_2.wav", "cooking", "cooking_s4"),
    ("audio/DevNode4_ex30_9.wav", "watching_tv", "watching_tv_s2"),
]


def _lines(rows):
    return "".join("\t".join(row) + "\n" for row in rows)


@pytest.fixture
def dcase_dir(tmp_path):
    """A miniature DCASE 2018 task 5 development set with silent 16 kHz clips."""
    for name, _, _ in _DCASE_ROWS:
        _write_silence(tmp_path / name, n=1600, rate=16000)
    (tmp_path / "meta.txt").write_text(_lines(_DCASE_ROWS))
    setup = tmp_path / "evaluation_setup"
    setup.mkdir()
    (setup / "fold1_train.txt").write_text(_lines(_DCASE_ROWS[:3]))
    (setup / "fold1_evaluate.txt").write_text(_lines(_DCASE_ROWS[3:]))
    (setup / "fold1_test.txt").write_text("".join(r[0] + "\n" for r in _DCASE_ROWS[3:]))
    return tmp_path


def test_load_dcase2018_task5_meta(dcase_dir):
    X, y = load_dcase2018_task5(dcase_dir)
    expected = sorted((str(dcase_dir / name), label) for name, label, _ in _DCASE_ROWS)
    assert X == [p for p, _ in expected]
    assert y.tolist() == [label for _, label in expected]
    assert all(Path(p).is_file() for p in X)


def test_load_dcase2018_task5_folds(dcase_dir):
    X_train, y_train = load_dcase2018_task5(dcase_dir, fold=1)
    X_eval, y_eval = load_dcase2018_task5(str(dcase_dir), fold=1, split="evaluate")
    assert sorted(y_train.tolist()) == ["absence", "absence", "vacuum_cleaner"]
    assert sorted(y_eval.tolist()) == ["cooking", "watching_tv"]
    assert not set(X_train) & set(X_eval)


def test_load_dcase2018_task5_skips_header(dcase_dir):
    (dcase_dir / "meta.txt").write_text("filename\tactivity\tsession\n" + _lines(_DCASE_ROWS))
    assert len(load_dcase2018_task5(dcase_dir)[0]) == len(_DCASE_ROWS)


def test_load_dcase2018_task5_rejects_other_folders(dcase_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("not_dcase")
    _write_silence(other / "dog" / "a.wav")
    with pytest.raises(ValueError, match="meta.txt is missing"):
        load_dcase2018_task5(other)
    with pytest.raises(ValueError, match="fold2_train.txt is missing"):
        load_dcase2018_task5(dcase_dir, fold=2)
    with pytest.raises(ValueError, match="fold"):
        load_dcase2018_task5(dcase_dir, fold=5)


@pytest.mark.parametrize(
    "meta, match",
    [
        ("audio/DevNode1_ex1_1.wav\n", "expected 'path<TAB>label"),
        ("audio/DevNode1_ex1_1.wav\tabsence\ns\naudio/DevNode1_ex1_1.wav\tdancing\n", "line 2"),
        ("audio/DevNode1_ex1_1.wav\tdancing\ts1\n", "'dancing' is not one of"),
        ("audio/DevNode9_ex1_1.wav\tabsence\ts1\n", "does not exist"),
        ("\n\n", "lists no audio files"),
    ],
)
def test_load_dcase2018_task5_rejects_malformed_meta(dcase_dir, meta, match):
    (dcase_dir / "meta.txt").write_text(meta)
    with pytest.raises(ValueError, match=match):
        load_dcase2018_task5(dcase_dir)
