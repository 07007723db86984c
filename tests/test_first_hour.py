"""What a new user meets in the first hour: partial films, one verdict everywhere, honest
guard wording, the PDF's fields, and the README's promises checked against the code."""

from __future__ import annotations

import io
import json
import re
import tomllib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, png_bytes, synthetic_radiograph
from tests.dicom_fixtures import dicom_bytes, make_dicom, ramp
from utils import cli
from utils.core.inference import CLASSES

APP = str(REPO / "app.py")
README = (REPO / "README.md").read_text()


def film_jpeg(seed: int = 0, size=(600, 800)) -> bytes:
    pixels = (synthetic_radiograph(*size, seed=seed) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def truncated(data: bytes, share: float = 1 / 3) -> bytes:
    return data[: int(len(data) * share)]


def truncated_png(seed: int = 0) -> bytes:
    return truncated(png_bytes((synthetic_radiograph(600, 800, seed=seed) * 255).astype(np.uint8)), 0.5)


@pytest.mark.parametrize("make", [lambda: truncated(film_jpeg(1)), lambda: truncated_png(2)], ids=["jpeg", "png"])
def test_a_truncated_film_never_gets_a_confident_verdict(make, classifier):
    prediction = classifier.predict_bytes("cut", make())
    assert prediction.error is None and prediction.incomplete and prediction.failed
    assert any("truncated" in w and "part of the film is missing" in w for w in prediction.warnings)
    for preset in ("balanced", "fracture_sensitive"):
        verdict = prediction.decide(classifier.bundle.preset(preset))
        assert verdict.kind in ("needs_review", "not_a_radiograph") and "incomplete_image" in verdict.reasons
    assert prediction.as_record()["uncertain"] is True


def test_the_cli_exits_1_for_a_truncated_film_and_still_records_it(tmp_path, capsys, bundle_dir):
    (tmp_path / "whole.jpg").write_bytes(film_jpeg(3))
    (tmp_path / "cut.jpg").write_bytes(truncated(film_jpeg(3)))
    code = cli.main(["predict", str(tmp_path), "--model-dir", str(bundle_dir)])
    out = capsys.readouterr()
    records = {r["path"].rsplit("/", 1)[-1]: r for r in map(json.loads, out.out.splitlines())}
    assert code == 1 and "could not be read properly" in out.err
    assert records["cut.jpg"]["uncertain"] is True and records["cut.jpg"]["label"] in CLASSES
    assert any("truncated" in w for w in records["cut.jpg"]["warnings"])
    assert not any("truncated" in w for w in records["whole.jpg"]["warnings"])


def test_dicom_with_short_pixel_data_is_refused_not_repaired():
    from utils.core.decode import InputError, decode_image_bytes

    ds = make_dicom(ramp(256, 200))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(InputError, match="incomplete"):
        decode_image_bytes(dicom_bytes(ds))


def test_the_ray_adapter_marks_a_truncated_film_like_the_local_path(bundle_dir):
    pytest.importorskip("ray")
    from utils.adapters.ray_batch import ClassifyBatch, decode_batch, warning_list
    from utils.core.decode import is_incomplete_warning

    batch = {"path": np.array(["cut.jpg", "whole.jpg"], dtype=object),
             "bytes": np.array([truncated(film_jpeg(4)), film_jpeg(4)], dtype=object)}
    decoded = decode_batch(batch, [], 384, 10 * 2**20)
    records = ClassifyBatch(str(bundle_dir), "balanced", "float32", 2)(decoded).to_dict("records")
    assert records[0]["uncertain"] and any(is_incomplete_warning(w) for w in warning_list(records[0]))
    assert not any(is_incomplete_warning(w) for w in warning_list(records[1]))


def app_probabilities(at) -> dict[str, dict[str, str]]:
    """{heading: {class: 'p %' as the app prints it}} from the app's progress bars."""
    texts = [p.proto.text for p in at.get("progress")]
    return {cls: next(t.split(": ")[1] for t in texts if t.startswith(cls.replace("_", " ") + ":")) for cls in CLASSES}


@pytest.mark.parametrize("seed", [6, 9])
def test_the_app_and_the_cli_give_one_film_one_verdict(seed, bundle_dir, tmp_path, capsys, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    monkeypatch.delenv("BONE_XRAY_PRECISION", raising=False)
    data = png_bytes((synthetic_radiograph(seed=seed) * 255).astype(np.uint8))
    (tmp_path / "film.png").write_bytes(data)
    assert cli.main(["predict", str(tmp_path / "film.png"), "--model-dir", str(bundle_dir)]) == 0
    record = json.loads(capsys.readouterr().out)
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.file_uploader[0].upload("film.png", data, "image/png")
    at.run()
    assert not at.exception
    shown = app_probabilities(at)
    assert shown == {c: f"{record['probabilities'][c]:.1%}" for c in CLASSES}


def test_one_setting_chooses_the_engine_for_every_path(monkeypatch, bundle_dir):
    from utils.core.bundle import ModelBundleError, read_metadata, serving_precision

    metadata = read_metadata(bundle_dir)
    monkeypatch.delenv("BONE_XRAY_PRECISION", raising=False)
    default = serving_precision(metadata)
    assert default == ("int8" if metadata.get("runtime_int8") else "float32")
    assert cli.default_precision(bundle_dir) == default
    monkeypatch.setenv("BONE_XRAY_PRECISION", "float32")
    assert serving_precision(metadata) == cli.default_precision(bundle_dir) == "float32"
    monkeypatch.setenv("BONE_XRAY_PRECISION", "fp4")
    with pytest.raises(ModelBundleError, match="not an engine"):
        serving_precision(metadata)
    # A bundle whose int8 candidate failed its check: asking for int8 is refused with a sentence.
    monkeypatch.setenv("BONE_XRAY_PRECISION", "int8")
    with pytest.raises(ModelBundleError, match="ships no int8 engine"):
        serving_precision({k: v for k, v in metadata.items() if k != "runtime_int8"})


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_the_apps_engine_setting_works_both_ways(precision, bundle_dir, tmp_path, capsys, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from utils.core.bundle import read_metadata

    if precision == "int8" and not read_metadata(bundle_dir).get("runtime_int8"):
        pytest.skip("the bundle ships no int8 engine")
    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    monkeypatch.setenv("BONE_XRAY_PRECISION", precision)
    st.cache_resource.clear()  # the model is loaded once per server: a new setting needs a new server
    data = png_bytes((synthetic_radiograph(seed=14) * 255).astype(np.uint8))
    (tmp_path / "film.png").write_bytes(data)
    command = ["predict", str(tmp_path / "film.png"), "--model-dir", str(bundle_dir), "--precision", precision]
    assert cli.main(command) == 0
    record = json.loads(capsys.readouterr().out)
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert any(f"{precision} engine" in m.value for m in at.sidebar.markdown)
    at.file_uploader[0].upload("film.png", data, "image/png")
    at.run()
    assert not at.exception
    assert app_probabilities(at) == {c: f"{record['probabilities'][c]:.1%}" for c in CLASSES}
    st.cache_resource.clear()  # later tests get the default engine again


class AlwaysUnfamiliar:
    """A guard that finds every film unlike the training films (as the distance guard does
    for many real films from other hospitals)."""
    threshold = 0.0

    def __init__(self):
        from utils.core.guard import FEATURE_MESSAGE

        self.message = FEATURE_MESSAGE

    def distance(self, features):
        return np.ones(len(features))


def test_a_film_unlike_the_training_films_is_not_called_not_a_radiograph(bundle_dir, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import utils.core.bundle

    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    # The loader's own name for it: patching utils.core.guard.load_guard would leave the bundle's guard in place.
    monkeypatch.setattr(utils.core.bundle, "load_guard", lambda path: AlwaysUnfamiliar())
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=180)
        at.run()
        at.file_uploader[0].upload("knee.png", png_bytes((synthetic_radiograph(seed=7) * 255).astype(np.uint8)),
                                   "image/png")
        at.run()
        assert not at.exception
        verdict = next(m.value for m in at.markdown if m.value.startswith("### Verdict"))
        assert "NEEDS REVIEW" in verdict and "NOT A RADIOGRAPH" not in verdict
        assert any("unlike the films the model was validated on" in w.value for w in at.warning)
        assert not any("Not a bone radiograph" in e.value for e in at.error)
        assert any("needs review" in m.value for m in at.sidebar.markdown)
    finally:
        st.cache_resource.clear()


def test_the_pdf_lays_out_the_model_hash_on_its_own_line():
    from pypdf import PdfReader

    from utils.adapters.report import build_pdf

    sha = "ab" * 32
    entry = {"name": "film.png", "label": "healthy", "probabilities": dict(zip(CLASSES, (0.8, 0.15, 0.05))),
             "verdict": "healthy", "review_reasons": [], "uncertain": False, "not_xray": False, "warnings": [], "error": None, "model_input": None, "overlay": None}
    text = PdfReader(io.BytesIO(build_pdf([entry], {"name": "bone-xray", "version": "9.9.9", "sha256": sha},
                                          "balanced"))).pages[0].extract_text()
    lines = text.splitlines()
    assert "Model: bone-xray v9.9.9" in lines
    assert f"Model sha256: {sha}" in lines  # whole, on one line


def test_the_cli_messages_do_not_ask_to_upload():
    from utils.core.decode import InputError, decode_image_bytes

    for data in (b"", b"just some text, not an image"):
        with pytest.raises(InputError) as error:
            decode_image_bytes(data)
        assert "Upload" not in str(error.value) and "Give a JPEG, PNG or DICOM" in str(error.value)


def test_the_app_shows_one_model_card_and_says_how_to_allow_an_address(bundle_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception
    assert not [e for e in at.sidebar.get("expandable") if "Model card" in str(e.proto.label)]
    url_box = next(t for t in at.text_input if t.label == "...or paste an image URL")
    assert "BONE_XRAY_URL_ALLOW" in url_box.help


def test_the_readme_run_command_binds_loopback_and_docker_exposes_on_purpose():
    command = next(line for line in README.splitlines() if "streamlit run app.py" in line)
    assert "--server.address 127.0.0.1" in command
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--server.address=0.0.0.0" in dockerfile and "0.0.0.0" in README


def test_the_file_watcher_is_off_and_the_readme_says_how_to_turn_it_on():
    server = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]
    assert server["fileWatcherType"] == "none"
    assert "--server.fileWatcherType auto" in README


def test_the_readme_states_the_fast_subset_and_its_markers_exist():
    expression = re.search(r'pytest -m "([^"]+)"', README)
    assert expression and expression.group(1) == "not browser and not pacs and not ray"
    markers = (REPO / "pytest.ini").read_text()
    for name in ("browser", "pacs", "ray"):
        assert f"    {name}:" in markers
    assert re.search(r"about \d+ minutes", README.split("## Run the tests")[1].split("##")[0])
