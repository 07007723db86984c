"""Verdict colours mean the finding, not the confidence; never hue alone; readable contrast."""

from __future__ import annotations

import io
import tomllib

import numpy as np
import pytest
from pypdf import PdfReader

from tests.conftest import REPO
from utils.core.verdict import STYLES, contrast_ratio, hex_to_rgb, verdict_style
from utils.report import build_pdf

THEME = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["theme"]


@pytest.mark.parametrize("label, uncertain, not_xray, kind, colour", [
    ("healthy", False, False, "healthy", "green"),
    ("fractured", False, False, "fractured", "orange"),
    ("beyond_repair", False, False, "beyond_repair", "red"),
    ("fractured", True, False, "uncertain", "gray"),
    ("healthy", True, False, "uncertain", "gray"),
    ("beyond_repair", True, True, "not_xray", "gray"),
    ("healthy", True, "This does not look like a radiograph (a photo, document, drawing or screenshot); the "
                      "verdict is not reliable.", "not_xray", "gray"),
    ("healthy", True, "This image is unlike the films the model was trained on (another framing, exposure or "
                      "hospital, or not a radiograph at all); a reader should decide.", "unfamiliar", "gray"),
])
def test_the_colour_follows_the_finding(label, uncertain, not_xray, kind, colour):
    style = verdict_style(label, uncertain, not_xray)
    assert style.kind == kind and style.theme_colour == colour


def test_no_two_findings_share_a_word_or_icon_so_hue_is_never_alone():
    findings = [STYLES[k] for k in ("healthy", "fractured", "beyond_repair", "uncertain")]
    assert len({s.word for s in findings}) == len({s.icon for s in findings}) == len({s.pdf_mark for s in findings}) == 4


def test_app_colours_reach_wcag_aa_on_the_theme_background():
    background = hex_to_rgb(THEME["backgroundColor"])
    for style in STYLES.values():
        colour = THEME[f"{style.theme_colour}Color"]
        assert contrast_ratio(hex_to_rgb(colour), background) >= 4.5, (style.kind, colour)


def test_pdf_colours_reach_wcag_aa_on_white():
    for style in STYLES.values():
        assert contrast_ratio(style.pdf_rgb, (255, 255, 255)) >= 4.5, style.kind


def test_contrast_ratio_matches_known_values():
    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast_ratio((119, 119, 119), (255, 255, 255)) == pytest.approx(4.48, abs=0.01)


def test_the_pdf_verdict_carries_its_mark_and_word():
    base = {"path": "a.png", "name": "a.png", "warnings": [], "error": None, "model_input": None, "overlay": None,
            "probabilities": {"healthy": 0.2, "fractured": 0.7, "beyond_repair": 0.1}}
    entries = [dict(base, label="fractured", uncertain=False, not_xray=False),
               dict(base, label="fractured", uncertain=True, not_xray=False),
               dict(base, label="healthy", uncertain=False, not_xray=False)]
    pages = PdfReader(io.BytesIO(build_pdf(entries, {"name": "m", "version": "1"}, "balanced"))).pages
    texts = [p.extract_text() for p in pages]
    assert "Verdict: [!] FRACTURED" in texts[0]
    assert "Verdict: [?] UNCERTAIN: NEEDS REVIEW (the model leans to fractured)" in texts[1]
    assert "Verdict: [ok] HEALTHY" in texts[2]


def test_the_app_colours_an_upload_by_its_verdict(bundle_dir, classifier, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import png_bytes, synthetic_radiograph
    from utils.core.bundle import serving_precision
    from utils.core.classifier import Classifier

    data = png_bytes((synthetic_radiograph(seed=4) * 255).astype(np.uint8))
    served = Classifier(classifier.bundle, precision=serving_precision(classifier.bundle.metadata))
    prediction = served.predict_bytes("film.png", data)
    label, uncertain = prediction.verdict(classifier.bundle.preset("balanced"))
    expected = verdict_style(label, uncertain, prediction.not_xray)
    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    app.run()
    app.file_uploader[0].upload("film.png", data, "image/png")
    app.run()
    line = next(m.value for m in app.markdown if m.value.startswith("### Verdict"))
    assert line.startswith(f"### Verdict: :{expected.theme_colour}[{expected.icon} {expected.word}]")
