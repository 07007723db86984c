"""A PACS over DICOMweb, the edge adapter: find studies (QIDO-RS), stream their radiographs
(WADO-RS) through the Classifier, and store new result objects in the same study (STOW-RS).

The server is configured by the operator (`.streamlit/secrets.toml` or the environment), so
the URL rules of `utils.adapters.url_input` do not apply. TLS is verified (optionally against a CA
bundle); credentials come from the configuration, never from the command line. Messages and
logs name studies and instances by UID only: patient identifiers and other PHI never appear
in them, and the HTTP library's error text (it holds the query URL) is not passed on.
Nothing on the server is modified or deleted: results are new objects with new UIDs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from utils.adapters.dicom_results import build_results_sr, build_secondary_capture
from utils.adapters.writers import Outputs
from utils.core.classifier import Classifier, Prediction, prepare_decoded
from utils.core.dicom import decode_dataset

IMAGE_MODALITIES = ("CR", "DX", "RF")
STUDY_FIELDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "PatientID",
    "NumberOfStudyRelatedInstances",
)
# SOP classes in radiograph series that hold no image to classify (checked by name, so every
# SR flavour, PDF/CDA encapsulations, key-object notes and presentation states are caught).
NOT_IMAGE_WORDS = (
    "SR Storage",
    "Structured",
    "Encapsulated",
    "Presentation State",
    "Key Object",
    "Waveform",
    "Raw Data",
)
TIMEOUT_S = (5, 60)  # connect, read
LOG = logging.getLogger("bone_xray.pacs")
# dicomweb-client logs request URLs (QIDO queries hold patient IDs) at info/debug.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
# retrying (dicomweb-client's retry wrapper) logs each failed attempt with its exception.
logging.getLogger("retrying").setLevel(logging.CRITICAL)


class PacsError(Exception):
    """A PACS problem, in one sentence that holds no PHI."""


@dataclass(frozen=True)
class PacsConfig:
    url: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    ca_bundle: str | None = None  # a CA file for a private PKI; verification is never off

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        return f"PacsConfig(url={self.url!r}, auth={'token' if self.token else 'basic' if self.username else 'none'})"

    @classmethod
    def from_mapping(cls, values: Mapping) -> PacsConfig:
        """From `[pacs]` in .streamlit/secrets.toml: url, and optional username/password,
        token and ca_bundle."""
        url = str(values.get("url") or "").strip()
        if not url.startswith(("http://", "https://")):
            raise PacsError("The PACS URL must start with http:// or https://.")
        text = {k: (str(values[k]) if values.get(k) else None) for k in ("username", "password", "token", "ca_bundle")}
        if text["username"] and text["token"]:
            raise PacsError("Configure either a username and password or a token for the PACS, not both.")
        return cls(url=url.rstrip("/"), **text)

    @classmethod
    def from_environment(cls, url: str | None = None, environ: Mapping = os.environ) -> PacsConfig:
        """BONE_XRAY_PACS_URL (or url), _USERNAME, _PASSWORD, _TOKEN, _CA_BUNDLE."""
        values = {
            key: environ.get(f"BONE_XRAY_PACS_{key.upper()}")
            for key in ("url", "username", "password", "token", "ca_bundle")
        }
        if url:
            values["url"] = url
        if not values["url"]:
            raise PacsError("No PACS configured: pass --server URL or set BONE_XRAY_PACS_URL.")
        return cls.from_mapping(values)


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str

    @property
    def path(self) -> str:
        return f"studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


@dataclass
class StudyImages:
    """What a study holds for the classifier: the radiograph instances and the skipped ones."""

    study_uid: str
    images: list[InstanceRef] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one note per skipped instance


def connect(config: PacsConfig):
    session = requests.Session()
    session.verify = config.ca_bundle or True
    if config.token:
        session.headers["Authorization"] = f"Bearer {config.token}"
    elif config.username:
        session.auth = (config.username, config.password or "")
    client = DICOMwebClient(config.url, session=session, timeout=TIMEOUT_S)
    # The library's own retries (5 attempts, exponential waits: 30 s before an unreachable
    # server is reported) are off; store() retries once, and a failed read is that image's error.
    client.set_http_retry_params(retry=False)
    return client


def explain(exc: Exception, action: str) -> PacsError:
    """One PHI-free sentence for a failed request (never the library's text: it holds the URL)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return PacsError(
            f"The PACS refused the credentials while {action} (401): check the configured "
            "username and password or token."
        )
    if status == 403:
        return PacsError(f"The PACS does not allow this account to go on {action} (403 Forbidden).")
    if status == 404:
        return PacsError(f"The PACS has no such resource ({action}: 404).")
    if status is not None:
        return PacsError(f"The PACS answered {status} while {action}.")
    if isinstance(exc, requests.exceptions.SSLError):
        return PacsError(
            f"The PACS's TLS certificate could not be verified while {action}; configure its "
            "CA bundle (ca_bundle / BONE_XRAY_PACS_CA_BUNDLE)."
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return PacsError(f"The PACS did not answer in time while {action}.")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return PacsError(f"The PACS cannot be reached while {action}: check the server URL and that it is running.")
    return PacsError(f"The PACS request failed while {action} ({type(exc).__name__}).")


def call(action: str, function: Callable, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except (requests.exceptions.RequestException, OSError) as exc:
        raise explain(exc, action) from None


def first_value(item: Mapping, keyword: str, default=None):
    """A value from a DICOM JSON object (QIDO-RS result) by keyword."""
    element = item.get(f"{tag_for_keyword(keyword):08X}", {})
    values = element.get("Value") or []
    if not values:
        return default
    value = values[0]
    return value.get("Alphabetic", default) if isinstance(value, dict) else value


def study_filters(
    study_uid: str | None = None, patient_id: str | None = None, accession: str | None = None, since: str | None = None
) -> dict:
    filters = {}
    if study_uid:
        filters["StudyInstanceUID"] = study_uid
    if patient_id:
        filters["PatientID"] = patient_id
    if accession:
        filters["AccessionNumber"] = accession
    if since:
        if not re.fullmatch(r"\d{8}", since):
            raise PacsError("The date must be written YYYYMMDD, for example 20261201.")
        filters["StudyDate"] = f"{since}-"
    if not filters:
        raise PacsError("Choose the studies: a study UID, a patient ID, an accession number or a date.")
    return filters


def find_studies(client, limit: int = 200, **selector) -> list[dict]:
    """Studies matching the selector (see study_filters), newest first, as plain dicts."""
    found = call(
        "searching for studies",
        client.search_for_studies,
        search_filters=study_filters(**selector),
        fields=list(STUDY_FIELDS),
        limit=limit,
    )
    studies = [{keyword: first_value(item, keyword, "") for keyword in STUDY_FIELDS} for item in found]
    return sorted(studies, key=lambda s: (s["StudyDate"] or "", s["StudyTime"] or ""), reverse=True)


def not_an_image(sop_class_uid: str) -> str | None:
    """The SOP class's name when instances of it hold no radiograph (an SR, a PDF, a state)."""
    name = UID(sop_class_uid).name
    return name if any(word in name for word in NOT_IMAGE_WORDS) else None


def study_images(client, study_uid: str) -> StudyImages:
    """The CR, DX and RF instances of a study that can hold pixel data; the others are noted."""
    result = StudyImages(study_uid)
    series = call(
        "listing the study's series",
        client.search_for_series,
        study_instance_uid=study_uid,
        fields=["Modality", "SeriesInstanceUID"],
        get_remaining=True,
    )
    if not series:
        raise PacsError(f"The PACS has no series in study {study_uid} (no such study, or it is empty).")
    for item in series:
        if first_value(item, "Modality", "") not in IMAGE_MODALITIES:
            continue
        series_uid = first_value(item, "SeriesInstanceUID")
        instances = call(
            "listing a series' instances",
            client.search_for_instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            fields=["SOPClassUID", "InstanceNumber"],
            get_remaining=True,
        )
        instances.sort(key=lambda i: (int(first_value(i, "InstanceNumber", 0) or 0), first_value(i, "SOPInstanceUID")))
        for instance in instances:
            ref = InstanceRef(
                study_uid,
                series_uid,
                first_value(instance, "SOPInstanceUID"),
                str(first_value(instance, "SOPClassUID", "")),
            )
            kind = not_an_image(ref.sop_class_uid)
            if kind:
                result.skipped.append(f"Skipped instance {ref.sop_uid} ({kind}): not an image.")
            else:
                result.images.append(ref)
    return result


def retrieve(client, ref: InstanceRef):
    """The instance as stored (any transfer syntax: the decoder handles JPEG, JPEG 2000, RLE)."""
    return call(
        "retrieving an instance",
        client.retrieve_instance,
        ref.study_uid,
        ref.series_uid,
        ref.sop_uid,
        media_types=(("application/dicom", "*"),),
    )


def header_only(dataset):
    """The dataset without its pixels: what the result objects need (identity, references)."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in dataset:
            delattr(dataset, keyword)
    return dataset


@dataclass
class Classified:
    ref: InstanceRef
    prediction: Prediction
    header: Dataset | None  # the source without its pixel data

    def record(self) -> dict:
        record = self.prediction.as_record()
        record.update(
            study_instance_uid=self.ref.study_uid,
            series_instance_uid=self.ref.series_uid,
            sop_instance_uid=self.ref.sop_uid,
        )
        return record


def classify_instances(
    client: DICOMwebClient, classifier: Classifier, refs: list[InstanceRef], options: StudyOptions
) -> Iterator[Classified]:
    """Retrieve and classify options.batch_size instances at a time, yielding each as it is
    done, so a long series streams in flat memory. Each retrieved dataset is decoded as it
    came (no write-back to bytes); a failed retrieval or decode is that image's error."""
    for start in range(0, len(refs), options.batch_size):
        chunk = refs[start : start + options.batch_size]
        predictions: list[Prediction] = []
        headers: dict[str, Dataset] = {}
        for ref in chunk:
            predictions.append(
                retrieve_and_prepare(client, ref, (classifier.bundle.input_size, options.population), headers)
            )
        classifier.complete([p for p in predictions if p.error is None], options.preset)
        for ref, prediction in zip(chunk, predictions):
            if prediction.error:
                LOG.warning("instance %s not classified: %s", ref.sop_uid, prediction.error)
            yield Classified(ref, prediction, headers.get(ref.path))


def retrieve_and_prepare(
    client: DICOMwebClient, ref: InstanceRef, prepare_with: tuple[int, str], headers: dict[str, Dataset]
) -> Prediction:
    """One instance retrieved and prepared for the model (prepare_with: the input size and
    the user's population); its header (without pixels) goes into headers, for the result objects."""
    input_size, population = prepare_with
    try:
        dataset = retrieve(client, ref)
    except PacsError as exc:
        return Prediction(name=ref.path, error=str(exc))
    except Exception as exc:  # a body the DICOM parser rejects
        return Prediction(name=ref.path, error=f"The instance could not be read ({type(exc).__name__}).")
    prediction = prepare_decoded(ref.path, lambda: decode_dataset(dataset), input_size, population)
    headers[ref.path] = header_only(dataset)
    return prediction


@dataclass
class StoreResult:
    stored: list[str] = field(default_factory=list)  # SOP instance UIDs the server confirmed
    failed: list[str] = field(default_factory=list)  # one PHI-free sentence per failure


def as_part10(dataset):
    """STOW-RS carries DICOM files (PS3.10). dicomweb-client writes each dataset as pydicom
    writes it, which leaves out the 128-byte preamble and "DICM" of a dataset built in memory;
    the server then stores and later serves a file that pydicom (and so WADO-RS retrieval)
    refuses to read."""
    if getattr(dataset, "preamble", None) is None:
        dataset.preamble = b"\0" * 128
    return dataset


def store(client, datasets: list, study_uid: str, what: str, attempts: int = 2) -> StoreResult:
    """STOW-RS into the study; one retry when the request fails on the way. Only the instances
    the server lists as stored count (a cut request leaves nothing half-counted)."""
    result = StoreResult()
    datasets = [as_part10(d) for d in datasets]
    wanted = [str(d.SOPInstanceUID) for d in datasets]
    last_error = None
    for attempt in range(attempts):
        try:
            response = call(f"storing {what}", client.store_instances, datasets, study_instance_uid=study_uid)
        except PacsError as exc:
            last_error = exc
            LOG.warning("storing %s failed (attempt %d of %d): %s", what, attempt + 1, attempts, exc)
            continue
        confirmed = {str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])}
        result.stored = [uid for uid in wanted if uid in confirmed]
        refused = [uid for uid in wanted if uid not in confirmed]
        if refused:
            result.failed.append(f"The PACS did not confirm {len(refused)} of {len(wanted)} {what}.")
        return result
    result.failed.append(f"Storing {what} failed after {attempts} attempts: {last_error}")
    return result


