"""Load benchmark: N people using one app server at once, in real browsers.

Usage: python -m benchmarks.load [--sessions 1 5 10 20] [--minutes 5 | --seconds 300]
                                [--hostile] [--app-commit REV]
       (needs Debian chromium, as the browser tests do)

For each N, one `streamlit run app.py` serves N browser contexts (separate cookies: separate
Streamlit sessions) of one Chromium. Each session loops until --seconds have passed: it
uploads the next film of a mix (a 5-megapixel JPEG, a 50 kB JPEG, a 16-bit PNG, a DICOM and
one broken file), waits for its verdict (or its error message), turns the heatmap on and
downloads the PDF. It reports, per N: uploads, upload-to-verdict median and 95th percentile
(all films, and per film kind), errors (a verdict or message that never came, a page error)
and dropped sessions, and the server's peak RSS and its change over the last 3 minutes
(sampled every 0.5 s, the server and its children).

--hostile runs each level twice: as above, then beside one more session that uploads, in
turn, a 95 MiB file that is no image and a decompression bomb (each in a fresh session, waiting
for its sentence), and prints the ordinary sessions' median against the first run's.

--app-commit REV serves the app as it was at that commit (a temporary git worktree, the same
Python environment), so that a change is measured against what it replaced on the same
machine in the same hour.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from pydicom import dcmwrite

from fixtures.films import (
    CHROMIUM,
    CHROMIUM_ARGS,
    decompression_bomb,
    free_port,
    jpeg_bytes,
    make_dicom,
    png_bytes,
    textured_radiograph,
    wait_healthy,
)

REPO = Path(__file__).resolve().parents[1]
DISCLAIMER = "Not a medical device and not for diagnosis"
BROKEN_MESSAGE = "not an image this app can read"
VERDICT_TIMEOUT_MS = 600_000
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
JUNK_MIB = 95  # under the app's 100 MB upload limit, so the server has to read it


def film_mix() -> dict[str, tuple[str, str, bytes]]:
    """{kind: (suffix, mime type, bytes)}: the films every session cycles through."""
    dicom = io.BytesIO()
    pixels = np.round(textured_radiograph(1500, 1200, seed=3) * 4095).astype(np.uint16)
    dcmwrite(dicom, make_dicom(pixels), enforce_file_format=True)
    return {
        "jpeg_5mp": ("jpg", "image/jpeg", jpeg_bytes(textured_radiograph(2500, 2000, seed=1))),
        "jpeg_50kb": ("jpg", "image/jpeg", jpeg_bytes(textured_radiograph(1000, 800, seed=2))),
        "png16": (
            "png",
            "image/png",
            png_bytes(np.round(textured_radiograph(1500, 1200, seed=4) * 65535).astype(np.uint16)),
        ),
        "dicom": ("dcm", "application/dicom", dicom.getvalue()),
        "broken": ("png", "image/png", b"this is not an image, whatever its name says"),
    }


@dataclass
class SessionLog:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    dropped: bool = False


class ServerMemory:
    """RSS of the server and its children, sampled every `interval` seconds: (time, bytes)."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.process, self.interval = psutil.Process(pid), interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                total = sum(p.memory_info().rss for p in [self.process, *self.process.children(recursive=True)])
                self.samples.append((time.perf_counter(), total))
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> ServerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, float]:
        times = np.array([t for t, _ in self.samples])
        rss = np.array([r for _, r in self.samples], dtype=np.float64) / 2**20
        last = times >= times[-1] - 180
        return {
            "peak_rss_mb": float(rss.max()),
            "rss_last_3_min_start_mb": float(rss[last][0]),
            "rss_last_3_min_peak_mb": float(rss[last].max()),
            "rss_end_mb": float(rss[-1]),
        }


def describe(exc: Exception) -> str:
    """The error's first line and what it was waiting for (Playwright names the locator in its call log)."""
    lines = str(exc).splitlines() or [""]
    waited = next((line.strip() for line in lines if "waiting for" in line), "")
    return f"{type(exc).__name__}: {lines[0][:160]} {waited[:160]}".strip()


