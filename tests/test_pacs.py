"""The PACS adapter against a real Orthanc over DICOMweb: the CLI round trip (QIDO, WADO,
STOW), the result objects (SR, Secondary Capture) and every bad input a PACS can send."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import pytest
from pydicom.uid import generate_uid

from tests.pacs_fixtures import (
    COMPRESSIONS,
    PATIENT_ID,
    PATIENT_NAME,
    USERS,
    CuttingProxy,
    encapsulated_pdf,
    film,
    free_port,
    new_study,
    presentation_state,
    start_orthanc,
    stop_orthanc,
    structured_report,
    upload,
)
from utils.adapters.pacs import (
    PacsConfig,
    PacsError,
    StudyOptions,
    StudyStream,
    connect,
    find_studies,
    run_study,
    study_filters,
)
from utils.core.review import reason_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHI = (PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    process, server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    stop_orthanc(process)


@pytest.fixture(scope="module")
def study(orthanc):
    """Two DX films, an SR, a JPEG baseline film, a PDF and a presentation state; one patient."""
    study = new_study(accession="ACC-ROUND-TRIP", date="20261130")
    films, others = generate_uid(), generate_uid()
    datasets = [film(study, films, 1, seed=1), film(study, films, 2, seed=2), structured_report(study, films, 3),
                film(study, others, 1, seed=3, transfer_syntax=COMPRESSIONS["jpeg_baseline"]),
                encapsulated_pdf(study, others, 2), presentation_state(study, others, 3)]
    upload(orthanc, datasets)
    images = [d for d in datasets if d.Modality == "DX" and "PixelData" in d]
    return {"uid": study.StudyInstanceUID, "datasets": datasets, "images": images}


def credentials(monkeypatch, user="writer", password=None):
    monkeypatch.setenv("BONE_XRAY_PACS_USERNAME", user)
    monkeypatch.setenv("BONE_XRAY_PACS_PASSWORD", password if password is not None else USERS[user])


def run_cli(server_url: str, *args, user="writer", password=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BONE_XRAY_PACS_USERNAME": user,
           "BONE_XRAY_PACS_PASSWORD": password if password is not None else USERS[user]}
    return subprocess.run([sys.executable, "-m", "utils.cli", "pacs", "--server", server_url, *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def records_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def assert_no_phi(*texts: str) -> None:
    for text in texts:
        for value in PHI:
            assert value not in text, f"PHI {value!r} leaked"


def series_of(server, study_uid: str, modality: str) -> list[dict]:
    client = server.client()
    return client.search_for_series(study_uid, search_filters={"Modality": modality},
                                    fields=["SeriesDescription", "SeriesInstanceUID"])


def instances_of(server, study_uid: str, modality: str) -> list:
    """The stored objects of a modality in the study, read back over WADO-RS."""
    client = server.client()
    found = []
    for series in series_of(server, study_uid, modality):
        series_uid = series["0020000E"]["Value"][0]
        for instance in client.search_for_instances(study_uid, series_uid):
            found.append(client.retrieve_instance(study_uid, series_uid, instance["00080018"]["Value"][0]))
    return found


def sr_entries(sr) -> dict[str, dict]:
    """{source SOP instance UID: {concept meaning: value}} from the SR's measurement groups."""
    entries = {}

    def walk(items):
        for item in items:
            if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Group":
                values, source = {}, None
                for child in item.ContentSequence:
                    name = child.ConceptNameCodeSequence[0].CodeMeaning
                    if child.ValueType == "IMAGE":
                        source = child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    elif child.ValueType == "NUM":
                        values[name] = float(child.MeasuredValueSequence[0].NumericValue)
                    elif child.ValueType == "CODE":
                        values[name] = child.ConceptCodeSequence[0].CodeMeaning
                    elif child.ValueType == "TEXT" and name == "Reason the verdict needs review":
                        values.setdefault(name, []).append(child.TextValue)
                    elif child.ValueType == "TEXT":
                        values[name] = child.TextValue
                entries[source] = values
            elif "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return entries


