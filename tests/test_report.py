import html
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import given
from hypothesis import strategies as st

import skaudiocluster._report_media as media
from skaudiocluster.report import CHROMIUM_FLAGS, json_script, write_report

RATE = 8000


def _tone(path: Path, freq: float, seconds: float = 0.5) -> Path:
    t = np.arange(int(seconds * RATE)) / RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, 0.5 * np.sin(2 * np.pi * freq * t), RATE)
    return path


class _Page(HTMLParser):
    """Clip cards (figcaption text, audio src) per cluster section, and the JSON data."""

    def __init__(self):
        super().__init__()
        self.sections, self.captions, self.sources, self._tag, self.data = {}, [], [], None, ""
        self._section = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "data-cluster" in attrs:
            self._section = int(attrs["data-cluster"])
            self.sections[self._section] = []
        elif tag == "figure":
            self.sections[self._section].append(int(attrs["data-clip"]))
        elif tag == "audio" and attrs.get("src"):
            self.sources.append(attrs["src"])
        self._tag = attrs.get("id") if tag == "script" else tag

    def handle_data(self, data):
        if self._tag == "figcaption":
            self.captions.append(data)
        elif self._tag == "report-data":
            self.data += data

    def handle_endtag(self, tag):
        self._tag = None


def _parse(report: Path) -> _Page:
    page = _Page()
    page.feed((report / "index.html").read_text(encoding="utf-8"))
    return page


NASTY = ["a<b>&\"q'.wav", "café ünï 日本.wav", "a</script>.wav", "x&amp;y<!--.wav"]


def test_names_are_escaped_and_shown_literally(tmp_path):
    paths = []
    for i, name in enumerate(NASTY):
        folder, _, file = name.rpartition("/")  # "a</script>.wav": a folder "a<", a file
        paths.append(_tone(tmp_path / "clips" / folder / file, 300 + 500 * i))
    report = write_report(paths, [0, 0, 1, 1], coords=np.eye(4)[:, :2], out=tmp_path / "r")
    text = (report / "index.html").read_text(encoding="utf-8")
    for name in NASTY:
        assert html.escape(name, quote=True) in text
        if set(name) & set("<&\"'"):
            assert name not in text
    assert "café ünï 日本.wav" in text  # non-ASCII is written as it is (UTF-8)
    page = _parse(report)
    assert sorted(page.captions) == sorted(NASTY)
    assert json.loads(page.data)["names"] == NASTY


def test_notes_are_shown_escaped_at_the_top(tmp_path):
    paths = [_tone(tmp_path / "clips" / f"c{i}.wav", 300 + 500 * i) for i in range(2)]
    notes = ["DeepDPMClusterer's K looks too small", "a <script>alert(1)</script> & 'b'"]
    report = write_report(paths, [0, 1], coords=np.eye(2), notes=notes, out=tmp_path / "r")
    text = (report / "index.html").read_text(encoding="utf-8")
    escaped = [html.escape(note, quote=True) for note in notes]
    assert "<script>alert" not in text
    top = text[text.index("</h1>") : text.index("<h2>")]  # under the title, before the overview
    assert all(f"<li>{note}</li>" in top for note in escaped)


def test_no_notes_no_box(tmp_path):
    paths = [_tone(tmp_path / "clips" / f"c{i}.wav", 300 + 500 * i) for i in range(2)]
    report = write_report(paths, [0, 1], coords=np.eye(2), out=tmp_path / "r")
    assert 'class="notes"' not in (report / "index.html").read_text(encoding="utf-8")


@given(st.text())
def test_json_script_round_trips_and_cannot_close_the_element(text):
    encoded = json_script({"s": text})
    assert json.loads(encoded) == {"s": text}
    assert "<" not in encoded and ">" not in encoded and "&" not in encoded