async def remove_uploads(page) -> None:
    """Take the films out of the uploader, as a user does before the next one (it keeps
    every file given, so the next upload would otherwise turn the page into a batch table)."""
    chips = page.locator("[data-testid='stFileChip']")
    while left := await chips.count():
        await page.locator("[data-testid='stFileChipDeleteBtn']").first.click()
        await page.wait_for_function(
            "n => document.querySelectorAll(\"[data-testid='stFileChip']\").length < n",
            arg=left,
            timeout=VERDICT_TIMEOUT_MS,
        )
    await until_idle(page)


async def one_upload(page, name: str, film: tuple[str, str, bytes], count: int) -> None:
    """Upload one film and wait for what it brings: the history grows, or the error shows."""
    suffix, mime, data = film
    film_file = {"name": name, "mimeType": mime, "buffer": data}
    await page.locator("input[type=file]").set_input_files(film_file, timeout=VERDICT_TIMEOUT_MS)
    if data.startswith(b"this is not an image"):
        await page.get_by_text(BROKEN_MESSAGE).first.wait_for(timeout=VERDICT_TIMEOUT_MS)
    else:
        await page.get_by_text(f"This session ({count})").wait_for(timeout=VERDICT_TIMEOUT_MS)
        await page.get_by_text("Verdict:").first.wait_for(timeout=VERDICT_TIMEOUT_MS)


async def until_idle(page) -> None:
    """Until the app's script run has ended (a button clicked mid-run may belong to the old run)."""
    await page.wait_for_timeout(300)
    await page.wait_for_selector(IDLE, timeout=VERDICT_TIMEOUT_MS)


async def heatmap_and_pdf(page) -> None:
    """Turn the heatmap off (it starts on), then build and download the PDF. The next click
    waits until the rerun has removed the opacity slider, so that it lands on the new page."""
    await until_idle(page)
    await page.get_by_text("Show heatmap").first.click()
    await page.get_by_text("Heatmap opacity").first.wait_for(state="detached", timeout=VERDICT_TIMEOUT_MS)
    await until_idle(page)
    await page.get_by_text("PDF report for this image", exact=True).first.click()  # builds the report
    async with page.expect_download(timeout=VERDICT_TIMEOUT_MS) as download:
        await page.get_by_text("Download PDF report for this image").first.click(timeout=VERDICT_TIMEOUT_MS)
    path = await (await download.value).path()
    if not Path(path).read_bytes().startswith(b"%PDF"):
        raise RuntimeError("the PDF download is not a PDF")


async def session(browser, url: str, films: dict, deadline: float, index: int) -> SessionLog:
    log = SessionLog()
    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    page.on("pageerror", lambda error: log.errors.append(f"page error: {error}"))
    try:
        await page.goto(url, wait_until="domcontentloaded", timeout=VERDICT_TIMEOUT_MS)
        await page.get_by_text(DISCLAIMER).wait_for(timeout=VERDICT_TIMEOUT_MS)
        kinds, verdicts, upload = list(films), 0, 0
        while time.perf_counter() < deadline:
            kind = kinds[(index + upload) % len(kinds)]
            upload += 1
            try:
                await remove_uploads(page)  # not timed: the user's own click, before the next film
                started = time.perf_counter()
                verdicts += kind != "broken"
                await one_upload(page, f"s{index:02d}_u{upload:03d}_{kind}.{films[kind][0]}", films[kind], verdicts)
                log.latencies.setdefault(kind, []).append(time.perf_counter() - started)
                if kind != "broken":
                    await heatmap_and_pdf(page)
            except Exception as exc:  # a timeout or a lost page: counted, and the session goes on
                log.errors.append(f"{kind}: {describe(exc)}")
                if page.is_closed():
                    log.dropped = True
                    break
                await page.reload()
                await page.get_by_text(DISCLAIMER).wait_for(timeout=VERDICT_TIMEOUT_MS)
                verdicts = 0  # a reload starts a new Streamlit session: its history is empty
    finally:
        await context.close()
    return log


