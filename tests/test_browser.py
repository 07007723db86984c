"""End to end in a real browser: streamlit run app.py, upload a synthetic image, see the verdict."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.conftest import REPO, png_bytes, synthetic_radiograph

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian chromium is not installed (scripts/test.sh installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy")


@pytest.fixture(scope="module")
def server(bundle_dir):
    port = free_port()
    env = dict(os.environ, BONE_XRAY_MODEL_DIR=str(bundle_dir))
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


def test_upload_in_a_browser_shows_the_verdict(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_text("Not a medical device").wait_for(timeout=120_000)
    upload = {"name": "wrist.png", "mimeType": "image/png",
              "buffer": png_bytes((synthetic_radiograph(seed=5) * 255).astype(np.uint8))}
    page.locator("input[type=file]").set_input_files(upload)
    page.get_by_text("Verdict:").wait_for(timeout=120_000)
    body = page.inner_text("body")
    for name in ("healthy:", "fractured:", "beyond repair:"):
        assert name in body
    page.screenshot(path=os.environ.get("BONE_XRAY_SCREENSHOT", str(tmp_path / "verdict.png")), full_page=True)
    page.close()
