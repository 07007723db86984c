"""Lower-precision study: is there a faster model that keeps the bundled model's probabilities?

Usage: python -m benchmarks.precision [--repeats 30] [--representative 100]
    [--float-layers conv2d_1 ...] [--quantization-aware artifacts/qat/model.keras]

For each candidate it prints the model-only latency (batch 1, median after warm-up) and the
largest |p - p_float32| of the calibrated probabilities over the whole test split, against the
limit of 0.01 that the equivalence check sets. The reference is the bundle's float32 LiteRT file (itself
within 2.2e-6 of Keras). Candidates, all converted here from model/ into a temporary folder:
- LiteRT dynamic-range int8 (int8 weights, activations quantized on the fly);
- LiteRT full int8 (activations calibrated on --representative training images);
- LiteRT dynamic-range int8 with the --float-layers convolutions in float (a denylist), and the
  same from --quantization-aware weights (training.quantization.distill --export);
- OpenVINO with bfloat16 inference, when the openvino package is installed (not a
  dependency of the app: `pip install openvino` to include it).
Needs ../shared/data (the test split's images); nothing is written to model/.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.inference import median_seconds
from training.data import default_data_dir, read_split
from training.features import build_image_cache
from training.litert import MAX_PROBABILITY_DIFFERENCE, convert
from training.quantization.distill import read_export
from training.quantization.selective import DEFAULT_FLOAT_LAYERS, convert_selective
from utils.core.bundle import load_bundle
from utils.core.engines import LiteRTEngine
from utils.core.inference import calibrated_probabilities, to_model_input

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def litert_logits(path: Path):
    engine = LiteRTEngine(path)
    return lambda x: engine(x)["logits"]


def openvino_logits(path: Path, precision: str):
    import openvino as ov  # noqa: PLC0415  (optional: probed in main only when installed)

    compiled = ov.Core().compile_model(
        path, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    )
    logits = next(
        o
        for o in compiled.outputs
        if o.get_partial_shape().rank.get_length() == 2 and o.get_partial_shape()[-1].get_length() == 3
    )
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[logits]


def logits_one_by_one(run, images: np.ndarray) -> np.ndarray:
    """Logits of (N, S, S) uint8 model inputs, at batch 1 as served."""
    return np.concatenate([run(to_model_input(images[i : i + 1, ..., None])) for i in range(len(images))])


def agreement(run, reference: np.ndarray, images: np.ndarray, temperature: float) -> dict:
    p = calibrated_probabilities(logits_one_by_one(run, images), temperature)
    q = calibrated_probabilities(reference, temperature)
    difference = np.abs(p - q).max(axis=1)
    return {
        "max_abs_probability_difference": float(difference.max()),
        "p99_abs_probability_difference": float(np.quantile(difference, 0.99)),
        "label_agreement": float((p.argmax(1) == q.argmax(1)).mean()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--representative", type=int, default=100)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "bone-xray")
    parser.add_argument("--float-layers", nargs="*", default=list(DEFAULT_FLOAT_LAYERS))
    parser.add_argument("--quantization-aware", type=Path)
    args = parser.parse_args(argv)

    bundle = load_bundle(load_keras=False)
    if bundle.model_path is None or bundle.litert_path is None:
        raise SystemExit(
            "the bundle lacks its .keras or its LiteRT file: the benchmark converts one and runs the other"
        )
    rows = read_split()
    by_split = {name: [r for r in rows if r["split"] == name] for name in ("train", "test")}
    test = build_image_cache(by_split["test"], default_data_dir(), args.cache_dir)
    rng = np.random.default_rng(0)
    train_rows = [
        by_split["train"][i] for i in sorted(rng.choice(len(by_split["train"]), args.representative, replace=False))
    ]
    representative = build_image_cache(train_rows, default_data_dir(), args.cache_dir)
    temperature = bundle.metadata["temperature"]
    one = to_model_input(test[:1, ..., None])

    float32 = litert_logits(bundle.litert_path)
    reference = logits_one_by_one(float32, test)

    def median_ms(fn) -> float:
        return median_seconds(fn, args.repeats, warmup=5) * 1e3

    results = {
        "float32 LiteRT (shipped)": {
            "ms": median_ms(lambda: float32(one)),
            "max_abs_probability_difference": 0.0,
            "p99_abs_probability_difference": 0.0,
            "label_agreement": 1.0,
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, images in (("int8 dynamic range LiteRT", None), ("int8 full integer LiteRT", representative)):
            run = litert_logits(
                convert(bundle.model_path, Path(tmp) / f"{len(results)}.tflite", int8=True, representative=images)
            )
            results[name] = {"ms": median_ms(lambda run=run: run(one)), **agreement(run, reference, test, temperature)}
        selective = {f"int8 dynamic, {len(args.float_layers)} conv float": (bundle.model_path, args.float_layers)}
        if args.quantization_aware:
            layers = read_export(args.quantization_aware)["float_layers"]
            selective["int8 dynamic, quantization-aware"] = (args.quantization_aware, layers)
        for name, (keras_path, layers) in selective.items():
            run = litert_logits(convert_selective(keras_path, Path(tmp) / f"{len(results)}.tflite", layers))
            results[name] = {"ms": median_ms(lambda run=run: run(one)), **agreement(run, reference, test, temperature)}
    try:
        import openvino  # noqa: F401, PLC0415  (an optional engine, probed when installed)
    except ImportError:
        print("openvino not installed: bfloat16 skipped")
    else:
        run = openvino_logits(bundle.litert_path, "bf16")
        results["bfloat16 OpenVINO"] = {
            "ms": median_ms(lambda: run(one)),
            **agreement(run, reference, test, temperature),
        }

    print(f"{os.cpu_count()} cores, {len(test)} test images, limit |dp| <= {MAX_PROBABILITY_DIFFERENCE}")
    print(f"{'candidate':<28} {'ms':>7} {'max |dp|':>9} {'p99 |dp|':>9} {'same label':>10}")
    for name, r in results.items():
        print(
            f"{name:<28} {r['ms']:>7.1f} {r['max_abs_probability_difference']:>9.4f} "
            f"{r['p99_abs_probability_difference']:>9.4f} {r['label_agreement']:>10.3f}"
        )
    print(json.dumps({"cores": os.cpu_count(), "n_test": len(test), **results}))
    return results


if __name__ == "__main__":
    main()