def hostile_uploads(folder: Path) -> list[tuple[object, str]]:
    """[(what set_input_files takes, the sentence the app answers with)]: the attacker's files."""
    junk = folder / "huge.png"
    junk.write_bytes(os.urandom(JUNK_MIB * 2**20))
    bomb = {"name": "bomb.png", "mimeType": "image/png", "buffer": decompression_bomb()}
    return [(str(junk), BROKEN_MESSAGE), (bomb, "more than 60 megapixels")]


async def hostile_session(browser, url: str, attacks: list, deadline: float) -> SessionLog:
    """Uploads each attack in turn, each in a fresh session, until the deadline."""
    log = SessionLog()
    context = await browser.new_context()
    page = await context.new_page()
    try:
        turn = 0
        while time.perf_counter() < deadline:
            attack, sentence = attacks[turn % len(attacks)]
            started = time.perf_counter()
            try:
                await page.goto(url, wait_until="domcontentloaded", timeout=VERDICT_TIMEOUT_MS)
                await page.get_by_text(DISCLAIMER).wait_for(timeout=VERDICT_TIMEOUT_MS)
                await page.locator("input[type=file]").set_input_files(attack, timeout=VERDICT_TIMEOUT_MS)
                await page.get_by_text(sentence).filter(visible=True).first.wait_for(timeout=VERDICT_TIMEOUT_MS)
                log.latencies.setdefault(sentence, []).append(time.perf_counter() - started)
            except Exception as exc:  # the sentence never came: counted, and the attacker goes on
                log.errors.append(f"attack {turn}: {describe(exc)}")
            turn += 1
    finally:
        await context.close()
    return log


@contextmanager
def app_checkout(commit: str | None) -> Iterator[Path]:
    """The repository, or a temporary worktree of it at `commit`."""
    if commit is None:
        yield REPO
        return
    with tempfile.TemporaryDirectory() as parent:
        folder = Path(parent) / "app"
        subprocess.run(["git", "worktree", "add", "--detach", str(folder), commit], cwd=REPO, check=True)
        try:
            yield folder
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=REPO, check=False)


def start_server(port: int, log_file, app_dir: Path) -> subprocess.Popen:
    args = ["app.py", "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true"]
    command = [sys.executable, "-m", "streamlit", "run", *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(app_dir))
    return subprocess.Popen(command, cwd=app_dir, stdout=log_file, stderr=subprocess.STDOUT, env=env)


async def run_sessions(url: str, films: dict, sessions: int, seconds: float, attacks: list | None) -> tuple:
    """(the ordinary sessions' logs, the attacker's log or None)."""
    from playwright.async_api import async_playwright  # noqa: PLC0415  (a browser only when this benchmark runs)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        deadline = time.perf_counter() + seconds
        ordinary = [session(browser, url, films, deadline, i) for i in range(sessions)]
        hostile = [hostile_session(browser, url, attacks, deadline)] if attacks else []
        logs = await asyncio.gather(*ordinary, *hostile)
        await browser.close()
    return list(logs[:sessions]), (logs[sessions] if attacks else None)


def level_figures(logs: list[SessionLog], memory: dict[str, float]) -> dict:
    everything = [t for log in logs for times in log.latencies.values() for t in times]
    per_kind = {}
    for kind in sorted({k for log in logs for k in log.latencies}):
        times = [t for log in logs for t in log.latencies.get(kind, [])]
        per_kind[kind] = {
            "n": len(times),
            "median_s": float(np.median(times)),
            "p95_s": float(np.percentile(times, 95)),
        }
    return {
        "uploads": len(everything),
        "median_s": float(np.median(everything)) if everything else None,
        "p95_s": float(np.percentile(everything, 95)) if everything else None,
        "errors": sum(len(log.errors) for log in logs),
        "error_examples": [e for log in logs for e in log.errors][:5],
        "dropped_sessions": sum(log.dropped for log in logs),
        "per_kind": per_kind,
        **memory,
    }


