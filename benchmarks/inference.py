"""Inference benchmark: prints a table and one JSON line.

Usage: python -m benchmarks.inference [--repeats 30] [--model-dir model]

All figures come from one run on this machine, after warm-up, as medians over --repeats:
1. the original app's path (tf.image decode, resize, /255, model.predict) as the baseline;
2. this project's single-image path, bytes to calibrated probabilities (16-bit PNG and 12-bit DICOM);
3. Grad-CAM for one image (every class's map from the serving forward pass), and the
   GradientTape reference implementation for comparison;
4. batch throughput at the CLI's batch size vs batch size 1;
5. cold start: a fresh process from import to first verdict;
6. peak RSS over 200 sequential predictions in a fresh process, RSS after 20 vs 200;
7. the float32 floor: the model's FLOPs per image / a measured large-matmul rate.
Inputs are synthetic 2,000 x 2,500 images made here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from fixtures.films import dicom_bytes, make_dicom, synthetic_radiograph
from training.gradcam import build_gradcam_model, make_gradcam_heatmap
from utils.core.bundle import load_bundle
from utils.core.classifier import Classifier
from utils.core.decode import decode_image_bytes
from utils.core.inference import to_model_input
from utils.core.preprocess import load_and_preprocess, preprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 2500, 2000
CLI_BATCH_SIZE = 8


def synthetic_inputs() -> dict[str, bytes]:
    sys.path.insert(0, str(REPO))

    image = synthetic_radiograph(HEIGHT, WIDTH, seed=1)
    buffer = io.BytesIO()
    Image.fromarray((image * 65535).astype(np.uint16)).save(buffer, format="PNG")
    dicom = dicom_bytes(make_dicom((image * 4095).astype(np.uint16), bits_stored=12))
    return {"png16": buffer.getvalue(), "dicom12": dicom}


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def baseline_path(model, data: bytes):
    """The original app: tf.image decode, resize to the input size, /255, model.predict."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, model.input_shape[1:3])
    x = tf.cast(image, tf.float32)[tf.newaxis] / 255.0
    return model.predict(x, verbose=0)


def model_flops(model) -> float:
    """Multiply-adds x 2 of every Conv2D and Dense layer, for one image."""
    total = 0.0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            k_h, k_w = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += 2.0 * h * w * k_h * k_w * c_in * c_out
        elif kind == "Dense":
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def matmul_rate(size: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    seconds = median_seconds(lambda: tf.matmul(a, b).numpy(), repeats)
    return 2.0 * size**3 / seconds


COLD_START = r"""
import time, sys
t0 = time.perf_counter()
from utils.core.bundle import load_bundle
from utils.core.classifier import Classifier
classifier = Classifier(load_bundle(sys.argv[1] if len(sys.argv) > 1 else None))
prediction = classifier.predict_bytes("x", open(sys.argv[2], "rb").read())
print(time.perf_counter() - t0, prediction.label)
"""

# Peak RSS is the kernel's VmHWM of this process. ru_maxrss is not used: Linux carries the
# parent's high-water mark across fork + exec, so it would report the benchmark's own size.
MEMORY = r"""
import sys, psutil, json
from utils.core.bundle import load_bundle
from utils.core.classifier import Classifier
classifier = Classifier(load_bundle(sys.argv[1] if sys.argv[1] != "-" else None))
data = open(sys.argv[2], "rb").read()
rss = {}
for i in range(1, 201):
    classifier.predict_bytes("x", data)
    if i in (20, 200):
        rss[i] = psutil.Process().memory_info().rss
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_20": rss[20], "rss_200": rss[200], "peak_rss": int(hwm.split()[1]) * 1024}))
"""


def fresh_process(script: str, args: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    return result.stdout.strip().splitlines()[-1], time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args(argv)
    inputs = synthetic_inputs()
    bundle = load_bundle(args.model_dir)
    classifier = Classifier(bundle)
    figures = {
        "cores": os.cpu_count(),
        "tensorflow": tf.__version__,
        "repeats": args.repeats,
        "image": f"{WIDTH}x{HEIGHT}",
        "engine": classifier.engine.name,
    }
    figures.update(in_process_timings(bundle, classifier, inputs, args.repeats))
    figures.update(fresh_process_figures(inputs, args.model_dir))
    figures.update(ratios_of(figures))
    print(
        f"{os.cpu_count()} cores, TensorFlow {tf.__version__}, serving engine {classifier.engine.name}, "
        f"medians of {args.repeats}"
    )
    for name, value, unit in table_rows(figures):
        print(f"{name:<50} {value:>10.2f} {unit}")
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}))
    return figures


