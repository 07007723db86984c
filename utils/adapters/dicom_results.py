"""The classifier's results as new DICOM objects, built with highdicom's typed constructors:

- one Comprehensive SR per study (TID 1500 Measurement Report): a measurement group per image
  with its source reference, the verdict, the class the model leans to, the three
  probabilities, the uncertain and not-an-X-ray flags, each review reason as text, and the
  model's name, version and sha256, plus the not-for-diagnosis statement;
- one Secondary Capture per classified film: the heatmap overlay with the verdict and
  "NOT FOR DIAGNOSIS" burnt in, in a new series that keeps the source's patient and study.

Every object gets new UIDs; nothing of the source is changed.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from utils.core.review import decision_basis_of, reason_text
from utils.core.verdict import verdict_style

NOT_FOR_DIAGNOSIS = (
    "NOT FOR DIAGNOSIS. Produced by the Bone X-ray Classifier, open-source research "
    "software; a clinician must read the films."
)
MANUFACTURER = "Bone X-ray Classifier (open source)"
SCHEME = "99BXC"  # a private coding scheme for this tool's own concepts
SR_SERIES_DESCRIPTION = "Bone X-ray Classifier results (NOT FOR DIAGNOSIS)"
SC_SERIES_DESCRIPTION = "Bone X-ray Classifier heatmaps (NOT FOR DIAGNOSIS)"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902


def code(value: str, meaning: str):
    return Code(value, SCHEME, meaning)


PROCEDURE = code("BXC-1", "Bone radiograph classification")
PROBABILITY_CODES = {
    "healthy": code("BXC-P0", "Probability of healthy bone"),
    "fractured": code("BXC-P1", "Probability of a fracture that can heal"),
    "beyond_repair": code("BXC-P2", "Probability of a fracture beyond repair"),
}
VERDICT_CODES = {
    "healthy": code("BXC-V0", "Healthy"),
    "fractured": code("BXC-V1", "Fractured"),
    "beyond_repair": code("BXC-V2", "Beyond repair"),
    "needs_review": code("BXC-V3", "Needs review"),
    "not_a_radiograph": code("BXC-V4", "Not a radiograph"),
    None: code("BXC-V9", "Not classified"),
}
UNCERTAIN = code("BXC-F1", "Uncertain verdict")
NOT_XRAY = code("BXC-F2", "Not like a radiograph")
LEANS_TO = code("BXC-F3", "Class the model leans to")
REVIEW_REASON = code("BXC-F4", "Reason the verdict needs review")


def coding_schemes() -> list:
    """The private scheme's declaration (PS3.3 C.12.1.1.2.1: a local designator starts with 99)."""
    return [
        CodingSchemeIdentificationItem(
            designator=SCHEME,
            name="Bone X-ray Classifier concepts",
            responsible_organization="Bone X-ray Classifier project",
        )
    ]


def yes_no(flag: bool):
    return codes.SCT.Yes if flag else codes.SCT.No


def algorithm(model: dict):
    return hd.sr.AlgorithmIdentification(
        name=model["name"], version=str(model["version"]), parameters=[f"sha256={model['sha256']}"]
    )


def image_group(index: int, record: dict, sop_class_uid: str, model: dict):
    """TID 1501 measurement group of one image: source, verdict, flags and probabilities."""
    algorithm_id = algorithm(model)
    probabilities = record.get("probabilities") or {}
    measurements = [
        hd.sr.Measurement(
            name=PROBABILITY_CODES[name],
            value=float(probabilities[name]),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm_id,
        )
        for name in PROBABILITY_CODES
        if name in probabilities
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(codes.DCM.Finding, VERDICT_CODES[record.get("verdict")]),
        hd.sr.QualitativeEvaluation(LEANS_TO, VERDICT_CODES[record.get("label")]),
        hd.sr.QualitativeEvaluation(UNCERTAIN, yes_no(bool(record.get("uncertain")))),
        hd.sr.QualitativeEvaluation(NOT_XRAY, yes_no(bool(record.get("not_xray")))),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Image {index + 1}"),
        algorithm_id=algorithm_id,
        source_images=[hd.sr.SourceImageForMeasurementGroup(sop_class_uid, record["sop_instance_uid"])],
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )
    for reason in record.get("review_reasons") or ():
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(name=REVIEW_REASON, value=reason_text(reason), relationship_type="CONTAINS")
        )
    return group


IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def identity_of(header):
    """Patient and study identity of a source dataset, Type 2 attributes present (empty when
    the source leaves them out), as highdicom copies them into the new objects."""
    identity = Dataset()
    for keyword in IDENTITY_KEYWORDS + ("SpecificCharacterSet",):
        if keyword in header:
            setattr(identity, keyword, header.data_element(keyword).value)
        elif keyword != "SpecificCharacterSet":
            setattr(identity, keyword, "")
    return identity


