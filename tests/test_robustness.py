"""Hostile and odd inputs, privacy (no disk writes, no tags in logs), hardening settings."""

from __future__ import annotations

import json
import sys
import tomllib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO, png_bytes, synthetic_radiograph
from tests.dicom_fixtures import SECRET_PATIENT_ID, SECRET_PATIENT_NAME, dicom_bytes, make_dicom, ramp
from tests.hostile_corpus import EXPECT, build_corpus
from utils import cli
from utils.core.decode import DecodedImage, InputError, decode_image_bytes
from utils.core.preprocess import INPUT_SIZE, load_and_preprocess

CORPUS = build_corpus()


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_corpus_through_preprocessing(case):
    _, data = CORPUS[case]
    if EXPECT[case] == "verdict":
        image, warnings = load_and_preprocess(data)
        assert image.shape == (INPUT_SIZE, INPUT_SIZE, 1) and image.dtype == np.uint8
        assert all("\n" not in w for w in warnings)
    else:
        with pytest.raises(InputError) as error:
            load_and_preprocess(data)
        message = str(error.value)
        assert message and "\n" not in message and len(message) < 300


def test_corpus_through_the_cli(tmp_path, capsys, bundle_dir):
    for case, (name, data) in CORPUS.items():
        folder = tmp_path / case.replace(" ", "_").replace("/", "_")
        folder.mkdir()
        (folder / name).write_bytes(data)
    code = cli.main(["predict", str(tmp_path)])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(records) == len(CORPUS)
    for case, (name, _) in CORPUS.items():
        record = next(r for r in records if r["path"].endswith(f"{case.replace(' ', '_').replace('/', '_')}/{name}"))
        if EXPECT[case] == "verdict":
            assert record["label"] is not None and record["error"] is None, case
        else:
            assert record["label"] is None and record["error"], case


def test_corpus_subset_in_the_app(bundle_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    subset = ["empty file", "decompression bomb 30000x30000 PNG", "DICOM without pixel data",
              "JPEG-LS DICOM (no decoder)", "DICOM MONOCHROME1", "CMYK JPEG", "valid X-ray named .txt"]
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    at.run()
    at.file_uploader[0].set_value([(CORPUS[c][0], CORPUS[c][1], "application/octet-stream") for c in subset])
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    classified = {name for name, verdict in zip(table["file"], table["verdict"]) if verdict != "not classified"}
    assert classified == {CORPUS[c][0] for c in subset if EXPECT[c] == "verdict"}
    refused = {CORPUS[c][0] for c in subset if EXPECT[c] == "message"} & set(table["file"])
    # Every refused file that reached the app (Streamlit may drop an empty one) has its own message.
    assert {e.value.split(":")[0] for e in at.error} >= refused


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=4096),
    st.binary(max_size=2048).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
    st.binary(max_size=2048).map(lambda b: b"\xff\xd8\xff\xe0" + b),
    st.binary(max_size=2048).map(lambda b: b"\0" * 128 + b"DICM" + b),
))
def test_random_bytes_never_escape_as_other_exceptions(data):
    try:
        result = decode_image_bytes(data)
    except InputError as error:
        assert str(error)
    else:
        assert isinstance(result, DecodedImage) and result.pixels.ndim == 2


@pytest.fixture
def write_watch():
    """Record every file opened for writing, through Python's audit hooks."""
    events = {"armed": False, "writes": []}

    def hook(event, args):
        if events["armed"] and event == "open" and args and args[0] is not None:
            mode, flags = (args[1] or ""), (args[2] or 0)
            if any(c in str(mode) for c in "wax+") or flags & 0o3:  # O_WRONLY | O_RDWR
                events["writes"].append(str(args[0]))

    sys.addaudithook(hook)
    yield events
    events["armed"] = False


def test_prediction_writes_nothing_to_disk(classifier, write_watch, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    inputs = [("a.png", png_bytes((synthetic_radiograph() * 255).astype(np.uint8))),
              ("b.dcm", dicom_bytes(make_dicom(ramp(400, 300))))]
    classifier.predict_many(inputs)  # warm-up: first call may trace the graph
    write_watch["armed"] = True
    results = classifier.predict_many(inputs)
    write_watch["armed"] = False
    assert all(r.label for r in results)
    assert write_watch["writes"] == []
    assert list(tmp_path.iterdir()) == []


def test_dicom_prediction_logs_no_patient_data(classifier, caplog, capfd):
    with caplog.at_level("DEBUG"):
        prediction = classifier.predict_bytes("scan.dcm", dicom_bytes(make_dicom(ramp(400, 300))))
    captured = capfd.readouterr()
    blob = caplog.text + captured.out + captured.err + json.dumps(prediction.as_record())
    assert prediction.label is not None
    assert SECRET_PATIENT_NAME.split("^")[0] not in blob and SECRET_PATIENT_ID not in blob


def test_memory_stays_flat_over_200_predictions(classifier):
    import psutil

    process = psutil.Process()
    data = png_bytes((synthetic_radiograph(2500, 2000) * 255).astype(np.uint8))
    rss = {}
    for i in range(1, 201):
        assert classifier.predict_bytes("x.png", data).label
        if i in (20, 200):
            rss[i] = process.memory_info().rss
    growth = (rss[200] - rss[20]) / rss[20]
    assert growth <= 0.05, f"RSS grew {growth:.1%} from prediction 20 to 200"


def test_streamlit_config_is_hardened():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True
    assert config["client"]["showErrorDetails"] is False
    assert 0 < config["server"]["maxUploadSize"] <= 200


def test_docker_image_runs_as_non_root():
    lines = [line.split() for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER")]
    assert lines and lines[-1][1] not in ("root", "0")
