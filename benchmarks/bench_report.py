"""Write time, size and browser open time of the listening report for FSDD's 3,000 clips.

The embeddings are SpectrogramTransformer's (log-mel mean+std, 128 dimensions),
computed first and timed apart (or loaded from ``--cache``); the clusters are
k-means' (``--n-clusters``). Each ``--players`` setting ``T+A`` (T most and A least
typical clips per cluster) writes a report with the default map (PCA from 1,000
clips on) and opens it in headless Chromium (``/usr/bin/chromium`` through
Playwright), timing ``goto(..., wait_until="load")``::

    SKAUDIOCLUSTER_SHARED=/work/shared python benchmarks/bench_report.py
    python benchmarks/bench_report.py --players 6+3 20+10 --n-clusters 10 50
    python benchmarks/bench_report.py --screenshot docs/_static/report.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def embed(paths: list[str], cache: str | None) -> np.ndarray:
    if cache and os.path.exists(cache):
        print(f"embeddings loaded from {cache}")
        return np.load(cache)
    from skaudiocluster.transformers.spectrogram import SpectrogramTransformer

    start = time.perf_counter()
    embeddings = SpectrogramTransformer().fit_transform(paths)
    print(f"SpectrogramTransformer embeddings: {time.perf_counter() - start:.1f} s (not counted)")
    if cache:
        np.save(cache, embeddings)
    return embeddings


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def open_seconds(browser, report: Path, screenshot: str | None) -> float:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    start = time.perf_counter()
    page.goto((report / "index.html").as_uri(), wait_until="load")
    page.wait_for_function("() => window.skaudioclusterReport !== undefined")
    seconds = time.perf_counter() - start
    if screenshot:
        page.screenshot(path=screenshot)
    page.close()
    if errors:
        raise RuntimeError(f"console errors: {errors}")
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = os.environ.get("SKAUDIOCLUSTER_SHARED", "../shared")
    parser.add_argument("--fsdd", default=f"{shared}/data/fsdd/recordings")
    parser.add_argument("--n-clips", type=int, default=3000)
    parser.add_argument("--n-clusters", type=int, nargs="+", default=[10])
    parser.add_argument("--players", nargs="+", default=["6+3"], help="T+A per cluster")
    parser.add_argument("--audio-format", default="flac")
    parser.add_argument("--cache", default=None, help=".npy file of the embeddings")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--screenshot", default=None, help="PNG of the first report's page")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright
    from sklearn.cluster import KMeans

    from skaudiocluster.datasets import load_fsdd
    from skaudiocluster.report import CHROMIUM_FLAGS, write_report

    paths, speakers = load_fsdd(args.fsdd, target="speaker")
    paths, speakers = paths[: args.n_clips], speakers[: args.n_clips]
    embeddings = embed(paths, args.cache)
    print(
        f"{len(paths)} FSDD clips, load {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print("| K | players per cluster | write s | size MB | files | open s |")
    print("|---|---|---|---|---|---|")
    screenshot = args.screenshot
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as tmp:
        browser = playwright.chromium.launch(
            executable_path=args.chromium, args=list(CHROMIUM_FLAGS)
        )
        for k in args.n_clusters:
            labels = KMeans(k, n_init=4, random_state=0).fit_predict(embeddings)
            for players in args.players:
                n_typical, n_atypical = map(int, players.split("+"))
                out = Path(tmp) / f"report-{k}-{players}"
                start = time.perf_counter()
                write_report(
                    paths,
                    labels,
                    embeddings=embeddings,
                    true_labels=speakers,
                    out=out,
                    n_typical=n_typical,
                    n_atypical=n_atypical,
                    audio_format=args.audio_format,
                )
                written = time.perf_counter() - start
                size = folder_bytes(out)
                files = sum(1 for p in out.rglob("*") if p.is_file())
                opened = open_seconds(browser, out, screenshot)
                screenshot = None
                print(
                    f"| {k} | {players} | {written:.1f} | {size / 1e6:.1f} | {files} "
                    f"| {opened:.2f} |",
                    flush=True,
                )
                shutil.rmtree(out)
        browser.close()


if __name__ == "__main__":
    main()
