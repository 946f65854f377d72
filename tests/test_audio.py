import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skaudiocluster.audio import check_audio, length_batches

finite = st.floats(-1, 1, width=32, allow_nan=False, allow_infinity=False)
clip = hnp.arrays(np.float32, st.integers(1, 400), elements=finite)
rates = st.sampled_from([8000, 16000, 22050, 32000])


@settings(max_examples=40, deadline=None)
@given(clips=st.lists(clip, min_size=1, max_size=5), rate=rates, target=rates)
def test_valid_lists_round_trip(clips, rate, target):
    out = check_audio(clips, sample_rate=rate, target_rate=target)
    assert len(out) == len(clips)
    for original, converted in zip(clips, out):
        assert converted.dtype == np.float32 and converted.ndim == 1
        assert abs(len(converted) - len(original) * target / rate) <= 1
        if rate == target:
            np.testing.assert_array_equal(converted, original)


@settings(max_examples=20, deadline=None)
@given(
    batch=hnp.arrays(
        np.float64, st.tuples(st.integers(1, 4), st.integers(1, 50)), elements=st.floats(-1, 1)
    )
)
def test_2d_array_is_a_batch_of_equal_length_clips(batch):
    out = check_audio(batch, sample_rate=16000)
    assert [len(c) for c in out] == [batch.shape[1]] * batch.shape[0]


def test_stereo_clips_are_averaged_and_pcm_scaled():
    stereo = np.stack([np.full(10, 0.5), np.full(10, -0.25)], axis=1)
    pcm = np.array([16384, -32768], dtype=np.int16)
    unsigned = np.array([128, 0], dtype=np.uint8)
    mono, ints, uints = check_audio([stereo, pcm, unsigned], sample_rate=8000)
    np.testing.assert_allclose(mono, 0.125)
    np.testing.assert_allclose(ints, [0.5, -1.0])
    np.testing.assert_allclose(uints, [0.0, -1.0])


def test_files_use_their_own_rate(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.zeros((800, 2), dtype=np.float32), 8000)
    (clip,) = check_audio([path], sample_rate=44100, target_rate=16000)
    assert clip.shape == (1600,)
    (same,) = check_audio([str(path)], sample_rate=44100, target_rate=8000)
    assert same.shape == (800,)


@pytest.mark.parametrize(
    "X, match",
    [
        ([], "empty"),
        ([np.zeros(4), np.zeros(0)], "clip 1 has zero length"),
        ([np.zeros(4), np.array([0.0, np.nan])], "clip 1 contains NaN"),
        ([np.array([0.0, np.inf])], "clip 0 contains NaN or infinite"),
        (np.zeros((2, 3, 4)), "3 dimensions"),
        (np.zeros(5), "1-D numeric array"),
        ([np.array(["a", "b"])], "clip 0 has non-numeric dtype"),
        ([np.zeros(3, dtype=complex)], "Complex data not supported"),
        ([np.zeros((2, 2, 2))], "clip 0 has 3 dimensions"),
        (["/no/such/file.wav"], "'/no/such/file.wav' does not exist"),
    ],
)
def test_bad_input_names_the_problem(X, match):
    with pytest.raises(ValueError, match=match):
        check_audio(X, sample_rate=16000)


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="broken.wav.*could not be decoded"):
        check_audio([path], sample_rate=16000)


def test_single_path_and_bad_rate_are_rejected():
    with pytest.raises(TypeError, match="single path"):
        check_audio("clip.wav", sample_rate=16000)
    with pytest.raises(ValueError, match="sample_rate"):
        check_audio([np.zeros(3)], sample_rate=0)


@given(lengths=st.lists(st.integers(1, 1000), min_size=1, max_size=50), size=st.integers(1, 8))
def test_length_batches_cover_every_clip_once_in_length_order(lengths, size):
    batches = length_batches(lengths, size)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(len(b) <= size for b in batches)
    assert np.all(np.diff(np.asarray(lengths)[flat]) >= 0)
