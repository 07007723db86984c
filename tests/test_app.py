"""The Streamlit app through streamlit.testing.v1.AppTest (no browser)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO, png_bytes, synthetic_radiograph
from tests.dicom_fixtures import SECRET_PATIENT_NAME, dicom_bytes, make_dicom, ramp

APP = str(REPO / "app.py")


@pytest.fixture
def app(bundle_dir, monkeypatch):
    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception
    return at


def all_text(at) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning] + \
        [c.value for c in at.caption] + [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


def verdicts(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("### Verdict")]


def test_start_page_explains_and_warns(app):
    assert app.title[0].value == "Bone X-ray Classifier"
    text = all_text(app)
    assert "Not a medical device" in text
    for name in ("healthy", "fractured", "beyond repair"):
        assert f"**{name}**" in text
    assert "sha256" in text and "balanced accuracy" in text  # model info in the sidebar


def test_upload_gives_verdict_and_three_probabilities(app):
    data = png_bytes((synthetic_radiograph() * 255).astype(np.uint8))
    app.file_uploader[0].upload("knee.png", data, "image/png")
    app.run()
    assert not app.exception
    assert len(verdicts(app)) == 1
    bars = app.get("progress")
    assert len(bars) == 3
    texts = [bar.proto.text for bar in bars]
    assert [t.split(":")[0] for t in texts] == ["healthy", "fractured", "beyond repair"]
    total = sum(float(t.split(":")[1].strip().rstrip("%")) for t in texts)
    assert total == pytest.approx(100.0, abs=0.2)
    assert len(app.get("image")) == 1  # the image as the model saw it


def test_bad_file_gets_a_message_and_the_app_keeps_working(app):
    app.file_uploader[0].upload("notes.png", b"this is text, not an image", "image/png")
    app.run()
    assert not app.exception
    assert any("not an image" in e.value for e in app.error)
    # Next, the same bad file beside a DICOM without an extension: one message, one verdict.
    app.file_uploader[0].set_value([("notes.png", b"this is text, not an image", "image/png"),
                                    ("arm", dicom_bytes(make_dicom(ramp(400, 300))), "application/octet-stream")])
    app.run()
    assert not app.exception
    assert len(verdicts(app)) == 1 and len(app.error) == 1
    assert SECRET_PATIENT_NAME.split("^")[0] not in all_text(app)


def test_preset_switch_keeps_results(app):
    data = png_bytes((synthetic_radiograph(seed=3) * 255).astype(np.uint8))
    app.file_uploader[0].upload("x.png", data, "image/png")
    app.run()
    app.sidebar.radio[0].set_value("fracture_sensitive")
    app.run()
    assert not app.exception
    assert len(verdicts(app)) == 1


def test_tampered_model_shows_an_error_page(bundle_dir, tmp_path, monkeypatch):
    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy)
    model_file = next(copy.glob("*.keras"))
    model_file.write_bytes(model_file.read_bytes()[:-10])
    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(copy))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("does not match" in e.value for e in at.error)