def dciodvfy_errors(dataset, tmp_path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; scripts/test.sh installs it")
    path = tmp_path / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


# --- the round trip --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def round_trip(orthanc, study):
    result = run_cli(orthanc.url, "--study", study["uid"], "--store")
    return {"result": result, "records": records_of(result.stdout)}


def test_cli_classifies_every_film_of_the_study(round_trip, study):
    result, records = round_trip["result"], round_trip["records"]
    assert result.returncode == 0, result.stderr
    assert sorted(r["sop_instance_uid"] for r in records) == sorted(d.SOPInstanceUID for d in study["images"])
    for record in records:
        assert record["error"] is None
        assert record["study_instance_uid"] == study["uid"]
        assert record["label"] in ("healthy", "fractured", "beyond_repair")
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-6
        assert record["path"].endswith(f"/instances/{record['sop_instance_uid']}")


def test_the_records_are_those_of_predict_on_the_same_files(round_trip, study, classifier):
    """The PACS path is the local path: the same bytes give the same probabilities (on the one
    engine every path serves)."""
    from tests.dicom_fixtures import dicom_bytes
    from utils.core.bundle import serving_precision
    from utils.core.classifier import Classifier

    served = Classifier(classifier.bundle, precision=serving_precision(classifier.bundle.metadata))
    by_uid = {r["sop_instance_uid"]: r for r in round_trip["records"]}
    for dataset in study["images"]:
        local = served.predict_bytes("local", dicom_bytes(dataset))
        for name, value in local.probabilities.items():
            assert by_uid[dataset.SOPInstanceUID]["probabilities"][name] == pytest.approx(value, abs=1e-6)


def test_non_images_are_skipped_with_a_note(round_trip, study):
    stderr = round_trip["result"].stderr
    notes = [line for line in stderr.splitlines() if line.startswith("note: Skipped instance")]
    assert len(notes) == 3
    for kind in ("Comprehensive SR Storage", "Encapsulated PDF Storage", "Presentation State"):
        assert any(kind in note for note in notes)


def test_the_sr_reports_every_film_with_the_cli_probabilities(round_trip, orthanc, study, classifier, tmp_path):
    srs = [ds for ds in instances_of(orthanc, study["uid"], "SR")
           if ds.SeriesDescription.startswith("Bone X-ray Classifier")]
    assert len(srs) == 1
    sr = srs[0]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.StudyInstanceUID == study["uid"] and str(sr.PatientName) == PATIENT_NAME
    entries = sr_entries(sr)
    records = {r["sop_instance_uid"]: r for r in round_trip["records"]}
    assert set(entries) == set(records)  # each entry references its source instance
    meanings = {"healthy": "Probability of healthy bone", "fractured": "Probability of a fracture that can heal",
                "beyond_repair": "Probability of a fracture beyond repair"}
    for uid, values in entries.items():
        for name, meaning in meanings.items():
            assert values[meaning] == pytest.approx(records[uid]["probabilities"][name], abs=1e-9)
        assert values["Finding"].lower().replace(" ", "_") == records[uid]["verdict"]
        assert values["Class the model leans to"].lower().replace(" ", "_") == records[uid]["label"]
        assert values.get("Reason the verdict needs review", []) == [
            reason_text(r) for r in records[uid]["review_reasons"]]
        assert values["Uncertain verdict"] == ("Yes" if records[uid]["uncertain"] else "No")
        assert values["Not like a radiograph"] == ("Yes" if records[uid]["not_xray"] else "No")
    text = sr.to_json()
    metadata = classifier.bundle.metadata
    assert metadata["sha256"] in text and metadata["name"] in text and "NOT FOR DIAGNOSIS" in text
    assert dciodvfy_errors(sr, tmp_path) == []


def test_a_secondary_capture_per_film_in_a_new_series(round_trip, orthanc, study, tmp_path):
    captures = instances_of(orthanc, study["uid"], "OT")
    sources = {d.SOPInstanceUID: d for d in study["images"]}
    assert sorted(c.SourceImageSequence[0].ReferencedSOPInstanceUID for c in captures) == sorted(sources)
    assert len({c.SeriesInstanceUID for c in captures}) == 1
    assert captures[0].SeriesInstanceUID not in {d.SeriesInstanceUID for d in study["datasets"]}
    for capture in captures:
        assert "NOT FOR DIAGNOSIS" in capture.SeriesDescription
        assert capture.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
        assert str(capture.PatientName) == PATIENT_NAME and capture.PatientID == PATIENT_ID
        assert capture.StudyInstanceUID == study["uid"] and capture.BurnedInAnnotation == "YES"
        assert capture.SOPInstanceUID not in sources
        pixels = capture.pixel_array
        assert pixels.ndim == 3 and pixels.shape[2] == 3
        # The burnt-in band: white text on black across the top.
        band = pixels[: pixels.shape[0] // 8]
        assert (band == 0).all(axis=2).mean() > 0.5 and (band > 200).all(axis=2).any()
    assert dciodvfy_errors(captures[0], tmp_path) == []


def test_nothing_on_the_server_is_modified(round_trip, orthanc, study):
    client = orthanc.client()
    for series_uid in {d.SeriesInstanceUID for d in study["datasets"]}:
        listed = {i["00080018"]["Value"][0] for i in client.search_for_instances(study["uid"], series_uid)}
        assert listed == {d.SOPInstanceUID for d in study["datasets"] if d.SeriesInstanceUID == series_uid}
    for dataset in study["datasets"]:
        stored = client.retrieve_instance(study["uid"], dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
        if "PixelData" in dataset:
            assert stored.PixelData == dataset.PixelData


def test_no_patient_identifier_in_any_log_line(round_trip):
    assert_no_phi(round_trip["result"].stderr)


# --- selectors -------------------------------------------------------------------------------


def test_studies_are_found_by_patient_accession_date_and_uid(orthanc, study):
    older = new_study(accession="ACC-OLD", date="20200101")
    upload(orthanc, [film(older, generate_uid(), 1, seed=5)])
    client = orthanc.client()
    by = lambda **kw: {s["StudyInstanceUID"] for s in find_studies(client, **kw)}  # noqa: E731
    assert by(study_uid=study["uid"]) == {study["uid"]}
    assert by(accession="ACC-ROUND-TRIP") == {study["uid"]}
    assert {study["uid"], older.StudyInstanceUID} <= by(patient_id=PATIENT_ID)
    since = by(since="20261101")
    assert study["uid"] in since and older.StudyInstanceUID not in since
    with pytest.raises(PacsError, match="YYYYMMDD"):
        study_filters(since="2026-11-01")
    with pytest.raises(PacsError, match="Choose the studies"):
        study_filters()


def test_the_cli_needs_a_selector(orthanc):
    result = run_cli(orthanc.url)
    assert result.returncode == 2 and "--study" in result.stderr


# --- bad inputs ------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_clear_message():
    result = run_cli(f"http://127.0.0.1:{free_port()}/dicom-web", "--patient-id", PATIENT_ID)
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr and "Traceback" not in result.stderr
    assert_no_phi(result.stderr)


def test_wrong_credentials_give_401(orthanc):
    result = run_cli(orthanc.url, "--patient-id", PATIENT_ID, password="wrong")
    assert result.returncode == 1 and "401" in result.stderr and "credentials" in result.stderr
    assert "wrong" not in result.stderr and "Traceback" not in result.stderr
    assert_no_phi(result.stderr)


def test_a_read_only_account_classifies_but_its_store_gets_403(orthanc):
    study = new_study(accession="ACC-403")
    source = film(study, generate_uid(), 1, seed=7)
    upload(orthanc, [source])
    result = run_cli(orthanc.url, "--study", study.StudyInstanceUID, "--store", user="reader")
    assert result.returncode == 1
    assert [r["sop_instance_uid"] for r in records_of(result.stdout)] == [source.SOPInstanceUID]
    assert "403" in result.stderr and "0 SR, 0 secondary capture" in result.stderr
    assert series_of(orthanc, study.StudyInstanceUID, "SR") == [] and series_of(orthanc, study.StudyInstanceUID, "OT") == []
    assert_no_phi(result.stderr)


def test_a_study_that_does_not_exist(orthanc):
    result = run_cli(orthanc.url, "--study", generate_uid())
    assert result.returncode == 1 and "no study on the PACS matches" in result.stderr


def test_monochrome1_compressed_and_multiframe_films(orthanc, classifier):
    """MONOCHROME1 reads like its MONOCHROME2 twin; JPEG baseline, JPEG 2000 and RLE decode;
    a multi-frame instance is classified from its first frame, with a warning."""
    study = new_study(accession="ACC-FORMATS")
    series = generate_uid()
    datasets = {"plain": film(study, series, 1, seed=11), "monochrome1": film(study, series, 2, seed=11, photometric="MONOCHROME1"),
                "multiframe": film(study, series, 3, seed=11, frames=3)}
    for i, (name, syntax) in enumerate(COMPRESSIONS.items()):
        datasets[name] = film(study, series, 4 + i, seed=11, transfer_syntax=syntax)
    upload(orthanc, list(datasets.values()))
    records = {}
    stream = StudyStream(orthanc.client(), classifier, study.StudyInstanceUID, StudyOptions("balanced"))
    for item in stream:
        records[item.record()["sop_instance_uid"]] = item.record()
    run = stream.run
    assert run.failed == 0 and run.classified == len(datasets)
    by_name = {name: records[d.SOPInstanceUID] for name, d in datasets.items()}
    plain = by_name["plain"]["probabilities"]
    for name in ("monochrome1", "multiframe", "jpeg2000", "rle"):  # lossless: the same film
        for cls, value in plain.items():  # (MONOCHROME1's inversion may move a pixel by one grey level)
            assert by_name[name]["probabilities"][cls] == pytest.approx(value, abs=1e-3), name
    for cls, value in plain.items():  # lossy: close, not equal
        assert by_name["jpeg_baseline"]["probabilities"][cls] == pytest.approx(value, abs=0.05)
    assert any("3 frames" in w for w in by_name["multiframe"]["warnings"])


def test_a_500_instance_series_streams_in_flat_memory(orthanc, classifier):
    study = new_study(accession="ACC-500")
    series = generate_uid()
    upload(orthanc, [film(study, series, i + 1, seed=i % 7, size=(160, 128)) for i in range(500)], batch=100)
    seen, progress, memory = [], [], {}

    def on_record(record, prediction):
        seen.append(record["sop_instance_uid"])
        if len(seen) in (100, 500):
            memory[len(seen)] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        stream = StudyStream(orthanc.client(), classifier, study.StudyInstanceUID, StudyOptions("balanced", 16))
        progress.append(("total", len(stream)))
        for item in stream:
            on_record(item.record(), item.prediction)
            progress.append(("step", 1))
        run = stream.run
    finally:
        tracemalloc.stop()
    assert run.classified == 500 and len(set(seen)) == 500
    assert progress[0] == ("total", 500) and sum(k for kind, k in progress[1:]) == 500
    # Retrieved films are not kept: Python memory after 500 is what it was after 100 (+2 MB).
    assert memory[500] - memory[100] < 2 * 2**20, memory


def test_the_cli_shows_a_progress_bar(orthanc):
    study = new_study(accession="ACC-BAR")
    series = generate_uid()
    upload(orthanc, [film(study, series, i + 1, seed=i, size=(160, 128)) for i in range(6)])
    result = run_cli(orthanc.url, "--study", study.StudyInstanceUID)
    assert result.returncode == 0 and "6/6" in result.stderr


@pytest.mark.parametrize("cuts, stored", [(1, True), (99, False)])
def test_an_interrupted_store_is_retried_once_then_reported(orthanc, classifier, cuts, stored):
    """A proxy in front of the real Orthanc cuts STOW-RS requests mid-body: once (the retry
    stores everything, once) or always (reported; nothing counted as stored, nothing there)."""
    study = new_study(accession=f"ACC-CUT-{cuts}")
    source = film(study, generate_uid(), 1, seed=9)
    upload(orthanc, [source])
    with CuttingProxy(orthanc.http_port, cut_posts=cuts) as proxy:
        client = connect(PacsConfig(url=f"http://127.0.0.1:{proxy.port}/dicom-web", username="writer",
                                    password=USERS["writer"]))
        run = run_study(client, classifier, study.StudyInstanceUID, "balanced", store_results=True)
    assert proxy.cut >= 1
    srs, captures = series_of(orthanc, study.StudyInstanceUID, "SR"), instances_of(orthanc, study.StudyInstanceUID, "OT")
    if stored:
        assert run.ok and len(run.stored_sr) == 1 and len(run.stored_captures) == 1
        assert len(srs) == 1 and len(captures) == 1
    else:
        assert not run.ok and run.stored_sr == [] and run.stored_captures == []
        assert any("failed after 2 attempts" in f for f in run.store_failures)
        assert srs == [] and captures == []


# --- configuration ---------------------------------------------------------------------------


def test_configuration_from_secrets_and_environment():
    config = PacsConfig.from_mapping({"url": "https://pacs.example.org/dicom-web/", "username": "u",
                                      "password": "s3cr3t-pw"})
    assert config.url == "https://pacs.example.org/dicom-web" and "s3cr3t-pw" not in repr(config)
    session = connect(config)._session
    assert session.verify is True and session.auth == ("u", "s3cr3t-pw")
    token = connect(PacsConfig.from_mapping({"url": "https://x.example/dicom-web", "token": "T0K", "ca_bundle": "/ca.pem"}))
    assert token._session.headers["Authorization"] == "Bearer T0K" and token._session.verify == "/ca.pem"
    with pytest.raises(PacsError, match="not both"):
        PacsConfig.from_mapping({"url": "https://x.example", "username": "u", "token": "t"})
    with pytest.raises(PacsError, match="http"):
        PacsConfig.from_mapping({"url": "ftp://x.example"})
    with pytest.raises(PacsError, match="BONE_XRAY_PACS_URL"):
        PacsConfig.from_environment(environ={})
    assert PacsConfig.from_environment(environ={"BONE_XRAY_PACS_URL": "http://h/dw"}).url == "http://h/dw"


def test_the_result_objects_keep_only_their_inputs(classifier):
    """The SR builder is pure: the same entries give the same content apart from new UIDs."""
    from utils.adapters.dicom_results import build_results_sr

    study = new_study()
    source = film(study, generate_uid(), 1)
    record = {"study_instance_uid": study.StudyInstanceUID, "series_instance_uid": source.SeriesInstanceUID,
              "sop_instance_uid": source.SOPInstanceUID, "label": None, "probabilities": None,
              "uncertain": False, "not_xray": False, "verdict": None, "review_reasons": []}
    sr = build_results_sr([(record, source.SOPClassUID)], source, classifier.bundle.metadata)
    assert sr_entries(sr)[source.SOPInstanceUID]["Finding"] == "Not classified"
    assert sr.SOPInstanceUID != source.SOPInstanceUID and sr.StudyInstanceUID == study.StudyInstanceUID


def test_a_childs_film_and_a_chest_film_need_review_from_their_headers(orthanc, classifier):
    study = new_study(accession="ACC-REVIEW")
    study.PatientBirthDate = "20161203"  # ten years before the study date: a child
    series = generate_uid()
    child = film(study, series, 1, seed=31)
    chest = film(study, series, 2, seed=32)
    chest.BodyPartExamined = "CHEST"
    thumbnail = film(study, series, 3, seed=33, size=(224, 224))
    upload(orthanc, [child, chest, thumbnail])
    options = StudyOptions("balanced", population="adult")  # the header's age wins over the user's answer
    records = {item.record()["sop_instance_uid"]: item.record()
               for item in StudyStream(orthanc.client(), classifier, study.StudyInstanceUID, options)}
    for source in (child, chest):
        record = records[source.SOPInstanceUID]
        assert "child" in record["review_reasons"] and record["uncertain"] is True
        assert record["verdict"] in ("needs_review", "not_a_radiograph") and record["probabilities"]
    assert "body_part" in records[chest.SOPInstanceUID]["review_reasons"]
    assert "body_part" not in records[child.SOPInstanceUID]["review_reasons"]
    assert "image_too_small" in records[thumbnail.SOPInstanceUID]["review_reasons"]