def evidence_item(record: dict, sop_class_uid: str):
    item = Dataset()
    item.StudyInstanceUID, item.SeriesInstanceUID = record["study_instance_uid"], record["series_instance_uid"]
    item.SOPClassUID, item.SOPInstanceUID = sop_class_uid, record["sop_instance_uid"]
    return item


def build_results_sr(entries: list[tuple[dict, str]], study_header, model: dict, series_uid: str | None = None):
    """A Comprehensive SR for one study. entries: (record with the study, series and SOP
    instance UIDs, the source's SOP class UID), one per image; study_header: a source
    dataset of the study (its patient and study identity are copied)."""
    if not entries:
        raise ValueError("no images to report")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=model["name"], manufacturer_name=MANUFACTURER, model_name=str(model["version"])
        ),
    )
    groups = [image_group(i, record, sop_class, model) for i, (record, sop_class) in enumerate(entries)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    # The statement rides on the report's root container, where every SR viewer shows it.
    report[0].ContentSequence.append(
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=NOT_FOR_DIAGNOSIS, relationship_type="HAS OBS CONTEXT")
    )
    identity = identity_of(study_header)
    evidence = [evidence_item(record, sop_class) for record, sop_class in entries]
    for keyword in IDENTITY_KEYWORDS:
        setattr(evidence[0], keyword, identity.data_element(keyword).value)
    if "SpecificCharacterSet" in identity:
        evidence[0].SpecificCharacterSet = identity.SpecificCharacterSet
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_uid or hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        coding_schemes=coding_schemes(),
        series_description=SR_SERIES_DESCRIPTION,
    )


def burn_in(overlay_rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """The overlay with text lines on a dark band at the top; each line's font shrinks until
    it fits the width, so nothing is cut off."""
    image = Image.fromarray(overlay_rgb)
    draw = ImageDraw.Draw(image)
    margin, size = max(4, image.width // 60), max(12, image.width // 22)
    fonts = []
    for line in lines:
        line_size = size
        while (
            line_size > 8
            and draw.textlength(line, font=ImageFont.load_default(size=line_size)) > image.width - 2 * margin
        ):
            line_size -= 1
        fonts.append(ImageFont.load_default(size=line_size))
    step = int(size * 1.3)
    draw.rectangle([0, 0, image.width, margin + step * len(lines)], fill=(0, 0, 0))
    for i, (line, font) in enumerate(zip(lines, fonts)):
        draw.text((margin, margin + i * step), line, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def verdict_lines(record: dict) -> list[str]:
    """The verdict's word, then the probability its decision was made on, or why it needs review."""
    kind = record.get("verdict")
    if kind is None:
        return ["NOT CLASSIFIED"]
    lines = [verdict_style(kind).word]
    reasons = record.get("review_reasons") or ()
    if reasons:
        lines.append(reason_text(reasons[0]).split(" (")[0])
    probabilities = record.get("probabilities") or {}
    if probabilities and record.get("label"):
        basis, value = decision_basis_of(record["label"], probabilities)
        lines.append(f"{basis} = {value:.0%}")
    return lines


def build_secondary_capture(
    source_header, overlay_rgb: np.ndarray, record: dict, model: dict, series_uid: str, instance_number: int
):
    """The heatmap overlay of one film as a Secondary Capture in the study of its source."""
    pixels = burn_in(overlay_rgb, verdict_lines(record) + ["NOT FOR DIAGNOSIS", f"{model['name']} {model['version']}"])

    orientation = orientation_of(source_header)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=identity_of(source_header),
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=orientation or ("L", "F"),
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model["name"],
        software_versions=str(model["version"]),
        series_description=SC_SERIES_DESCRIPTION,
    )
    # General Image module attributes highdicom's constructor does not take: the film this
    # capture was derived from (so a viewer can link them) and the burnt-in text.
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = (
        source_header.SOPClassUID,
        source_header.SOPInstanceUID,
    )
    capture.SourceImageSequence = [source]
    capture.DerivationDescription = f"Heatmap of {model['name']} {model['version']} over the model's view of the source"
    capture.BurnedInAnnotation = "YES"
    # General Series Laterality (Type 2C, for paired body parts): the source's when it has one.
    capture.Laterality = str(source_header.get("Laterality") or source_header.get("ImageLaterality") or "")
    if capture.Laterality not in ("R", "L"):
        capture.Laterality = ""
    if orientation is None:
        # Type 2: unknown, rather than the placeholder highdicom needs (its stub types a list).
        capture.PatientOrientation = ""  # type: ignore[assignment]
    return capture


def orientation_of(header) -> tuple[str, str] | None:
    """The source's Patient Orientation (preprocessing neither rotates nor flips), when it
    is two single directions highdicom accepts."""
    values = list(header.get("PatientOrientation") or [])
    if len(values) == 2 and all(str(v) in ("A", "P", "L", "R", "H", "F") for v in values):
        return str(values[0]), str(values[1])
    return None
