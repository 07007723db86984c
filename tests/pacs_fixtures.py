"""A real Orthanc (Debian `orthanc` + `orthanc-dicomweb`) on free loopback ports, and
synthetic studies built with pydicom (fake patients only)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from fixtures.films import free_port, new_instance
from tests.conftest import synthetic_radiograph

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PATIENT_NAME = "Fakepatient^Hildegard"
PATIENT_ID = "FAKE-PID-4471"
USERS = {"writer": "writer-secret", "reader": "reader-secret"}
# The reader may look but not write: Orthanc answers 403 when this filter returns false.
READ_ONLY_FILTER = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if method ~= 'GET' and username == 'reader' then return false end
  return true
end
"""


@dataclass
class Orthanc:
    url: str  # the DICOMweb root
    http_port: int
    log: Path

    def client(self, user: str = "writer"):
        from utils.adapters.pacs import PacsConfig, connect

        return connect(PacsConfig(url=self.url, username=user, password=USERS[user]))

    def rest(self, path: str) -> object:
        """Orthanc's own REST API (test-side checks only)."""
        import requests

        response = requests.get(f"http://127.0.0.1:{self.http_port}{path}", auth=("writer", USERS["writer"]), timeout=10)
        response.raise_for_status()
        return response.json()


def start_orthanc(folder: Path) -> tuple[subprocess.Popen, Orthanc]:
    if not Path(ORTHANC).exists() or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (scripts/test.sh installs it)")
    http_port, dicom_port = free_port(), free_port()
    (folder / "filter.lua").write_text(READ_ONLY_FILTER)
    config = {"Name": "BoneXrayTest", "HttpPort": http_port, "DicomPort": dicom_port,
              "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
              "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": USERS,
              "LuaScripts": [str(folder / "filter.lua")]}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = folder / "orthanc.log"
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Orthanc(f"http://127.0.0.1:{http_port}/dicom-web", http_port, log)
    import requests

    deadline = time.time() + 30
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {log.read_text()[-2000:]}")
        try:
            requests.get(f"{server.url}/studies", auth=("writer", USERS["writer"]), timeout=1)
            return process, server
        except requests.exceptions.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("Orthanc did not answer within 30 s")


def stop_orthanc(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


# --- synthetic studies -------------------------------------------------------------------


def base_dataset(sop_class, study: Dataset, series_uid: str, modality: str, number: int) -> Dataset:
    ds = new_instance(sop_class)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription"):
        setattr(ds, keyword, getattr(study, keyword))
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, 1, number
    ds.Modality = modality
    ds.Manufacturer = "Synthetic"
    ds.ContentDate, ds.ContentTime = study.StudyDate, study.StudyTime
    return ds


def new_study(accession: str = "ACC-001", date: str = "20261130") -> Dataset:
    study = Dataset()
    study.PatientName, study.PatientID = PATIENT_NAME, PATIENT_ID
    study.PatientBirthDate, study.PatientSex = "19700101", "O"
    study.StudyInstanceUID = generate_uid()
    study.StudyDate, study.StudyTime, study.StudyID = date, "101500", "1"
    study.AccessionNumber, study.ReferringPhysicianName = accession, ""
    study.StudyDescription = "XR wrist"
    return study


def film(study: Dataset, series_uid: str, number: int, seed: int = 0, size: tuple[int, int] = (480, 400),
         photometric: str = "MONOCHROME2", transfer_syntax=ExplicitVRLittleEndian, frames: int = 1,
         modality: str = "DX") -> Dataset:
    """A synthetic radiograph as a DX instance, optionally compressed, inverted or multi-frame."""
    pixels = (synthetic_radiograph(*size, seed=seed) * 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels  # stored inverted, as MONOCHROME1 films are
    ds = base_dataset(DigitalXRayImageStorageForPresentation, study, series_uid, modality, number)
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PatientOrientation = ["A", "F"]
    stack = np.stack([pixels] * frames) if frames > 1 else pixels
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = stack.tobytes()
    if transfer_syntax == JPEGBaseline8Bit:
        from PIL import Image
        from pydicom.encaps import encapsulate

        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    elif transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, stack)
    return ds


def structured_report(study: Dataset, series_uid: str, number: int) -> Dataset:
    ds = base_dataset(ComprehensiveSRStorage, study, series_uid, "DX", number)
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121071", "DCM", "Finding"
    ds.ConceptNameCodeSequence = [concept]
    return ds


def encapsulated_pdf(study: Dataset, series_uid: str, number: int) -> Dataset:
    ds = base_dataset(EncapsulatedPDFStorage, study, series_uid, "DX", number)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "scanned request"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return ds


def presentation_state(study: Dataset, series_uid: str, number: int) -> Dataset:
    ds = base_dataset(GrayscaleSoftcopyPresentationStateStorage, study, series_uid, "DX", number)
    ds.ContentLabel, ds.PresentationCreationDate, ds.PresentationCreationTime = "STATE", "20261130", "101600"
    return ds


def upload(server: Orthanc, datasets: list[Dataset], batch: int = 50) -> None:
    from utils.adapters.pacs import as_part10

    client = server.client()
    for start in range(0, len(datasets), batch):
        client.store_instances([as_part10(d) for d in datasets[start:start + batch]])


COMPRESSIONS = {"jpeg_baseline": JPEGBaseline8Bit, "jpeg2000": JPEG2000Lossless, "rle": RLELossless}


class CuttingProxy:
    """A TCP proxy in front of Orthanc that cuts the first `cut_posts` POST requests after
    their first bytes (an interrupted STOW-RS) and passes everything else through."""

    def __init__(self, target_port: int, cut_posts: int):
        import threading

        self.target_port, self.remaining, self.cut = target_port, cut_posts, 0
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.accept, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.close()

    def accept(self):
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def should_cut(self, chunk: bytes) -> bool:
        with self.lock:
            if chunk.startswith(b"POST ") and self.remaining > 0:
                self.remaining -= 1
                self.cut += 1
                return True
        return False

    def serve(self, client: socket.socket):
        import threading

        upstream = socket.create_connection(("127.0.0.1", self.target_port))

        def pipe(source, sink, watch):
            try:
                while True:
                    chunk = source.recv(65536)
                    if not chunk:
                        break
                    if watch and self.should_cut(chunk):
                        sink.sendall(chunk[:64])  # a request head cut short, then the line drops
                        break
                    sink.sendall(chunk)
            except OSError:
                pass
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        threading.Thread(target=pipe, args=(upstream, client, False), daemon=True).start()
        pipe(client, upstream, True)
