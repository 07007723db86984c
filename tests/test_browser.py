"""End to end in a real browser: streamlit run app.py, upload a synthetic image, see the verdict."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

from fixtures.films import CHROMIUM, free_port, wait_healthy
from tests.conftest import REPO, png_bytes, synthetic_radiograph

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian chromium is not installed (scripts/test.sh installs it)")


@contextlib.contextmanager
def streamlit_app(env: dict, log_path, *extra_args: str):
    """`streamlit run app.py` on a free loopback port until the block ends; yields its URL."""
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", *extra_args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
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
def server(bundle_dir, tmp_path_factory):
    # Loopback is allowed only so that the URL test can serve its image from 127.0.0.1.
    env = dict(os.environ, BONE_XRAY_MODEL_DIR=str(bundle_dir), PYTHONUNBUFFERED="1",
               BONE_XRAY_URL_ALLOW="127.0.0.1/32")
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    with streamlit_app(env, log_path) as url:
        yield url, log_path


def open_app(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1150})
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text("Not a medical device and not for diagnosis").wait_for(timeout=120_000)
    return page


def upload_synthetic(page, seed: int) -> None:
    upload = {"name": f"wrist{seed}.png", "mimeType": "image/png",
              "buffer": png_bytes((synthetic_radiograph(seed=seed) * 255).astype(np.uint8))}
    page.locator("input[type=file]").set_input_files(upload)


def test_upload_in_a_browser_shows_the_verdict(server, browser, tmp_path):
    url, _ = server
    page = open_app(browser, url)
    upload_synthetic(page, seed=5)
    page.get_by_text("Verdict:").first.wait_for(timeout=120_000)
    body = page.inner_text("body")
    for name in ("healthy:", "fractured:", "beyond repair:"):
        assert name in body
    page.screenshot(path=os.environ.get("BONE_XRAY_SCREENSHOT", str(tmp_path / "verdict.png")), full_page=True)
    page.close()


@pytest.fixture(scope="module")
def image_server():
    """A plain HTTP server on 127.0.0.1 with one synthetic radiograph at /film.png."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    film = png_bytes((synthetic_radiograph(seed=9) * 255).astype(np.uint8))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/film.png" else 404)
            self.send_header("Content-Length", str(len(film) if self.path == "/film.png" else 0))
            self.end_headers()
            if self.path == "/film.png":
                self.wfile.write(film)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_image_url_in_the_browser(server, browser, image_server):
    url, _ = server
    page = open_app(browser, url)
    box = page.get_by_role("textbox", name="...or paste an image URL")
    box.fill(f"{image_server}/film.png")
    box.press("Enter")
    page.get_by_text("Verdict:").first.wait_for(timeout=120_000)
    body = page.inner_text("body")
    assert "healthy:" in body and "beyond repair:" in body
    wait_until_idle(page)
    box = page.get_by_role("textbox", name="...or paste an image URL")
    box.fill("http://10.0.0.5/film.png")
    box.press("Enter")
    page.get_by_text("refused: 10.0.0.5 is a private address").first.wait_for(timeout=60_000)
    page.close()


def test_the_patient_choice_makes_a_childs_film_need_review(server, browser):
    url, _ = server
    page = open_app(browser, url)
    sidebar = page.locator("[data-testid=stSidebar]")
    for answer in ("Not given", "Adult", "Child (under 18)"):
        sidebar.get_by_text(answer, exact=True).wait_for(timeout=60_000)
    sidebar.get_by_text("Child (under 18)", exact=True).click()
    upload_synthetic(page, seed=9)
    page.get_by_text("Verdict:").first.wait_for(timeout=120_000)
    page.get_by_text("children's films are outside what this model was validated on").first.wait_for(timeout=60_000)
    body = page.inner_text("body")
    assert "NEEDS REVIEW" in body or "NOT A RADIOGRAPH" in body
    assert "healthy:" in body and "beyond repair:" in body  # the probabilities are still shown
    page.close()


def test_not_an_xray_warning_in_the_browser(server, browser):
    from tests.test_guard import colourful_photo, rgb_png

    url, _ = server
    page = open_app(browser, url)
    page.locator("input[type=file]").set_input_files(
        {"name": "holiday.png", "mimeType": "image/png", "buffer": rgb_png(colourful_photo())})
    page.get_by_text("Not a bone radiograph?").first.wait_for(timeout=120_000)
    assert "Verdict: NOT A RADIOGRAPH" in page.inner_text("body")
    page.close()


