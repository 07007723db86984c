"""Which ops make the int8 engine change verdicts? LiteRT's quantization debugger, then denylists.

Usage: python -m training.studies.quant_sensitivity [--bundle-dir model] [--keep 0 5 10 20 40]
    [--views 2] [--debug-images 16]

1. The full-integer converter is calibrated on training films only: --representative films, each
   as itself and as --views live-augmentation views (training.features.augment).
2. The debugger runs --debug-images of those films through the float and the quantized graph
   and gives each quantized tensor's error as RMSE / quantization scale (the debugger's own
   measure of how many quantization steps an op is off by).
3. For each --keep k, the k most sensitive ops stay float (a denylist) and the rest int8; each
   candidate goes through the equivalence check (training.release.equivalence) against the
   bundle's float32 engine on the test split and the knee check.

Writes artifacts/quant_sensitivity/: layer_errors.csv, candidates/*.tflite and results.json
(after each candidate, so a long run can be read while it goes). Nothing is fitted on a check.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.features import augment
from training.litert import representative_batches, saved_serving_model
from training.release.equivalence import bundle_to_convert, evaluate_engine, load_sets, markdown, set_parser, summary
from training.studies.output import write_study
from utils.core.engines import LiteRTEngine


def calibration_images(films: np.ndarray, views: int, seed: int = 0) -> np.ndarray:
    """Each training film as itself and as `views` augmented views (what the network saw)."""
    rng = np.random.default_rng(seed)
    out = [films]
    for _ in range(views):
        out.append(np.stack([augment(image, rng) for image in films]))
    return np.concatenate(out)


def debugger_for(
    converter: tf.lite.TFLiteConverter, debug: np.ndarray, denylist: list[str] | None = None
) -> tf.lite.experimental.QuantizationDebugger:
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=denylist or None,
        layer_debug_metrics={"mean_abs_error": lambda diff: float(np.mean(np.abs(diff)))},
    )
    return tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative_batches(debug), debug_options=options
    )


def layer_errors(debugger: tf.lite.experimental.QuantizationDebugger) -> list[dict]:
    """Every quantized tensor's statistics, most sensitive (largest RMSE / scale) first."""
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    for row in rows:
        scale = float(row["scale"]) or math.inf
        row["rmse_over_scale"] = math.sqrt(float(row["mean_squared_error"])) / scale
    return sorted(rows, key=lambda r: -r["rmse_over_scale"])


def write_errors(rows: list[dict], path: Path) -> None:
    fields = ["tensor_name", "op_name", "rmse_over_scale", "mean_abs_error", "max_abs_error", "scale"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def build_candidates(args: argparse.Namespace, model_path: Path, calibration: np.ndarray) -> dict[str, Path]:
    """One LiteRT file per --keep k: the k most sensitive tensors' ops in float, the rest int8."""
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        converter = saved_serving_model(model_path, tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_batches(calibration)
        errors = layer_errors(debugger_for(converter, calibration[: args.debug_images]))
        write_errors(errors, args.out / "layer_errors.csv")
        print("most sensitive:", [(r["op_name"], round(r["rmse_over_scale"], 2)) for r in errors[:10]], flush=True)
        for k in args.keep:
            denylist = [r["tensor_name"] for r in errors[:k]]
            model = debugger_for(converter, calibration[:1], denylist).get_nondebug_quantized_model()
            path = args.out / "candidates" / f"full_integer_float{k}.tflite"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(model)
            files[f"int8 full integer, {k} ops float"] = path
            print("built", path, flush=True)
    return files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = set_parser(__doc__.splitlines()[0], representative=100)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--debug-images", type=int, default=16)
    parser.add_argument("--keep", type=int, nargs="+", default=[0, 5, 15, 40])
    parser.add_argument("--out", type=Path, default=Path("artifacts/quant_sensitivity"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bundle, model_path, litert_path = bundle_to_convert(args)
    args.out.mkdir(parents=True, exist_ok=True)
    sets = load_sets(args)
    calibration = calibration_images(sets["representative"]["images"], args.views)
    files = build_candidates(args, model_path, calibration)
    results = {"float32 (shipped)": evaluate_engine(LiteRTEngine(litert_path), sets, bundle)}
    n = {"test": len(sets["test"]["images"]), "knee": len(sets["knee"]["images"])}
    for name, path in files.items():
        results[name] = evaluate_engine(LiteRTEngine(path), sets, bundle, results["float32 (shipped)"])
        write_study({k: summary(v) for k, v in results.items()}, args.out / "results.json", markdown(results, n))
    return results


if __name__ == "__main__":
    main()
