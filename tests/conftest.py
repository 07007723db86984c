"""Shared fixtures. Every image here is synthetic: no dataset image is ever committed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fixtures.films import CHROMIUM, CHROMIUM_ARGS, png_bytes, synthetic_radiograph  # noqa: F401  (the tests import them from here)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BONE_XRAY_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def app(bundle_dir, monkeypatch):
    """The Streamlit app after its first run, through AppTest (no browser)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception
    return at


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, one per test module (the browser tests)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture
def radiograph() -> np.ndarray:
    return synthetic_radiograph()


@pytest.fixture
def radiograph_png(radiograph) -> bytes:
    return png_bytes((radiograph * 255).astype(np.uint8))


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    path = REPO / "model"
    if not (path / "metadata.json").exists():
        pytest.skip("model/metadata.json is absent: the bundled model has not been committed")
    return path


@pytest.fixture(scope="session")
def classifier(bundle_dir):
    from utils.core.bundle import load_bundle
    from utils.core.classifier import Classifier

    return Classifier(load_bundle(bundle_dir))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "manifest.csv").exists():
        pytest.skip(f"training data not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


# Markers by module (pytest.ini lists them): the fast subset leaves out the real servers.
MODULE_MARKERS = {"test_browser": ("browser",), "test_sessions": ("browser",), "test_load": ("browser",),
                  "test_pacs": ("pacs",), "test_pacs_app": ("pacs",),
                  "test_ray_batch": ("ray",)}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in MODULE_MARKERS.get(item.module.__name__.rsplit(".", 1)[-1], ()):
            item.add_marker(getattr(pytest.mark, name))
        if "pacs" in item.name and "test_browser" in item.module.__name__:
            item.add_marker(pytest.mark.pacs)