def test_players_per_cluster_and_typical_order(tmp_path):
    paths = [_tone(tmp_path / f"c{i}.wav", 200 + 50 * i) for i in range(14)]
    labels = [0] * 11 + [1] * 3
    confidence = np.linspace(0.1, 0.9, 14)  # in each cluster the last clip is the most typical
    proba = np.column_stack([confidence, 1 - confidence])
    proba[11:] = proba[11:, ::-1]
    report = write_report(paths, labels, proba=proba, out=tmp_path / "r", n_typical=4, n_atypical=2)
    page = _parse(report)
    assert page.sections == {0: [10, 9, 8, 7, 1, 0], 1: [13, 12, 11]}
    assert len(page.sources) == 9
    data = json.loads(page.data)
    assert data["members"][0] == list(range(10, -1, -1))
    assert data["x"] is None  # no embeddings, no coordinates: no map
    assert "No map" in (report / "index.html").read_text()


def test_centroid_confidence_order_and_default_map(tmp_path):
    paths = [_tone(tmp_path / f"c{i}.wav", 200 + 50 * i) for i in range(6)]
    embeddings = np.array([[0, 0, 5], [0, 0, 0.1], [0, 0, 1], [9, 9, 9], [9, 9, 8], [9, 9, 0]])
    report = write_report(paths, [0, 0, 0, 1, 1, 1], embeddings=embeddings, out=tmp_path / "r")
    page = _parse(report)
    # without proba, clips are ordered by their soft assignment to the cluster centres:
    # the clip leaning towards the other cluster (z=5) is last, the one leaning away first
    assert page.sections[0] == [1, 2, 0]
    data = json.loads(page.data)
    assert len(data["x"]) == 6 and np.isfinite(data["x"] + data["y"]).all()


def test_the_default_map_is_the_plots(tmp_path):
    from skaudiocluster.plot import default_map

    paths = [_tone(tmp_path / f"c{i}.wav", 200 + 50 * i) for i in range(8)]
    embeddings = np.random.default_rng(0).normal(size=(8, 5))
    report = write_report(paths, [0, 1] * 4, embeddings=embeddings, out=tmp_path / "r")
    data = json.loads(_parse(report).data)
    points = default_map(embeddings, 0)
    np.testing.assert_allclose(np.column_stack([data["x"], data["y"]]), points, atol=1e-5)


def test_long_clips_are_previewed_by_their_loudest_excerpt(tmp_path):
    rng = np.random.default_rng(0)
    signal = 0.01 * rng.standard_normal(20 * RATE)
    signal[12 * RATE : 13 * RATE] += 0.8 * np.sin(np.arange(RATE) * 0.3)
    long = tmp_path / "long.wav"
    soundfile.write(long, signal, RATE)
    short = _tone(tmp_path / "short.wav", 440, 0.7)
    report = write_report([long, short], ["a", "b"], out=tmp_path / "r", excerpt_seconds=3)
    excerpt, rate = soundfile.read(report / "audio/00000.flac")
    assert rate == RATE and len(excerpt) == 3 * RATE
    assert np.abs(excerpt).max() > 0.5  # the loud second is inside
    whole, _ = soundfile.read(report / "audio/00001.flac")
    assert len(whole) == int(0.7 * RATE)
    text = (report / "index.html").read_text()
    start, stop = map(float, re.search(r"excerpt ([\d.]+)-([\d.]+) s of 20\.0 s", text).groups())
    assert 10 <= start <= 12 and stop == start + 3
    clean = np.zeros(20 * RATE)
    clean[12 * RATE : 13 * RATE] = 1.0
    assert media.loudest_window(clean, RATE, 3) == (11 * RATE, 14 * RATE)  # centred


@pytest.mark.parametrize("audio_format", ["ogg", "wav"])
def test_other_audio_formats(tmp_path, audio_format):
    paths = [_tone(tmp_path / "a.wav", 300), _tone(tmp_path / "b.wav", 900)]
    report = write_report(paths, [0, 1], out=tmp_path / "r", audio_format=audio_format)
    samples, rate = soundfile.read(report / f"audio/00001.{audio_format}")
    assert rate == RATE and len(samples) == RATE // 2


