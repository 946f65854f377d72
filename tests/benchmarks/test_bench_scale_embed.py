"""bench_scale_embed: the rows bench_scale.py prints, on a few synthetic clips (fast)."""

import pytest


def test_embed_rows_on_synthetic_clips(bench_scale_embed):
    rows = bench_scale_embed.embed_rows(30, source="synthetic", chunk_size=8, n_jobs=2)
    (row,) = rows
    assert row["source"] == "synthetic" and row["embedder"] == "spectrogram"
    assert row["n_clips"] == 30 and row["dim"] == 128
    assert row["clips_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert row["cached_rerun_s"] < row["seconds"]


def test_bad_source(bench_scale_embed):
    with pytest.raises(ValueError, match="source must be"):
        bench_scale_embed.embed_rows(3, source="nope")
