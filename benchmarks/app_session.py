"""The app as a person meets it: time from `streamlit run` to the first verdict in a real
browser, the server's memory after ten predictions, and what the server logs over a session
of --minutes (uploads go on until then): its line count and the lines that would fill a log
(file-watcher overflows, tracebacks, errors).

Usage: python -m benchmarks.app_session [--minutes 10]   (needs Debian chromium, as the browser test does)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fixtures.films import CHROMIUM, CHROMIUM_ARGS, free_port, png_bytes, synthetic_radiograph, wait_healthy

REPO = Path(__file__).resolve().parents[1]


NOISE = {"inotify": "Inotify", "watchdog": "watchdog", "traceback": "Traceback", "error": "Error"}


def log_figures(text: str) -> dict:
    lines = text.splitlines()
    return {
        "log_lines": len(lines),
        **{f"log_{k}_lines": sum(v.lower() in line.lower() for line in lines) for k, v in NOISE.items()},
    }


def main(argv=None) -> dict:
    from playwright.sync_api import FilePayload, sync_playwright  # noqa: PLC0415  (a browser is only needed when this benchmark runs)

    sys.path.insert(0, str(REPO))

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.0, help="keep the session going this long (log check)")
    args = parser.parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    figures: dict[str, Any] = {"cores": os.cpu_count()}
    try:
        wait_healthy(url, server)
        figures["server_healthy_s"] = time.perf_counter() - started
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("Not a medical device and not for diagnosis").wait_for(timeout=300_000)
            upload_times: list[float] = []
            for i in range(10):
                upload: FilePayload = {
                    "name": f"x{i}.png",
                    "mimeType": "image/png",
                    "buffer": png_bytes((synthetic_radiograph(2500, 2000, seed=i) * 255).astype(np.uint8)),
                }
                sent = time.perf_counter()
                page.locator("input[type=file]").set_input_files(upload)
                page.get_by_text(f"This session ({i + 1})").wait_for(timeout=300_000)
                page.get_by_text("Verdict:").first.wait_for(timeout=300_000)
                upload_times.append(time.perf_counter() - sent)
                if i == 0:
                    figures["start_to_first_verdict_s"] = time.perf_counter() - started
            # The first upload against the next nine: what the engine's setup costs the first person.
            figures["first_upload_to_verdict_s"] = upload_times[0]
            figures["later_upload_to_verdict_median_s"] = float(np.median(upload_times[1:]))
            uploads = 10
            while time.perf_counter() - started < args.minutes * 60:
                page.locator("input[type=file]").set_input_files(
                    {
                        "name": f"y{uploads}.png",
                        "mimeType": "image/png",
                        "buffer": png_bytes((synthetic_radiograph(800, 600, seed=uploads) * 255).astype(np.uint8)),
                    }
                )
                page.get_by_text(f"This session ({uploads + 1})").wait_for(timeout=300_000)
                uploads += 1
            figures["uploads"], figures["session_minutes"] = uploads, (time.perf_counter() - started) / 60
            browser.close()
        process = psutil.Process(server.pid)
        figures["server_rss_after_10_mb"] = process.memory_info().rss / 2**20
    finally:
        server.terminate()
        server.wait(timeout=30)
    log.seek(0)
    figures.update(log_figures(log.read()))
    print(
        f"{figures['cores']} cores: server healthy after {figures['server_healthy_s']:.1f} s, first verdict "
        f"{figures['start_to_first_verdict_s']:.1f} s after `streamlit run` (first upload to verdict "
        f"{figures['first_upload_to_verdict_s']:.2f} s, the next nine's median "
        f"{figures['later_upload_to_verdict_median_s']:.2f} s), server RSS after 10 "
        f"predictions {figures['server_rss_after_10_mb']:.0f} MB; {figures['uploads']} uploads in "
        f"{figures['session_minutes']:.1f} min, server log {figures['log_lines']} lines, "
        f"{figures['log_inotify_lines']} file-watcher overflow lines, {figures['log_traceback_lines']} tracebacks"
    )
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}))
    return figures


if __name__ == "__main__":
    main()
