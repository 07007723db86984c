"""Many people on one server, in a real browser: sessions never see each other's films, a
session leaves nothing behind, and the server survives being killed, a broken model bundle,
clients that leave mid-batch and hostile uploads."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest

from benchmarks.load import hostile_uploads
from fixtures.films import CHROMIUM, free_port, jpeg_bytes, textured_radiograph, wait_healthy
from tests.conftest import REPO, png_bytes, synthetic_radiograph

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian chromium is not installed (scripts/test.sh installs it)")

DISCLAIMER = "Not a medical device and not for diagnosis"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
PROBABILITY = re.compile(r"(healthy|fractured|beyond repair): (\d+\.\d)%")


@contextlib.contextmanager
def app_server(tmp_path, model_dir, *extra_args: str, port: int | None = None):
    """`streamlit run app.py` with its own empty TMPDIR; yields (url, process, tmpdir)."""
    port = port or free_port()
    scratch = tmp_path / f"tmp_{port}_{time.monotonic_ns()}"
    scratch.mkdir()
    env = dict(os.environ, BONE_XRAY_MODEL_DIR=str(model_dir), PYTHONUNBUFFERED="1", TMPDIR=str(scratch))
    log = open(tmp_path / f"server_{port}.log", "a")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", *extra_args],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, process, scratch
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def open_page(context, url: str):
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text(DISCLAIMER).wait_for(timeout=180_000)
    return page


def film(name: str, seed: int) -> dict:
    return {"name": name, "mimeType": "image/png",
            "buffer": png_bytes((synthetic_radiograph(seed=seed) * 255).astype(np.uint8))}


def upload_and_wait(page, files) -> None:
    page.locator("input[type=file]").set_input_files(files)
    page.get_by_text("Verdict:").first.wait_for(timeout=180_000)
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, timeout=180_000)


def pdf_text(page, label: str) -> str:
    from pypdf import PdfReader

    page.get_by_text(label, exact=True).first.click()  # builds the report; its download button then takes its place
    with page.expect_download(timeout=180_000) as download:
        page.get_by_text(f"Download {label}").first.click(timeout=180_000)
    return "\n".join(p.extract_text() for p in PdfReader(download.value.path()).pages)


def repo_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout


def expected_probabilities(bundle_dir, upload: dict) -> dict[str, str]:
    """The probabilities the app shows for a film (its serving engine, rounded as it shows them)."""
    from utils.core.bundle import load_bundle, serving_precision
    from utils.core.classifier import Classifier

    bundle = load_bundle(bundle_dir)
    prediction = Classifier(bundle, precision=serving_precision(bundle.metadata)).predict_bytes(
        upload["name"], upload["buffer"]
    )
    return {name.replace("_", " "): f"{p * 100:.1f}" for name, p in prediction.probabilities.items()}


def test_sessions_never_see_each_others_films(tmp_path, bundle_dir, browser):
    alpha, bravo = film("alpha_private_film.png", seed=41), film("bravo_private_film.png", seed=47)
    with app_server(tmp_path, bundle_dir) as (url, _, _):
        alice, bob = browser.new_context(accept_downloads=True), browser.new_context(accept_downloads=True)
        page_a, page_b = open_page(alice, url), open_page(bob, url)
        upload_and_wait(page_a, alpha)
        upload_and_wait(page_b, bravo)
        text_a, text_b = page_a.inner_text("body"), page_b.inner_text("body")
        probabilities_a, probabilities_b = PROBABILITY.findall(text_a), PROBABILITY.findall(text_b)
        # Each session shows its own film's probabilities (two films may round alike).
        assert dict(probabilities_a) == expected_probabilities(bundle_dir, alpha)
        assert dict(probabilities_b) == expected_probabilities(bundle_dir, bravo)
        assert "alpha_private" in text_a and "bravo_private" not in text_a
        assert "bravo_private" in text_b and "alpha_private" not in text_b
        shown_a = " ".join(f"{c}: {p}%" for c, p in probabilities_a)
        assert all(f"{c}: {p}%" not in text_a for c, p in probabilities_b if (c, p) not in probabilities_a), shown_a
        report_a, report_b = pdf_text(page_a, "PDF report for this image"), pdf_text(page_b, "PDF report for this image")
        assert "alpha_private" in report_a and "bravo_private" not in report_a
        assert "bravo_private" in report_b and "alpha_private" not in report_b
        page_a.reload()
        page_a.get_by_text(DISCLAIMER).wait_for(timeout=180_000)
        page_a.get_by_text("This session (0)").wait_for(timeout=60_000)
        second_tab = open_page(bob, url)  # the same browser profile: Streamlit gives it its own session
        second_tab.get_by_text("This session (0)").wait_for(timeout=60_000)
        for page in (page_a, second_tab):
            text = page.inner_text("body")
            assert "alpha_private" not in text and "bravo_private" not in text
        page_b.get_by_text("This session (1)").wait_for(timeout=60_000)  # Bob's first tab keeps his verdict
        alice.close()
        bob.close()


def media_urls(page) -> list[str]:
    return [src for src in page.eval_on_selector_all("img", "els => els.map(e => e.src)") if "/media/" in src]


def status_of(address: str) -> int:
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_session_leaves_nothing_behind_once_it_ends(tmp_path, bundle_dir, browser):
    before = repo_status()
    with app_server(tmp_path, bundle_dir, "--server.disconnectedSessionTTL", "2") as (url, _, scratch):
        visitor = browser.new_context()
        page = open_page(visitor, url)
        upload_and_wait(page, film("leaving_film.png", seed=43))
        images = media_urls(page)
        assert images and all(status_of(address) == 200 for address in images)
        visitor.close()
        time.sleep(4)  # past the reconnection grace period
        next_visitor = browser.new_context()
        open_page(next_visitor, url)  # the server drops expired sessions as others come and go
        deadline = time.monotonic() + 60
        while any(status_of(address) == 200 for address in images) and time.monotonic() < deadline:
            time.sleep(1)
        assert all(status_of(address) == 404 for address in images)
        next_visitor.close()
        assert list(scratch.iterdir()) == []  # nothing written to the server's temporary folder
    assert repo_status() == before  # nor into the app's folder


def test_a_server_killed_mid_batch_comes_back_clean(tmp_path, bundle_dir, browser):
    before = repo_status()
    port = free_port()
    big = [{"name": f"big{i:02d}.jpg", "mimeType": "image/jpeg",
            "buffer": jpeg_bytes(textured_radiograph(2500, 2000, seed=i))} for i in range(24)]
    with app_server(tmp_path, bundle_dir, port=port) as (url, process, scratch):
        context = browser.new_context()
        page = open_page(context, url)
        page.locator("input[type=file]").set_input_files(big)
        page.get_by_text(re.compile(r"Classif(y|ied)")).first.wait_for(timeout=180_000)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert list(scratch.iterdir()) == []
        context.close()
    with app_server(tmp_path, bundle_dir, port=port) as (url, _, scratch):
        context = browser.new_context()
        page = open_page(context, url)
        upload_and_wait(page, film("after_restart.png", seed=44))
        assert "after_restart" in page.inner_text("body")
        context.close()
        assert list(scratch.iterdir()) == []
    assert repo_status() == before


@pytest.mark.parametrize("damage", ["missing", "corrupted"])
def test_a_broken_model_bundle_shows_what_to_restore_and_fails_the_health_check(tmp_path, bundle_dir, browser, damage):
    from ui.healthcheck import main as healthcheck

    broken = tmp_path / "model"
    shutil.copytree(bundle_dir, broken)
    target = broken / "serving.tflite"
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: 1 << 20])
    with app_server(tmp_path, broken) as (url, _, _):
        context = browser.new_context()
        page = context.new_page()
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text("The model cannot be loaded").wait_for(timeout=120_000)
        text = page.inner_text("body")
        assert "serving.tflite" in text and "restore it" in text.lower()
        assert "Traceback" not in text and "File \"" not in text
        context.close()
        assert healthcheck(["--url", url, "--model-dir", str(broken)]) == 1
        assert healthcheck(["--url", url, "--model-dir", str(bundle_dir)]) == 0
    assert healthcheck(["--url", url, "--model-dir", str(bundle_dir)]) == 1  # nobody answers any more


def test_a_client_that_leaves_mid_batch_frees_the_server(tmp_path, bundle_dir, browser):
    films = [{"name": f"batch{i:02d}.jpg", "mimeType": "image/jpeg",
              "buffer": jpeg_bytes(textured_radiograph(1250, 1000, seed=i))} for i in range(64)]
    with app_server(tmp_path, bundle_dir) as (url, process, _):
        context = browser.new_context()
        page = open_page(context, url)
        page.locator("input[type=file]").set_input_files(films)
        page.get_by_text(re.compile(r"Classified 8 of 64")).wait_for(timeout=180_000)
        context.close()  # the browser goes away mid-batch
        server = psutil.Process(process.pid)
        time.sleep(8)  # at most the chunk in progress finishes
        start = server.cpu_times()
        time.sleep(4)
        end = server.cpu_times()
        busy = (end.user - start.user) + (end.system - start.system)
        assert busy < 0.8, f"the server still worked {busy:.1f} CPU-seconds in 4 s after its client left"
        other = browser.new_context()
        upload_and_wait(open_page(other, url), film("next_person.png", seed=45))
        other.close()


def test_hostile_uploads_beside_a_normal_user(tmp_path, bundle_dir, browser):
    """A 95 MiB file that is no image (under the 100 MB upload limit) and a decompression bomb,
    each uploaded while someone else works: each gets its sentence, the other person still
    gets verdicts."""
    attacks = hostile_uploads(tmp_path)  # the load benchmark's: (file, the sentence it gets)
    with app_server(tmp_path, bundle_dir) as (url, process, _):
        attacker, person = browser.new_context(), browser.new_context()
        hostile, normal = open_page(attacker, url), open_page(person, url)
        for (attack, message), seed in zip(attacks, (46, 48), strict=True):
            hostile.locator("input[type=file]").set_input_files(attack)
            upload_and_wait(normal, film(f"ordinary_film_{seed}.png", seed=seed))
            assert f"ordinary_film_{seed}" in normal.inner_text("body")
            # the history table also holds the sentence, in a hidden grid cell
            hostile.get_by_text(message).filter(visible=True).first.wait_for(timeout=300_000)
        assert process.poll() is None
        assert "Traceback" not in hostile.inner_text("body")
        attacker.close()
        person.close()
