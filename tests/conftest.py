"""Shared fixtures. Every image here is synthetic: no dataset image is ever committed."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BONE_XRAY_DATA", REPO.parent / "shared" / "data"))


def synthetic_radiograph(height: int = 480, width: int = 400, seed: int = 0) -> np.ndarray:
    """A dark field with a bright 'bone' and a darker gap across it: 2-D float in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = 0.08 + 0.03 * rng.standard_normal((height, width))
    shaft = np.abs(xx - width * (0.45 + 0.1 * rng.random())) < width * 0.08
    image[shaft] += 0.6
    gap = np.abs(yy - height * (0.3 + 0.4 * rng.random())) < 3
    image[shaft & gap] -= 0.4
    return np.clip(image, 0, 1).astype(np.float32)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG") if mode else \
        Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


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
    from utils.bundle import load_bundle
    from utils.classifier import Classifier

    return Classifier(load_bundle(bundle_dir))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "manifest.csv").exists():
        pytest.skip(f"training data not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


# Markers by module (pytest.ini lists them): the fast subset leaves out the real servers.
MODULE_MARKERS = {"test_browser": ("browser",), "test_pacs": ("pacs",), "test_pacs_app": ("pacs",),
                  "test_ray_batch": ("ray",)}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in MODULE_MARKERS.get(item.module.__name__.rsplit(".", 1)[-1], ()):
            item.add_marker(getattr(pytest.mark, name))
        if "pacs" in item.name and "test_browser" in item.module.__name__:
            item.add_marker(pytest.mark.pacs)
