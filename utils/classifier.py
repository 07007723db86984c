"""Bytes in, calibrated verdict out: the serving path shared by the app and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from utils.bundle import Bundle
from utils.decode import InputError
from utils.inference import calibrated_probabilities, decide, to_model_input
from utils.preprocess import INPUT_SIZE, load_and_preprocess

DEFAULT_PRESET = "balanced"


@dataclass
class Prediction:
    name: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    uncertain: bool = False
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    model_input: np.ndarray | None = None  # (S, S) uint8: the image as the model saw it

    def as_record(self) -> dict:
        return {"path": self.name, "label": self.label, "probabilities": self.probabilities,
                "uncertain": self.uncertain, "warnings": list(self.warnings), "error": self.error}


class Classifier:
    """Wraps a loaded bundle with a compiled forward pass (no per-call `model.predict`)."""

    def __init__(self, bundle: Bundle):
        import tensorflow as tf

        self.bundle = bundle
        self._grad_model = None
        model = bundle.model
        self._forward = tf.function(
            lambda x: model(x, training=False), reduce_retracing=True,
            input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])

    def heatmap(self, model_input: np.ndarray, class_name: str | None = None) -> np.ndarray:
        """Grad-CAM of one (S, S) uint8 model input, for class_name or the predicted class."""
        from utils.heatmap import build_gradcam_model, make_gradcam_heatmap

        if self._grad_model is None:
            self._grad_model = build_gradcam_model(self.bundle.model, self.bundle.metadata.get(
                "heatmap_layer", "mixed7"))
        index = None if class_name is None else self.bundle.classes.index(class_name)
        return make_gradcam_heatmap(to_model_input(model_input[None, ..., None]), self._grad_model, index)

    def logits(self, batch_uint8: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(to_model_input(batch_uint8)), dtype=np.float64)

    def probabilities(self, batch_uint8: np.ndarray) -> np.ndarray:
        return calibrated_probabilities(self.logits(batch_uint8), self.bundle.temperature)

    def predict_many(self, items: list[tuple[str, bytes]], preset: str = DEFAULT_PRESET,
                     batch_size: int = 8, progress=None) -> list[Prediction]:
        """Classify (name, bytes) pairs; unreadable inputs get `error` and do not stop the rest."""
        thresholds = self.bundle.preset(preset)
        results: list[Prediction] = []
        pending: list[Prediction] = []

        def flush():
            if not pending:
                return
            probs = self.probabilities(np.stack([p.model_input[..., None] for p in pending]))
            for prediction, row in zip(pending, probs):
                prediction.label, prediction.uncertain = decide(row, thresholds)
                prediction.probabilities = {c: float(v) for c, v in zip(self.bundle.classes, row)}
            pending.clear()

        for index, (name, data) in enumerate(items):
            prediction = Prediction(name=name)
            try:
                image, warnings = load_and_preprocess(data)
                prediction.model_input, prediction.warnings = image[..., 0], warnings
                pending.append(prediction)
            except InputError as exc:
                prediction.error = str(exc)
            results.append(prediction)
            if len(pending) >= batch_size:
                flush()
            if progress is not None:
                progress(index + 1, len(items))
        flush()
        return results

    def predict_bytes(self, name: str, data: bytes, preset: str = DEFAULT_PRESET) -> Prediction:
        return self.predict_many([(name, data)], preset=preset)[0]