def in_process_timings(bundle, classifier: Classifier, inputs: dict[str, bytes], r: int) -> dict:
    """Medians of r runs of each step, in this process (the model already loaded)."""
    figures: dict = {}
    figures["baseline_s"] = median_seconds(lambda: baseline_path(bundle.model, inputs["png16"]), r)
    figures["single_png16_s"] = median_seconds(lambda: classifier.predict_bytes("x", inputs["png16"]), r)
    figures["single_dicom12_s"] = median_seconds(lambda: classifier.predict_bytes("x", inputs["dicom12"]), r)
    model_input, _ = load_and_preprocess(inputs["png16"])
    figures["decode_preprocess_s"] = median_seconds(lambda: load_and_preprocess(inputs["png16"]), r)
    figures["png_decode_only_s"] = median_seconds(lambda: decode_image_bytes(inputs["png16"]), r)
    decoded = decode_image_bytes(inputs["png16"]).pixels
    figures["preprocess_only_s"] = median_seconds(lambda: preprocess(decoded), r)
    figures["model_only_s"] = median_seconds(lambda: classifier.probabilities(model_input[None]), r)
    figures["heatmap_s"] = median_seconds(lambda: classifier.heatmap(model_input[..., 0]), r)

    grad_model = build_gradcam_model(bundle.model)
    x = to_model_input(model_input[None])
    figures["heatmap_gradient_tape_s"] = median_seconds(lambda: make_gradcam_heatmap(x, grad_model), r)
    batch = np.repeat(model_input[None], CLI_BATCH_SIZE, axis=0)
    figures["batch_size"] = CLI_BATCH_SIZE
    figures["throughput_batch1_ips"] = 1.0 / median_seconds(lambda: classifier.probabilities(batch[:1]), r)
    figures["throughput_batch_ips"] = CLI_BATCH_SIZE / median_seconds(lambda: classifier.probabilities(batch), r)
    figures["model_gflops"] = model_flops(bundle.model) / 1e9
    figures["matmul_gflops_per_s"] = matmul_rate() / 1e9
    figures["floor_s"] = figures["model_gflops"] / figures["matmul_gflops_per_s"]
    return figures


def fresh_process_figures(inputs: dict[str, bytes], model_dir_arg: Path | None) -> dict:
    """Cold start and memory, each measured in a fresh interpreter."""
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        png_path = Path(tmp) / "x.png"
        png_path.write_bytes(inputs["png16"])
        model_dir = str(model_dir_arg) if model_dir_arg else "-"
        line, wall = fresh_process(COLD_START, [model_dir if model_dir_arg else "", str(png_path)])
        figures["cold_start_in_process_s"] = float(line.split()[0])
        figures["cold_start_wall_s"] = wall
        memory = json.loads(fresh_process(MEMORY, [model_dir, str(png_path)])[0])
    figures["peak_rss_mb"] = memory["peak_rss"] / 2**20
    figures["rss_20_mb"], figures["rss_200_mb"] = memory["rss_20"] / 2**20, memory["rss_200"] / 2**20
    figures["rss_growth_20_to_200"] = (memory["rss_200"] - memory["rss_20"]) / memory["rss_20"]
    return figures


def ratios_of(figures: dict) -> dict:
    """The speed-ups and bounds derived from the measured figures."""
    figures = dict(figures)
    figures["speedup_vs_baseline"] = figures["baseline_s"] / figures["single_png16_s"]
    figures["single_vs_floor"] = figures["single_png16_s"] / figures["floor_s"]
    figures["heatmap_vs_single"] = figures["heatmap_s"] / figures["single_png16_s"]
    # The most any float32 path can gain on this PNG: it must still decode it and run the model.
    figures["speedup_bound_png_decode_plus_floor"] = figures["baseline_s"] / (
        figures["png_decode_only_s"] + figures["floor_s"]
    )
    return figures


def table_rows(figures: dict) -> list[tuple[str, float, str]]:
    return [
        ("baseline: tf.image + model.predict", figures["baseline_s"] * 1e3, "ms"),
        ("single image, 16-bit PNG, end to end", figures["single_png16_s"] * 1e3, "ms"),
        ("single image, 12-bit DICOM, end to end", figures["single_dicom12_s"] * 1e3, "ms"),
        ("  of which decode + preprocess", figures["decode_preprocess_s"] * 1e3, "ms"),
        ("    decode alone (Pillow, 16-bit PNG)", figures["png_decode_only_s"] * 1e3, "ms"),
        ("    preprocess alone", figures["preprocess_only_s"] * 1e3, "ms"),
        ("  of which model + calibration", figures["model_only_s"] * 1e3, "ms"),
        ("Grad-CAM heatmap (serving: from the forward pass)", figures["heatmap_s"] * 1e3, "ms"),
        ("Grad-CAM with tf.GradientTape (reference)", figures["heatmap_gradient_tape_s"] * 1e3, "ms"),
        ("throughput, batch 1", figures["throughput_batch1_ips"], "img/s"),
        (f"throughput, batch {CLI_BATCH_SIZE}", figures["throughput_batch_ips"], "img/s"),
        ("cold start to first verdict (in process)", figures["cold_start_in_process_s"], "s"),
        ("cold start incl. interpreter", figures["cold_start_wall_s"], "s"),
        ("peak RSS, 200 predictions", figures["peak_rss_mb"], "MB"),
        ("RSS growth, prediction 20 -> 200", figures["rss_growth_20_to_200"] * 100, "%"),
        ("model FLOPs per image", figures["model_gflops"], "GFLOP"),
        ("float32 matmul rate", figures["matmul_gflops_per_s"], "GFLOP/s"),
        ("float32 floor (FLOPs / matmul rate)", figures["floor_s"] * 1e3, "ms"),
        ("speed-up vs baseline", figures["speedup_vs_baseline"], "x"),
        ("single image / floor", figures["single_vs_floor"], "x"),
        ("heatmap / single image", figures["heatmap_vs_single"], "x"),
        ("speed-up bound: baseline / (PNG decode + floor)", figures["speedup_bound_png_decode_plus_floor"], "x"),
    ]


if __name__ == "__main__":
    main()
