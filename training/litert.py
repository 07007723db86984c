"""Convert the bundled .keras model to the LiteRT flatbuffer that serving runs, and check it.

The flatbuffer holds utils.core.engines.build_serving_model(model): logits, pooled features and
class maps from one input. float32 weights: the conversion changes kernels, not precision.

Usage: python -m training.litert --run artifacts/run_nsfwjs [--quick]
Writes <run>/litert/: serving.tflite and litert.json (the differences from Keras on the test split).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.data import quick_subset, read_split, run_step_parser
from training.features import build_image_cache
from utils.core.engines import KerasEngine, LiteRTEngine, build_serving_model
from utils.core.inference import calibrated_probabilities, to_model_input


def saved_serving_model(keras_path: Path, saved_dir: str) -> tf.lite.TFLiteConverter:
    """A converter for the bundle's serving graph (logits, features, class maps), exported to
    saved_dir, which must outlive the converter."""
    serving = build_serving_model(keras.saving.load_model(keras_path, compile=False))
    serving.export(saved_dir, format="tf_saved_model", verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(saved_dir)


def representative_batches(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """(N, S, S) uint8 images as the converter's calibration data, one image per batch."""
    return lambda: ([to_model_input(image[None, ..., None])] for image in images)


def convert(keras_path: Path, out_path: Path, int8: bool = False, representative: np.ndarray | None = None) -> Path:
    """float32 by default. int8=True quantizes (benchmarks.precision): weights only with
    activations quantized on the fly, or full integer when (N, S, S) uint8 representative
    images calibrate the activations."""

    with tempfile.TemporaryDirectory() as tmp:
        converter = saved_serving_model(keras_path, tmp)
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8 and representative is not None:
            converter.representative_dataset = representative_batches(representative)
        out_path.write_bytes(converter.convert())
    return out_path


def max_probability_difference(
    keras_path: Path, litert_path: Path, images: np.ndarray, temperature: float, batch_size: int = 16
) -> dict:
    """Largest |p_litert - p_keras| over (N, S, S) uint8 model inputs, with the other outputs'."""

    reference = KerasEngine(keras.saving.load_model(keras_path, compile=False))
    fast = LiteRTEngine(litert_path)
    heatmap_key = reference.outputs[-1]  # "localisation" or "class_maps"
    worst = {"probabilities": 0.0, "features": 0.0, heatmap_key: 0.0}
    for i in range(0, len(images), batch_size):
        x = to_model_input(images[i : i + batch_size, ..., None])
        a, b = reference(x), fast(x)
        pa, pb = (calibrated_probabilities(o["logits"], temperature) for o in (a, b))
        worst["probabilities"] = max(worst["probabilities"], float(np.abs(pa - pb).max()))
        for key in ("features", heatmap_key):
            scale = float(np.abs(a[key]).max()) or 1.0
            worst[key] = max(worst[key], float(np.abs(a[key] - b[key]).max()) / scale)
    return {
        "n": int(len(images)),
        "max_abs_probability_difference": worst["probabilities"],
        "max_relative_feature_difference": worst["features"],
        "heatmap_output": heatmap_key,
        "max_relative_class_map_difference": worst[heatmap_key],
    }


LITERT_FILE = "serving.tflite"
# Lower-precision or converted inference must stay within this of Keras's probabilities.
MAX_PROBABILITY_DIFFERENCE = 0.01


def main(argv=None) -> dict:
    args = run_step_parser(__doc__.splitlines()[0], out=False).parse_args(argv)
    report = convert_and_compare(args)
    print(json.dumps(report))
    return report


def convert_and_compare(args: argparse.Namespace) -> dict:
    """The run's model as a LiteRT file, compared with Keras on the test split (args: run,
    data_dir, split, cache_dir, quick); refuses one that differs by more than the limit."""
    out_dir = args.run / "litert"
    out_dir.mkdir(parents=True, exist_ok=True)
    litert_path = convert(args.run / "model.keras", out_dir / LITERT_FILE)
    rows = read_split(args.split)
    rows = [r for r in (quick_subset(rows) if args.quick else rows) if r["split"] == "test"]
    temperature = json.loads((args.run / "eval" / "metrics.json").read_text())["temperature"]
    report = max_probability_difference(
        args.run / "model.keras", litert_path, build_image_cache(rows, args.data_dir, args.cache_dir), temperature
    )
    report["within_limit"] = report["max_abs_probability_difference"] <= MAX_PROBABILITY_DIFFERENCE
    (out_dir / "litert.json").write_text(json.dumps(report, indent=1))
    if not report["within_limit"]:
        raise SystemExit(
            f"LiteRT probabilities differ from Keras by {report['max_abs_probability_difference']:.4f} "
            f"(limit {MAX_PROBABILITY_DIFFERENCE}); not exporting it"
        )
    return report


if __name__ == "__main__":
    main()