def test_thumbnails_are_png_files_of_the_shown_clips(tmp_path):
    paths = [_tone(tmp_path / f"c{i}.wav", 300 + 100 * i) for i in range(5)]
    report = write_report(paths, [0] * 5, out=tmp_path / "r", n_typical=1, n_atypical=1)
    thumbs = sorted(p.name for p in (report / "thumbs").iterdir())
    assert thumbs == ["00000.png", "00004.png"]
    assert (report / "thumbs" / thumbs[0]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert len(list((report / "audio").iterdir())) == 5  # every clip plays from the map


def test_nothing_fetched_from_the_network(tmp_path):
    paths = [_tone(tmp_path / f"c{i}.wav", 300 + 100 * i) for i in range(4)]
    report = write_report(
        paths,
        [0, 0, 1, 1],
        embeddings=np.eye(4),
        true_labels=["x", "y", "x", "y"],
        out=tmp_path / "r",
    )
    text = (report / "index.html").read_text()
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text, flags=re.I)
    for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert ref.startswith(("#", "audio/", "thumbs/", "data:")), ref
        assert ref.startswith(("#", "data:")) or (report / ref).is_file()


def test_true_labels_add_the_mix_and_the_matched_confusion_matrix(tmp_path):
    paths = [_tone(tmp_path / f"c{i}.wav", 300 + 100 * i) for i in range(6)]
    truth = ["dog", "dog", "cat", "cat", "cat", "dog"]
    report = write_report(paths, [1, 1, 0, 0, 0, 0], true_labels=truth, out=tmp_path / "r")
    text = (report / "index.html").read_text()
    assert "Hungarian accuracy 0.833" in text
    assert "matched to label <b>dog</b>" in text and "matched to label <b>cat</b>" in text
    assert '<table class="confusion">' in text


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    paths = [_tone(tmp_path / "clips" / f"c{i}.wav", 300 + 100 * i) for i in range(4)]
    calls = []

    def interrupt(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("skaudiocluster.report.write_audio", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_report(paths, [0, 0, 1, 1], out=tmp_path / "r")
    assert sorted(os.listdir(tmp_path)) == ["clips"]


def test_an_old_report_is_replaced_and_other_folders_are_kept(tmp_path):
    paths = [_tone(tmp_path / "clips" / f"c{i}.wav", 300 + 100 * i) for i in range(3)]
    first = write_report(paths, [0, 0, 1], out=tmp_path / "r")
    (first / "stale.txt").write_text("old")
    second = write_report(paths[:2], [0, 1], out=tmp_path / "r")
    assert second == first and not (second / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["clips", "r"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="non-empty folder that is not a report"):
        write_report(paths, [0, 0, 1], out=mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="parent folder does not exist"):
        write_report(paths, [0, 0, 1], out=tmp_path / "no" / "r")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": [0, 1]}, "labels has 2 entries, paths has 3"),
        ({"true_labels": ["a"]}, "true_labels has 1 entries"),
        ({"audio_format": "mp3"}, "audio_format must be one of"),
        ({"n_typical": -1}, "n_typical must be a non-negative integer"),
        ({"excerpt_seconds": 0}, "excerpt_seconds must be positive"),
        ({"notes": "one string"}, "notes must be a sequence of str"),
        ({"notes": [1]}, "notes must be a sequence of str"),
        ({"embeddings": np.zeros((2, 4))}, r"embeddings must have shape"),
        ({"coords": np.zeros((3, 3))}, r"coords must have shape \(3, 2\)"),
        ({"coords": np.full((3, 2), np.nan)}, "NaN or infinite"),
        ({"proba": np.ones((3, 1))}, "integer labels in 0..0"),
        ({"labels": ["a", "b", "a"], "proba": np.ones((3, 2))}, "integer labels"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, kwargs, match):
    paths = [_tone(tmp_path / "clips" / f"c{i}.wav", 300 + 100 * i) for i in range(3)]
    kwargs = {"labels": [0, 1, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        write_report(paths, out=tmp_path / "r", **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["clips"]


def test_an_unreadable_clip_is_named(tmp_path):
    good = _tone(tmp_path / "clips" / "good.wav", 300)
    bad = tmp_path / "clips" / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(ValueError, match="bad.wav' could not be decoded"):
        write_report([good, bad], [0, 1], out=tmp_path / "r")
    assert sorted(os.listdir(tmp_path)) == ["clips"]


def test_png_bytes_decode_to_the_image(tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(media.png_bytes(rgb))
    decoded = matplotlib_image.imread(path)
    np.testing.assert_array_equal(np.round(decoded[..., :3] * 255).astype(np.uint8), rgb)


def test_spectrogram_image_puts_low_frequencies_at_the_bottom():
    t = np.arange(RATE) / RATE
    low = media.spectrogram_image(np.sin(2 * np.pi * 200 * t), RATE, 20, 30).sum(axis=(1, 2))
    high = media.spectrogram_image(np.sin(2 * np.pi * 3500 * t), RATE, 20, 30).sum(axis=(1, 2))
    assert np.argmax(low) > 20 and np.argmax(high) < 10


# --------------------------------------------------------------------------- real browser


def chromium_executable() -> str | None:
    """Chromium from the system (Debian's /usr/bin/chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright, for tests marked ``extras("browser")``.

    The mark skips the test where either is absent (a failure where ``$SKAUDIOCLUSTER_EXTRAS``
    is set, as in .ci/run), before this fixture runs.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_executable(), args=list(CHROMIUM_FLAGS)
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def fsdd_report(fsdd_dir, tmp_path_factory):
    """A report of 48 FSDD clips (2 speakers x 4 digits x 6), clustered by k-means into 4."""
    from sklearn.cluster import KMeans

    from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

    paths = [
        fsdd_dir / f"{digit}_{speaker}_{take}.wav"
        for speaker in ("george", "theo")
        for digit in (0, 1, 5, 7)
        for take in range(6)
    ]
    truth = [p.name.split("_")[1] for p in paths]
    embeddings = SpectrogramTransformer().fit_transform([str(p) for p in paths])
    labels = KMeans(4, n_init=4, random_state=0).fit_predict(embeddings)
    out = tmp_path_factory.mktemp("fsdd") / "report"
    write_report(paths, labels, embeddings=embeddings, true_labels=truth, out=out, n_typical=5)
    expected = {c: min(8, int(np.sum(labels == c))) for c in range(4)}
    return out, expected


@pytest.mark.extras("browser")
def test_report_in_a_real_browser(browser, fsdd_report):
    report, expected = fsdd_report
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems, requests = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto((report / "index.html").as_uri(), wait_until="load")
    sections = page.eval_on_selector_all(
        "section.cluster",
        "els => els.map(s => [+s.dataset.cluster, s.querySelectorAll('audio').length])",
    )
    assert dict(sections) == expected
    duration = page.evaluate(
        """() => new Promise((resolve, reject) => {
            const audio = document.querySelector("section.cluster audio");
            audio.addEventListener("loadedmetadata", () => resolve(audio.duration));
            audio.addEventListener("error", () => reject(new Error("audio error")));
            audio.preload = "metadata"; audio.load();
        })"""
    )
    assert duration > 0
    position = page.evaluate("skaudioclusterReport.point(0)")
    page.mouse.click(position["x"], position["y"])
    page.wait_for_function(
        "() => { const a = document.getElementById('shared-player');"
        " return !a.paused && a.currentTime > 0; }",
        timeout=10_000,
    )
    playing = page.evaluate("document.getElementById('shared-player').src")
    assert playing.endswith("audio/00000.flac")
    assert page.inner_text("#now").startswith("0_george_0.wav")
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    page.close()


def test_row20_names_never_show_folders_above_the_common_folder(tmp_path):
    from skaudiocluster.report import _display_names

    paths = [
        "/tmp/rel_private/alice_medical_note.wav",
        "/home/u/clips/a.wav",
        "/home/u/clips/b/a.wav",
    ]
    assert _display_names(paths) == ["alice_medical_note.wav", "a.wav [1]", "a.wav [2]"]
    assert _display_names(paths[1:]) == ["a.wav", os.path.join("b", "a.wav")]

    clips = [
        _tone(tmp_path / "mine" / "x.wav", 300),
        _tone(tmp_path / "rel_private" / "alice_medical_note.wav", 2000),
    ]
    report = write_report(clips, [0, 1], coords=np.eye(2), out=tmp_path / "r")
    names = json.loads(_parse(report).data)["names"]
    assert names == [
        os.path.join("mine", "x.wav"),
        os.path.join("rel_private", "alice_medical_note.wav"),
    ]
    text = (report / "index.html").read_text(encoding="utf-8")
    assert tmp_path.name not in text and tmp_path.parent.name not in text
