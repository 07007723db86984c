"""Needs review, and why: the review reasons from the film, the user, the features and the
probabilities, through the core and the CLI. (PACS and Ray: tests/test_pacs.py and
tests/test_ray_batch.py; the app: tests/test_app.py and tests/test_browser.py.)"""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.conftest import png_bytes, synthetic_radiograph
from utils import cli
from utils.core.bundle import Bundle
from utils.core.classifier import Classifier
from utils.core.intended_use import (
    InputLimits,
    age_in_years,
    intended_use_reasons,
    is_validated_body_part,
    parse_age_string,
    parse_population,
)
from utils.core.review import REVIEW_REASONS, decide_verdict, ordered_reasons
from utils.core.shift import ShiftScore, unit_rows

BALANCED = {"rule": "two_stage", "fracture_threshold": 0.38, "fracture_band": 0.95,
            "severity_threshold": 0.19, "severity_margin": 0.7}
CONFIDENT_FRACTURE = {"healthy": 0.02, "fractured": 0.97, "beyond_repair": 0.01}


def dicom_film(size: tuple[int, int] = (480, 400), seed: int = 3, **tags) -> bytes:
    """A synthetic radiograph as DICOM Part 10 bytes, with the header tags given."""
    pixels = (synthetic_radiograph(*size, seed=seed) * 255).astype(np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- the verdict: one kind, its reasons, the probability it was decided on -----------------

def test_any_review_reason_makes_the_kind_needs_review_and_keeps_the_leaning():
    verdict = decide_verdict(CONFIDENT_FRACTURE, BALANCED, ["child"])
    assert verdict.kind == "needs_review" and verdict.label == "fractured" and verdict.reasons == ("child",)
    assert verdict.uncertain
    clean = decide_verdict(CONFIDENT_FRACTURE, BALANCED)
    assert clean.kind == "fractured" and not clean.uncertain and clean.reasons == ()


def test_not_a_radiograph_wins_over_every_other_kind():
    verdict = decide_verdict(CONFIDENT_FRACTURE, BALANCED, ["unlike_training_films", "not_a_radiograph"])
    assert verdict.kind == "not_a_radiograph"
    assert verdict.reasons == ("not_a_radiograph", "unlike_training_films")


def test_the_headline_is_the_probability_the_decision_was_made_on():
    """P(any fracture) for healthy and fractured; P(beyond repair | fracture) for severity."""
    knee_with_screws = {"healthy": 0.30, "fractured": 0.43, "beyond_repair": 0.27}
    fractured = decide_verdict(knee_with_screws, {**BALANCED, "severity_threshold": 0.9})
    assert fractured.label == "fractured" and fractured.headline() == "P(any fracture) 70%"
    severe = decide_verdict({"healthy": 0.303, "fractured": 0.353, "beyond_repair": 0.344}, BALANCED)
    assert severe.label == "beyond_repair" and severe.headline() == "P(beyond repair | fracture) 49%"
    healthy = decide_verdict({"healthy": 0.95, "fractured": 0.04, "beyond_repair": 0.01}, BALANCED)
    assert healthy.kind == "healthy" and healthy.headline() == "P(any fracture) 5%"


def test_near_the_threshold_and_the_severity_margin_are_their_own_reasons():
    assert decide_verdict({"healthy": 0.6, "fractured": 0.38, "beyond_repair": 0.02}, BALANCED).reasons == (
        "near_threshold",)
    severe_edge = {"healthy": 0.01, "fractured": 0.80, "beyond_repair": 0.19}
    assert decide_verdict(severe_edge, BALANCED).reasons == ("severity_margin",)


def test_reasons_are_known_ordered_and_said_in_words():
    assert ordered_reasons(["near_threshold", "child", "child"]) == ("child", "near_threshold")
    with pytest.raises(ValueError, match="unknown review reasons"):
        ordered_reasons(["sunspots"])
    assert REVIEW_REASONS["child"].startswith("children's films") and "too small" in REVIEW_REASONS["image_too_small"]
    assert set(REVIEW_REASONS) == {"near_threshold", "severity_margin", "unlike_training_films", "image_too_small",
                                   "child", "body_part", "incomplete_image", "not_a_radiograph"}


# --- intended use: age and body part from the header, population from the user ------------

@pytest.mark.parametrize("text, years", [("009Y", 9.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25), ("030D", 30 / 365.25),
                                         ("045Y", 45.0), ("", None), ("9 years", None), ("X09Y", None)])
def test_dicom_age_strings(text, years):
    assert parse_age_string(text) == (pytest.approx(years) if years is not None else None)


def test_age_from_birth_and_study_dates_else_acquisition_date():
    ds = pydicom.Dataset()
    ds.PatientBirthDate, ds.StudyDate = "20161203", "20261204"
    assert age_in_years(ds) == pytest.approx(10.0, abs=0.01)
    del ds.StudyDate
    ds.AcquisitionDate = "20361204"
    assert age_in_years(ds) == pytest.approx(20.0, abs=0.01)
    ds.AcquisitionDate = "20101204"  # taken before birth: nonsense, so no age
    assert age_in_years(ds) is None


def test_the_header_age_wins_over_the_users_population():
    assert intended_use_reasons(9.0, None, "adult") == ["child"]
    assert intended_use_reasons(40.0, None, "child") == []
    assert intended_use_reasons(None, None, "child") == ["child"]
    assert intended_use_reasons(None, None, "unknown") == []


@pytest.mark.parametrize("part, validated", [("WRIST", True), ("L HAND", True), ("FOREARM", True), ("KNEE", True),
                                             ("HIP", True), ("CHEST", False), ("SKULL", False), ("LSPINE", False),
                                             ("ABDOMEN", False), ("HEAD", False)])
def test_body_parts_the_model_was_validated_on(part, validated):
    assert is_validated_body_part(part) is validated
    assert intended_use_reasons(None, part, "unknown") == ([] if validated else ["body_part"])


def test_a_population_outside_the_three_answers_is_refused():
    assert parse_population(None) == "unknown" and parse_population(" Child ") == "child"
    with pytest.raises(ValueError, match="adult, child, unknown"):
        parse_population("teenager")


def test_input_limits_say_the_size_and_the_limit():
    limits = InputLimits(min_short_side=300, max_aspect_ratio=3.0)
    assert limits.problem(454, 373) is None
    assert "224 x 224 px" in limits.problem(224, 224) and "at least 300 px" in limits.problem(224, 224)
    assert "elongated" in limits.problem(1000, 310)


# --- the shift score ------------------------------------------------------------------------

def test_the_shift_score_is_low_near_the_bank_and_high_far_from_it():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64))
    bank = unit_rows(np.repeat(centres, 50, axis=0) + 0.05 * rng.normal(size=(150, 64)))
    score = ShiftScore(bank, k=5, threshold=0.05)
    like = centres[[0, 2]] + 0.05 * rng.normal(size=(2, 64))
    unlike = rng.normal(size=(2, 64))
    assert (score.score(like) < 0.05).all() and (score.score(unlike) > 0.3).all()
    assert score.is_unlike(unlike).all() and not score.is_unlike(like).any()


