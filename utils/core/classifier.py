"""Bytes in, calibrated verdict out: the serving path shared by the app and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils.core.bundle import Bundle
from utils.core.engines import Engine, KerasEngine, LiteRTEngine, litert_available
from utils.core.guard import is_confident_not_radiograph, screen_decoded
from utils.core.heatmap import normalise_class_maps, overlay_heatmap
from utils.core.inference import CLASSES, calibrated_probabilities, to_model_input
from utils.core.intended_use import InputLimits, intended_use_reasons, parse_population
from utils.core.pixels import DecodedImage, InputError
from utils.core.preprocess import Contrast, decode_for_model, preprocess, stretch_contrast
from utils.core.record import PredictionRecord
from utils.core.review import NOT_A_RADIOGRAPH, Verdict, decide_verdict, ordered_reasons
from utils.core.shift import ShiftScore

DEFAULT_PRESET = "balanced"


def make_engine(bundle: Bundle, precision: str = "float32", threads: int | None = None) -> Engine:
    """LiteRT when the bundle ships its file and ai-edge-litert is installed, else Keras.
    precision "int8": the bundle's int8 LiteRT file (see the model card's equivalence check)."""
    if precision != "float32":
        path = bundle.litert_paths.get(precision)
        if path is None or not litert_available():
            raise ValueError(f"the model bundle has no {precision} engine")
        return LiteRTEngine(path, threads=threads)
    if bundle.litert_path is not None and litert_available():
        return LiteRTEngine(bundle.litert_path, threads=threads)
    return KerasEngine(bundle.model)


@dataclass(frozen=True)
class Preparation:
    """How bytes become a model input: the decoder and the contrast stretch. Serving uses the
    defaults (SERVING); a release check or a benchmark passes the path it compares against."""

    decode: Callable[[bytes], DecodedImage] = decode_for_model
    contrast: Contrast = stretch_contrast


SERVING = Preparation()


def prepare_input(
    name: str, data: bytes, input_size: int, population: str = "unknown", how: Preparation = SERVING
) -> Prediction:
    """Decode, preprocess and screen one input (no model needed): a Prediction with its
    model input, or with `error` when the bytes cannot be read. population: what the user
    said of the patient ("adult", "child", "unknown"); a DICOM header's age wins over it."""
    return prepare_decoded(name, lambda: how.decode(data), input_size, population, how.contrast)


def prepare_decoded(
    name: str,
    decode: Callable[[], DecodedImage],
    input_size: int,
    population: str = "unknown",
    contrast: Contrast = stretch_contrast,
) -> Prediction:
    """prepare_input for any decoder (bytes, or a DICOM dataset already parsed): its
    InputError becomes the prediction's error."""
    prediction = Prediction(name=name, population=parse_population(population))
    try:
        decoded = decode()
        prediction.model_input = preprocess(decoded.pixels, input_size, contrast)[..., 0]
        prediction.warnings = decoded.warnings
        prediction.incomplete = decoded.incomplete
        prediction.not_xray = screen_decoded(decoded.pixels, decoded.colour_fraction)
        prediction.image_size = (int(decoded.pixels.shape[0]), int(decoded.pixels.shape[1]))
        prediction.age_years, prediction.body_part = decoded.age_years, decoded.body_part
    except InputError as exc:
        prediction.error = str(exc)
    return prediction


