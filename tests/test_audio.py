import time
import warnings

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skaudiocluster.audio import check_audio, check_finite_output, length_batches

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


# --- inputs that used to give silent garbage ---------------------------------------------


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(-(2**15), 2**15 - 1), min_size=1, max_size=200))
def test_python_int_lists_are_read_as_16_bit_pcm(values):
    if all(-1 <= v <= 1 for v in values):
        values = [*values, 2]  # keep clear of the astype(int) warning
    (from_list,) = check_audio([values], sample_rate=8000)
    (from_int16,) = check_audio([np.asarray(values, dtype=np.int16)], sample_rate=8000)
    np.testing.assert_array_equal(from_list, from_int16)
    (cast,) = check_audio([np.asarray(values).astype(int)], sample_rate=8000)
    np.testing.assert_array_equal(cast, from_int16)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_int64_beyond_the_int16_range_is_refused_naming_the_dtype(dtype):
    clip = np.array([0, 40000, 7], dtype=dtype)
    with pytest.raises(ValueError, match=rf"clip 1 has {np.dtype(dtype)} samples in \[0, 40000\]"):
        check_audio([np.zeros(3), clip], sample_rate=8000)


def test_float_audio_truncated_by_astype_int_warns():
    audio = np.sin(np.linspace(0, 100, 800)) * 0.9
    with pytest.warns(UserWarning, match=r"clip 0 has int64 samples all in \{-1, 0, 1\}"):
        check_audio([audio.astype(int)], sample_rate=8000)


@pytest.mark.parametrize("peak", [2.0**31 * 1.01, 1e30, -3e38])
def test_samples_beyond_any_audio_scale_are_refused(peak):
    clip = np.zeros(100)
    clip[10] = peak
    with pytest.raises(ValueError, match="clip 1 has a sample of absolute value .* beyond any"):
        check_audio([np.zeros(100), clip], sample_rate=8000)


def test_int32_scale_float_samples_are_accepted():
    clip = np.array([0.0, 2.0**31, -(2.0**31)])
    (out,) = check_audio([clip], sample_rate=8000)
    np.testing.assert_array_equal(out, clip.astype(np.float32))


def test_file_with_absurd_samples_is_named(tmp_path):
    path = tmp_path / "loud.wav"
    soundfile.write(path, np.full(100, 1e30), 8000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"file '.*loud\.wav' \(clip 0\) has a sample"):
        check_audio([path], sample_rate=16000)


@pytest.mark.parametrize("rate", [1, 8, 999])
def test_file_declaring_a_tiny_sample_rate_is_refused(tmp_path, rate):
    path = tmp_path / "odd.wav"
    soundfile.write(path, np.zeros(2000, dtype=np.int16), rate, subtype="PCM_16")
    with pytest.raises(ValueError, match=rf"odd\.wav.*declares a sample rate of {rate} Hz"):
        check_audio([path], sample_rate=16000, target_rate=32000)


def test_in_memory_rate_below_1_khz_is_refused():
    with pytest.raises(ValueError, match="sample_rate=16 Hz is below the 1000 Hz minimum"):
        check_audio([np.zeros(16)], sample_rate=16)
    (ok,) = check_audio([np.zeros(1000)], sample_rate=1000, target_rate=2000)
    assert ok.shape == (2000,)


def test_coprime_rates_resample_quickly_to_the_right_length(tmp_path):
    # torchaudio would build a 16000 x 44101-tap kernel here (minutes, gigabytes)
    path = tmp_path / "odd_rate.wav"
    tone = np.sin(2 * np.pi * 440 * np.arange(44101) / 44101)
    soundfile.write(path, tone, 44101)
    start = time.perf_counter()
    (clip,) = check_audio([path], sample_rate=16000)
    assert time.perf_counter() - start < 10
    assert clip.shape == (16000,) and clip.dtype == np.float32
    expected = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    np.testing.assert_allclose(clip[100:-100], expected[100:-100], atol=1e-2)