def test_the_shift_score_round_trips_through_its_file(tmp_path):
    bank = unit_rows(np.random.default_rng(1).normal(size=(20, 8)))
    ShiftScore(bank, 3, 0.25).save(tmp_path / "shift.npz")
    loaded = ShiftScore.load(tmp_path / "shift.npz")
    assert loaded.k == 3 and loaded.threshold == 0.25 and np.allclose(loaded.bank, bank, atol=1e-3)


@pytest.fixture(scope="module")
def film_and_bank(classifier):
    """A classifier whose shift score was fitted on one synthetic film's features alone."""
    film = (synthetic_radiograph(480, 400, seed=21) * 255).astype(np.uint8)
    prepared = classifier.predict_bytes("fit.png", png_bytes(film))
    features = classifier.logits_and_features(prepared.model_input[None, ..., None])[1]
    bundle = Bundle(model=None, metadata=classifier.bundle.metadata, guard=None,
                    litert_paths=classifier.bundle.litert_paths, model_path=classifier.bundle.model_path)
    bundle.shift_score = ShiftScore(unit_rows(features), k=1, threshold=0.02)
    return film, Classifier(bundle, engine=classifier.engine)


def test_a_film_like_the_fitted_films_passes_the_shift_score(film_and_bank):
    film, fitted = film_and_bank
    prediction = fitted.predict_bytes("same.png", png_bytes(film))
    assert prediction.shift_score < 0.02 and "unlike_training_films" not in prediction.review_inputs


def test_a_film_unlike_the_fitted_films_needs_review(film_and_bank):
    _, fitted = film_and_bank
    grid = np.indices((480, 400)).sum(axis=0) % 64 < 32  # a checkerboard: nothing like a film
    other = fitted.predict_bytes("grid.png", png_bytes((grid * 200 + 30).astype(np.uint8)))
    assert other.shift_score > 0.02 and other.verdict.kind == "needs_review"
    assert "unlike_training_films" in other.verdict.reasons and other.probabilities is not None


# --- through the classifier and the CLI --------------------------------------------------

