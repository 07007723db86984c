"""The Streamlit app through streamlit.testing.v1.AppTest (no browser)."""

from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO, png_bytes, synthetic_radiograph
from tests.dicom_fixtures import SECRET_PATIENT_NAME, dicom_bytes, make_dicom, ramp

APP = str(REPO / "app.py")


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
    assert len(app.get("image")) == 2  # the model input with its heatmap, and the raw heatmap
    app.toggle(key=next(t.key for t in app.toggle if t.key and t.key.startswith("hm_"))).set_value(False)
    app.run()
    assert not app.exception and len(app.get("image")) == 1


def test_colour_photo_is_flagged_as_not_an_xray(app):
    from tests.test_guard import colourful_photo, rgb_png

    app.file_uploader[0].upload("holiday.png", rgb_png(colourful_photo()), "image/png")
    app.run()
    assert not app.exception
    assert any("Not a bone radiograph?" in e.value and "colour photo" in e.value for e in app.error)
    assert verdicts(app) == ["### Verdict: :gray[NOT A RADIOGRAPH]"]
    assert any("holiday.png: **not a radiograph**" in m.value for m in app.sidebar.markdown)
    app.sidebar.radio[0].set_value("fracture_sensitive")  # no preset turns it into a confident verdict
    app.run()
    assert verdicts(app) == ["### Verdict: :gray[NOT A RADIOGRAPH]"]


def test_heatmap_opacity_and_class_controls(app):
    app.file_uploader[0].upload("hip.png", png_bytes((synthetic_radiograph(seed=8) * 255).astype(np.uint8)),
                                "image/png")
    app.run()
    app.slider[0].set_value(0.9)
    class_choices = [s for s in app.selectbox if "beyond_repair" in s.options]
    if class_choices:  # Grad-CAM: a map per class to choose from
        class_choices[0].set_value("beyond_repair")
    else:  # a fracture map is one map for every class: nothing to choose
        import json
        import os

        metadata = json.loads((REPO / os.environ["BONE_XRAY_MODEL_DIR"] / "metadata.json").read_text())
        assert metadata["heatmap_kind"] == "fracture map"
    app.run()
    assert not app.exception
    assert len(app.get("image")) == 2


def test_many_files_give_a_table_downloads_and_history(app):
    files = [(f"img{i}.png", png_bytes((synthetic_radiograph(seed=20 + i) * 255).astype(np.uint8)), "image/png")
             for i in range(3)] + [("broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg")]
    app.file_uploader[0].set_value(files)
    app.run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["file"]) == [f[0] for f in files]
    assert list(table["verdict"])[-1] == "not classified"
    assert [b.proto.label for b in app.get("download_button")] == ["Download table (CSV)"]
    assert "PDF report for all 4 images" in [b.label for b in app.button]  # built only when asked for
    assert len(verdicts(app)) == 1  # the first row opens in the single-image view
    assert any(h.value == "This session (3)" for h in app.sidebar.header)

    app.multiselect[0].set_value(["not classified"])
    app.run()
    assert list(app.dataframe[0].value["file"]) == ["broken.jpg"]
    assert any("cannot" in e.value or "not an image" in e.value or "damaged" in e.value for e in app.error)

    app.sidebar.button[0].click()
    app.run()
    assert any(h.value == "This session (0)" for h in app.sidebar.header)


def test_pdf_report_is_built_when_asked_and_dropped_when_the_preset_changes(app):
    from pypdf import PdfReader

    from ui.pdf_download import READY

    files = [(f"img{i}.png", png_bytes((synthetic_radiograph(seed=50 + i) * 255).astype(np.uint8)), "image/png")
             for i in range(2)]
    app.file_uploader[0].set_value(files)
    app.run()
    assert READY not in app.session_state
    app.button(key="build_batch").click()
    app.run()
    assert not app.exception
    downloads = [b.proto.label for b in app.get("download_button")]
    assert "Download PDF report for all 2 images" in downloads
    assert "PDF report for all 2 images" not in [b.label for b in app.button]  # the download took its place
    report = app.session_state[READY]["data"]
    assert len(PdfReader(io.BytesIO(report)).pages) == 3  # a summary, then one page per film
    app.sidebar.radio[0].set_value("fracture_sensitive")
    app.run()
    assert "Download PDF report for all 2 images" not in [b.proto.label for b in app.get("download_button")]
    assert "PDF report for all 2 images" in [b.label for b in app.button]  # built for the other preset: stale


def test_bad_file_gets_a_message_and_the_app_keeps_working(app):
    app.file_uploader[0].upload("notes.png", b"this is text, not an image", "image/png")
    app.run()
    assert not app.exception
    assert any("not an image" in e.value for e in app.error)
    # Next, the same bad file beside a DICOM without an extension: one message, one verdict.
    app.file_uploader[0].set_value([("arm", dicom_bytes(make_dicom(ramp(400, 300))), "application/octet-stream"),
                                    ("notes.png", b"this is text, not an image", "image/png")])
    app.run()
    assert not app.exception
    file_errors = [e.value for e in app.error if "Not a bone radiograph?" not in e.value]  # a ramp is no X-ray
    assert len(verdicts(app)) == 1 and len(file_errors) == 1
    assert file_errors[0].startswith("notes.png: ")
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