def wait_until_idle(page) -> None:
    """Let a rerun the last action triggered start, then wait until the script has finished:
    clicking while Streamlit re-renders can hit a stale, fading copy of the widget."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=120_000)


def wait_for_count(page, locator, count: int, seconds: float = 60) -> None:
    for _ in range(int(seconds * 2)):
        if locator.count() == count:
            return
        page.wait_for_timeout(500)
    assert locator.count() == count


def test_heatmap_toggle_slider_and_preset_in_the_browser(server, browser):
    url, _ = server
    page = open_app(browser, url)
    upload_synthetic(page, seed=6)
    page.get_by_text("Verdict:").first.wait_for(timeout=120_000)
    main = page.locator("section.main, [data-testid='stMain']").first
    images = main.locator("[data-testid='stImage'] img")
    images.nth(1).wait_for(timeout=30_000)
    assert images.count() == 2  # overlay and raw heatmap

    slider = page.get_by_role("slider", name="Heatmap opacity").first
    before = slider.get_attribute("aria-valuetext")
    slider.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    for _ in range(60):
        if slider.get_attribute("aria-valuetext") != before:
            break
        page.wait_for_timeout(500)
    assert float(slider.get_attribute("aria-valuetext")) > float(before), "the opacity slider did not move"

    toggle = page.get_by_text("Show heatmap")
    wait_until_idle(page)  # the rerun after the slider
    wait_for_count(page, toggle, 1)
    toggle.click()
    wait_for_count(page, images, 1)
    wait_until_idle(page)
    wait_for_count(page, toggle, 1)
    toggle.click()
    wait_for_count(page, images, 2)

    wait_until_idle(page)
    page.locator("[data-testid='stSidebar'] [data-testid='stRadio']").get_by_text("fracture sensitive", exact=True).click()
    page.get_by_text("Verdict:").first.wait_for(timeout=60_000)
    wait_until_idle(page)  # the rerun after the click
    assert page.locator("[data-testid='stSidebar'] [data-testid='stRadio'] input[type=radio]").nth(1).is_checked()
    body = page.inner_text("body")
    assert "Verdict:" in body and "healthy:" in body
    page.close()


def test_four_concurrent_sessions_share_one_model(server, browser):
    url, log_path = server
    contexts = [browser.new_context() for _ in range(4)]  # separate cookies: separate sessions
    pages = [context.new_page() for context in contexts]
    for page in pages:
        page.goto(url, wait_until="domcontentloaded")
    for page in pages:
        page.get_by_text("Not a medical device and not for diagnosis").wait_for(timeout=120_000)
    for seed, page in enumerate(pages):
        upload_synthetic(page, seed=10 + seed)  # all four uploads in flight together
    for page in pages:
        page.get_by_text("Verdict:").first.wait_for(timeout=180_000)
        assert "healthy:" in page.inner_text("body")
    for context in contexts:
        context.close()
    loads = [line for line in log_path.read_text().splitlines() if line.startswith("bone-xray: model")]
    assert len(loads) == 1, loads


def test_batch_upload_csv_and_pdf_downloads(server, browser, tmp_path):
    import csv
    import io

    from pypdf import PdfReader

    url, _ = server
    page = browser.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text("Not a medical device and not for diagnosis").wait_for(timeout=120_000)
    files = [{"name": f"batch{i}.png", "mimeType": "image/png",
              "buffer": png_bytes((synthetic_radiograph(seed=30 + i) * 255).astype(np.uint8))} for i in range(3)]
    page.locator("input[type=file]").set_input_files(files)
    page.get_by_text("PDF report for all 3 images").wait_for(timeout=180_000)

    with page.expect_download(timeout=120_000) as download_info:
        page.get_by_text("Download table (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(open(download_info.value.path()).read())))
    assert [r["path"] for r in rows] == [f["name"] for f in files]
    assert all(r["label"] in ("healthy", "fractured", "beyond_repair") for r in rows)

    page.get_by_text("PDF report for all 3 images", exact=True).click()
    with page.expect_download(timeout=180_000) as download_info:
        page.get_by_text("Download PDF report for all 3 images").click(timeout=180_000)
    assert len(PdfReader(download_info.value.path()).pages) == 4  # a summary, then one page per film
    page.close()


@pytest.fixture(scope="module")
def pacs_server(bundle_dir, tmp_path_factory):
    """A real Orthanc with one study, and the app started with it in its secrets file."""
    from pydicom.uid import generate_uid

    from tests.pacs_fixtures import USERS, film, new_study, start_orthanc, stop_orthanc, upload

    folder = tmp_path_factory.mktemp("pacs_browser")
    orthanc_process, orthanc = start_orthanc(folder)
    study = new_study(accession="ACC-BROWSER")
    upload(orthanc, [film(study, generate_uid(), 1, seed=31), film(study, generate_uid(), 1, seed=32)])
    secrets = folder / "secrets.toml"
    secrets.write_text(f'[pacs]\nurl = "{orthanc.url}"\nusername = "writer"\npassword = "{USERS["writer"]}"\n')
    env = dict(os.environ, BONE_XRAY_MODEL_DIR=str(bundle_dir), PYTHONUNBUFFERED="1")
    try:
        with streamlit_app(env, folder / "streamlit.log", "--secrets.files", str(secrets)) as url:
            yield url, orthanc, study, folder / "streamlit.log"
    finally:
        stop_orthanc(orthanc_process)


def test_a_pacs_study_in_the_browser(pacs_server, browser):
    """Search by accession, classify the study, send the results back; the SR is then there."""
    from tests.pacs_fixtures import PATIENT_NAME
    from tests.test_pacs import series_of

    url, orthanc, study, log_path = pacs_server
    page = open_app(browser, url)
    page.get_by_text("From PACS").first.wait_for(timeout=60_000)
    page.get_by_label("Accession number").fill("ACC-BROWSER")
    page.get_by_role("button", name="Search the PACS").click()
    page.get_by_role("button", name="Classify this study").wait_for(timeout=60_000)
    page.get_by_role("button", name="Classify this study").click()
    page.get_by_text("2 radiograph(s) classified").wait_for(timeout=120_000)
    page.get_by_role("button", name="Send the results to the PACS").click()
    page.get_by_text("Stored 1 report (SR) and 2 secondary capture(s)").wait_for(timeout=120_000)
    page.close()
    assert len(series_of(orthanc, study.StudyInstanceUID, "SR")) == 1
    assert len(series_of(orthanc, study.StudyInstanceUID, "OT")) == 1
    assert PATIENT_NAME not in log_path.read_text()


def test_the_typed_reference_reaches_the_pdf_for_one_film_and_a_batch(server, browser):
    from pypdf import PdfReader

    url, log_path = server
    reference = "Study ACC-4471 / ward 3"

    def open_with_reference():
        page = open_app(browser, url)
        box = page.get_by_role("textbox", name="Study / patient reference for PDF reports (optional, typed by you)")
        box.fill(reference)
        box.press("Enter")
        wait_until_idle(page)
        return page

    page = open_with_reference()
    upload_synthetic(page, seed=12)
    page.get_by_text("PDF report for this image").wait_for(timeout=120_000)
    page.get_by_text("PDF report for this image", exact=True).click()
    with page.expect_download(timeout=120_000) as download_info:
        page.get_by_text("Download PDF report for this image").click(timeout=120_000)
    text = PdfReader(download_info.value.path()).pages[0].extract_text()
    assert f"Study / patient reference: {reference}" in text
    page.close()
    page = open_with_reference()  # a fresh session for the batch
    files = [{"name": f"ref{i}.png", "mimeType": "image/png",
              "buffer": png_bytes((synthetic_radiograph(seed=40 + i) * 255).astype(np.uint8))} for i in range(2)]
    page.locator("input[type=file]").set_input_files(files)
    page.get_by_text("PDF report for all 2 images").wait_for(timeout=180_000)
    page.get_by_text("PDF report for all 2 images", exact=True).click()
    with page.expect_download(timeout=180_000) as download_info:
        page.get_by_text("Download PDF report for all 2 images").click(timeout=180_000)
    pages = PdfReader(download_info.value.path()).pages
    assert len(pages) == 3 and all(f"Study / patient reference: {reference}" in p.extract_text() for p in pages)
    page.close()
    assert "missing ScriptRunContext" not in log_path.read_text()


def test_the_pages_have_real_names_and_an_image_url_is_a_file_name(server, browser, image_server):
    url, _ = server
    page = open_app(browser, url)
    nav = page.locator("[data-testid=stSidebarNav]").inner_text()
    assert "Classify radiographs" in nav and "Model card" in nav and "app" not in nav.split()
    assert page.get_by_text("Model card", exact=True).count() == 1  # the page link, no sidebar expander too
    box = page.get_by_role("textbox", name="...or paste an image URL")
    box.fill(f"{image_server}/film.png")
    box.press("Enter")
    page.get_by_text("Verdict:").first.wait_for(timeout=120_000)
    heading = page.locator("h3").filter(has_text="film.png").first.inner_text()
    assert heading.strip() == "film.png"  # the file name as the heading, not the whole URL
    wait_until_idle(page)  # a rerun may still show the previous render's caption beside the new one
    link = page.get_by_role("link", name=f"{image_server}/film.png")
    assert link.count() >= 1 and link.first.is_visible()
    page.close()


def test_the_server_log_stays_free_of_file_watcher_noise(server, browser):
    url, log_path = server
    page = open_app(browser, url)
    upload_synthetic(page, seed=13)
    page.get_by_text("Verdict:").first.wait_for(timeout=120_000)
    page.close()
    log = log_path.read_text()
    assert "Inotify" not in log and "watchdog" not in log.lower()
    assert "Network URL" not in log  # the tests bind 127.0.0.1 as the README's command does