def test_a_dicom_of_a_nine_year_old_needs_review_with_its_probabilities(classifier):
    prediction = classifier.predict_bytes("child.dcm", dicom_film(PatientAge="009Y"))
    assert prediction.verdict.kind in ("needs_review", "not_a_radiograph") and "child" in prediction.verdict.reasons
    record = prediction.as_record()
    assert "child" in record["review_reasons"] and record["uncertain"] is True
    assert sum(record["probabilities"].values()) == pytest.approx(1.0)
    assert not any("9" in w for w in record["warnings"])  # the age is compared, never shown


def test_a_dicom_ten_years_from_birth_to_study_needs_review(classifier):
    prediction = classifier.predict_bytes("child.dcm", dicom_film(PatientBirthDate="20161203", StudyDate="20261204"))
    assert "child" in prediction.verdict.reasons


def test_a_chest_dicom_needs_review_for_its_body_part(classifier):
    prediction = classifier.predict_bytes("chest.dcm", dicom_film(BodyPartExamined="CHEST", PatientAge="045Y"))
    assert "body_part" in prediction.verdict.reasons and "child" not in prediction.verdict.reasons
    assert any("'CHEST'" in w for w in prediction.warnings)


def test_a_thumbnail_is_too_small(classifier):
    limits = classifier.bundle.input_limits
    assert limits is not None, "the bundle states its input limits"
    side = limits.min_short_side - 1
    small = png_bytes((synthetic_radiograph(side, side, seed=5) * 255).astype(np.uint8))
    prediction = classifier.predict_bytes("thumb.png", small)
    assert "image_too_small" in prediction.verdict.reasons
    assert any(f"{side} x {side} px" in w for w in prediction.warnings)


def run_cli(args, capsys) -> tuple[int, list[dict]]:
    code = cli.main(args)
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cli_population_child_marks_every_film_and_says_why_in_words(tmp_path, capsys, bundle_dir):
    (tmp_path / "a.png").write_bytes(png_bytes((synthetic_radiograph(480, 400, seed=1) * 255).astype(np.uint8)))
    code = cli.main(["predict", str(tmp_path), "--population", "child", "--model-dir", str(bundle_dir)])
    out = capsys.readouterr()
    records = [json.loads(line) for line in out.out.splitlines()]
    assert code == 0 and records[0]["review_reasons"].count("child") == 1 and records[0]["probabilities"]
    assert "1 of 1 inputs need review" in out.err
    assert "1: children's films are outside what this model was validated on" in out.err
    _, plain = run_cli(["predict", str(tmp_path), "--model-dir", str(bundle_dir)], capsys)
    assert "child" not in plain[0]["review_reasons"]


def test_cli_the_header_wins_over_population(tmp_path, capsys, bundle_dir):
    (tmp_path / "adult.dcm").write_bytes(dicom_film(PatientAge="040Y"))
    (tmp_path / "child.dcm").write_bytes(dicom_film(PatientAge="009Y"))
    _, records = run_cli(["predict", str(tmp_path), "--population", "child", "--model-dir", str(bundle_dir)], capsys)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in records}
    assert "child" not in by_name["adult.dcm"]["review_reasons"]
    _, records = run_cli(["predict", str(tmp_path), "--population", "adult", "--model-dir", str(bundle_dir)], capsys)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in records}
    assert "child" in by_name["child.dcm"]["review_reasons"]


def test_cli_refuses_an_unknown_population(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", str(tmp_path), "--population", "teen"])
    assert exit_info.value.code == 2 and "--population" in capsys.readouterr().err


def test_the_csv_has_the_verdict_and_its_reasons(tmp_path, capsys, bundle_dir):
    import csv

    (tmp_path / "a.dcm").write_bytes(dicom_film(PatientAge="009Y", BodyPartExamined="SKULL"))
    cli.main(["predict", str(tmp_path), "--format", "csv", "--model-dir", str(bundle_dir)])
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["verdict"] in ("needs_review", "not_a_radiograph") and row["uncertain"] == "true"
    assert {"child", "body_part"} <= set(row["review_reasons"].split(";"))


def test_a_bundle_whose_shift_score_file_was_altered_is_refused(bundle_dir, tmp_path):
    import shutil

    from utils.core.bundle import ModelBundleError, load_bundle

    copy = tmp_path / "model"
    shutil.copytree(bundle_dir, copy, ignore=shutil.ignore_patterns("*.keras", "*.tflite"))
    for name in ("bone_xray_inceptionv3.keras", "serving.tflite"):  # links: the big files are only read
        (copy / name).symlink_to(bundle_dir / name)
    assert load_bundle(copy, load_keras=False).shift_score is not None
    with open(copy / "shift_score.npz", "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelBundleError, match="shift score file shift_score.npz is missing or does not match"):
        load_bundle(copy, load_keras=False)
