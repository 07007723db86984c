"""The forward pass that serving runs: logits, penultimate features and a heatmap source in one go.

Two interchangeable engines over one bundle, both fed the same (N, S, S, 3) float32 input:
- `LiteRTEngine`: the bundle's LiteRT flatbuffer (converted from the .keras file by
  training/export.py, sha256 in metadata.json) on ai-edge-litert's XNNPACK CPU kernels;
  fast, and TensorFlow is never imported;
- `KerasEngine`: the .keras model through a compiled tf.function; the reference, and the
  fallback when the bundle has no LiteRT file or ai-edge-litert is not installed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

REQUIRED_OUTPUTS = ("logits", "features")
# What the heatmaps come from: the two-stage model's own fracture map ("localisation", a
# per-cell probability), or, for a plain pooling + dense head, Grad-CAM's class maps.
MAP_OUTPUTS = ("localisation", "class_maps")
FEATURE_LAYER = "pool"  # penultimate features: what the not-an-X-ray guard reads
CONV_LAYER = "mixed7"  # the last convolutional block: what the Grad-CAM heatmaps show
DENSE_LAYER = "logits"
LOCALISATION_LAYER = "localisation_logit"


def has_localisation(model: Any) -> bool:
    return any(layer.name == LOCALISATION_LAYER for layer in model.layers)


def build_serving_model(model: Any) -> Any:
    """The classifier with two more outputs: the pooled features and a heatmap source.

    - Two-stage model (training.model.build_two_stage_classifier): `localisation`, the sigmoid
      of its per-cell fracture logits, (N, h, w): the map the fracture score is built from.
    - Pooling + dense head: `class_maps`, per class the last block's activations weighted by
      that class's dense weights (the Grad-CAM map before ReLU; see
      utils.core.heatmap.class_activation_maps for why that equals Grad-CAM here).
    """
    import keras  # noqa: PLC0415  (TensorFlow takes seconds and ~500 MB to import; only the float32 Keras engine needs it)

    outputs = {"logits": model.output, "features": model.get_layer(FEATURE_LAYER).output}
    if has_localisation(model):
        cells = model.get_layer(LOCALISATION_LAYER).output
        probability = keras.layers.Activation("sigmoid", name="localisation_probability")(cells)
        outputs["localisation"] = keras.layers.Reshape(tuple(cells.shape[1:3]), name="localisation")(probability)
    else:
        kernel = model.get_layer(DENSE_LAYER).get_weights()[0]  # (K, C)
        project = keras.layers.Conv2D(kernel.shape[1], 1, use_bias=False, name="class_maps")
        outputs["class_maps"] = project(model.get_layer(CONV_LAYER).output)
        project.set_weights([kernel[None, None]])
    return keras.Model(model.input, outputs, name="serving")


def output_names(available: Iterable[str]) -> tuple[str, ...]:
    """The outputs serving reads from an engine: logits, features and one heatmap source."""
    maps = [k for k in MAP_OUTPUTS if k in available]
    if not set(REQUIRED_OUTPUTS) <= set(available) or not maps:
        raise ValueError(f"outputs {sorted(available)}; expected {REQUIRED_OUTPUTS} and one of {MAP_OUTPUTS}")
    return (*REQUIRED_OUTPUTS, maps[0])


def default_threads() -> int:
    return max(1, int(os.environ.get("BONE_XRAY_THREADS", os.cpu_count() or 1)))


class Engine(Protocol):
    """What the classifier runs: model inputs in, named outputs (logits, features, a map) out."""

    name: str
    outputs: tuple[str, ...]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


class KerasEngine:
    name = "keras"

    def __init__(self, model: Any) -> None:
        import tensorflow as tf  # noqa: PLC0415  (TensorFlow takes seconds and ~500 MB to import; only the float32 Keras engine needs it)

        serving = build_serving_model(model)
        shape = serving.inputs[0].shape
        self._forward = tf.function(
            lambda x: serving(x, training=False),
            reduce_retracing=True,
            input_signature=[tf.TensorSpec([None, *shape[1:]], tf.float32)],
        )
        self.outputs = output_names(serving.output.keys())

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(x)
        return {k: np.asarray(out[k]) for k in self.outputs}


class LiteRTEngine:
    name = "litert"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415  (LiteRT may be absent: the float32 Keras engine then serves)

        self._interpreter = Interpreter(model_path=str(path), num_threads=threads or default_threads())
        self._runner = self._interpreter.get_signature_runner()
        inputs = list(self._runner.get_input_details())
        outputs = set(self._runner.get_output_details())
        try:
            self.outputs = output_names(outputs)
        except ValueError as exc:
            raise ValueError(f"{path} has inputs {inputs} and {exc}") from None
        if len(inputs) != 1:
            raise ValueError(f"{path} has inputs {inputs}; expected one")
        self._input = inputs[0]
        # One interpreter holds one set of buffers: Streamlit sessions take turns.
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            out = self._runner(**{self._input: np.ascontiguousarray(x, dtype=np.float32)})
            return {k: np.array(out[k]) for k in self.outputs}  # copies: the buffers are reused


def litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401, PLC0415  (LiteRT may be absent: the float32 Keras engine then serves)
    except ImportError:
        return False
    return True