def measure_level(sessions: int, seconds: float, films: dict, app_dir: Path, attacks: list | None = None) -> dict:
    """One server, `sessions` people (and an attacker when `attacks` are given) for `seconds`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log_file:
        server = start_server(port, log_file, app_dir)
        try:
            wait_healthy(url, server)
            with ServerMemory(server.pid) as memory:
                logs, hostile = asyncio.run(run_sessions(url, films, sessions, seconds, attacks))
            figures = level_figures(logs, memory.figures())
            if hostile is not None:
                figures["hostile"] = {"attacks": sum(map(len, hostile.latencies.values())), "errors": hostile.errors}
        finally:
            server.terminate()
            server.wait(timeout=60)
        log_file.seek(0)
        figures["server_tracebacks"] = log_file.read().count("Traceback")
    return figures


def print_table(results: dict[int, dict], commit: str | None) -> None:
    served = f"the app at {commit}" if commit else "this checkout's app"
    print(f"{os.cpu_count()} cores, {served}; upload to verdict in seconds")
    print(
        "| sessions | uploads | median | p95 | p95 / (N x single median) | errors | dropped | peak RSS MB "
        "| RSS over the last 3 min MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    single = results.get(1, {}).get("median_s")
    for n, r in results.items():
        ratio = f"{r['p95_s'] / (n * single):.2f}" if single and r["p95_s"] else "-"
        print(
            f"| {n} | {r['uploads']} | {r['median_s']:.2f} | {r['p95_s']:.2f} | {ratio} | {r['errors']} | "
            f"{r['dropped_sessions']} | {r['peak_rss_mb']:.0f} | {r['rss_last_3_min_start_mb']:.0f} -> "
            f"{r['rss_last_3_min_peak_mb']:.0f} (peak) |"
        )
    for n, r in results.items():
        kinds = ", ".join(f"{k} {v['median_s']:.2f}/{v['p95_s']:.2f}" for k, v in r["per_kind"].items())
        print(f"N={n} median/p95 by film: {kinds}")


def print_hostile(results: dict[int, dict], beside_attacker: dict[int, dict]) -> None:
    print("| sessions | median alone | median beside the attacker | ratio | attacks answered | attacker errors |")
    print("|---|---|---|---|---|---|")
    for n, r in beside_attacker.items():
        alone, hostile = results[n]["median_s"], r["hostile"]
        print(
            f"| {n} | {alone:.2f} | {r['median_s']:.2f} | {r['median_s'] / alone:.2f} | {hostile['attacks']} | "
            f"{len(hostile['errors'])} (ordinary sessions: {r['errors']} errors, {r['dropped_sessions']} dropped) |"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 10, 20])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=300.0, help="how long each level runs")
    length.add_argument("--minutes", type=float, help="the same, in minutes")
    parser.add_argument("--hostile", action="store_true", help="run each level again beside an attacker")
    parser.add_argument("--app-commit", help="serve the app as it was at this git commit")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60 if args.minutes else args.seconds
    films = film_mix()
    with app_checkout(args.app_commit) as app_dir, tempfile.TemporaryDirectory() as scratch:
        results = {n: measure_level(n, seconds, films, app_dir) for n in args.sessions}
        attacks = hostile_uploads(Path(scratch)) if args.hostile else None
        beside = {n: measure_level(n, seconds, films, app_dir, attacks) for n in args.sessions} if attacks else {}
    print_table(results, args.app_commit)
    if beside:
        print_hostile(results, beside)
    print(json.dumps({"alone": results, "beside_attacker": beside}))
    return {"alone": results, "beside_attacker": beside}


if __name__ == "__main__":
    main()
