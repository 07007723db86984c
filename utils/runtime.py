"""The forward pass that serving runs: logits, penultimate features and class maps in one go.

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

import numpy as np

OUTPUTS = ("logits", "features", "class_maps")
FEATURE_LAYER = "pool"  # penultimate features: what the not-an-X-ray guard reads
CONV_LAYER = "mixed7"  # the last convolutional block: what the heatmaps show
DENSE_LAYER = "logits"


def build_serving_model(model):
    """The classifier with two more outputs: the pooled features and, per class, the last
    block's activations weighted by that class's dense weights (the Grad-CAM map before
    ReLU; see utils.heatmap.class_activation_maps for why that equals Grad-CAM here)."""
    import keras

    kernel = model.get_layer(DENSE_LAYER).get_weights()[0]  # (K, C)
    project = keras.layers.Conv2D(kernel.shape[1], 1, use_bias=False, name="class_maps")
    maps = project(model.get_layer(CONV_LAYER).output)
    project.set_weights([kernel[None, None]])
    return keras.Model(model.input, {"logits": model.output,
                                      "features": model.get_layer(FEATURE_LAYER).output,
                                      "class_maps": maps}, name="serving")


def default_threads() -> int:
    return max(1, int(os.environ.get("BONE_XRAY_THREADS", os.cpu_count() or 1)))


class KerasEngine:
    name = "keras"

    def __init__(self, model):
        import tensorflow as tf

        serving = build_serving_model(model)
        shape = serving.inputs[0].shape
        self._forward = tf.function(lambda x: serving(x, training=False), reduce_retracing=True,
                                    input_signature=[tf.TensorSpec([None, *shape[1:]], tf.float32)])

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self._forward(x)
        return {k: np.asarray(out[k]) for k in OUTPUTS}


class LiteRTEngine:
    name = "litert"

    def __init__(self, path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=threads or default_threads())
        self._runner = self._interpreter.get_signature_runner()
        inputs = list(self._runner.get_input_details())
        outputs = set(self._runner.get_output_details())
        if len(inputs) != 1 or not set(OUTPUTS) <= outputs:
            raise ValueError(f"{path} has inputs {inputs} and outputs {sorted(outputs)}; "
                             f"expected one input and {OUTPUTS}")
        self._input = inputs[0]
        # One interpreter holds one set of buffers: Streamlit sessions take turns.
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            out = self._runner(**{self._input: np.ascontiguousarray(x, dtype=np.float32)})
            return {k: np.array(out[k]) for k in OUTPUTS}  # copies: the buffers are reused


def litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True