SC_BATCH = 16  # secondary captures stored per STOW request while a study streams


@dataclass
class StudyRun:
    """What one study's run did: counts, notes and what the server confirmed storing."""

    study_uid: str
    classified: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)
    stored_sr: list[str] = field(default_factory=list)
    stored_captures: list[str] = field(default_factory=list)
    store_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.store_failures


class ResultWriter:
    """Writes one study's results back as it is given each classified image: a Secondary
    Capture per classified film (stored SC_BATCH at a time, so a long series does not pile
    up in memory) and, on finish(), the SR with an entry per image."""

    def __init__(self, client, study_uid: str, model: dict, run: StudyRun):
        self.client, self.study_uid, self.model, self.run = client, study_uid, model, run
        self.entries: list[tuple[dict[str, Any], str]] = []
        self.captures: list[Dataset] = []
        self.study_header: Dataset | None = None
        self.capture_series: str | None = None

    def add(self, item: Classified) -> None:
        record, prediction = item.record(), item.prediction
        self.entries.append((record, item.ref.sop_class_uid))
        overlay = prediction.overlay()
        if item.header is None or overlay is None:  # no film to capture: the SR still lists it
            return
        self.study_header = self.study_header or item.header
        self.capture_series = series = self.capture_series or generate_uid()
        self.captures.append(
            build_secondary_capture(item.header, overlay, record, self.model, series, instance_number=len(self.entries))
        )
        if len(self.captures) >= SC_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.captures:
            result = store(self.client, self.captures, self.study_uid, f"{len(self.captures)} secondary capture(s)")
            self.run.stored_captures += result.stored
            self.run.store_failures += result.failed
            self.captures = []

    def finish(self) -> None:
        self.flush()
        if self.study_header is None:
            self.run.store_failures.append("No image of the study could be read, so no report was stored.")
            return
        result = store(
            self.client,
            [build_results_sr(self.entries, self.study_header, self.model)],
            self.study_uid,
            "the results report (SR)",
        )
        self.run.stored_sr += result.stored
        self.run.store_failures += result.failed