def test_model_card_page_renders_card_and_plots(bundle_dir, monkeypatch):
    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    at = AppTest.from_file(str(REPO / "pages" / "1_Model_card.py"), default_timeout=60)
    at.run()
    assert not at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert "Model card" in text and "beyond_repair" in text and "CC BY 4.0" in text
    assert "Pointing game" in text and "Not-an-X-ray guard" in text and "test coverage" in text
    # confusion, ROC, reliability, guard distances, pointing game, examples, risk-coverage
    assert len(at.get("image")) == 7
    assert "False" not in text and "True" not in text  # outcomes in words, not Python's booleans
    separators = re.findall(r"^\|[-: |]+\|\s*$", text, flags=re.MULTILINE)
    assert text.count('<div style="overflow-x: auto">') == len(separators) > 0  # every table scrolls


def test_every_table_of_the_card_scrolls_and_the_prose_stays_outside():
    from ui.model_card import SCROLL_OPEN, card_for_browser

    card = "# Card\n\nSee [the plot](eval/roc.png).\n\n| a | b |\n|---|---|\n| 1 | 2 |\ntext after\n\n| c |\n|---|"
    lines = card_for_browser(card).splitlines()
    assert "See the plot." in lines
    first = lines.index(SCROLL_OPEN)
    assert lines[first + 1] == "" and lines[first + 2] == "| a | b |" and lines[first + 5:first + 8] == ["", "</div>", "text after"]
    assert lines[-2:] == ["", "</div>"] and lines.count(SCROLL_OPEN) == 2


def test_the_patient_choice_reconsiders_a_classified_film(app):
    data = png_bytes((synthetic_radiograph(seed=3) * 255).astype(np.uint8))
    app.file_uploader[0].upload("x.png", data, "image/png")
    app.run()
    patient = next(r for r in app.sidebar.radio if r.label == "Patient")
    assert patient.value == "unknown"
    patient.set_value("child")
    app.run()
    assert not app.exception
    assert verdicts(app)[0].split("[")[1].startswith(("NEEDS REVIEW", "NOT A RADIOGRAPH"))
    assert any("Children's films are outside what this model was validated on" in w.value for w in app.warning)
    assert any("healthy:" in p.proto.text for p in app.get("progress"))  # the probabilities are kept


def test_a_colour_photo_in_a_batch_is_not_a_radiograph_in_the_table_csv_and_history(app):
    from tests.test_guard import colourful_photo, rgb_png
    from utils.adapters.report import records_to_csv

    files = [("holiday.png", rgb_png(colourful_photo()), "image/png"),
             ("film.png", png_bytes((synthetic_radiograph(seed=4) * 255).astype(np.uint8)), "image/png")]
    app.file_uploader[0].set_value(files)
    app.run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["verdict"])[0] == "not a radiograph"
    assert "does not look like a bone radiograph" in list(table["needs review because"])[0]
    history = " ".join(m.value for m in app.sidebar.markdown)
    assert "holiday.png: **not a radiograph** (leans to" in history and "balanced preset" in history
    results = app.session_state["results"]
    prediction = next(p for p in results.values() if p.name == "holiday.png")
    assert prediction.verdict.kind == "not_a_radiograph"
    csv_text = records_to_csv([prediction.as_record()]).decode()
    assert ",not_a_radiograph,not_a_radiograph" in csv_text


def test_a_childs_dicom_and_a_thumbnail_need_review_with_their_reasons(app):
    from tests.test_review import dicom_film

    app.file_uploader[0].set_value([
        ("child.dcm", dicom_film(PatientAge="009Y"), "application/dicom"),
        ("thumb.png", png_bytes((synthetic_radiograph(224, 224, seed=8) * 255).astype(np.uint8)), "image/png")])
    app.run()
    assert not app.exception
    table = app.dataframe[0].value
    reasons = dict(zip(table["file"], table["needs review because"]))
    assert "children's films are outside" in reasons["child.dcm"]
    assert "too small to read a fracture reliably" in reasons["thumb.png"]
    assert set(table["verdict"]) <= {"needs review", "not a radiograph"}
    assert any("Children's films are outside" in w.value for w in app.warning)  # the first row's view


def test_a_thumbnails_reason_names_its_size(app):
    app.file_uploader[0].upload("thumb.png", png_bytes((synthetic_radiograph(224, 224, seed=8) * 255).astype(np.uint8)),
                                "image/png")
    app.run()
    assert not app.exception
    assert any("The image is too small to read a fracture reliably (224 x 224 px)." in w.value for w in app.warning)


def test_the_batch_table_gives_every_probability_with_one_decimal():
    from ui.batch_view import table_rows

    record = {"path": "a.png", "verdict": "healthy", "review_reasons": [], "label": "healthy", "error": None,
              "warnings": [], "probabilities": {"healthy": 0.41, "fractured": 0.5213, "beyond_repair": 0.0687}}
    row = table_rows([record], ["healthy"])[0]
    assert [row[k] for k in row if k.startswith("P(")] == [41.0, 52.1, 6.9]
    assert table_rows([dict(record, probabilities=None)], ["healthy"])[0]["P(healthy)"] is None
