"""Take the README's screenshot: the app as served now, after one upload.

Usage: python scripts/screenshot.py [--out docs/screenshot.png]

The film is synthetic (fixtures.films.textured_radiograph: soft tissue, a bone with trabecular
texture and a fracture line, film grain), so the picture may be published with the code. The
model, its version and the verdict are whatever the bundle in model/ gives, so rerun this after
a model change. Needs Debian chromium, as the browser tests do.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures.films import CHROMIUM, CHROMIUM_ARGS, free_port, jpeg_bytes, textured_radiograph, wait_healthy  # noqa: E402

WIDTH, HEIGHT = 1400, 1650


def start_app(port: int, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)


def capture(url: str, out: Path) -> None:
    from playwright.sync_api import FilePayload, sync_playwright  # noqa: PLC0415  (a browser only when this script runs)

    film: FilePayload = {
        "name": "forearm.jpg",
        "mimeType": "image/jpeg",
        "buffer": jpeg_bytes(textured_radiograph(1800, 1400)),
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text("Not a medical device and not for diagnosis").first.wait_for(timeout=300_000)
        page.locator("input[type=file]").set_input_files(film)
        page.get_by_text("Verdict:").first.wait_for(timeout=300_000)
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=300_000)
        page.get_by_text("Verdict:").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)  # images and fonts settle
        page.screenshot(path=str(out))
        browser.close()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        server = start_app(port, log)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", server)
            capture(f"http://127.0.0.1:{port}", args.out)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