def store_results(client, study_uid: str, items: list[Classified], model: dict) -> StudyRun:
    """Write already classified images of one study back (the app's "send to PACS")."""
    run = StudyRun(
        study_uid,
        classified=sum(not i.prediction.error for i in items),
        failed=sum(bool(i.prediction.error) for i in items),
    )
    writer = ResultWriter(client, study_uid, model, run)
    for item in items:
        writer.add(item)
    writer.finish()
    return run


@dataclass(frozen=True)
class StudyOptions:
    """How a study is classified: the decision preset, the batch size, whether the result
    objects (an SR, Secondary Captures) are written back to the study as it goes, and what the
    user said of the patient (each film's own header age wins over it)."""

    preset: str = "balanced"
    batch_size: int = 8
    store_results: bool = False
    population: str = "unknown"


class StudyStream:
    """One study's radiographs, classified as they stream in: iterate for each Classified
    image; `len()` is the number of images (known before the first is retrieved) and `run`
    the study's counts and stored objects, complete once the iteration ends. The caller
    owns what is written (records, progress); with options.store_results the result objects
    go back to the PACS as the images come (ResultWriter)."""

    def __init__(self, client: DICOMwebClient, classifier: Classifier, study_uid: str, options: StudyOptions) -> None:
        self.client, self.classifier, self.options = client, classifier, options
        listing = study_images(client, study_uid)
        self.images = listing.images
        self.run = StudyRun(study_uid, skipped=listing.skipped)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Classified]:
        run = self.run
        store = self.options.store_results
        writer = ResultWriter(self.client, run.study_uid, self.classifier.bundle.metadata, run) if store else None
        for item in classify_instances(self.client, self.classifier, self.images, self.options):
            run.failed += bool(item.prediction.error)
            run.classified += not item.prediction.error
            if writer is not None:
                writer.add(item)
            yield item
        if writer is not None:
            writer.finish()