@dataclass
class Prediction:
    name: str
    label: str | None = None  # the class the model leans to (the verdict's kind may differ)
    probabilities: dict[str, float] | None = None
    uncertain: bool = False  # true exactly when the verdict has review reasons
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    model_input: np.ndarray | None = None  # (S, S) uint8: the image as the model saw it
    not_xray: str | None = None  # why the guard thinks this is not a radiograph
    ood_distance: float | None = None  # the guard's feature distance (threshold in metadata)
    heatmaps: np.ndarray | None = None  # (C, h, w) Grad-CAM of each class, in [0, 1]
    incomplete: str | None = None  # why part of the image is missing (then never a confident verdict)
    image_size: tuple[int, int] | None = None  # (height, width) as decoded
    age_years: float | None = None  # from a DICOM header: compared with the intended use, never shown
    body_part: str | None = None  # BodyPartExamined from a DICOM header
    population: str = "unknown"  # what the user said of the patient (the header's age wins)
    shift_score: float | None = None  # how unlike the training films (utils.core.shift)
    review_inputs: tuple[str, ...] = ()  # review reasons from the film, the user and the features
    verdict: Verdict | None = None  # under the preset it was classified with

    def heatmap(self, class_name: str) -> np.ndarray:
        if self.heatmaps is None:
            raise ValueError(f"{self.name} has no heatmaps: it was not classified")
        return self.heatmaps[CLASSES.index(class_name)]

    def overlay(self, label: str | None = None) -> np.ndarray | None:
        """The model input with the heatmap of `label` (default: its own label) over it; None
        for an input that could not be read."""
        if self.error is not None or self.model_input is None:
            return None
        return overlay_heatmap(self.model_input, self.heatmap(label or self.label or "healthy"))

    def decide(self, preset: dict[str, Any]) -> Verdict | None:
        """The verdict under a decision preset (None for an input that was not classified):
        the review reasons found in the film, the user's answers and the features always stand."""
        if self.error or self.probabilities is None:
            return None
        return decide_verdict(self.probabilities, preset, self.review_inputs)

    @property
    def failed(self) -> bool:
        """The input could not be read properly: an error, or image data missing."""
        return self.error is not None or self.incomplete is not None

    def record(self, preset: dict[str, Any] | None = None) -> PredictionRecord:
        """The typed record: under the preset it was classified with, or under another one
        (the app's preset switch re-decides here, without running the model again)."""
        verdict = self.verdict if preset is None else self.decide(preset)
        return PredictionRecord(
            path=self.name,
            label=verdict.label if verdict else self.label,
            probabilities=self.probabilities,
            uncertain=verdict.uncertain if verdict else False,
            not_xray=self.not_xray is not None,
            warnings=tuple(self.warnings),
            error=self.error,
            verdict=verdict.kind if verdict else None,
            review_reasons=verdict.reasons if verdict else (),
        )

    def as_record(self) -> dict[str, Any]:
        return self.record().as_dict()


def film_reasons(prediction: Prediction, limits: InputLimits | None) -> tuple[list[str], list[str]]:
    """(review reasons, warnings to add) from the film itself and from the user's answers."""
    reasons, notes = [], []
    if prediction.incomplete is not None:
        reasons.append("incomplete_image")
    if limits is not None and prediction.image_size is not None:
        problem = limits.problem(*prediction.image_size)
        if problem is not None:
            reasons.append("image_too_small")
            notes.append(problem)
    reasons += intended_use_reasons(prediction.age_years, prediction.body_part, prediction.population)
    if "body_part" in reasons:
        notes.append(f"The DICOM header names the body part {prediction.body_part!r}.")
    return reasons, notes


def feature_reasons(prediction: Prediction, shift: ShiftScore | None) -> list[str]:
    """Review reasons from the guards and the shift score."""
    reasons = []
    if prediction.not_xray is not None:
        sure = is_confident_not_radiograph(prediction.not_xray)
        reasons.append(NOT_A_RADIOGRAPH if sure else "unlike_training_films")
    if shift is not None and prediction.shift_score is not None and prediction.shift_score > shift.threshold:
        reasons.append("unlike_training_films")
    return reasons


def model_input_of(prediction: Prediction) -> np.ndarray:
    """The model input of a prepared prediction (prepare_input without an error)."""
    if prediction.model_input is None:
        raise ValueError(f"{prediction.name} has no model input: {prediction.error or 'not prepared'}")
    return prediction.model_input


