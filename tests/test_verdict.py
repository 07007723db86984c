"""Verdict colours mean the finding, not the confidence; never hue alone; readable contrast."""

from __future__ import annotations

import io
import tomllib

import numpy as np
import pytest
from pypdf import PdfReader

from tests.conftest import REPO
from utils.adapters.report import build_pdf
from utils.core.review import decide_verdict
from utils.core.verdict import STYLES, contrast_ratio, hex_to_rgb, verdict_style

THEME = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["theme"]


BALANCED = {"rule": "two_stage", "fracture_threshold": 0.38, "fracture_band": 0.95,
            "severity_threshold": 0.19, "severity_margin": 0.7}


def probs(p_any, p_severe):
    return {"healthy": 1 - p_any, "fractured": p_any * (1 - p_severe), "beyond_repair": p_any * p_severe}


@pytest.mark.parametrize("probabilities, reasons, kind, colour", [
    (probs(0.02, 0.0), (), "healthy", "green"),
    (probs(0.97, 0.01), (), "fractured", "orange"),
    (probs(0.99, 0.9), (), "beyond_repair", "red"),
    (probs(0.40, 0.01), (), "needs_review", "gray"),  # near the fracture threshold
    (probs(0.02, 0.0), ("child",), "needs_review", "gray"),
    (probs(0.99, 0.9), ("not_a_radiograph",), "not_a_radiograph", "gray"),
    (probs(0.02, 0.0), ("unlike_training_films", "not_a_radiograph"), "not_a_radiograph", "gray"),
])
def test_the_colour_follows_the_verdict_kind(probabilities, reasons, kind, colour):
    verdict = decide_verdict(probabilities, BALANCED, reasons)
    assert verdict.kind == kind and verdict_style(verdict.kind).theme_colour == colour


def test_no_two_kinds_share_a_word_so_hue_is_never_alone():
    assert len({s.word for s in STYLES.values()}) == len(STYLES) == 5


def test_no_icon_name_stands_in_a_verdict_word():
    """Screen readers and copied text read an icon's name ("check_circle HEALTHY")."""
    for style in STYLES.values():
        assert style.word.replace(" ", "").isalpha() and ":" not in style.word


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


def test_the_pdf_verdict_says_the_kind_the_basis_and_the_reasons():
    base = {"path": "a.png", "name": "a.png", "warnings": [], "error": None, "model_input": None, "overlay": None,
            "probabilities": {"healthy": 0.2, "fractured": 0.7, "beyond_repair": 0.1}, "not_xray": False}
    entries = [dict(base, label="fractured", verdict="fractured", uncertain=False, review_reasons=[]),
               dict(base, label="fractured", verdict="needs_review", uncertain=True,
                    review_reasons=["child", "near_threshold"]),
               dict(base, label="healthy", verdict="not_a_radiograph", uncertain=True,
                    review_reasons=["not_a_radiograph"])]
    pages = PdfReader(io.BytesIO(build_pdf(entries, {"name": "m", "version": "1"}, "balanced"))).pages
    texts = [" ".join(p.extract_text().split()) for p in pages[1:]]  # after the batch's summary page
    assert "Verdict: FRACTURED (P(any fracture) 80%)" in texts[0]
    assert "Verdict: NEEDS REVIEW (the model leans to fractured, P(any fracture) 80%)" in texts[1]
    assert "Needs review: children's films are outside what this model was validated on." in texts[1]
    assert "Needs review: P(any fracture) is close to this preset's fracture threshold." in texts[1]
    assert "Verdict: NOT A RADIOGRAPH" in texts[2] and "HEALTHY" not in texts[2]


def test_the_app_colours_an_upload_by_its_verdict(bundle_dir, classifier, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import png_bytes, synthetic_radiograph
    from utils.core.bundle import serving_precision
    from utils.core.classifier import Classifier

    data = png_bytes((synthetic_radiograph(seed=4) * 255).astype(np.uint8))
    served = Classifier(classifier.bundle, precision=serving_precision(classifier.bundle.metadata))
    prediction = served.predict_bytes("film.png", data)
    expected = verdict_style(prediction.decide(classifier.bundle.preset("balanced")).kind)
    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    app.run()
    app.file_uploader[0].upload("film.png", data, "image/png")
    app.run()
    line = next(m.value for m in app.markdown if m.value.startswith("### Verdict"))
    assert line.startswith(f"### Verdict: :{expected.theme_colour}[{expected.word}]")