@dataclass
class StudyOutcome:
    """One study of a job: its run, or the sentence that says why it could not be read."""

    study_uid: str
    run: StudyRun | None = None
    error: str | None = None


# (study UID, number of images) -> a context manager whose update(1) counts an image done
# (tqdm fits); the job shows its progress through it.
Progress = Callable[[str, int], AbstractContextManager[Any]]


def classify_studies(
    client: DICOMwebClient,
    classifier: Classifier,
    study_uids: Iterable[str],
    options: StudyOptions,
    outputs: Outputs,
    progress: Progress | None = None,
) -> Iterator[StudyOutcome]:
    """A PACS job from the found studies to the stored results, in one place: each study
    streamed through the classifier, every image's record written to `outputs` as it comes,
    and (options.store_results) the SR and captures stored back. Yields each study's outcome
    as it ends, so the caller can report it at once."""
    for uid in study_uids:
        try:
            stream = StudyStream(client, classifier, uid, options)
            with progress(uid, len(stream)) if progress else nullcontext(None) as bar:
                for item in stream:
                    outputs.add(item.prediction, item.record())
                    if bar is not None:
                        bar.update(1)
        except PacsError as exc:
            yield StudyOutcome(uid, error=str(exc))
            continue
        yield StudyOutcome(uid, run=stream.run)


def run_study(
    client: DICOMwebClient,
    classifier: Classifier,
    study_uid: str,
    preset: str,
    batch_size: int = 8,
    store_results: bool = False,
) -> StudyRun:
    """Classify a whole study (StudyStream, for a caller that needs only the counts)."""
    stream = StudyStream(client, classifier, study_uid, StudyOptions(preset, batch_size, store_results))
    for _ in stream:
        pass
    return stream.run