class Classifier:
    """Wraps a loaded bundle with one forward engine (LiteRT when the bundle has it, else a
    compiled Keras tf.function; never a per-call `model.predict`)."""

    def __init__(self, bundle: Bundle, engine: Engine | None = None, precision: str = "float32") -> None:
        self.bundle = bundle
        self.precision = precision
        self.engine = engine or make_engine(bundle, precision)

    @property
    def temperature(self) -> float:
        return self.bundle.temperature_for(self.precision)

    def forward(self, batch_uint8: np.ndarray) -> dict[str, np.ndarray]:
        """(N, S, S, 1) uint8 model inputs -> logits, features and (N, C, h, w) heatmaps.

        A two-stage model's heatmap is its fracture map, a probability per cell, the same for
        every class and not rescaled (a healthy film stays cold); a pooling + dense model's is
        each class's Grad-CAM, scaled so its maximum is 1."""
        out = self.engine(to_model_input(batch_uint8))
        if "localisation" in out:
            maps = np.clip(np.asarray(out["localisation"], np.float32), 0.0, 1.0)
            out["heatmaps"] = np.repeat(maps[:, None], len(self.bundle.classes), axis=1)
        else:
            out["heatmaps"] = np.stack([normalise_class_maps(m) for m in out["class_maps"]])
        return out

    @property
    def heatmap_kind(self) -> str:
        """What the heatmaps show, in words for captions and reports."""
        return "fracture map" if "localisation" in self.engine.outputs else "Grad-CAM"

    def heatmap(self, model_input: np.ndarray, class_name: str | None = None) -> np.ndarray:
        """The heatmap of one (S, S) uint8 model input, for class_name or the most probable class."""
        out = self.forward(model_input[None, ..., None])
        index = int(np.argmax(out["logits"][0])) if class_name is None else self.bundle.classes.index(class_name)
        return out["heatmaps"][0, index]

    def logits_and_features(self, batch_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.engine(to_model_input(batch_uint8))
        return np.asarray(out["logits"], dtype=np.float64), np.asarray(out["features"], dtype=np.float32)

    def logits(self, batch_uint8: np.ndarray) -> np.ndarray:
        return self.logits_and_features(batch_uint8)[0]

    def probabilities(self, batch_uint8: np.ndarray) -> np.ndarray:
        return calibrated_probabilities(self.logits(batch_uint8), self.temperature)

    def complete(self, prepared: list[Prediction], preset: str = DEFAULT_PRESET) -> None:
        """Run the model on prepared inputs (prepare_input, no error) as one batch and fill in
        probabilities, heatmaps, the guard's flag, the shift score and the verdict under the preset."""
        if not prepared:
            return
        thresholds = self.bundle.preset(preset)
        out = self.forward(np.stack([model_input_of(p)[..., None] for p in prepared]))
        probs = calibrated_probabilities(np.asarray(out["logits"], np.float64), self.temperature)
        guard, shift = self.bundle.guard, self.bundle.shift_score
        distances = guard.distance(out["features"]) if guard is not None else None
        shift_scores = shift.score(out["features"]) if shift is not None else None
        for i, (prediction, row) in enumerate(zip(prepared, probs)):
            prediction.probabilities = {c: float(v) for c, v in zip(self.bundle.classes, row)}
            prediction.heatmaps = out["heatmaps"][i]
            if guard is not None and distances is not None:
                prediction.ood_distance = float(distances[i])
                if prediction.not_xray is None and distances[i] > guard.threshold:
                    prediction.not_xray = guard.message
            if prediction.not_xray is not None:
                prediction.warnings.append(prediction.not_xray)
            if shift_scores is not None:
                prediction.shift_score = float(shift_scores[i])
            self.settle(prediction, thresholds)

    def settle(self, prediction: Prediction, thresholds: dict[str, Any]) -> None:
        """Gather the review reasons of a prediction with probabilities, note the specifics
        (an image's size, a header's body part) among its warnings, and decide its verdict."""
        reasons, notes = film_reasons(prediction, self.bundle.input_limits)
        prediction.warnings.extend(note for note in notes if note not in prediction.warnings)
        prediction.review_inputs = ordered_reasons(reasons + feature_reasons(prediction, self.bundle.shift_score))
        prediction.verdict = prediction.decide(thresholds)
        if prediction.verdict is not None:
            prediction.label, prediction.uncertain = prediction.verdict.label, prediction.verdict.uncertain

    def reconsider(self, prediction: Prediction, population: str, preset: str = DEFAULT_PRESET) -> None:
        """A classified prediction under another answer to "who is the patient" (no model run)."""
        if prediction.probabilities is None or prediction.population == population:
            return
        prediction.population = parse_population(population)
        self.settle(prediction, self.bundle.preset(preset))

    def predict_many(
        self,
        items: list[tuple[str, bytes]],
        preset: str = DEFAULT_PRESET,
        batch_size: int = 8,
        progress: Callable[[int, int], object] | None = None,
        population: str = "unknown",
    ) -> list[Prediction]:
        """Classify (name, bytes) pairs; unreadable inputs get `error` and do not stop the rest.
        population: what the user said of the patients (a DICOM header's age wins)."""
        results: list[Prediction] = []
        pending: list[Prediction] = []
        for index, (name, data) in enumerate(items):
            prediction = prepare_input(name, data, self.bundle.input_size, population)
            results.append(prediction)
            if prediction.error is None:
                pending.append(prediction)
            if len(pending) >= batch_size:
                self.complete(pending, preset)
                pending = []
            if progress is not None:
                progress(index + 1, len(items))
        self.complete(pending, preset)
        return results

    def predict_bytes(
        self, name: str, data: bytes, preset: str = DEFAULT_PRESET, population: str = "unknown"
    ) -> Prediction:
        return self.predict_many([(name, data)], preset=preset, population=population)[0]
