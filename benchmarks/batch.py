"""Batch benchmark: CLI and Ray throughput, Ray's memory over a long run, and the app's
peak memory on a big batch. All figures come from one run, side by side.

Usage: python -m benchmarks.batch [--images 200] [--cli-images 96] [--memory-images 10000]
                                  [--runs 3] [--skip-app] [--skip-ray]

1. CLI path (read, decode, preprocess, classify, decoding overlapped with the model) over
   2,000 x 2,500 JPEGs that compress like real films (fixtures.films.textured_radiograph),
   images per second, --runs times in turn: the path before this change
   (training.release.decode_equivalence.REFERENCE) against the shipped path, with each engine
   the bundle ships (int8 only when it passed the equivalence check), and batch 1; median and
   spread, and the ratio within each run. "Shipped" is the engine every serving path runs
   (utils.core.bundle.serving_precision).
2. Ray Data (`--engine ray`, the shipped engine) on the same folder with 1 and 2 workers, on a local
   cluster started beforehand (the cluster's start is not counted; the actors' model
   loading is).
3. Ray's memory: the peak RSS of the driver and every Ray process, sampled every 0.2 s, over
   a 1,000-image and a --memory-images run (small films, so the run is inference-bound).
4. The app (through streamlit.testing.v1.AppTest, in a fresh process) given --images such
   images in one upload: peak RSS of that process, and RSS before the upload.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from fixtures.films import jpeg_bytes, synthetic_radiograph, textured_radiograph
from training.release.decode_equivalence import REFERENCE
from utils.adapters import ray_batch
from utils.adapters.inputs import expand_paths
from utils.adapters.read_ahead import Request, predict_paths
from utils.core.bundle import load_bundle, serving_precision
from utils.core.classifier import SERVING, Classifier, Preparation

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 2500, 2000


def synthetic_jpegs(count: int) -> list[tuple[str, bytes]]:
    """Films that compress like real ones (fixtures.films.textured_radiograph, JPEG
    quality 92, about 320 kB): smooth synthetic films decode faster than real ones."""
    bases = [textured_radiograph(HEIGHT, WIDTH, seed=seed) for seed in range(4)]
    files = []
    for i in range(count):
        shifted = np.roll(bases[i % len(bases)], 17 * i, axis=1)  # distinct files, same statistics
        files.append((f"img{i:04d}.jpg", jpeg_bytes(shifted)))
    return files


# Peak RSS from VmHWM: ru_maxrss would carry the parent's high-water mark across fork + exec.
APP_MEMORY = r"""
import json, sys, psutil
from streamlit.testing.v1 import AppTest
files = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted(__import__("pathlib").Path(sys.argv[1]).iterdir())]
at = AppTest.from_file("app.py", default_timeout=3600)
at.run()
before = psutil.Process().memory_info().rss
at.file_uploader[0].set_value(files)
del files
at.run()
assert not at.exception, at.exception
rows = len(at.dataframe[0].value)
print(json.dumps({"rows": rows, "rss_before_upload": before,
                  "rss_after": psutil.Process().memory_info().rss,
                  "peak_rss": int(next(line for line in open("/proc/self/status")
                                       if line.startswith("VmHWM:")).split()[1]) * 1024}))