def test_check_finite_output_names_the_clip_and_its_file():
    out = np.zeros((3, 2), dtype=np.float32)
    assert check_finite_output(out, [None] * 3, "Demo") is out
    out[1, 0] = np.nan
    out[2, 1] = np.inf
    with pytest.raises(
        ValueError,
        match=r"Demo computed a NaN or infinite output for clip 1 \(file 'b\.wav'\)"
        r" and 1 other clip",
    ):
        check_finite_output(out, ["a.wav", "b.wav", "c.wav"], "Demo")


@settings(max_examples=40, deadline=None)
@given(peak=st.floats(1e-6, 1e36, allow_nan=False), index=st.integers(0, 9))
def test_clips_are_refused_exactly_when_their_peak_exceeds_2_31(peak, index):
    clip = np.zeros(10)
    clip[index] = -peak if index % 2 else peak
    peak32 = float(np.float32(peak))
    if peak32 > 2.0**31:
        with pytest.raises(ValueError, match="clip 0 has a sample of absolute value"):
            check_audio([clip], sample_rate=8000)
    else:
        (out,) = check_audio([clip], sample_rate=8000)
        assert float(np.abs(out).max()) == peak32


def _wav_declaring_rate(path, rate):
    soundfile.write(path, np.zeros(4000, dtype=np.int16), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (rate * 2 % 2**32).to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("rate", [2**31 - 1, 20_000_000])
def test_row1_absurd_sample_rate_is_refused_before_resampling(tmp_path, rate, monkeypatch):
    import skaudiocluster.audio as audio

    path = tmp_path / "fast.wav"
    _wav_declaring_rate(path, rate)
    assert soundfile.info(str(path)).samplerate == rate

    def no_resampling(*args):
        raise AssertionError("resample was called")

    monkeypatch.setattr(audio, "resample", no_resampling)
    with pytest.raises(ValueError, match=rf"fast\.wav.*sample rate of {rate} Hz, outside"):
        check_audio([path], sample_rate=16000)
    with pytest.raises(ValueError, match=r"above the 768000 Hz maximum"):
        check_audio([np.zeros(10)], sample_rate=rate)
    monkeypatch.undo()
    (ok,) = check_audio([np.zeros(768)], sample_rate=768_000, target_rate=16000)
    assert ok.shape == (16,)


def test_row1_resampling_failure_is_a_value_error_naming_the_file(tmp_path, monkeypatch):
    import skaudiocluster.audio as audio

    path = tmp_path / "tone.wav"
    soundfile.write(path, np.zeros(800, dtype=np.float32), 8000)

    def out_of_memory(*args):
        raise MemoryError("Unable to allocate 320. GiB")

    monkeypatch.setattr(audio, "resample", out_of_memory)
    with pytest.raises(ValueError, match=r"tone\.wav.*could not be resampled.*MemoryError"):
        check_audio([path], sample_rate=16000)


def test_row18_truncated_wav_warns_naming_the_file(tmp_path):
    path = tmp_path / "cut.wav"
    soundfile.write(path, np.full(16000, 1000, dtype=np.int16), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"cut\.wav.*truncated.*declares 16000 samples"):
        (clip,) = check_audio([path], sample_rate=16000)
    assert 0 < len(clip) < 16000
    whole = tmp_path / "whole.wav"
    whole.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_audio([whole], sample_rate=16000)


def test_row18_stereo_with_opposite_channels_warns_that_the_downmix_cancels(tmp_path):
    tone = 0.5 * np.sin(np.linspace(0, 200, 8000))
    path = tmp_path / "opposite.wav"
    soundfile.write(path, np.stack([tone, -tone], axis=1), 8000, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"opposite\.wav.*channels cancel"):
        check_audio([path], sample_rate=8000)
    with pytest.warns(UserWarning, match=r"clip 1: its 2 channels cancel"):
        check_audio([tone, np.stack([tone, -tone], axis=1)], sample_rate=8000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_audio([np.stack([tone, 0.5 * tone], axis=1), np.zeros((100, 2))], sample_rate=8000)
