"""The app's "From PACS" section through AppTest, against a real Orthanc (the browser test of
the same flow is in tests/test_browser.py)."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO
from tests.pacs_fixtures import (
    PATIENT_ID,
    PATIENT_NAME,
    USERS,
    film,
    free_port,
    new_study,
    start_orthanc,
    stop_orthanc,
    upload,
)
from tests.test_pacs import series_of

APP = str(REPO / "app.py")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    process, server = start_orthanc(tmp_path_factory.mktemp("orthanc_app"))
    yield server
    stop_orthanc(process)


def app_with(secrets: dict | None, bundle_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("BONE_XRAY_MODEL_DIR", str(bundle_dir))
    monkeypatch.delenv("BONE_XRAY_PACS_URL", raising=False)
    at = AppTest.from_file(APP, default_timeout=180)
    if secrets is not None:
        at.secrets["pacs"] = secrets
    at.run()
    assert not at.exception
    return at


def texts(at) -> str:
    return "\n".join(str(x.value) for group in (at.markdown, at.error, at.warning, at.info, at.success, at.caption)
                     for x in group)


def search(at, **fields) -> None:
    labels = {"patient_id": "Patient ID", "accession": "Accession number"}
    for name, value in fields.items():
        next(t for t in at.text_input if t.label == labels[name]).input(value)
    next(b for b in at.button if b.label == "Search the PACS").click()
    at.run()
    assert not at.exception


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def test_no_pacs_section_without_a_configured_server(bundle_dir, monkeypatch):
    at = app_with(None, bundle_dir, monkeypatch)
    assert not [e for e in at.expander if e.label == "From PACS"]


def test_a_bad_configuration_is_one_message(bundle_dir, monkeypatch):
    at = app_with({"url": "ftp://pacs.example"}, bundle_dir, monkeypatch)
    assert "cannot be used" in texts(at) and "http" in texts(at)


def test_search_classify_and_send_back(orthanc, bundle_dir, monkeypatch):
    study = new_study(accession="ACC-APP-1")
    sources = [film(study, generate_uid(), 1, seed=21), film(study, generate_uid(), 1, seed=22)]
    upload(orthanc, sources)
    at = app_with({"url": orthanc.url, "username": "writer", "password": USERS["writer"]}, bundle_dir, monkeypatch)
    search(at, accession="ACC-APP-1")
    assert at.selectbox[0].options and "ACC-APP-1" in at.selectbox[0].options[0]
    button(at, "Classify this study").click()
    at.run()
    assert not at.exception
    assert "2 radiograph(s) classified" in texts(at)
    assert len(at.dataframe) >= 1  # two results: the batch table
    button(at, "Send the results to the PACS").click()
    at.run()
    assert "Stored 1 report (SR) and 2 secondary capture(s)" in texts(at)
    assert len(series_of(orthanc, study.StudyInstanceUID, "SR")) == 1
    assert PATIENT_NAME not in texts(at)


def test_search_problems_are_messages_and_the_app_keeps_working(orthanc, bundle_dir, monkeypatch):
    at = app_with({"url": orthanc.url, "username": "writer", "password": "wrong"}, bundle_dir, monkeypatch)
    search(at, patient_id=PATIENT_ID)
    assert "401" in texts(at) and PATIENT_ID not in "\n".join(e.value for e in at.error)
    at = app_with({"url": f"http://127.0.0.1:{free_port()}/dicom-web"}, bundle_dir, monkeypatch)
    search(at, patient_id=PATIENT_ID)
    assert "cannot be reached" in texts(at)
    at = app_with({"url": orthanc.url, "username": "writer", "password": USERS["writer"]}, bundle_dir, monkeypatch)
    search(at, accession="NO-SUCH-ACCESSION")
    assert "No study on the PACS matches" in texts(at)
    search(at, accession="")  # nothing to search by
    assert "Enter a patient ID" in texts(at)
    assert at.file_uploader  # uploads still work beside it


def test_a_read_only_account_sees_its_store_refused(orthanc, bundle_dir, monkeypatch):
    study = new_study(accession="ACC-APP-RO")
    upload(orthanc, [film(study, generate_uid(), 1, seed=23)])
    at = app_with({"url": orthanc.url, "username": "reader", "password": USERS["reader"]}, bundle_dir, monkeypatch)
    search(at, accession="ACC-APP-RO")
    button(at, "Classify this study").click()
    at.run()
    button(at, "Send the results to the PACS").click()
    at.run()
    assert "403" in "\n".join(e.value for e in at.error)
    assert series_of(orthanc, study.StudyInstanceUID, "SR") == []