"""


def cli_figures(bundle, folder: Path, runs: int) -> dict:
    """Images/s of the CLI's paths, `runs` times each in turn, so that a busy spell of the
    machine hits all of them: the path before this change (shipped engine, decode
    overlapped), the shipped path with each engine the bundle ships, and batch 1. Ratios are
    taken within each run."""
    shipped = serving_precision(bundle.metadata)
    engines = {precision: Classifier(bundle, precision=precision) for precision in bundle.litert_paths}
    engines.setdefault(shipped, Classifier(bundle, precision=shipped))
    cli_throughput(engines[shipped], folder, 8)  # warm-up: caches, thread pools
    rows: dict[str, list[float]] = {}
    for _ in range(runs):
        rows.setdefault("cli_ips_before", []).append(cli_throughput(engines[shipped], folder, 8, how=REFERENCE))
        for precision, classifier in engines.items():
            rows.setdefault(f"cli_ips_{precision}", []).append(cli_throughput(classifier, folder, 8))
        rows.setdefault("cli_ips_batch1", []).append(cli_throughput(engines[shipped], folder, 1))
    rows["cli_ips_shipped"] = rows[f"cli_ips_{shipped}"]
    rows["cli_speedup"] = [a / b for a, b in zip(rows["cli_ips_shipped"], rows["cli_ips_before"])]
    figures: dict = {"shipped_precision": shipped, **{f"{k}_runs": v for k, v in rows.items()}}
    figures.update({k: float(np.median(v)) for k, v in rows.items()})
    return figures


def cli_throughput(
    classifier, folder: Path, batch_size: int, decode_workers: int = 2, how: Preparation = SERVING
) -> float:
    """The CLI's own read-decode-classify loop with a loaded model (model loading excluded);
    how: the decoder and contrast stretch (the path before, or the shipped one)."""
    paths = expand_paths([str(folder)])
    start = time.perf_counter()
    request = Request("balanced", batch_size, how=how)
    predictions = list(predict_paths(classifier, paths, request, decode_workers=decode_workers))
    assert all(p.label for p in predictions)
    return len(paths) / (time.perf_counter() - start)


class TreeMemory:
    """Peak summed RSS of this process and all its descendants (Ray's raylet and workers)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me] + me.children(recursive=True):
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def ray_throughput(folder: Path, out: Path, workers: int, precision: str, decode: str = "actor") -> float:
    paths = len(list(folder.glob("*.jpg")))
    start = time.perf_counter()
    options = ray_batch.RayOptions(workers=workers, precision=precision, decode=decode)
    ray_batch.run([str(folder)], out, options, log=lambda m: None)
    return paths / (time.perf_counter() - start)


def ray_figures(folder: Path, tmp: Path, memory_images: int, precision: str) -> dict:
    import ray  # noqa: PLC0415  (Ray is optional (requirements-scale.txt))

    figures: dict[str, Any] = {}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            figures[f"ray_ips_{workers}_workers"] = ray_throughput(folder, tmp / f"ray_{workers}", workers, precision)
        figures["ray_ips_1_workers_decode_tasks"] = ray_throughput(
            folder, tmp / "ray_tasks", 1, precision, decode="tasks"
        )
        small = io.BytesIO()
        Image.fromarray((synthetic_radiograph(512, 416, seed=3) * 255).astype(np.uint8)).save(
            small, format="JPEG", quality=90
        )
        for count in (1000, memory_images):
            films = tmp / f"films_{count}"
            films.mkdir()
            for i in range(count):  # the same bytes under many names: memory depends on the count
                (films / f"f{i:05d}.jpg").write_bytes(small.getvalue())
            start = time.perf_counter()
            with TreeMemory() as memory:
                options = ray_batch.RayOptions(workers=1, precision=precision)
                ray_batch.run([str(films)], tmp / f"out_{count}", options, log=lambda m: None)
            figures[f"ray_peak_rss_mb_{count}"] = memory.peak / 2**20
            figures[f"ray_seconds_{count}"] = time.perf_counter() - start
            shutil.rmtree(films)
        figures["ray_memory_growth"] = (
            figures[f"ray_peak_rss_mb_{memory_images}"] / figures["ray_peak_rss_mb_1000"] - 1.0
        )
    finally:
        ray.shutdown()
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--cli-images", type=int, default=96)
    parser.add_argument("--memory-images", type=int, default=10000)
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--runs", type=int, default=3, help="CLI runs (median and spread reported)")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {"cores": os.cpu_count(), "image": f"textured {WIDTH}x{HEIGHT} JPEG, quality 92"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data in synthetic_jpegs(max(args.images, args.cli_images)):
            (folder / name).write_bytes(data)
        cli_folder = folder / "cli"
        cli_folder.mkdir()
        for path in sorted(folder.glob("*.jpg"))[: args.cli_images]:
            (cli_folder / path.name).write_bytes(path.read_bytes())
        sys.path.insert(0, str(REPO))

        bundle = load_bundle(load_keras=False)
        figures.update(cli_figures(bundle, cli_folder, args.runs))
        if not args.skip_ray:
            figures.update(ray_figures(cli_folder, folder, args.memory_images, figures["shipped_precision"]))
            for workers in (1, 2):
                figures[f"ray_{workers}_vs_cli"] = figures[f"ray_ips_{workers}_workers"] / figures["cli_ips_shipped"]
            figures["ray_tasks_vs_cli"] = figures["ray_ips_1_workers_decode_tasks"] / figures["cli_ips_shipped"]
        if args.skip_app:
            print_figures(figures)
            return figures
        app_folder = folder / "app"
        app_folder.mkdir()
        for path in sorted(folder.glob("*.jpg"))[: args.images]:
            path.rename(app_folder / path.name)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", APP_MEMORY, str(app_folder)],
            cwd=REPO,
            text=True,
            capture_output=True,
            check=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        figures["app_batch_seconds"] = time.perf_counter() - start
        memory = json.loads(result.stdout.strip().splitlines()[-1])
    figures["app_images"] = memory["rows"]
    figures["app_peak_rss_mb"] = memory["peak_rss"] / 2**20
    figures["app_rss_before_upload_mb"] = memory["rss_before_upload"] / 2**20
    figures["app_rss_after_mb"] = memory["rss_after"] / 2**20
    print_figures(figures)
    return figures


def spread(figures: dict, key: str) -> str:
    runs = figures.get(f"{key}_runs", [figures[key]])
    return f"{figures[key]:8.2f} ({min(runs):.2f}-{max(runs):.2f})"


def print_figures(figures: dict) -> None:
    print(f"{figures['cores']} cores, {figures['image']}: median images/s (min-max over runs)")
    shipped = figures["shipped_precision"]
    print(f"CLI {shipped}, the path before (float64 stretch){spread(figures, 'cli_ips_before')}")
    for precision in ("int8", "float32"):
        if f"cli_ips_{precision}" in figures:
            default = " (the default)" if precision == shipped else ""
            print(f"CLI {precision}, shipped path{default:14s}  {spread(figures, f'cli_ips_{precision}')}")
    print(f"CLI {shipped}, shipped path, batch 1      {spread(figures, 'cli_ips_batch1')}")
    print(f"shipped / before, within each run       {spread(figures, 'cli_speedup')}  (target >= 2x, >= 31 images/s)")
    for workers in (1, 2):
        if f"ray_ips_{workers}_workers" in figures:
            print(
                f"Ray, {workers} worker(s), decode in actors {figures[f'ray_ips_{workers}_workers']:8.2f} images/s "
                f"({figures[f'ray_{workers}_vs_cli']:.0%} of the CLI; target >= 80%)"
            )
    if "ray_tasks_vs_cli" in figures:
        print(
            f"Ray, 1 worker, decode in tasks       {figures['ray_ips_1_workers_decode_tasks']:8.2f} images/s "
            f"({figures['ray_tasks_vs_cli']:.0%} of the CLI)"
        )
    if "ray_memory_growth" in figures:
        counts = sorted(int(k.rsplit("_", 1)[1]) for k in figures if k.startswith("ray_peak_rss_mb_"))
        print(
            f"Ray peak RSS: {figures[f'ray_peak_rss_mb_{counts[0]}']:.0f} MB at {counts[0]} images, "
            f"{figures[f'ray_peak_rss_mb_{counts[-1]}']:.0f} MB at {counts[-1]} "
            f"(growth {figures['ray_memory_growth']:+.1%}; target <= 5%)"
        )
    if "app_images" not in figures:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))
        return
    print(
        f"app, {figures['app_images']} images in one upload: peak RSS {figures['app_peak_rss_mb']:.0f} MB "
        f"(before upload {figures['app_rss_before_upload_mb']:.0f} MB, after {figures['app_rss_after_mb']:.0f} MB), "
        f"{figures['app_batch_seconds']:.0f} s"
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
